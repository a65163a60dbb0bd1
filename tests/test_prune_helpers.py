"""prune's repack in helper processes (cas/check/verifier.py ``salvage``), through the CLI.

The helpers read each pack to repack, prove it and the blobs to keep, and send back
those blobs' sealed bytes; the main process packs and stores them.  The result must
be what one process makes; a helper that dies has its packs done by the main
process; a prune killed with its helpers leaves none behind and the next one
finishes.  Restores are compared with the source by tests/support/trees.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cas, start_cas
from tests.support.procs import kill_when_paused
from tests.support.trees import compare_trees


def _repo(tmp_path: Path) -> tuple[Path, Path]:
    """A repository of 1 MiB packs in which every data pack is about half unused (the
    files of a forgotten snapshot), and the source of the snapshot that stays."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    # 60 files of ~80 KB: blobs go to packs at random (spec §9.5), so a pack holds
    # about a dozen files, which makes every data pack about half unused
    for i in range(60):
        (src / f"f{i:02}").write_bytes(os.urandom(75_000 + i * 500))
    assert run_cas("-r", repo, "init", "--pack-size", str(1 << 20)).code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    for i in range(0, 60, 2):
        (src / f"f{i:02}").unlink()
    assert run_cas("-r", repo, "backup", src).code == 0
    assert run_cas("-r", repo, "forget", "--keep-last", "1").code == 0
    return repo, src


def _prune(repo: Path, workers: str, env: dict[str, str] | None = None) -> Any:
    done = run_cas("-r", repo, "--json", "prune", "--workers", workers, env=env or {})
    assert "Traceback" not in done.err
    return done


def _result(done: Any) -> dict[str, Any]:
    """The ``result`` object of prune's JSON (its last line)."""
    last = json.loads(done.out.strip().splitlines()[-1])
    return dict(last["result"])


def _proven(
    repo: Path, src: Path, tmp_path: Path, name: str, env: dict[str, str] | None = None
) -> None:
    """check --read-data passes and the snapshot left restores exactly."""
    check = run_cas("-r", repo, "check", "--read-data", env=env)
    assert check.code == 0, check.out + check.err
    target = tmp_path / name
    assert run_cas("-r", repo, "restore", "latest", "--target", target, env=env).code == 0
    assert compare_trees(src, target / str(src).lstrip("/")) == []


def test_repack_with_helpers_writes_what_one_process_writes(tmp_path: Path) -> None:
    repo, src = _repo(tmp_path)
    twin = tmp_path / "twin"
    shutil.copytree(repo, twin)
    twin_env = {"XDG_STATE_HOME": str(tmp_path / "twin-state")}  # another client's copy
    alone = _prune(repo, "0")
    helped = _prune(twin, "2", env=twin_env)
    assert alone.code == 0 and helped.code == 0, alone.err + helped.err
    a, h = _result(alone), _result(helped)
    assert a["processes"] == 0 and h["processes"] == 2
    assert a["packs_written"] >= 3
    # The same blobs in the same order: packs of the same sizes (IDs differ: nonces).
    for key in ("packs_written", "bytes_written", "packs_deleted", "bytes_freed"):
        assert h[key] == a[key], key
    _proven(repo, src, tmp_path, "alone")
    _proven(twin, src, tmp_path, "helped", twin_env)


def test_a_helper_that_dies_has_its_packs_repacked_here(tmp_path: Path) -> None:
    repo, src = _repo(tmp_path)
    done = _prune(repo, "2", env={"CAS_FAILPOINTS": "prune-salvage-pack@1"})
    assert done.code in (0, 3), done.err
    assert "prune process" in done.err and "killed by signal 9" in done.err
    assert _result(done)["packs_written"] >= 3
    _proven(repo, src, tmp_path, "restored")


def test_kill_9_of_a_prune_with_helpers_leaves_none_behind(tmp_path: Path) -> None:
    repo, src = _repo(tmp_path)
    gate = tmp_path / "gate"
    gate.mkdir()
    proc = start_cas(
        "-r",
        repo,
        "prune",
        "--workers",
        "2",
        env={"CAS_FAILPOINTS": "prune-salvage-pack@2:pause", "CAS_FAILPOINTS_DIR": str(gate)},
    )
    kill_when_paused(proc, gate / "prune-salvage-pack.paused")
    assert run_cas("-r", repo, "unlock").code == 0
    again = _prune(repo, "2")
    assert again.code == 0, again.err
    _proven(repo, src, tmp_path, "restored")


@pytest.mark.damaged_repo_ok("a byte of a pack flipped, for prune's repack to stop on")
def test_a_damaged_pack_stops_the_repack_in_a_helper_as_in_one_process(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path)
    packs = sorted(p for p in (repo / "data").rglob("*") if p.is_file())
    before = {p.name for p in packs}
    for pack in packs:
        if pack.stat().st_size > 500_000:  # a data pack (tree packs are small): all to repack
            damaged = bytearray(pack.read_bytes())
            damaged[100] ^= 0x01
            pack.write_bytes(bytes(damaged))
    for workers in ("2", "0"):
        done = _prune(repo, workers)
        assert done.code == 1, done.err
        assert done.err.count("\n") == 1 and done.err.startswith("cas: "), done.err
    # Nothing was deleted: the damage is the user's to see with check, not prune's to hide.
    assert before <= {p.name for p in (repo / "data").rglob("*") if p.is_file()}
