"""Prune's plan summary and its deletion rules, in process (cas/repo/prune.py).

Aimed at what mutation testing found unpinned (docs/reliability.md §8.3): the
numbers ``prune --dry-run`` promises, the 5-minute skew margin of spec §13.5,
whose locks hold deletion back, the ``max_unused`` edge, and why deletion
was deferred.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.format import pack as packfmt
from cas.format.index import IndexFile
from cas.format.pack import PackEntry
from cas.format.snapshot import Snapshot
from cas.format.tree import Node, encode_tree
from cas.repo import layout, locks, open_repository
from cas.repo.packer import Packer
from cas.repo.prune import (
    SKEW_MARGIN_NS,
    PruneOptions,
    PrunePlan,
    PruneRefused,
    PruneResult,
    _oldest_writer,
    _safe,
    execute_prune,
    plan_prune,
)
from tests.support.repos import PASSWORD, flip_byte, new_repo, snapshots_sharing_packs

MIB = 1 << 20
MINUTE = 60 * 10**9


def _id(n: int) -> bytes:
    return bytes([n]) * 32


def _entry(n: int, length: int) -> PackEntry:
    return PackEntry(_id(n), BlobType.DATA, 0, length, length)


def test_summary_counts_what_execution_will_delete_and_write() -> None:
    kept, repacked, removed, pending, orphan = (_id(n) for n in range(200, 205))
    plan = PrunePlan(
        used={_id(1), _id(2), _id(3)},
        keep={kept: [_entry(1, 50)]},
        repack={repacked: [_entry(2, 16 * MIB), _entry(3, 5), _entry(4, 7)]},
        remove={removed: [_entry(5, 9)]},
        pending={pending: (1, [_entry(6, 9)])},
        orphans={orphan: 7},
        missing=[_id(206)],
        index_files=[_id(207), _id(208)],
        pack_sizes={kept: 100, repacked: 1000, removed: 30, pending: 40, orphan: 7},
        holder={_id(1): kept, _id(2): repacked, _id(3): kept},  # blob 3 survives elsewhere
    )
    assert plan.summary() == {
        "snapshots_blobs_used": 3,
        "packs_kept": 1,
        "packs_to_repack": 1,
        "packs_to_remove": 1,
        "packs_pending_deletion": 1,
        "orphan_packs": 1,
        "missing_packs": 1,
        "bytes_to_repack": 1000,
        "bytes_repack_kept": 16 * MIB,
        "bytes_to_delete": 1000 + 30 + 40 + 7,  # an orphan's size counted once
        # one new pack of 16 MiB; the marking and the final index file
        "requests": {"GET": 1, "PUT": 1 + 2, "DELETE": 4 + 2 + 1, "LIST": 3},
    }
    plan.holder[_id(3)] = repacked  # one byte more than a new pack holds
    plan.repack[repacked][1] = _entry(3, 1)
    assert plan.summary()["requests"]["PUT"] == 2 + 2
    plan.holder.clear()  # nothing kept: no new pack
    assert plan.summary()["requests"]["PUT"] == 2
    assert plan.summary()["bytes_repack_kept"] == 0


def test_deletion_waits_five_minutes_of_clock_skew_past_the_mark() -> None:
    assert _safe(123, None)  # no writer at all
    assert not _safe(0, 0)
    assert not _safe(0, SKEW_MARGIN_NS)  # started exactly at the margin: not after it
    assert _safe(0, SKEW_MARGIN_NS + 1)
    assert not _safe(10 * MINUTE, 14 * MINUTE + 59 * 10**9)
    assert _safe(10 * MINUTE, 15 * MINUTE + 1)


@pytest.mark.damaged_repo_ok(
    "writes a lock file that does not open (it might be a writer's: prune deletes nothing)"
)
def test_only_live_locks_of_other_writers_and_readers_hold_deletion_back(tmp_path: Path) -> None:
    # A directory, not memory: names listed are other string objects than those written.
    backend = LocalBackend(tmp_path / "repo")
    repo = new_repo(backend)
    key = repo.keys.index_key
    assert _oldest_writer(repo, None) is None
    mount = locks.acquire(backend, key, exclusive=False, command="mount")
    assert _oldest_writer(repo, None) is None  # a mount may last for days
    first = locks.acquire(backend, key, exclusive=False, command="backup")
    second = locks.acquire(backend, key, exclusive=False, command="restore")
    try:
        assert _oldest_writer(repo, None) == first.info.started_ns
        assert _oldest_writer(repo, first) == second.info.started_ns  # one's own lock
        dead = locks.acquire(
            backend,
            key,
            exclusive=False,
            command="backup",
            clock=lambda: 1,
            pid_alive=lambda _: True,
        )  # written long ago and never refreshed: stale
        assert _oldest_writer(repo, first) == second.info.started_ns
        backend.write(f"{layout.LOCKS}/{os.urandom(32).hex()}", b"not a lock")
        assert _oldest_writer(repo, first) == 0  # might be a writer's: delete nothing
        dead.release()
    finally:
        for lock in (mount, first, second):
            lock.release()


def _two_snapshots_in_shared_packs(backend: MemoryBackend) -> bytes:
    """Two snapshots (1 and 3 files) whose blobs share packs; returns the first."""
    repo = new_repo(backend, pack_size=8 << 20)
    sets = [[os.urandom(20_000 + i) for i in range(files)] for files in (1, 3)]
    return snapshots_sharing_packs(repo, sets)[0]


def test_a_pack_exactly_max_unused_empty_is_kept_and_one_beyond_is_repacked() -> None:
    backend = MemoryBackend()
    first = _two_snapshots_in_shared_packs(backend)
    backend.delete(layout.snapshot_name(first))
    repo = open_repository(backend, PASSWORD)
    plan = plan_prune(repo, PruneOptions(max_unused=0))
    fractions = {
        pid: sum(e.length for e in es if plan.holder.get(e.blob_id) != pid)
        / sum(e.length for e in es)
        for pid, es in plan.repack.items()
    }
    assert fractions and all(0 < f < 1 for f in fractions.values())
    pid, unused = max(fractions.items(), key=lambda kv: kv[1])
    assert pid in plan_prune(repo, PruneOptions(max_unused=unused)).keep
    assert pid in plan_prune(repo, PruneOptions(max_unused=unused * 0.999)).repack


def _prune_now(backend: MemoryBackend) -> PruneResult:
    repo = open_repository(backend, PASSWORD)
    return execute_prune(repo, plan_prune(repo, PruneOptions()))


def test_a_snapshot_stored_while_planning_defers_this_runs_marks_and_says_so() -> None:
    backend = MemoryBackend()
    first = _two_snapshots_in_shared_packs(backend)
    backend.delete(layout.snapshot_name(first))
    plan = plan_prune(open_repository(backend, PASSWORD), PruneOptions(max_unused=0))
    assert plan.repack
    late = open_repository(backend, PASSWORD)
    tree, _ = late.save_blob(BlobType.TREE, encode_tree([]))
    late.save_snapshot(Snapshot(3, tree, [b"/late"], "h", "u"))
    before = {o.name for o in backend.list(layout.DATA)}
    result = execute_prune(open_repository(backend, PASSWORD), plan)
    new = [o.size for o in backend.list(layout.DATA) if o.name not in before]
    assert (result.packs_written, result.bytes_written) == (len(new), sum(new)) and new
    assert result.packs_deleted == 0 and result.deferred_packs == len(plan.repack)
    assert result.deferred_because.startswith("a snapshot was stored while prune was planning")
    assert result.deferred_bytes == sum(plan.pack_sizes[p] for p in plan.repack)

    writer = locks.acquire(backend, late.keys.index_key, exclusive=False, command="backup")
    try:
        result = _prune_now(backend)
    finally:
        writer.release()
    assert result.packs_deleted == 0 and result.deferred_packs > 0
    assert result.deferred_because.startswith("a backup that started before the packs")
    result = _prune_now(backend)
    assert result.packs_deleted > 0 and (result.deferred_packs, result.deferred_because) == (0, "")


def test_an_unindexed_pack_beside_a_running_backup_is_deferred_and_counted() -> None:
    backend = MemoryBackend()
    first = _two_snapshots_in_shared_packs(backend)
    backend.delete(layout.snapshot_name(first))
    crashed = open_repository(backend, PASSWORD)
    crashed.save_blob(BlobType.DATA, os.urandom(5000))
    crashed.wait()
    (orphan,) = crashed.saver.writer.finish_open()  # stored, never indexed
    backend.write(layout.pack_name(orphan.pack_id), orphan.data)
    writer = locks.acquire(backend, crashed.keys.index_key, exclusive=False, command="backup")
    try:
        repo = open_repository(backend, PASSWORD)
        plan = plan_prune(repo, PruneOptions(max_unused=0))
        result = execute_prune(repo, plan)
    finally:
        writer.release()
    assert list(plan.orphans) == [orphan.pack_id] and plan.repack
    assert result.packs_deleted == 0
    assert result.deferred_packs == len(plan.repack) + 1
    assert result.deferred_bytes == sum(plan.pack_sizes[p] for p in plan.repack) + len(orphan.data)
    result = _prune_now(backend)  # the backup is gone: both kinds go
    assert result.packs_deleted == len(plan.repack) + 1 and result.deferred_packs == 0


def test_unindexed_packs_named_by_index_files_written_since_the_plan_stay() -> None:
    """Backups that stored their pack before the plan's listing and its index file after
    it: each pack was an orphan to the plan, but is not deleted.  Each is named by its
    own file, so a run that skipped some of those files (one comparing a file ID with
    the marking file's by order, not equality) deletes a pack, unless all 40 IDs sort
    on the side it reads (1 in 41)."""
    backend = MemoryBackend()
    first = _two_snapshots_in_shared_packs(backend)
    backend.delete(layout.snapshot_name(first))
    late = open_repository(backend, PASSWORD)
    packs = []
    for _ in range(40):
        packer = Packer(late.keys, BlobType.DATA, late.config.version)
        data = os.urandom(100)
        bid = late.blob_id(BlobType.DATA, data)
        packer.add(bid, packfmt.seal_blob(late.keys, BlobType.DATA, bid, data), len(data))
        packs.append(packer.finish())
        backend.write(layout.pack_name(packs[-1].pack_id), packs[-1].data)
    repo = open_repository(backend, PASSWORD)
    plan = plan_prune(repo, PruneOptions())
    assert set(plan.orphans) == {p.pack_id for p in packs}
    for p in packs:  # the backups' index files, written after the plan
        late.write_index_file(IndexFile({p.pack_id: p.entries}))
    result = execute_prune(repo, plan)
    assert result.packs_deleted > 0
    stored = {layout.id_from_name(o.name) for o in backend.list(layout.DATA)}
    assert {p.pack_id for p in packs} <= stored
    # They are in use, not held back: nothing is reported as left for a later prune
    # (which would blame a backup still running, and there is none).
    assert (result.deferred_packs, result.deferred_bytes, result.deferred_because) == (0, 0, "")


def test_refusals_name_the_damaged_index_file_and_count_one_lost_blob() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    data = os.urandom(1000)
    bid, _ = repo.save_blob(BlobType.DATA, data)
    node = Node(name=b"f", type="file", size=len(data), content=[bid], sizes=[len(data)])
    tree, _ = repo.save_blob(BlobType.TREE, encode_tree([node]))
    repo.save_snapshot(Snapshot(1, tree, [b"/a"], "h", "u"))
    backend.delete(layout.pack_name(repo.locate(bid).pack_id))  # the one data blob
    with pytest.raises(PruneRefused, match="1 blob that snapshots need is in no existing pack"):
        plan_prune(open_repository(backend, PASSWORD), PruneOptions())
    snap = layout.snapshot_name(open_repository(backend, PASSWORD).snapshot_ids()[0])
    saved = flip_byte(backend, snap, 30)
    with pytest.raises(PruneRefused, match=f"snapshot {snap[-64:][:8]} cannot be read"):
        plan_prune(open_repository(backend, PASSWORD), PruneOptions())
    backend.delete(snap)
    saved = bytearray(saved)
    saved[30] ^= 0xFF
    backend.write(snap, bytes(saved))
    [fid] = open_repository(backend, PASSWORD).index_files()
    flip_byte(backend, layout.index_name(fid), 40)
    with pytest.raises(PruneRefused, match=f"index file {fid.hex()[:8]} cannot be read"):
        plan_prune(open_repository(backend, PASSWORD), PruneOptions())
