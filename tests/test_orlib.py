import itertools

import numpy as np
import pytest

from qprune.errors import QpruneError
from qprune.instances.orlib import load_instance, read_bqp


def test_read_bqp_energy_is_minus_the_maximised_objective(tmp_path):
    # maximise 3x0 - 2x1 + 1x2 + 2*(4 x0x1 - 5 x1x2)
    (tmp_path / "t.txt").write_text("3 5\n1 1 3\n2 2 -2\n3 3 1\n1 2 4\n2 3 -5\n")
    bqm = read_bqp(tmp_path / "t.txt")
    for x in itertools.product((0, 1), repeat=3):
        obj = 3 * x[0] - 2 * x[1] + x[2] + 2 * (4 * x[0] * x[1] - 5 * x[1] * x[2])
        assert bqm.energy(dict(enumerate(x))) == pytest.approx(-obj)


def test_bad_files(tmp_path):
    (tmp_path / "bad.txt").write_text("3 1\n1 4 2\n")
    with pytest.raises(QpruneError, match="outside"):
        read_bqp(tmp_path / "bad.txt")
    (tmp_path / "junk.txt").write_text("hello\n")
    with pytest.raises(QpruneError, match="not an OR-Library bqp file"):
        read_bqp(tmp_path / "junk.txt")


def test_shared_instance_and_best_known(shared_data):
    bqm, best = load_instance(shared_data / "qubo", "bqp50.1")
    assert bqm.num_variables == 50 and best < 0
    # the all-zero state has energy 0, and nothing beats the best known
    assert bqm.energy({v: 0 for v in bqm.variables}) == 0
    rng = np.random.default_rng(0)
    assert min(bqm.energies((rng.integers(0, 2, (200, 50)), list(range(50))))) >= best
    with pytest.raises(QpruneError, match="bqp99"):
        load_instance(shared_data / "qubo", "bqp99.1")
