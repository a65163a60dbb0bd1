"""``check --read-data`` in helper processes (cas/check/verifier.py), through the CLI.

The findings with ``--workers 2`` must be exactly those of the one-process
check (``--workers 0``) on a repository with a damaged and a missing pack;
helpers that die have their packs verified by the main process; helpers die
with a check killed by ``kill -9``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cas.backend.local import LocalBackend
from cas.check.verifier import VerifierPool
from cas.errors import CasError
from cas.repo.connect import open_repository
from cas.repo.readerspec import reader_spec
from tests.support.cli import run_cas, start_cas
from tests.support.procs import kill_when_paused


def _repo(tmp_path: Path) -> Path:
    """A repository of 1 MiB packs (about 12 data packs), one damaged, one missing."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))
    assert run_cas("-r", repo, "init", "--pack-size", str(1 << 20)).code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    packs = sorted(p for p in (repo / "data").rglob("*") if p.is_file())
    assert len(packs) >= 8
    damaged = bytearray(packs[2].read_bytes())
    damaged[len(damaged) // 3] ^= 0x40
    packs[2].write_bytes(bytes(damaged))
    packs[5].unlink()
    return repo


def _findings(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted((f["kind"], f["object"], f["message"]) for f in doc["findings"])


def _check(repo: Path, workers: str, env: dict[str, str] | None = None) -> Any:
    done = run_cas(
        "-r", repo, "--json", "check", "--read-data", "--workers", workers, env=env or {}
    )
    assert done.code == 1, done.err
    assert "Traceback" not in done.err
    return done


@pytest.mark.damaged_repo_ok("its repository has a damaged and a missing pack, for check to find")
def test_findings_are_the_same_with_helper_processes(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    alone = _check(repo, "0").json()
    helped = _check(repo, "2").json()
    assert alone["summary"]["processes"] == 0
    assert helped["summary"]["processes"] == 2
    assert _findings(helped) == _findings(alone)
    kinds = {k for k, _, _ in _findings(helped)}
    assert {"pack_damaged", "pack_missing"} <= kinds, kinds
    for key in ("packs_read", "packs_selected", "bytes_read", "errors"):
        assert helped["summary"][key] == alone["summary"][key], key


@pytest.mark.damaged_repo_ok("its repository has a damaged and a missing pack, for check to find")
def test_helpers_that_die_have_their_packs_verified_here(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    alone = _check(repo, "0").json()
    done = _check(repo, "2", env={"CAS_FAILPOINTS": "check-verify-pack@2"})
    assert "check process" in done.err and "killed by signal 9" in done.err
    assert _findings(done.json()) == _findings(alone)
    assert done.json()["summary"]["packs_read"] == alone["summary"]["packs_read"]


@pytest.mark.damaged_repo_ok("its repository has a damaged and a missing pack, for check to find")
def test_kill_9_of_the_check_leaves_no_helper_behind(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    gate = tmp_path / "gate"
    gate.mkdir()
    proc = start_cas(
        "-r",
        repo,
        "check",
        "--read-data",
        "--workers",
        "2",
        env={"CAS_FAILPOINTS": "check-verify-pack@1:pause", "CAS_FAILPOINTS_DIR": str(gate)},
    )
    kill_when_paused(proc, gate / "check-verify-pack.paused")
    assert _check(repo, "2").json()["summary"]["processes"] == 2


@pytest.mark.damaged_repo_ok("its repository has a damaged and a missing pack, for check to find")
def test_the_main_process_verifies_its_share_beside_one_helper(tmp_path: Path) -> None:
    """``share``: one helper and the calling process verify the packs between them (the
    default on N cores is N - 1 helpers and the main process); every pack is answered
    once, in order, with the outcome verifying it here gives."""
    path = _repo(tmp_path)
    repo = open_repository(LocalBackend(path), b"test-password")
    spec = reader_spec(repo, str(path), ())
    assert spec is not None
    repo.indexes.load()
    packs = sorted(repo.indexes.index.pack_ids())
    alone = [(p, _outcome(repo.verify_pack, p)) for p in packs]
    pool = VerifierPool(spec, 1, 1, share=True)
    shared = [
        (p, None if e is None else type(e).__name__)
        for p, e in pool.verify(packs, repo.verify_pack)
    ]
    assert shared == alone
    assert pool.started == 1 and not pool.lost
    assert 0 < pool.shared < len(packs), pool.shared
    assert {"IntegrityError", "ObjectNotFound"} <= {e for _, e in alone if e}, alone


def _outcome(fn: Any, pack_id: bytes) -> str | None:
    try:
        fn(pack_id)
    except CasError as e:
        return type(e).__name__
    return None


def _layered_repo(tmp_path: Path, damage: str) -> Path:
    """Two snapshots of files in subdirectories (1 MiB packs), then ``damage``: none, a
    data pack missing (found before the packs are read), a data pack or the tree pack
    altered (found by reading them)."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    for d in range(4):
        (src / f"d{d}" / "sub").mkdir(parents=True)
        for i in range(3):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(1 << 20))
        (src / f"d{d}" / "sub" / "small").write_bytes(b"x" * d)
    assert run_cas("-r", repo, "init", "--pack-size", str(1 << 20)).code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    (src / "d1" / "f0").write_bytes(os.urandom(1 << 20))
    assert run_cas("-r", repo, "backup", src).code == 0
    packs = sorted((p for p in (repo / "data").rglob("*") if p.is_file()), key=_size_and_name)
    tree_pack, data_pack = packs[0], packs[-1]  # trees are small; each 1 MiB file is a pack
    if damage == "missing":
        data_pack.unlink()
    elif damage in ("data", "tree"):
        target = data_pack if damage == "data" else tree_pack
        raw = bytearray(target.read_bytes())
        raw[48] ^= 0x40  # in its first blob
        target.write_bytes(bytes(raw))
    return repo


def _size_and_name(p: Path) -> tuple[int, str]:
    return p.stat().st_size, p.name


@pytest.mark.damaged_repo_ok("its repository is damaged on purpose, for check to find")
@pytest.mark.parametrize("damage", ["none", "missing", "data", "tree"])
def test_the_walk_beside_the_helpers_finds_what_the_walk_after_finds(
    tmp_path: Path, damage: str
) -> None:
    """The main process walks the snapshots while the helpers verify packs, and undoes
    that walk when a pack fails: every finding, with what needs it, and every count are
    those of the one-process check, which walks after reading the packs."""
    repo = _layered_repo(tmp_path, damage)

    def doc(workers: str) -> Any:
        done = run_cas("-r", repo, "--json", "check", "--read-data", "--workers", workers)
        assert done.code == (0 if damage == "none" else 1), done.err
        assert "Traceback" not in done.err
        return done.json()

    alone = doc("0")
    assert alone["summary"]["trees"] > 4 and alone["summary"]["snapshots"] == 2
    if damage != "none":
        assert any(f["affected"] for f in alone["findings"]), alone["findings"]
    for workers in ("1", "2"):
        helped = doc(workers)
        assert helped["summary"]["processes"] == int(workers)
        assert helped["findings"] == alone["findings"], workers
        for key, value in alone["summary"].items():
            if key not in ("processes", "duration"):
                assert helped["summary"][key] == value, (workers, key)
