"""Prune: give back the space of data no snapshot needs, safely beside running backups.

Two phases (spec §13.5).  ``plan_prune`` reads the repository and decides,
without writing anything, which packs to keep, to repack (partly used) and
to remove.  ``execute_prune`` then copies the still-needed blobs of repacked
packs into new packs, writes index files of bounded size, the last of which
supersedes every index file it read and lists the packs to remove as
*garbage* with a mark time, and deletes the superseded index files.  Garbage packs no longer serve
deduplication, so no backup that starts afterwards can come to depend on
them.  A garbage pack is deleted only when every live lock of a process that
may write snapshots started after its mark (plus a margin for clock skew):
no snapshot still being written can refer to it.  Without concurrent
writers, both phases happen in one run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cas import failpoints
from cas.errors import (
    CasError,
    FormatError,
    IntegrityError,
    ObjectNotFound,
    UnsupportedVersion,
)
from cas.format import index as indexfmt
from cas.format import pack as packfmt
from cas.progress import Progress, no_progress
from cas.repo import leftovers, locks
from cas.repo.packer import FinishedPack
from cas.repo.packwriter import INDEX_EVERY_BLOBS
from cas.repo.repository import Repository
from cas.walker import used_blobs as reachable
from cas.wording import counted

# Commands whose lock holds back deletion: those that may write a snapshot
# referring to blobs they saw, and finite readers (a check or restore must
# not find packs vanishing under it).  A mount, which may last for days, does not.
BLOCKING_COMMANDS = frozenset(
    {"backup", "copy", "tag", "repair", "forget", "check", "restore", "copy-source"}
)
# Clock skew tolerated between the host that marks garbage and hosts that back up.
SKEW_MARGIN_NS = 5 * 60 * 10**9
# Blobs per index file prune writes (as a backup writes them, spec §14.1 rule 3).
INDEX_FILE_BLOBS = INDEX_EVERY_BLOBS


class PruneRefused(CasError):
    """prune refused: {detail}"""


@dataclass
class PruneOptions:
    """How aggressive prune may be."""

    max_unused: float = 0.05  # repack packs with more than this fraction unused
    dry_run: bool = False


@dataclass
class PrunePlan:
    """What prune will do; everything execute needs, nothing it has done."""

    used: set[bytes]
    keep: dict[bytes, list[packfmt.PackEntry]] = field(default_factory=dict)
    repack: dict[bytes, list[packfmt.PackEntry]] = field(default_factory=dict)
    remove: dict[bytes, list[packfmt.PackEntry]] = field(default_factory=dict)
    pending: dict[bytes, tuple[int, list[packfmt.PackEntry]]] = field(default_factory=dict)
    orphans: dict[bytes, int] = field(default_factory=dict)  # pack id -> size
    missing: list[bytes] = field(default_factory=list)  # indexed packs whose file is gone
    index_files: list[bytes] = field(default_factory=list)
    pack_sizes: dict[bytes, int] = field(default_factory=dict)
    holder: dict[bytes, bytes] = field(default_factory=dict)  # used blob -> pack keeping it
    listed_at: int = 0
    snapshots: set[bytes] = field(default_factory=set)  # the snapshots the plan walked

    def summary(self) -> dict[str, Any]:
        """Counts, bytes and the storage requests execution will make."""

        def size(ids: Iterable[bytes]) -> int:
            return sum(self.pack_sizes.get(p, 0) for p in ids)

        repack_used = sum(
            e.length for p, es in self.repack.items() for e in es if self.holder.get(e.blob_id) == p
        )
        delete_ids = [*self.remove, *self.repack, *self.pending, *self.orphans]
        new_packs = -(-repack_used // (16 << 20)) if repack_used else 0
        return {
            "snapshots_blobs_used": len(self.used),
            "packs_kept": len(self.keep),
            "packs_to_repack": len(self.repack),
            "packs_to_remove": len(self.remove),
            "packs_pending_deletion": len(self.pending),
            "orphan_packs": len(self.orphans),
            "missing_packs": len(self.missing),
            "bytes_to_repack": size(self.repack),
            "bytes_repack_kept": repack_used,
            "bytes_to_delete": size(delete_ids),  # orphans' sizes are in pack_sizes too
            "requests": {
                "GET": len(self.repack),
                "PUT": new_packs + 2,
                "DELETE": len(delete_ids) + len(self.index_files) + 1,
                "LIST": 3,
            },
        }


def used_blobs(
    repo: Repository,
    progress: Progress = no_progress,
    snapshot_ids: Iterable[bytes] | None = None,
) -> set[bytes]:
    """Every tree and data blob the snapshots (all, or ``snapshot_ids``) refer to;
    refuses when a tree cannot be read."""
    used: set[bytes] = set()
    ids = sorted(repo.snapshot_ids() if snapshot_ids is None else snapshot_ids)
    for n, sid in enumerate(ids):
        try:
            snap = repo.load_snapshot(sid)
        except ObjectNotFound:
            continue  # forgotten since the listing
        except (IntegrityError, FormatError, UnsupportedVersion) as e:
            raise PruneRefused(
                f"snapshot {sid.hex()[:8]} cannot be read ({e}); 'cas forget {sid.hex()[:8]}' "
                "removes it: prune never deletes data while a snapshot might still need it"
            ) from None
        progress("reading the trees of snapshots", n, len(ids))
        try:
            reachable(repo, [snap.tree], used=used)
        except CasError as e:
            raise PruneRefused(
                f"snapshot {sid.hex()[:8]} cannot be read ({e}); run 'cas check' and "
                "'cas repair' first: prune never deletes data from a damaged repository"
            ) from None
    return used


def _index_file(repo: Repository, file_id: bytes) -> indexfmt.IndexFile:
    """An index file prune will supersede; a damaged one refuses the prune (it would drop
    what only that file knows) and names the repair."""
    try:
        return repo.read_index_file(file_id)
    except (IntegrityError, FormatError, UnsupportedVersion) as e:
        raise PruneRefused(
            f"index file {file_id.hex()[:8]} cannot be read ({e}); 'cas repair index' "
            "replaces it: prune never deletes data from a damaged repository"
        ) from None


def plan_prune(
    repo: Repository, options: PruneOptions, progress: Progress = no_progress
) -> PrunePlan:
    """Decide what to keep, repack and remove.  Reads only.

    Snapshots are listed first, then the index is read: a snapshot is stored
    only after the index files it needs (spec §14.1), so every snapshot of the
    listing can be walked even while backups finish beside the prune.
    """
    snapshot_ids = set(repo.snapshot_ids())
    repo.load_index()
    # Packs are listed before index files, so that a pack no index of this
    # listing names is an orphan (deleted only on the conditions of spec §13.5).
    listed_at = time.time_ns()
    pack_sizes = repo.pack_sizes()
    failpoints.hit("prune-listed-packs")
    # Supersede exactly the index files read here: one written by a backup
    # after this listing must survive, since this prune never saw its packs.
    index_ids = repo.index_files()
    decoded = {fid: _index_file(repo, fid) for fid in index_ids}
    superseded = {s for f in decoded.values() for s in f.supersedes}
    files = {fid: f for fid, f in decoded.items() if fid not in superseded}
    used = used_blobs(repo, progress, snapshot_ids)
    plan = PrunePlan(used, index_files=index_ids, pack_sizes=pack_sizes, listed_at=listed_at)
    plan.snapshots = snapshot_ids

    live: dict[bytes, list[packfmt.PackEntry]] = {}
    garbage: dict[bytes, tuple[int, list[packfmt.PackEntry]]] = {}
    for f in files.values():
        for pid, (marked, entries) in f.garbage.items():
            garbage[pid] = (min(marked, garbage.get(pid, (marked, []))[0]), entries)
    for f in files.values():
        for pid, entries in f.packs.items():
            if pid not in garbage:
                live.setdefault(pid, entries)
    # A pack stored by a backup after the pack listing, in an index file stored
    # before the index listing, is not in the pack listing but exists: it must
    # stay in the index (the file naming it is superseded below).
    for pid in live:
        if pid not in pack_sizes:
            with contextlib.suppress(ObjectNotFound):
                pack_sizes[pid] = repo.pack_size(pid)

    # Which copy of each used blob survives: the first in a live pack whose file exists.
    holder: dict[bytes, bytes] = {}
    for pid, entries in live.items():
        if pid not in pack_sizes:
            plan.missing.append(pid)
            continue
        for e in entries:
            if e.blob_id in used:
                holder.setdefault(e.blob_id, pid)
    # A used blob found only in garbage brings its pack back.
    revived: set[bytes] = set()
    for pid, (_, entries) in garbage.items():
        if pid in pack_sizes:
            for e in entries:
                if e.blob_id in used and e.blob_id not in holder:
                    holder[e.blob_id] = pid
                    revived.add(pid)
    lost = used - holder.keys()
    if lost:
        raise PruneRefused(
            f"{counted(len(lost), 'blob')} that snapshots need "
            f"{'is' if len(lost) == 1 else 'are'} in no existing pack; run "
            "'cas check' and 'cas repair index' first"
        )

    for pid, entries in [*live.items(), *((p, garbage[p][1]) for p in revived)]:
        if pid not in pack_sizes:
            continue
        size = sum(e.length for e in entries) or 1
        needed = sum(e.length for e in entries if holder.get(e.blob_id) == pid)
        if needed == 0:
            plan.remove[pid] = entries
        elif (size - needed) / size > options.max_unused:
            plan.repack[pid] = entries
        else:
            plan.keep[pid] = entries
    for pid, (marked, entries) in garbage.items():
        if pid not in revived and pid in pack_sizes:
            plan.pending[pid] = (marked, entries)
    known = set(live) | set(garbage)
    plan.orphans = {p: s for p, s in pack_sizes.items() if p not in known}
    plan.holder = holder
    return plan


@dataclass
class PruneResult:
    """What execution did."""

    packs_written: int = 0
    bytes_written: int = 0
    packs_deleted: int = 0
    bytes_freed: int = 0
    deferred_packs: int = 0
    deferred_bytes: int = 0
    deferred_because: str = ""
    leftovers_aborted: int = 0  # unfinished uploads (S3 multipart, temporary files) removed


def execute_prune(
    repo: Repository,
    plan: PrunePlan,
    lock: locks.RepoLock | None = None,
    progress: Progress = no_progress,
    salvage: Salvager | None = None,
) -> PruneResult:
    """Carry out ``plan``: repack (salvaging packs with ``salvage``, by default in this
    process), write the marking index, delete what is safe to delete."""
    result = PruneResult()
    now = time.time_ns()
    new_packs = _repack(repo, plan, lock, result, progress, salvage)
    failpoints.hit("prune-repacked")
    garbage = dict(plan.pending)
    for pid, entries in [*plan.remove.items(), *plan.repack.items()]:
        garbage[pid] = (now, entries)
    # The live packs go into index files of at most INDEX_FILE_BLOBS blobs each (so
    # that no load holds one huge file's columns); all but the last supersede
    # nothing and are stored first: killed among them, the files read stay in use
    # and the new ones only list packs that exist (spec §13.5 step 3).
    *parts, last = _bounded({**plan.keep, **new_packs}, INDEX_FILE_BLOBS)
    own = []
    for part in parts:
        own.append(repo.write_index_file(indexfmt.IndexFile(part)))
        failpoints.hit("prune-index-part")
    marking = indexfmt.IndexFile(last, list(plan.index_files), garbage)
    mark_id = repo.write_index_file(marking)
    own.append(mark_id)
    failpoints.hit("prune-marked")
    repo.retire_index_files(list(plan.index_files), "prune")
    for fid in plan.index_files:
        repo.delete_index_file(fid)
        failpoints.hit("prune-index-deleted")
    if lock is not None:
        lock.check_alive()

    oldest = _oldest_writer(repo, lock)
    # A writer that ended after the plan listed the snapshots (its lock is gone)
    # may have stored a snapshot that needs packs marked now: after the lock scan,
    # every such snapshot is stored, so new ones hold back this run's marks.
    late = set(repo.snapshot_ids()) - plan.snapshots
    deletable = [
        p
        for p, (marked, _) in garbage.items()
        if _safe(marked, oldest) and not (late and marked == now)
    ]
    if _safe(plan.listed_at, oldest):
        # Orphans an index written since the plan names are in use (a backup that
        # finished meanwhile stored them): neither deleted nor held back.
        orphans = _orphans_still_unindexed(repo, plan, own)
        held_orphans: dict[bytes, int] = {}
    else:
        orphans, held_orphans = [], plan.orphans
    doomed = [*deletable, *orphans]
    for n, pid in enumerate(doomed):
        progress("deleting packs", n, len(doomed))
        repo.delete_pack(pid)
        failpoints.hit("prune-pack-deleted")
        result.packs_deleted += 1
        result.bytes_freed += plan.pack_sizes.get(pid, 0)
    left = {p: g for p, g in garbage.items() if p not in set(deletable)}
    if deletable:
        final = indexfmt.IndexFile(marking.packs, [mark_id], left)
        failpoints.hit("prune-before-final-index")
        repo.write_index_file(final)
        repo.delete_index_file(mark_id)
    result.deferred_packs = len(left) + len(held_orphans)
    result.deferred_bytes = sum(plan.pack_sizes.get(p, 0) for p in left) + sum(
        held_orphans.values()
    )
    if result.deferred_packs and late and oldest is None:
        result.deferred_because = (
            "a snapshot was stored while prune was planning; "
            "the next prune deletes them unless that snapshot needs them"
        )
    elif result.deferred_packs:
        result.deferred_because = (
            "a backup that started before the packs were marked is still running "
            "(or left a lock file it could not delete, live for up to 10 minutes); "
            "the next prune after it finishes deletes them"
        )
    result.leftovers_aborted = _remove_leftovers(repo, progress)
    return result


def _remove_leftovers(repo: Repository, progress: Progress) -> int:
    """Abort uploads that were started over an hour ago and never finished."""
    progress("removing leftover uploads")
    return leftovers.remove_leftovers(repo.backend)


def _bounded(
    packs: dict[bytes, list[packfmt.PackEntry]], most: int
) -> list[dict[bytes, list[packfmt.PackEntry]]]:
    """``packs`` in order, cut into whole packs of at most ``most`` blobs (a pack with
    more on its own); at least one part, the last possibly empty."""
    parts: list[dict[bytes, list[packfmt.PackEntry]]] = [{}]
    count = 0
    for pid, entries in packs.items():
        if count + len(entries) > most and parts[-1]:
            parts.append({})
            count = 0
        parts[-1][pid] = entries
        count += len(entries)
    return parts


def _orphans_still_unindexed(repo: Repository, plan: PrunePlan, own: list[bytes]) -> list[bytes]:
    """Orphans minus packs named by index files written since the plan (finished backups),
    other than this prune's own (``own``)."""
    orphans = set(plan.orphans)
    for fid in repo.index_files():
        if fid in plan.index_files or fid in own:
            continue
        f = repo.read_index_file(fid)
        orphans.difference_update(f.packs)
        orphans.difference_update(f.garbage)
    return sorted(orphans)


