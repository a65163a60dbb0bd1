"""Repairs: rebuild the index from pack headers; rewrite snapshots around lost data."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cas.crypto import BlobType
from cas.errors import CasError, FormatError
from cas.format.snapshot import Snapshot
from cas.format.tree import Node, decode_tree_docs, encode_tree
from cas.repo import Repository
from cas.wording import counted

STUB_TEXT = b"cas: this file could not be recovered: %d of its %d chunks are lost\n"


@dataclass
class SnapshotRepair:
    """What ``repair_snapshots`` did."""

    snapshots_checked: int = 0
    snapshots_rewritten: dict[str, str] = field(default_factory=dict)  # old id -> new id
    damaged_paths: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    removed_damaged: list[str] = field(default_factory=list)  # unreadable snapshot files
    dry_run: bool = False


class _Rewriter:
    # Not a walker walk: trees are rebuilt bottom up, each by the path that first reaches it.
    def __init__(self, repo: Repository, report: SnapshotRepair) -> None:
        self.repo = repo
        self.report = report
        self.done: dict[bytes, bytes | None] = {}  # tree id -> rewritten id (None: unchanged)

    def _save(self, blob_type: BlobType, data: bytes) -> bytes:
        """Store a new blob; in a dry run only name it."""
        if self.report.dry_run:
            return self.repo.blob_id(blob_type, data)
        return self.repo.save_blob(blob_type, data)[0]

    def tree(self, tree_id: bytes, path: bytes) -> bytes | None:
        """The ID of a repaired copy of the tree, or None when nothing needed repair."""
        if tree_id in self.done:
            return self.done[tree_id]
        try:
            docs = decode_tree_docs(self.repo.load_blob(BlobType.TREE, tree_id))
        except CasError:
            self.report.damaged_paths.append(f"{_text(path)}/ (directory contents lost)")
            new = self._save(BlobType.TREE, encode_tree([]))
            self.done[tree_id] = new
            return new
        nodes, changed = [], False
        for doc in docs:
            try:
                nodes.append(Node.from_doc(doc))
            except FormatError as e:  # an entry breaking spec §11.3 is dropped, not the rest
                why = e.fields["detail"]
                self.report.damaged_paths.append(f"{_text(path + b'/' + doc['name'])} ({why})")
                changed = True
        for n in nodes:
            child = path + b"/" + n.name
            if n.subtree is not None:
                sub = self.tree(n.subtree, child)
                if sub is not None:
                    n.subtree, changed = sub, True
            elif n.content and not all(self.repo.has_blob(b) for b in n.content):
                self._stub(n, child)
                changed = True
        result = self._save(BlobType.TREE, encode_tree(nodes)) if changed else None
        self.done[tree_id] = result
        return result

    def _stub(self, n: Node, path: bytes) -> None:
        lost = sum(not self.repo.has_blob(b) for b in n.content)
        text = STUB_TEXT % (lost, len(n.content))
        n.extra["repaired"] = (
            f"{lost} of {counted(len(n.content), 'chunk')} lost; was {n.size} bytes"
        )
        bid = self._save(BlobType.DATA, text)
        digest = self.repo.file_digest()
        digest.update(text)
        n.content, n.sizes, n.size, n.digest = [bid], [len(text)], len(text), digest.digest()
        self.report.damaged_paths.append(_text(path))


def repair_snapshots(
    repo: Repository, *, forget: bool = False, dry_run: bool = False
) -> SnapshotRepair:
    """Write a repaired copy of every snapshot that refers to lost data.

    Files with lost chunks become small stub files saying so (marked
    ``repaired`` in the tree); directories whose tree is lost become empty.
    The damaged snapshots are kept unless ``forget`` is true.  Snapshot files
    that cannot be read at all hold nothing to rewrite: they are removed.
    ``dry_run`` reports all of it and writes and removes nothing.
    """
    repo.load_index()
    report = SnapshotRepair(dry_run=dry_run)
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
        if dry_run:
            report.snapshots_rewritten[sid.hex()] = ""
            continue
        new_id = repo.save_snapshot(fixed)
        report.snapshots_rewritten[sid.hex()] = new_id.hex()
        if forget:
            repo.remove_snapshot(sid)
            report.forgotten.append(sid.hex())
    for sid in sorted(repo.damaged_snapshots):
        if not dry_run:
            repo.remove_snapshot(sid)
        report.removed_damaged.append(sid.hex())
    repo.damaged_snapshots.clear()  # reported here, not as skipped
    if not dry_run:
        repo.flush()
    return report


def _text(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace") or "/"
