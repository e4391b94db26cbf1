"""Bad files a user may hand the CLI: one line on stderr (about 200 characters) naming the file and
the reason, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qprune.cli import MAX_MESSAGE, main


class Foreign:
    """Stands for any Python object a pickle may carry."""


def _files(tmp: Path) -> dict[str, Path]:
    out = {
        "objects.pt": None, "text.pt": b"not a checkpoint at all", "values.csv": b"label,value\nenc1.0.conv1:0,banana\n",
        "header.csv": b"a,b,c\n\"unterminated\n", "binary.csv": b"\x00\x01\x02binary",
        "broken.lp": b"Minimize\n obj: 3 x +\nSubject To\n c1: x + y >= \nEnd $$$\n",
        "broken.cqm": b"DIMODCQM\x00\x01garbage" * 10,
    }
    paths = {}
    for name, data in out.items():
        paths[name] = tmp / name
        if data is None:
            torch.save({"format": "qprune-checkpoint", "state_dict": {}, "x": Foreign()}, paths[name])
        else:
            paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize(("name", "argv", "reason"), [
    ("objects.pt", ["prune", "--checkpoint", "{}", "--sparsity", "0.3"], "not a trusted weights file"),
    ("text.pt", ["prune", "--checkpoint", "{}", "--sparsity", "0.3"], "not a torch weights file"),
    ("values.csv", ["apply", "--problem", "denoise", "--sample", "{}"], "'banana'"),
    ("header.csv", ["apply", "--problem", "denoise", "--sample", "{}"], "expected 'label,value'"),
    ("binary.csv", ["apply", "--problem", "denoise", "--sample", "{}"], "expected 'label,value'"),
    ("broken.lp", ["solve", "{}"], "not a valid 'lp' QUBO file"),
    ("broken.cqm", ["solve", "{}"], "not a valid"),
])
def test_a_bad_file_is_one_short_line(tmp_path: Path, capsys, name: str, argv: list[str], reason: str) -> None:
    path = _files(tmp_path)[name]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([a.replace("{}", str(path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and len(err) <= len("qprune: error: ") + MAX_MESSAGE, err
    assert str(path) in err and reason in err and "\x1b" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_long_library_messages_are_cut(capsys) -> None:
    from qprune.cli import _one_line

    text = _one_line("first line\n\x1b[1mbold\x1b[0m " + "x" * 1000)
    assert len(text) == MAX_MESSAGE and text.endswith("...") and "\x1b" not in text and "\n" not in text


def test_the_console_script_prints_no_traceback(tmp_path: Path) -> None:
    path = _files(tmp_path)["objects.pt"]
    run = subprocess.run([sys.executable, "-m", "qprune.cli", "prune", "--checkpoint", str(path), "--sparsity", "0.3"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
