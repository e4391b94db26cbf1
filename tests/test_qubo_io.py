"""Export/import of QUBOs and samples: exact round trips, an independent LP reader, clear errors."""

from __future__ import annotations

import itertools
import json
import os

import dimod
import numpy as np
import pytest

from qprune.qubo import fileio as qubo_io
from qprune.errors import QpruneError
from qprune.qubo.fileio import (
    FORMATS,
    export_bqm,
    export_constrained,
    export_formulation,
    load_bqm,
    load_sample,
    parse_sample,
    save_sample,
)


def save_bqm(bqm, path, *, k=None, **kw):
    """Penalised or constrained export, whichever k asks for."""
    return export_bqm(bqm, path, **kw) if k is None else export_constrained(bqm, k, path, **kw)
from qprune.instances.synthetic import random_formulation

SUFFIX = {"dimod": ".bqm", "coo": ".coo", "json": ".json", "qubo": ".qubo", "lp": ".lp", "npz": ".npz"}
CASES = [(fmt, k, False) for fmt in FORMATS for k in (None, 5)] + [("lp", None, True), ("lp", 5, True)]


@pytest.fixture(scope="module")
def form():
    # awkward values on purpose: thirds (exact repr), cross-layer pairs, an offset, sparse blocks
    return random_formulation((3, 4, 5), seed=11, cross_pairs=4, offset=1 / 3, density=0.7)


def assert_same_bqm(a: dimod.BinaryQuadraticModel, b: dimod.BinaryQuadraticModel) -> None:
    assert list(a.variables) == list(b.variables)  # order matters for bitstrings
    X = np.random.default_rng(0).integers(0, 2, (100, a.num_variables))
    np.testing.assert_array_equal(a.energies((X, list(a.variables))), b.energies((X, list(a.variables))))
    assert a.offset == b.offset


@pytest.mark.parametrize("fmt,k,linearize", CASES)
def test_round_trip_is_identical(tmp_path, form, fmt, k, linearize):
    bqm = form.bqm(0.8) if k is None else form.objective_bqm()
    path = save_bqm(bqm, tmp_path / f"model{SUFFIX[fmt]}", k=k, linearize=linearize)
    loaded = load_bqm(path)
    assert_same_bqm(bqm, loaded.bqm)
    assert loaded.k == k
    back, k_back = loaded  # also unpacks like a tuple
    assert k_back == k
    assert os.listdir(tmp_path) == [path.name]  # no temporary left behind


@pytest.mark.parametrize("fmt", ["coo", "qubo", "npz", "json", "lp", "dimod"])
def test_explicit_format_overrides_suffix(tmp_path, form, fmt):
    path = save_bqm(form.bqm(0.1), tmp_path / "model.data", format=fmt)
    assert_same_bqm(form.bqm(0.1), load_bqm(path, format=fmt).bqm)


def test_exact_floats_and_labels_in_coo(tmp_path):
    bqm = dimod.BinaryQuadraticModel(
        {"a b:0": 0.1, "x,y:1": 1 / 3, 'q"uote:2': -2e-17}, {("a b:0", "x,y:1"): 1e300}, -1 / 7, "BINARY"
    )
    path = save_bqm(bqm, tmp_path / "m.coo", k=1)
    text = path.read_text()
    assert text.startswith("# qprune-coo 1 | vartype BINARY")
    assert "# offset -0.14285714285714285" in text and "# k 1" in text
    loaded = load_bqm(path).bqm
    assert dict(loaded.linear) == dict(bqm.linear)  # exact equality, not approx
    assert dict(loaded.quadratic) == dict(bqm.quadratic)
    assert loaded.offset == bqm.offset
    # a qbsolv reader sees a plain problem line
    qpath = save_bqm(bqm, tmp_path / "m.qubo")
    assert "p qubo 0 3 3 1" in qpath.read_text().splitlines()


def test_plain_coo_and_qubo_from_elsewhere(tmp_path):
    (tmp_path / "plain.coo").write_text("0 0 1.5\n0 2 -1\n1 1 0.25\n")
    bqm, k = load_bqm(tmp_path / "plain.coo")
    assert k is None and list(bqm.variables) == [0, 1, 2]
    assert bqm.quadratic[(0, 2)] == -1.0 and bqm.linear[1] == 0.25


def test_export_formulation_needs_exactly_one_of_gamma_and_k(tmp_path, form):
    with pytest.raises(QpruneError, match="exactly one of gamma"):
        export_formulation(form, tmp_path / "m.json", gamma=1.0, k=3)
    path = export_formulation(form, tmp_path / "m.json", k=3)
    assert_same_bqm(form.objective_bqm(), load_bqm(path).bqm)
    assert json.loads(path.read_text())["k"] == 3
    with pytest.raises(QpruneError, match=r"k = 13 must be an integer in \[0, 12\]"):
        export_formulation(form, tmp_path / "m.json", k=13)


