"""Samples (x_i = 1: unit i pruned) as files: JSON, CSV or a bitstring, matched to a QUBO by label.

JSON is ``{"sample": {label: 0|1}, ...}`` (other keys are information) or a plain ``{label: 0|1}``;
CSV is ``label,value`` rows with an optional header; a bitstring lists the values in the BQM's
variable order. Labels are compared as strings, so a sample written by another program matches.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dimod
import numpy as np

from qprune.errors import QpruneError
from qprune.qubo.io_common import atomic_write, format_of, suffix_format

__all__ = ["SAMPLE_FORMATS", "load_sample", "parse_sample", "save_sample"]

SAMPLE_FORMATS: dict[str, tuple[str, ...]] = {
    "json": (".json",),
    "csv": (".csv",),
    "bits": (".bits", ".txt"),
}


def load_sample(
    path: str | os.PathLike[str],
    variables: Sequence[Hashable] | dimod.BinaryQuadraticModel,
    *,
    format: str | None = None,
) -> np.ndarray:
    """Read a sample and return x (int8 [N], 1 = pruned) in the order of ``variables``.

    ``variables`` is the BQM (or its labels). JSON and CSV samples are matched by label and must
    name every variable exactly once; a bitstring is read in the variables' order.
    """
    path = Path(path)
    if not path.is_file():
        raise QpruneError(f"sample file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QpruneError(f"cannot read sample file {str(path)!r}: {e}") from None
    fmt = format or suffix_format(path, SAMPLE_FORMATS) or _sniff_sample(text)
    try:
        return parse_sample(text, variables, format=fmt)
    except QpruneError as e:
        raise QpruneError(f"{path}: {e}") from None


def parse_sample(
    text: str, variables: Sequence[Hashable] | dimod.BinaryQuadraticModel, *, format: str = "json"
) -> np.ndarray:
    """Parse a sample given as text (``format``: json, csv or bits); see :func:`load_sample`."""
    labels = list(variables.variables if isinstance(variables, dimod.BinaryQuadraticModel) else variables)
    if format not in SAMPLE_FORMATS:
        raise QpruneError(f"unknown sample format {format!r}; choose one of {', '.join(SAMPLE_FORMATS)}")
    if format == "bits":
        return _from_sequence(list(re.sub(r"\s+", "", text)), len(labels), "bitstring")
    if format == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise QpruneError(f"not valid JSON: {e}") from None
        if isinstance(data, dict) and "sample" in data:
            data = data["sample"]
        if isinstance(data, list):
            return _from_sequence(data, len(labels), "sample list")
        if not isinstance(data, dict):
            raise QpruneError(f"JSON sample must be an object {{label: 0|1}}, got {type(data).__name__}")
        return _from_pairs(list(data.items()), labels)
    return _from_pairs(_csv_pairs(text), labels)


def save_sample(
    sample: Mapping[Hashable, int] | np.ndarray | Sequence[int],
    path: str | os.PathLike[str],
    *,
    variables: Sequence[Hashable] | dimod.BinaryQuadraticModel | None = None,
    format: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a sample as JSON (``{"sample": {label: 0|1}, **info}``), CSV or a bitstring, atomically.

    An array sample needs ``variables`` (its labels, in order); a mapping carries its own.
    """
    path = Path(path)
    fmt = format_of(path, format, SAMPLE_FORMATS, "sample")
    if isinstance(sample, Mapping):
        labels = list(sample)
        values = [sample[v] for v in labels]
    else:
        if variables is None:
            raise QpruneError("an array sample needs variables= (its labels in order)")
        labels = list(variables.variables if isinstance(variables, dimod.BinaryQuadraticModel) else variables)
        values = list(np.asarray(sample).ravel())
        if len(values) != len(labels):
            raise QpruneError(f"sample has {len(values)} values but there are {len(labels)} variables")
    bits = [_binary(v, lab) for lab, v in zip(labels, values)]
    if fmt == "json":
        text = json.dumps({"sample": {str(lab): b for lab, b in zip(labels, bits)}, **dict(info or {})}, indent=1)
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["label", "value"])
        w.writerows([[lab, b] for lab, b in zip(labels, bits)])
        text = buf.getvalue()
    else:
        text = "".join(map(str, bits))
    atomic_write(path, lambda f: f.write((text + ("" if text.endswith("\n") else "\n")).encode()))
    return path


def _sniff_sample(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        return "json"
    if re.fullmatch(r"[01\s]*", stripped):
        return "bits"
    return "csv"


def _csv_pairs(text: str) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    reader = csv.reader(io.StringIO(text))
    first = True
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()) or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise QpruneError(f"CSV line {reader.line_num}: expected 'label,value', got {','.join(row)!r}")
        label, value = row[0].strip(), row[1].strip()
        if first:
            first = False
            try:
                float(value)
            except ValueError:
                continue  # a header row such as "label,value"
        pairs.append((label, value))
    return pairs


def _from_pairs(pairs: list[tuple[Any, Any]], labels: Sequence[Hashable]) -> np.ndarray:
    index = {str(v): i for i, v in enumerate(labels)}
    x = np.zeros(len(labels), dtype=np.int8)
    seen = np.zeros(len(labels), dtype=bool)
    unknown = [str(lab) for lab, _ in pairs if str(lab) not in index]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise QpruneError(f"unknown label {unknown[0]!r}{more}: not a variable of this QUBO")
    for lab, value in pairs:
        i = index[str(lab)]
        if seen[i]:
            raise QpruneError(f"label {str(lab)!r} appears twice")
        seen[i] = True
        x[i] = _binary(value, lab)
    if not seen.all():
        missing = [str(labels[i]) for i in np.flatnonzero(~seen)]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise QpruneError(f"sample lacks label {missing[0]!r}{more}; every variable needs a 0/1 value")
    return x


def _from_sequence(values: list[Any], n: int, what: str) -> np.ndarray:
    if len(values) != n:
        raise QpruneError(f"{what} has {len(values)} values but the QUBO has {n} variables")
    return np.array([_binary(v, f"position {i}") for i, v in enumerate(values)], dtype=np.int8)


def _binary(value: Any, where: Hashable) -> int:
    """0 or 1 from 0/1, True/False, 0.0/1.0 or "0"/"1"; anything else names the bad value."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if s in ("0", "1"):
            return int(s)
        try:
            if float(s) in (0.0, 1.0):
                return int(float(s))
        except ValueError:
            pass
    elif isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return int(value)
    raise QpruneError(f"value {value!r} for {where!r} is not 0 or 1 (1 = pruned)")
