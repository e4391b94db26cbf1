"""`qprune tune --workers N` on one shared study: SQLite for the basics, a real PostgreSQL server for the rest.

The PostgreSQL test starts its own throw-away server from Debian's package (``initdb`` +
``pg_ctl`` in a temporary folder, a free port on localhost, trust authentication) and skips with
the reason when the binaries or the driver are missing. `.ci/run` installs the package.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from qprune.cli import main
from qprune.errors import QpruneError
from qprune.pipeline.tune import open_study, worker_shares


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run it as the package's "postgres" user then
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and no runuser to start PostgreSQL as the postgres user")
        return [runuser, "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on localhost for this module; yields its URL."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package 'postgresql'; .ci/run installs it)")
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed (qprune[test])")
    # outside pytest's private (0700) temporary root, so the postgres user can reach it
    root = Path(tempfile.mkdtemp(prefix="qprune-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = _free_port()
    run = subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", "qprune", "--auth=trust", "-E", "UTF8"]),
                         capture_output=True, text=True, timeout=300, check=False)
    if run.returncode != 0:
        pytest.skip(f"initdb failed: {run.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    start = subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-o", opts, "-l", str(data / "log"), "-w",
                                            "start"]), capture_output=True, text=True, timeout=300, check=False)
    if start.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]}")
    try:
        url = f"postgresql://qprune@127.0.0.1:{port}/postgres"
        for _ in range(50):  # the server accepts connections a moment after pg_ctl returns
            try:
                psycopg.connect(url).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        yield url
    finally:
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True,
                       timeout=120, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _tune(extra: list[str], out: Path) -> dict:
    argv = ["tune", "--problem", "classify", "--sparsity", "0.3", "--sampler", "random", "--quiet",
            "--strategy", "gamma", "-o", str(out), *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_two_workers_share_one_postgres_study(postgres: str, tmp_path: Path) -> None:
    result = _tune(["--trials", "6", "--workers", "2", "--storage", postgres, "--study", "two-workers"],
                   tmp_path / "best.json")
    study = open_study(postgres, "two-workers")
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(6))                                   # none lost, none duplicated
    # finished, either run to the end or stopped early by the median pruner; none failed or left running
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert any(t.state.name == "COMPLETE" for t in study.trials)
    params = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(params) == 6                                            # the workers proposed different weights
    assert result["n_trials"] == 6 and result["best_value"] == pytest.approx(study.best_value)
    # a second run resumes the same study: 2 more trials, 8 in all
    _tune(["--trials", "2", "--workers", "2", "--storage", postgres, "--study", "two-workers"], tmp_path / "b2.json")
    assert sorted(t.number for t in open_study(postgres, "two-workers").trials) == list(range(8))


def test_workers_need_a_shared_storage_and_trials_to_share(tmp_path: Path, capsys) -> None:
    assert main(["tune", "--problem", "classify", "--sparsity", "0.3", "--workers", "2",
                 "-o", str(tmp_path / "w.json")]) == 2
    assert "--workers needs --storage" in capsys.readouterr().err
    assert worker_shares(7, 3) == [3, 2, 2]
    with pytest.raises(QpruneError, match="cannot keep 4 workers busy"):
        worker_shares(3, 4)
    assert not (tmp_path / "w.json").exists()
