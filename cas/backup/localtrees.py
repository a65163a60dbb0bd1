"""Parent trees from the client instead of the repository, for a write-only key.

A write-only key (spec §4.4) seals the trees it stores to the repository's
public key and cannot open them again.  :class:`LocalTrees` stands between the
archiver and the repository: it answers the archiver's reads of parent trees
from the plaintext trees the client kept of its last backup (the files cache,
:mod:`cas.repo.filescache`), and remembers every tree this backup saves, for
the next one.  The archiver is unchanged: it compares with the parent exactly
as it does with a full key, so an incremental backup is as exact.
"""

from __future__ import annotations

from cas.crypto import BlobType
from cas.errors import BlobNotFound
from cas.format.snapshot import Snapshot
from cas.protocols import BlobWriter, Digest


class LocalTrees:
    """A BlobWriter over ``inner`` whose tree reads come from ``known`` (tree ID ->
    plaintext) and which records the trees it saves in ``saved``."""

    def __init__(self, inner: BlobWriter, known: dict[bytes, bytes]) -> None:
        self.inner = inner
        self.known = known
        self.saved: dict[bytes, bytes] = {}

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        """A parent tree this client kept (BlobNotFound for anything else: the archiver
        then reads those files again)."""
        plain = self.known.get(blob_id) if blob_type == BlobType.TREE else None
        if plain is None:
            raise BlobNotFound(blob=blob_id.hex())
        return plain

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        """The keyed ID, as the repository computes it."""
        return self.inner.blob_id(blob_type, data)

    def has_blob(self, blob_id: bytes) -> bool:
        """Whether the repository's index (or this backup) has the blob."""
        return self.inner.has_blob(blob_id)

    def save_blob(
        self, blob_type: BlobType, data: bytes, blob_id: bytes | None = None
    ) -> tuple[bytes, bool]:
        """Store through ``inner``; a tree's plaintext is kept for the files cache."""
        stored, new = self.inner.save_blob(blob_type, data, blob_id)
        if blob_type == BlobType.TREE:
            self.saved[stored] = bytes(data)
        return stored, new

    def file_digest(self) -> Digest:
        """A fresh keyed whole-file digest."""
        return self.inner.file_digest()

    def save_snapshot(self, snap: Snapshot) -> bytes:
        """Store the snapshot through ``inner``."""
        return self.inner.save_snapshot(snap)
