"""Copy snapshots between repositories, moving only the blobs the target lacks.

Blob IDs are keyed (spec §6), so two repositories agree on IDs only when
they share the ID key and the chunker key: ``cas init --copy-keys-from SRC``
creates such a repository (its data and index keys stay its own).  Then a
blob is copied by ID: read and verified from the source, sealed again under
the target's data key; trees travel unchanged because the IDs inside them
mean the same thing in both repositories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from cas.crypto import BlobType
from cas.errors import CasError
from cas.format.pack import PackEntry
from cas.format.snapshot import Snapshot
from cas.progress import Progress, no_progress
from cas.repo import Repository
from cas.repo.blobreader import BlobRef
from cas.repo.blobreader import reseal as reseal_blobs
from cas.walker import trees

# Data blobs go to the resealing processes in batches of this many blobs or bytes.
BATCH_BLOBS = 256
BATCH_BYTES = 4 << 20

# Reads blobs from the source and seals them for the target in other processes: for each
# (key, blobs) it is given, in order, their sealed bytes and entries in them
# (cas/check/verifier.py VerifierPool.reseal, made by the CLI).
Resealer = Callable[
    [Iterable[tuple[bytes, list[BlobRef]]]], Iterator[tuple[bytes, tuple[bytes, list[PackEntry]]]]
]


class IncompatibleRepositories(CasError):
    """cannot copy: {detail}"""


@dataclass
class CopyResult:
    """What was copied."""

    snapshots_copied: list[tuple[str, str]] = field(default_factory=list)  # (src id, dst id)
    snapshots_skipped: list[str] = field(default_factory=list)  # already in the target
    # Not copied: a tree or blob they need cannot be read ("id: why"); the others still are.
    snapshots_failed: list[str] = field(default_factory=list)
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
    reseal: Resealer | None = None,
    reseal_after: int = 0,
) -> CopyResult:
    """Copy the given snapshots (and every blob they need that ``dst`` lacks) to ``dst``;
    with ``reseal``, data blobs are read and sealed again in other processes once
    ``reseal_after`` bytes of a snapshot were copied here (starting them costs more than
    a small copy)."""
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
    ids = list(snapshot_ids)
    for n, sid in enumerate(ids):
        if sid in present:
            result.snapshots_skipped.append(sid.hex())
            continue
        try:
            snap = src.load_snapshot(sid)
            progress("copying snapshots", n, len(ids))
            if reseal is None:
                _copy_tree(src, dst, snap.tree, result)
            else:
                _copy_resealed(src, dst, snap.tree, result, reseal, reseal_after)
        except IncompatibleRepositories:
            raise
        except CasError as err:
            # What was copied of it stays unreferenced in the target until prune.
            result.snapshots_failed.append(f"{sid.hex()}: {err}")
            continue
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
        result.snapshots_copied.append((sid.hex(), new_id.hex()))
    return result


def _copy_tree(src: Repository, dst: Repository, root: bytes, result: CopyResult) -> None:
    source = _TreeSource(src)
    for tree_id, nodes in trees(source, root, set()):
        for node in nodes:
            for blob_id, size in zip(node.content, node.sizes, strict=True):
                if not dst.has_blob(blob_id):
                    _copy_blob(src, dst, BlobType.DATA, blob_id, size, result)
        # Its data blobs first, then the tree (its subtrees follow, as the walk reaches them).
        _copy_tree_blob(dst, tree_id, source.raw.pop(tree_id), result)


def _copy_tree_blob(dst: Repository, tree_id: bytes, raw: bytes, result: CopyResult) -> None:
    if not dst.has_blob(tree_id):
        dst.save_blob(BlobType.TREE, raw, tree_id)
        result.blobs_copied += 1
        result.bytes_copied += len(raw)


def _copy_resealed(
    src: Repository,
    dst: Repository,
    root: bytes,
    result: CopyResult,
    reseal: Resealer,
    after: int,
) -> None:
    here = reseal_here(src, dst)
    batches = _batches(src, dst, root, result)

    def add(body: bytes, entries: list[PackEntry]) -> None:
        dst.add_sealed(body, entries)
        result.blobs_copied += len(entries)
        result.bytes_copied += sum(e.raw_length for e in entries)

    start = result.bytes_copied
    while result.bytes_copied - start < after:  # most snapshots of a series add little
        batch = next(batches, None)
        if batch is None:
            return
        add(*here(batch[1]))
    for _, sealed in reseal(batches):
        add(*sealed)


def _batches(
    src: Repository, dst: Repository, root: bytes, result: CopyResult
) -> Iterator[tuple[bytes, list[BlobRef]]]:
    """The data blobs ``dst`` lacks under ``root``, in batches, as the trees are walked
    (each tree is stored in ``dst`` here, after its blobs went into a batch)."""
    source = _TreeSource(src)
    sent: set[bytes] = set()
    batch: list[BlobRef] = []
    size_sum = 0
    number = 0
    for tree_id, nodes in trees(source, root, set()):
        for node in nodes:
            for blob_id, size in zip(node.content, node.sizes, strict=True):
                if blob_id in sent or dst.has_blob(blob_id):
                    continue
                sent.add(blob_id)
                batch.append(BlobRef(BlobType.DATA, blob_id, src.locate(blob_id), size))
                size_sum += size
                if len(batch) >= BATCH_BLOBS or size_sum >= BATCH_BYTES:
                    number += 1
                    yield number.to_bytes(8, "big"), batch
                    batch, size_sum = [], 0
        _copy_tree_blob(dst, tree_id, source.raw.pop(tree_id), result)
    if batch:
        yield (number + 1).to_bytes(8, "big"), batch


def reseal_here(
    src: Repository, dst: Repository
) -> Callable[[list[BlobRef]], tuple[bytes, list[PackEntry]]]:
    """What a resealing process does, in this one (through the source's index, which
    knows other copies of a damaged blob)."""

    def here(refs: list[BlobRef]) -> tuple[bytes, list[PackEntry]]:
        return reseal_blobs(
            lambda t, blob_id, _, raw: src.load_blob(t, blob_id, raw),
            refs,
            dst.keys,
            dst.compression_level,
            dst.config.padding,
        )

    return here


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
