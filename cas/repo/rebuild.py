"""Repairs that rewrite the index: rebuild it from pack headers (``cas repair index``) and
salvage damaged packs (``cas repair packs``)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from cas.errors import CasError, ObjectNotFound
from cas.format import index as indexfmt
from cas.format import pack as packfmt
from cas.progress import Progress, no_progress
from cas.repo.packer import FinishedPack
from cas.repo.repository import Repository


@dataclass
class IndexRepair:
    """What ``rebuild_index`` found."""

    packs_indexed: int = 0
    blobs_indexed: int = 0
    unreadable_packs: list[str] = field(default_factory=list)  # "id: reason"
    index_files_replaced: int = 0


def rebuild_index(
    repo: Repository, progress: Progress = no_progress, leave_out: Collection[bytes] = ()
) -> IndexRepair:
    """Read every pack header and write one index file that supersedes all others.

    Packs whose header cannot be read are left out (their blobs are lost to
    the index; check reports them) but never deleted; so are ``leave_out``.
    Index files written by others after the listing are kept, as in prune
    (spec §13.5).
    """
    out = IndexRepair()
    packs = repo.pack_sizes()
    old = repo.index_files()
    idx = indexfmt.IndexFile(supersedes=old)
    for pid in sorted(set(packs) - set(leave_out)):
        progress(f"reading header of pack {pid.hex()[:8]}")
        try:
            entries = repo.read_pack_header(pid)
        except CasError as e:
            out.unreadable_packs.append(f"{pid.hex()}: {e}")
            continue
        idx.packs[pid] = entries
        out.packs_indexed += 1
        out.blobs_indexed += len(entries)
    repo.write_index_file(idx)
    repo.retire_index_files(list(old), "repair index")
    for fid in old:
        repo.delete_index_file(fid)
    out.index_files_replaced = len(old)
    return out


@dataclass
class PackSalvage:
    """What ``salvage_packs`` did."""

    packs: list[str] = field(default_factory=list)  # the damaged packs, now removed
    blobs_salvaged: int = 0
    blobs_lost: list[str] = field(default_factory=list)  # "type:id"
    # Damaged here, but another pack the index keeps holds a copy: not lost.
    blobs_elsewhere: list[str] = field(default_factory=list)  # "type:id"
    packs_written: int = 0
    bytes_written: int = 0
    index: IndexRepair = field(default_factory=IndexRepair)


def salvage_packs(
    repo: Repository, pack_ids: Collection[bytes], progress: Progress = no_progress
) -> PackSalvage:
    """Copy every blob of the damaged packs that still opens into new packs, then drop
    the damaged packs (``cas repair packs``, as restic's ``repair packs``).

    The order keeps a crash harmless: the new packs are stored first (until
    indexed they are orphans prune removes), then one index file that
    supersedes all others and leaves the damaged packs out, and only then
    are the damaged packs deleted.  The blobs lost stay lost to the index, so
    the next backup stores again what the source still has, and
    ``repair snapshots`` stubs the files no source can give back.
    """
    out = PackSalvage(packs=[p.hex() for p in sorted(pack_ids)])
    files = repo.active_index_files()

    def stored(fp: FinishedPack) -> None:
        out.packs_written += 1
        out.bytes_written += fp.size

    writer = repo.pack_writer(stored)
    elsewhere = {
        e.blob_id
        for f in files.values()
        for pid, pack_entries in f.packs.items()
        if pid not in pack_ids
        for e in pack_entries
    }
    for pid in sorted(pack_ids):
        progress(f"salvaging pack {pid.hex()[:8]}")
        entries = {e.blob_id: e for f in files.values() for e in f.packs.get(pid, [])}
        try:
            data = repo.read_pack_range(pid, 0, repo.pack_size(pid))
        except ObjectNotFound:
            data = b""
        if not entries and data:
            try:  # a pack no index names: its own header says what it held
                entries = {e.blob_id: e for e in packfmt.parse_pack(repo.keys, data)}
            except CasError:
                entries = {}
        for e in entries.values():
            sealed = data[e.offset : e.offset + e.length]
            try:
                # Never copy damage forward: the blob must open before it moves.
                repo.open_blob(e.type, e.blob_id, sealed, e.raw_length)
            except CasError:
                name = f"{e.type.name.lower()}:{e.blob_id.hex()}"
                (out.blobs_elsewhere if e.blob_id in elsewhere else out.blobs_lost).append(name)
                continue
            full = writer.add(e.type, e.blob_id, sealed, e.raw_length)
            if full is not None:
                writer.store(full.finish())
            out.blobs_salvaged += 1
    for fp in writer.finish_open():
        writer.store(fp)
    out.index = rebuild_index(repo, progress, leave_out=pack_ids)
    for pid in sorted(pack_ids):
        progress(f"deleting pack {pid.hex()[:8]}")
        repo.delete_pack(pid)
    return out
