"""A restore target that fills up: one clean error, no partial file, a second run finishes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_cas
from tests.support.mounts import tmpfs


@pytest.fixture
def small_target(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only), unmounted afterwards."""
    with tmpfs(tmp_path / "target", "4m") as mnt:
        yield mnt


def test_full_target_fails_cleanly_and_a_second_restore_completes(
    tmp_path: Path, small_target: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}": os.urandom(512 << 10) for i in range(6)}  # 3 MiB in all
    for name, data in files.items():
        (src / name).write_bytes(data)
    repo = ["-r", str(tmp_path / "repo")]
    assert run_cas(*repo, "init").code == 0
    assert run_cas(*repo, "backup", src).code == 0

    ballast = small_target / "ballast"  # the disk is mostly full already
    ballast.write_bytes(b"\xff" * (2 << 20))
    restore = ["restore", "latest:" + str(src), "--target", small_target]
    first = run_cas(*repo, *restore)
    assert first.code == 1
    assert first.err.count("\n") == 1 and "No space left on device" in first.err
    assert "Traceback" not in first.err
    restored = {p.name for p in small_target.iterdir()} - {"ballast"}
    assert len(restored) < len(files)
    for name in restored:  # whatever is there under a real name is complete
        assert not name.startswith(".cas-restore-"), "a temporary file was left behind"
        assert (small_target / name).read_bytes() == files[name]

    ballast.unlink()  # the user makes room and runs the same restore again
    second = run_cas(*repo, "--json", *restore)
    assert second.code == 0, second.err
    assert second.json()["summary"]["files_unchanged"] == len(restored)
    for name, data in files.items():
        assert (small_target / name).read_bytes() == data
