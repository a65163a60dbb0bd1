"""Prune: space comes back, kept snapshots stay whole, concurrent writers are respected."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cas import failpoints
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.check.checker import check
from cas.crypto import BlobType
from cas.format.tree import decode_tree
from cas.repo import Repository, layout, locks, open_repository, prune
from cas.repo.prune import PruneOptions, PruneRefused, execute_prune, plan_prune
from tests.independent.compare import assert_snapshot_is, read_local
from tests.support.cli import run_cas
from tests.support.repos import PASSWORD, new_repo, populate, snapshots_sharing_packs


def _reopen(backend: MemoryBackend | LocalBackend) -> Repository:
    return open_repository(backend, PASSWORD)


def _assert_snapshots_whole(repo: Repository) -> int:
    """Every blob of every snapshot loads and verifies; returns how many files were read."""
    files = 0
    for _, snap in repo.iter_snapshots():
        todo = [snap.tree]
        while todo:
            for node in decode_tree(repo.load_blob(BlobType.TREE, todo.pop())):
                if node.subtree:
                    todo.append(node.subtree)
                for bid, size in zip(node.content, node.sizes, strict=True):
                    repo.load_blob(BlobType.DATA, bid, size)
                files += node.type == "file"
    return files


def _pack_bytes(backend: MemoryBackend) -> int:
    return sum(o.size for o in backend.list(layout.DATA))


def _prune(repo: Repository, max_unused: float = 0.05):  # type: ignore[no-untyped-def]
    plan = plan_prune(repo, PruneOptions(max_unused))
    return plan, execute_prune(repo, plan)


def test_forgotten_snapshot_space_comes_back() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    old, _ = populate(repo, n_files=6, seed=1)
    populate(repo, n_files=6, seed=2)
    before = _pack_bytes(backend)
    backend.delete(layout.snapshot_name(old))
    plan, result = _prune(_reopen(backend))
    assert plan.summary()["packs_to_remove"] + plan.summary()["packs_to_repack"] > 0
    assert result.packs_deleted > 0 and result.deferred_packs == 0
    after = _pack_bytes(backend)
    assert after < before * 0.7
    assert result.bytes_freed == before - after + result.bytes_written
    repo = _reopen(backend)
    assert _assert_snapshots_whole(repo) == 6
    # a second prune finds nothing to do
    plan2, result2 = _prune(_reopen(backend))
    assert result2.packs_deleted == 0 and not plan2.repack and not plan2.remove


def test_partly_used_pack_is_repacked() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend, pack_size=8 << 20)
    # Two sets of blobs in the same packs (one flush), referenced by two snapshots.
    rnd = random.Random(3)
    sets = [[rnd.randbytes(100_000) for _ in range(4)] for _ in range(2)]
    a, _ = snapshots_sharing_packs(repo, sets)
    assert len(list(backend.list(layout.DATA))) == 2  # one data pack, one tree pack
    backend.delete(layout.snapshot_name(a))
    plan, result = _prune(_reopen(backend))
    assert plan.repack, "the shared packs should be repacked"
    assert result.packs_written >= 1
    assert _assert_snapshots_whole(_reopen(backend)) == 4


def test_dry_run_changes_nothing() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    old, _ = populate(repo, seed=5)
    populate(repo, seed=6)
    backend.delete(layout.snapshot_name(old))
    names = sorted(o.name for o in backend.list(""))
    plan = plan_prune(_reopen(backend), PruneOptions(dry_run=True))
    assert plan.summary()["bytes_to_delete"] > 0
    assert sorted(o.name for o in backend.list("")) == names


def test_running_backup_defers_deletion_and_garbage_is_not_deduplicated() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    old, _ = populate(repo, n_files=3, seed=7)
    populate(repo, n_files=3, seed=8)
    backend.delete(layout.snapshot_name(old))
    before = _pack_bytes(backend)
    writer = locks.acquire(backend, repo.keys.index_key, exclusive=False, command="backup")
    try:
        plan, result = _prune(_reopen(backend))
        assert result.packs_deleted == 0 and result.deferred_packs > 0
        assert _pack_bytes(backend) >= before
        # a backup starting now must not lean on the marked packs
        fresh = _reopen(backend)
        doomed = next(iter(plan.remove))
        blob = plan.remove[doomed][0].blob_id
        assert not fresh.has_blob(blob)
        fresh.load_blob(plan.remove[doomed][0].type, blob)  # but it still reads
    finally:
        writer.release()
    _, result = _prune(_reopen(backend))
    assert result.packs_deleted > 0 and result.deferred_packs == 0
    assert _assert_snapshots_whole(_reopen(backend)) == 3


def test_marked_blob_needed_again_is_revived() -> None:
    """A snapshot written from an old index may refer to a marked pack: it comes back."""
    backend = MemoryBackend()
    repo = new_repo(backend)
    old, _ = populate(repo, n_files=3, seed=9)
    snapshot_file = backend.read(layout.snapshot_name(old))
    backend.delete(layout.snapshot_name(old))
    writer = locks.acquire(backend, repo.keys.index_key, exclusive=False, command="backup")
    try:
        _prune(_reopen(backend))  # marks everything, deletes nothing
    finally:
        writer.release()
    backend.write(layout.snapshot_name(old), snapshot_file)  # the slow backup lands
    plan, result = _prune(_reopen(backend))
    assert not plan.remove and result.packs_deleted == 0
    assert _assert_snapshots_whole(_reopen(backend)) == 3


def test_unindexed_packs_of_a_crashed_backup_are_removed() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    populate(repo, n_files=2, seed=10)
    crashed = _reopen(backend)
    crashed.save_blob(BlobType.DATA, os.urandom(200_000))
    crashed.wait()
    (fp,) = crashed.saver.writer.finish_open()  # the open data pack
    backend.write(layout.pack_name(fp.pack_id), fp.data)  # pack stored, index never written
    plan, result = _prune(_reopen(backend))
    assert fp.pack_id in plan.orphans
    assert result.packs_deleted >= 1
    assert not any(o.name.endswith(fp.pack_id.hex()) for o in backend.list(layout.DATA))


def test_index_written_after_the_plan_survives() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    populate(repo, n_files=2, seed=11)
    plan = plan_prune(_reopen(backend), PruneOptions())
    late_id, _ = populate(_reopen(backend), n_files=2, seed=12)  # a backup finishing meanwhile
    execute_prune(_reopen(backend), plan)
    repo = _reopen(backend)
    assert _assert_snapshots_whole(repo) == 4
    assert repo.find_snapshot(late_id.hex())[0] == late_id


def test_damaged_repository_is_refused() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    populate(repo, n_files=2, seed=13)
    for o in list(backend.list(layout.DATA)):
        backend.delete(o.name)
    with pytest.raises(PruneRefused):
        plan_prune(_reopen(backend), PruneOptions())


def _tree(root: Path, seed: int, files: int = 20) -> None:
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i}").write_bytes(rnd.randbytes(rnd.randrange(1000, 200_000)))


def test_forget_keep_last_prune_returns_space_via_cli(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init").code == 0
    for seed in (1, 2, 3):
        src = tmp_path / f"src{seed}"
        _tree(src, seed)
        assert run_cas("-r", repo, "backup", src).code == 0
    before = sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())
    snaps = run_cas("-r", repo, "--json", "snapshots").json()["snapshots"]
    # what `forget --keep-last 1` does (a file deleted behind cas's back would be a
    # hidden snapshot, spec §13.6)
    assert run_cas("-r", repo, "forget", *(s["id"] for s in snaps[:-1])).code == 0
    result = run_cas("-r", repo, "--json", "prune")
    assert result.code == 0, result.err
    after = sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())
    assert after < before / 2
    assert result.json()["result"]["bytes_freed"] >= before - after
    out = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "--target", out, "--verify").code == 0
    src3 = tmp_path / "src3"
    for f in src3.iterdir():
        assert (out / str(src3).lstrip("/") / f.name).read_bytes() == f.read_bytes()
    # Read by code written from the spec alone: one snapshot, whole, equal to src3.
    view = read_local(repo)
    assert [s.doc["paths"] for s in view.snapshots.values()] == [[bytes(src3)]]
    assert_snapshot_is(view, next(iter(view.snapshots)), src3)


def test_backup_and_prune_in_parallel_processes(tmp_path: Path) -> None:
    """Backups and prunes race as real processes; no snapshot ever loses a blob."""
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init").code == 0
    env = {
        **os.environ,
        "CAS_PASSWORD": "test-password",
        "CAS_REPOSITORY": str(repo),
        "CAS_TEST_WEAK_KDF": "1",
        "CAS_KDF_OPSLIMIT": "1",
        "CAS_KDF_MEMLIMIT": str(8 << 20),
    }
    for round_ in range(4):
        src = tmp_path / f"src{round_}"
        _tree(src, 100 + round_, files=30)
        backup = subprocess.Popen(
            [sys.executable, "-m", "cas", "backup", str(src)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.05 * round_)
        snaps = run_cas("-r", repo, "--json", "snapshots").json()["snapshots"]
        if snaps[:-1]:
            assert run_cas("-r", repo, "forget", *(s["id"] for s in snaps[:-1])).code == 0
        pruned = run_cas("-r", repo, "prune")
        _, err = backup.communicate(timeout=120)
        assert backup.returncode == 0, err
        assert pruned.code in (0, 11), pruned.err
        backend = LocalBackend(repo)
        assert _assert_snapshots_whole(open_repository(backend, PASSWORD)) > 0
    final = run_cas("-r", repo, "--json", "prune")
    assert final.code == 0, final.err
    assert _assert_snapshots_whole(open_repository(LocalBackend(repo), PASSWORD)) > 0
    # Read by code written from the spec alone: the last backup is whole and equals src3.
    view = read_local(repo)
    last = [s for s in view.snapshots.values() if s.doc["paths"] == [bytes(src)]]
    assert len(last) == 1
    assert_snapshot_is(view, last[0].id, src)


class _Killed(BaseException):
    """Stands for a kill at a fail point (nothing after it runs)."""


@pytest.mark.parametrize("kill_at", [0, 1])
def test_prune_writes_bounded_index_files_and_a_kill_among_them_leaves_a_whole_repository(
    monkeypatch: pytest.MonkeyPatch, kill_at: int
) -> None:
    """Prune's index files hold at most INDEX_FILE_BLOBS blobs (whole packs); all but
    the last supersede nothing and come first.  Killed after the ``kill_at``-th of
    them, the files it read are still in use: check finds nothing but packs listed
    twice (a warning, which prune remedies), every snapshot reads back, and the next
    prune finishes the job."""
    backend = MemoryBackend()
    repo = new_repo(backend)
    old, _ = populate(repo, n_files=6, seed=21)
    populate(repo, n_files=6, seed=22)
    backend.delete(layout.snapshot_name(old))
    monkeypatch.setattr(prune, "INDEX_FILE_BLOBS", 1)  # a file per pack
    parts = []

    def hit(name: str) -> None:
        if name == "prune-index-part":
            parts.append(name)
            if len(parts) == kill_at:
                raise _Killed

    monkeypatch.setattr(failpoints, "hit", hit)
    if kill_at:
        with pytest.raises(_Killed):
            _prune(_reopen(backend))
        # what the dead prune stored lists packs the files it read list too
        found = check(_reopen(backend)).findings
        assert found and {f.kind for f in found} == {"pack_indexed_twice"}, found
        assert _assert_snapshots_whole(_reopen(backend)) == 6
    _, result = _prune(_reopen(backend))
    assert result.packs_deleted > 0 and result.deferred_packs == 0
    assert check(_reopen(backend)).findings == []
    assert _assert_snapshots_whole(_reopen(backend)) == 6
    files = [_reopen(backend).read_index_file(f) for f in _reopen(backend).index_files()]
    assert len(files) >= 2, len(files)
    for f in files:
        sizes = [len(e) for e in f.packs.values()]
        assert len(sizes) <= 1, sizes
    assert [bool(f.supersedes) for f in files].count(True) == 1