def test_every_format_has_a_writer_and_a_reader():
    assert set(qubo_io.WRITERS) == set(qubo_io.READERS) == set(FORMATS)
    suffixes = [s for table in (FORMATS, qubo_io.SAMPLE_FORMATS) for s in table.values()]
    assert all(s.startswith(".") and s == s.lower() for group in suffixes for s in group)


def test_writes_are_atomic(tmp_path, form, monkeypatch):
    target = tmp_path / "m.coo"
    target.write_text("previous content\n")

    def broken(bqm, k, f):
        f.write(b"half a file")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(qubo_io.WRITERS, "coo", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_bqm(form.bqm(0.0), target)
    assert target.read_text() == "previous content\n"  # the old file is untouched
    assert os.listdir(tmp_path) == ["m.coo"]  # and no temporary remains
    with pytest.raises(QpruneError, match="directory .* does not exist"):
        save_bqm(form.bqm(0.0), tmp_path / "nope" / "m.json")


# ------------------------------------------------------------------------------ independent LP reader


def test_lp_read_by_highs_matches_bqm_energies(tmp_path, form):
    highspy = pytest.importorskip("highspy")
    bqm = form.objective_bqm()
    path = save_bqm(bqm, tmp_path / "m.lp", k=5)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    assert h.readModel(str(path)) == highspy.HighsStatus.kOk
    model = h.getModel()
    lp, hess = model.lp_, model.hessian_
    names = list(lp.col_names_)
    assert names == [f"x{i}" for i in range(12)] and lp.num_row_ == 1
    # HiGHS objective: c.x + x^T H x / 2 + offset, H stored as its lower triangle column by column
    H = np.zeros((12, 12))
    for c in range(hess.dim_):
        for p in range(hess.start_[c], hess.start_[c + 1]):
            H[hess.index_[p], c] = hess.value_[p]
    H = H + np.tril(H, -1).T
    X = np.random.default_rng(3).integers(0, 2, (100, 12))
    highs_energy = X @ np.array(lp.col_cost_) + 0.5 * np.einsum("bi,ij,bj->b", X, H, X) + lp.offset_
    np.testing.assert_allclose(highs_energy, bqm.energies((X, list(bqm.variables))), rtol=1e-12, atol=1e-12)
    # the cardinality row reads sum(x) = 5
    assert lp.row_lower_[0] == lp.row_upper_[0] == 5


def test_linearized_lp_solved_by_highs_equals_brute_force(tmp_path, form):
    highspy = pytest.importorskip("highspy")
    k = 5
    path = export_formulation(form, tmp_path / "m.lp", k=k, linearize=True)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    assert h.readModel(str(path)) == highspy.HighsStatus.kOk
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    best = min(
        float(form.energy(np.isin(np.arange(12), comb).astype(int)))
        for comb in itertools.combinations(range(12), k)
    )
    assert h.getInfo().objective_function_value == pytest.approx(best, abs=1e-7)
    value = dict(zip(h.getLp().col_names_, h.getSolution().col_value))
    x = np.array([round(value[f"x{i}"]) for i in range(12)])
    assert x.sum() == k and float(form.energy(x)) == pytest.approx(best, abs=1e-7)


# ------------------------------------------------------------------------------------- load errors


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.json", '{"hello": 1}', "no dimod BinaryQuadraticModel"),
        ("bad.coo", "# qprune-coo 1\n0 0 1.0\n0 1 abc\n", r"line 3: expected '<i> <j> <bias>', got '0 1 abc'"),
        ("bad.qubo", "p qubo 0 3 3 2\n0 0 1.0\n1 1 1.0\n2 2 0.5\n0 1 1.0\n", "declares 3 nodes and 2 couplers"),
        ("bad.bqm", "garbage bytes", "is not a valid 'dimod' QUBO file"),
        ("bad.npz", "PK\x03\x04 not really a zip", "npz"),
        ("bad.lp", "Minimize\n obj: + 1 x0 + [ 2 x0 * \nEnd\n", "is not a valid 'lp' QUBO file"),
    ],
)
def test_corrupt_qubo_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(QpruneError, match=message):
        load_bqm(path)


def test_missing_and_unknown_qubo_files(tmp_path):
    with pytest.raises(QpruneError, match="does not exist"):
        load_bqm(tmp_path / "none.coo")
    with pytest.raises(QpruneError, match="cannot tell the QUBO format of .*model.xyz"):
        load_bqm(tmp_path / "model.xyz")
    with pytest.raises(QpruneError, match="unknown QUBO format 'mps'"):
        load_bqm(tmp_path / "m.coo", format="mps")


def test_lp_constraint_other_than_cardinality_is_rejected(tmp_path):
    (tmp_path / "c.lp").write_text("Minimize\n obj: + 1 x0 - 1 x1\nSubject To\n c1: + 2 x0 + 1 x1 <= 1\n"
                                   "Binary\n x0 x1\nEnd\n")
    with pytest.raises(QpruneError, match="constraint 'c1' is not sum\\(x\\) = k"):
        load_bqm(tmp_path / "c.lp")


