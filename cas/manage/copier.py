"""Copy snapshots between repositories, moving only the blobs the target lacks.

Blob IDs are keyed (spec §6), so two repositories agree on IDs only when
they share the ID key and the chunker key: ``cas init --copy-keys-from SRC``
creates such a repository (its data and index keys stay its own).  Then a
blob is copied by ID: read and verified from the source, sealed again under
the target's data key; trees travel unchanged because the IDs inside them
mean the same thing in both repositories.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cas.crypto import BlobType
from cas.errors import CasError
from cas.format.snapshot import Snapshot
from cas.progress import Progress, no_progress
from cas.repo import Repository
from cas.walker import trees


class IncompatibleRepositories(CasError):
    """cannot copy: {detail}"""


@dataclass
class CopyResult:
    """What was copied."""

    snapshots_copied: list[str] = field(default_factory=list)  # "src id -> dst id"
    snapshots_skipped: list[str] = field(default_factory=list)  # already in the target
    blobs_copied: int = 0
    bytes_copied: int = 0


def check_compatible(src: Repository, dst: Repository) -> None:
    """Refuse repositories whose blob IDs or chunk boundaries differ."""
    if not src.keys.shares_ids_with(dst.keys):
        raise IncompatibleRepositories(
            "the target does not share the source's ID and chunker keys; create it with "
            "'cas init --copy-keys-from SOURCE'"
        )


def copy_snapshots(
    src: Repository,
    dst: Repository,
    snapshot_ids: Iterable[bytes],
    progress: Progress = no_progress,
) -> CopyResult:
    """Copy the given snapshots (and every blob they need that ``dst`` lacks) to ``dst``."""
    check_compatible(src, dst)
    src.load_index()
    dst.load_index()
    result = CopyResult()
    present = {
        bytes.fromhex(s.extra["copied_from"])
        if isinstance(s.extra.get("copied_from"), str)
        else sid
        for sid, s in dst.iter_snapshots()
    }
    for sid in snapshot_ids:
        if sid in present:
            result.snapshots_skipped.append(sid.hex())
            continue
        snap = src.load_snapshot(sid)
        progress(f"copying snapshot {sid.hex()[:8]}")
        _copy_tree(src, dst, snap.tree, result)
        copied = Snapshot(
            time_ns=snap.time_ns,
            tree=snap.tree,
            paths=snap.paths,
            hostname=snap.hostname,
            username=snap.username,
            uid=snap.uid,
            gid=snap.gid,
            tags=snap.tags,
            parent=None,
            program=snap.program,
            summary=snap.summary,
            extra={**snap.extra, "copied_from": sid.hex()},
        )
        new_id = dst.save_snapshot(copied)  # flushes packs and index first
        result.snapshots_copied.append(f"{sid.hex()} -> {new_id.hex()}")
    return result


def _copy_tree(src: Repository, dst: Repository, root: bytes, result: CopyResult) -> None:
    source = _TreeSource(src)
    for tree_id, nodes in trees(source, root, set()):
        for node in nodes:
            for blob_id, size in zip(node.content, node.sizes, strict=True):
                if not dst.has_blob(blob_id):
                    _copy_blob(src, dst, BlobType.DATA, blob_id, size, result)
        # Its data blobs first, then the tree (its subtrees follow, as the walk reaches them).
        raw = source.raw.pop(tree_id)
        if not dst.has_blob(tree_id):
            dst.save_blob(BlobType.TREE, raw, tree_id)
            result.blobs_copied += 1
            result.bytes_copied += len(raw)


class _TreeSource:
    """The source as the walker reads it, keeping each tree blob's plaintext until it is
    stored unchanged in the target."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.raw: dict[bytes, bytes] = {}

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        raw = self.repo.load_blob(blob_type, blob_id, raw_length)
        self.raw[blob_id] = raw
        return raw


def _copy_blob(
    src: Repository, dst: Repository, t: BlobType, blob_id: bytes, size: int, r: CopyResult
) -> None:
    data = src.load_blob(t, blob_id, size)  # verified: AEAD and re-hash
    new_id, _ = dst.save_blob(t, data)
    if new_id != blob_id:  # cannot happen with shared keys; never store under a wrong ID
        raise IncompatibleRepositories("a blob hashed to a different ID in the target")
    r.blobs_copied += 1
    r.bytes_copied += len(data)