def _safe(marked_ns: int, oldest_writer_ns: int | None) -> bool:
    return oldest_writer_ns is None or marked_ns + SKEW_MARGIN_NS < oldest_writer_ns


def _oldest_writer(repo: Repository, lock: locks.RepoLock | None) -> int | None:
    """Start time of the oldest live lock of another process that may write snapshots."""
    scan = repo.scan_locks()
    mine = lock.name if lock is not None else None
    starts = [
        e.info.started_ns
        for e in scan.entries
        if not e.stale and e.name != mine and e.info.command in BLOCKING_COMMANDS
    ]
    if scan.unreadable:
        return 0  # a lock we cannot read might be a writer's: delete nothing
    return min(starts) if starts else None


# Salvages packs for the repack: for each (pack ID, blob IDs to keep), in order, the
# kept blobs' sealed bytes and their entries in them (Repository.salvage, or the same
# in helper processes: cas/check/verifier.py).
Salvager = Callable[
    [list[tuple[bytes, set[bytes]]]], Iterator[tuple[bytes, tuple[bytes, list[packfmt.PackEntry]]]]
]


def salvage_here(repo: Repository) -> Salvager:
    """Salvage in this process, one pack after the other."""

    def salvage(
        jobs: list[tuple[bytes, set[bytes]]],
    ) -> Iterator[tuple[bytes, tuple[bytes, list[packfmt.PackEntry]]]]:
        for pid, keep in jobs:
            yield pid, repo.salvage(pid, keep)

    return salvage


