"""Repairs: rebuild the index from pack headers; rewrite snapshots around lost data."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cas.crypto import BlobType
from cas.errors import CasError
from cas.format import index as indexfmt
from cas.format.snapshot import Snapshot
from cas.format.tree import Node, decode_tree, encode_tree
from cas.ids import storage_id
from cas.repo import layout
from cas.repo.repository import Repository

Progress = Callable[[str], None]


@dataclass
class IndexRepair:
    """What ``rebuild_index`` found."""

    packs_indexed: int = 0
    blobs_indexed: int = 0
    unreadable_packs: list[str] = field(default_factory=list)  # "id: reason"
    index_files_replaced: int = 0


def rebuild_index(repo: Repository, progress: Progress = lambda _: None) -> IndexRepair:
    """Read every pack header and write one index file that supersedes all others.

    Packs whose header cannot be read are left out (their blobs are lost to
    the index; check reports them) but never deleted.  Index files written
    by others after the listing are kept, as in prune (spec §13.5).
    """
    out = IndexRepair()
    packs = [layout.id_from_name(o.name) for o in repo.backend.list(layout.DATA)]
    old = repo.index_files()
    idx = indexfmt.IndexFile(supersedes=old)
    for pid in sorted(p for p in packs if p):
        progress(f"reading header of pack {pid.hex()[:8]}")
        try:
            entries = repo.read_pack_header(pid)
        except CasError as e:
            out.unreadable_packs.append(f"{pid.hex()}: {e}")
            continue
        idx.packs[pid] = entries
        out.packs_indexed += 1
        out.blobs_indexed += len(entries)
    raw = indexfmt.encode_index(idx, repo.keys.index_key)
    repo.backend.write(layout.index_name(storage_id(raw)), raw)
    for fid in old:
        repo.backend.delete(layout.index_name(fid))
    out.index_files_replaced = len(old)
    return out


STUB_TEXT = b"cas: this file could not be recovered: %d of its %d chunks are lost\n"


@dataclass
class SnapshotRepair:
    """What ``repair_snapshots`` did."""

    snapshots_checked: int = 0
    snapshots_rewritten: dict[str, str] = field(default_factory=dict)  # old id -> new id
    damaged_paths: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)


class _Rewriter:
    def __init__(self, repo: Repository, report: SnapshotRepair) -> None:
        self.repo = repo
        self.report = report
        self.done: dict[bytes, bytes | None] = {}  # tree id -> rewritten id (None: unchanged)

    def tree(self, tree_id: bytes, path: bytes) -> bytes | None:
        """The ID of a repaired copy of the tree, or None when nothing needed repair."""
        if tree_id in self.done:
            return self.done[tree_id]
        try:
            nodes = decode_tree(self.repo.load_blob(BlobType.TREE, tree_id))
        except CasError:
            self.report.damaged_paths.append(f"{_text(path)}/ (directory contents lost)")
            new = self.repo.save_blob(BlobType.TREE, encode_tree([]))[0]
            self.done[tree_id] = new
            return new
        changed = False
        for n in nodes:
            child = path + b"/" + n.name
            if n.subtree is not None:
                sub = self.tree(n.subtree, child)
                if sub is not None:
                    n.subtree, changed = sub, True
            elif n.content and not all(self.repo.has_blob(b) for b in n.content):
                self._stub(n, child)
                changed = True
        result = self.repo.save_blob(BlobType.TREE, encode_tree(nodes))[0] if changed else None
        self.done[tree_id] = result
        return result

    def _stub(self, n: Node, path: bytes) -> None:
        lost = sum(not self.repo.has_blob(b) for b in n.content)
        text = STUB_TEXT % (lost, len(n.content))
        n.extra["repaired"] = f"{lost} of {len(n.content)} chunks lost; was {n.size} bytes"
        bid = self.repo.save_blob(BlobType.DATA, text)[0]
        digest = self.repo.file_digest()
        digest.update(text)
        n.content, n.sizes, n.size, n.digest = [bid], [len(text)], len(text), digest.digest()
        self.report.damaged_paths.append(_text(path))


def repair_snapshots(repo: Repository, *, forget: bool = False) -> SnapshotRepair:
    """Write a repaired copy of every snapshot that refers to lost data.

    Files with lost chunks become small stub files saying so (marked
    ``repaired`` in the tree); directories whose tree is lost become empty.
    The damaged snapshots are kept unless ``forget`` is true.
    """
    repo.load_index()
    report = SnapshotRepair()
    rewriter = _Rewriter(repo, report)
    for sid, snap in list(repo.iter_snapshots()):
        report.snapshots_checked += 1
        new_tree = rewriter.tree(snap.tree, b"")
        if new_tree is None:
            continue
        fixed = Snapshot(
            time_ns=snap.time_ns,
            tree=new_tree,
            paths=snap.paths,
            hostname=snap.hostname,
            username=snap.username,
            uid=snap.uid,
            gid=snap.gid,
            tags=sorted({*snap.tags, "repaired"}),
            parent=snap.parent,
            program=snap.program,
            summary=snap.summary,
            extra={**snap.extra, "repaired_from": sid, "repaired_at": time.time_ns()},
        )
        new_id = repo.save_snapshot(fixed)
        report.snapshots_rewritten[sid.hex()] = new_id.hex()
        if forget:
            repo.backend.delete(layout.snapshot_name(sid))
            report.forgotten.append(sid.hex())
    repo.flush()
    return report


def _text(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace") or "/"
