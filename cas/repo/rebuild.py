"""Rebuild the index from pack headers (``cas repair index``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cas.errors import CasError
from cas.format import index as indexfmt
from cas.progress import Progress, no_progress
from cas.repo.repository import Repository


@dataclass
class IndexRepair:
    """What ``rebuild_index`` found."""

    packs_indexed: int = 0
    blobs_indexed: int = 0
    unreadable_packs: list[str] = field(default_factory=list)  # "id: reason"
    index_files_replaced: int = 0


def rebuild_index(repo: Repository, progress: Progress = no_progress) -> IndexRepair:
    """Read every pack header and write one index file that supersedes all others.

    Packs whose header cannot be read are left out (their blobs are lost to
    the index; check reports them) but never deleted.  Index files written
    by others after the listing are kept, as in prune (spec §13.5).
    """
    out = IndexRepair()
    packs = repo.pack_sizes()
    old = repo.index_files()
    idx = indexfmt.IndexFile(supersedes=old)
    for pid in sorted(packs):
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
    for fid in old:
        repo.delete_index_file(fid)
    out.index_files_replaced = len(old)
    return out