def _repack(
    repo: Repository,
    plan: PrunePlan,
    lock: locks.RepoLock | None,
    result: PruneResult,
    progress: Progress,
    salvage: Salvager | None,
) -> dict[bytes, list[packfmt.PackEntry]]:
    """Copy the surviving sealed blobs of partly used packs into new packs (no
    re-encryption; each blob proven before it moves: Repository.salvage)."""
    new_packs: dict[bytes, list[packfmt.PackEntry]] = {}

    def stored(fp: FinishedPack) -> None:
        new_packs[fp.pack_id] = fp.entries
        result.packs_written += 1
        result.bytes_written += fp.size

    writer = repo.pack_writer(stored)
    jobs = [
        (pid, {e.blob_id for e in entries if plan.holder.get(e.blob_id) == pid})
        for pid, entries in plan.repack.items()
    ]
    for n, (_, (body, entries)) in enumerate((salvage or salvage_here(repo))(jobs)):
        progress("repacking packs", n + 1, len(jobs))
        view = memoryview(body)
        for e in entries:
            full = writer.add(e.type, e.blob_id, view[e.offset : e.offset + e.length], e.raw_length)
            if full is not None:
                writer.store(full.finish())
        if lock is not None:
            lock.check_alive()
    for fp in writer.finish_open():
        writer.store(fp)
    return new_packs
