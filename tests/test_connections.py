"""--connections changes parallelism, never results."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.cli import run_cas


def test_backup_and_restore_with_different_connection_counts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}").write_bytes(os.urandom(100_000 * (i + 1)))
    repo = ["-r", str(tmp_path / "repo")]
    assert run_cas(*repo, "init").code == 0
    assert run_cas(*repo, "--connections", "1", "backup", src).code == 0
    for n in ("1", "8"):
        out = tmp_path / f"out{n}"
        r = run_cas(*repo, "--connections", n, "restore", "latest", "--target", out, "--verify")
        assert r.code == 0, r.err
        for f in src.iterdir():
            assert (out / str(src).lstrip("/") / f.name).read_bytes() == f.read_bytes()
    bad = run_cas(*repo, "--connections", "0", "snapshots")
    assert bad.code == 2