# ----------------------------------------------------------------------------------------- samples

LABELS = ["enc.0:0", "enc.0:1", "enc.1:0", "enc.1:1"]


@pytest.mark.parametrize("fmt", ["json", "csv", "bits"])
def test_sample_round_trip(tmp_path, fmt):
    x = np.array([1, 0, 0, 1])
    path = save_sample(x, tmp_path / f"s.{fmt}", variables=LABELS, info={"energy": -1.5})
    np.testing.assert_array_equal(load_sample(path, LABELS), x)
    bqm = dimod.BinaryQuadraticModel({v: 0.0 for v in reversed(LABELS)}, {}, 0.0, "BINARY")
    got = load_sample(path, bqm)  # matched by label, returned in the BQM's order
    if fmt == "bits":  # a bitstring has no labels: it is read in the BQM's own order
        np.testing.assert_array_equal(got, x)
    else:
        np.testing.assert_array_equal(got, x[::-1])


def test_sample_formats_accepted():
    assert parse_sample('{"enc.0:0": 1, "enc.0:1": 0, "enc.1:0": true, "enc.1:1": 0.0}', LABELS).tolist() == [1, 0, 1, 0]
    assert parse_sample('{"sample": {"enc.0:0": 0, "enc.0:1": 1, "enc.1:0": 0, "enc.1:1": 0}, "energy": 3}',
                        LABELS).tolist() == [0, 1, 0, 0]
    assert parse_sample('{"sample": [0, 0, 1, 1]}', LABELS).tolist() == [0, 0, 1, 1]
    assert parse_sample("label,value\nenc.1:1,1\nenc.0:0,0\n# comment\nenc.0:1,1\nenc.1:0,0\n", LABELS,
                        format="csv").tolist() == [0, 1, 0, 1]
    assert parse_sample("enc.0:0,1\nenc.0:1,0\nenc.1:0,0\nenc.1:1,0", LABELS, format="csv").tolist() == [1, 0, 0, 0]
    assert parse_sample(" 01\n10 \n", LABELS, format="bits").tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize(
    "text,fmt,message",
    [
        ('{"enc.0:0": 1, "enc.0:1": 0, "enc.1:0": 0, "enc.1:1": 0, "dec:9": 1}', "json",
         "unknown label 'dec:9'"),
        ('{"enc.0:0": 1, "enc.0:1": 0}', "json", "sample lacks label 'enc.1:0' \\(and 1 more\\)"),
        ('{"enc.0:0": 2, "enc.0:1": 0, "enc.1:0": 0, "enc.1:1": 0}', "json", "value 2 for 'enc.0:0' is not 0 or 1"),
        ('{"enc.0:0": -1, "enc.0:1": 0, "enc.1:0": 0, "enc.1:1": 0}', "json", "value -1 for 'enc.0:0'"),
        ('{"sample": [0, 1]}', "json", "sample list has 2 values but the QUBO has 4 variables"),
        ("{broken", "json", "not valid JSON"),
        ("[1, 0, 1, 0, 1]", "json", "has 5 values but the QUBO has 4"),
        ('"just a string"', "json", "must be an object"),
        ("enc.0:0,1\nenc.0:1,x\nenc.1:0,0\nenc.1:1,0", "csv", "value 'x' for 'enc.0:1' is not 0 or 1"),
        ("enc.0:0,1\nenc.0:0,0\nenc.1:0,0\nenc.1:1,0", "csv", "label 'enc.0:0' appears twice"),
        ("enc.0:0,1,3\n", "csv", "CSV line 1: expected 'label,value'"),
        ("0101 1", "bits", "bitstring has 5 values but the QUBO has 4 variables"),
        ("0121", "bits", "value '2' for 'position 2' is not 0 or 1"),
    ],
)
def test_sample_errors_name_the_bad_value(text, fmt, message):
    with pytest.raises(QpruneError, match=message):
        parse_sample(text, LABELS, format=fmt)


def test_sample_file_errors(tmp_path):
    with pytest.raises(QpruneError, match="sample file .* does not exist"):
        load_sample(tmp_path / "missing.json", LABELS)
    (tmp_path / "bad.json").write_text('{"enc.0:0": 1')
    with pytest.raises(QpruneError, match="bad.json: not valid JSON"):
        load_sample(tmp_path / "bad.json", LABELS)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(QpruneError, match="cannot read sample file"):
        load_sample(tmp_path / "bin.json", LABELS)
    # no telling suffix: the content decides
    (tmp_path / "sample").write_text("1001\n")
    assert load_sample(tmp_path / "sample", LABELS).tolist() == [1, 0, 0, 1]
    with pytest.raises(QpruneError, match="an array sample needs variables="):
        save_sample(np.zeros(4), tmp_path / "s.json")
    with pytest.raises(QpruneError, match="value 3 for 'enc.0:1'"):
        save_sample({"enc.0:0": 0, "enc.0:1": 3}, tmp_path / "s.json")
