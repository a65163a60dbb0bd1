"""A BlobWriter that stores nothing, for ``backup --dry-run``."""

from __future__ import annotations

from .crypto import BlobType, FileDigest
from .format.snapshot import Snapshot
from .repository import Repository


class DryRunWriter:
    """Answers dedup questions from the repository, remembers would-be blobs, writes nothing."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.new_blobs: set[bytes] = set()
        self.new_bytes = 0

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        return self.repo.blob_id(blob_type, data)

    def has_blob(self, blob_id: bytes) -> bool:
        return blob_id in self.new_blobs or self.repo.has_blob(blob_id)

    def save_blob(
        self, blob_type: BlobType, data: bytes, blob_id: bytes | None = None
    ) -> tuple[bytes, bool]:
        if blob_id is None:
            blob_id = self.blob_id(blob_type, data)
        if self.has_blob(blob_id):
            return blob_id, False
        self.new_blobs.add(blob_id)
        self.new_bytes += len(data)
        return blob_id, True

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        return self.repo.load_blob(blob_type, blob_id, raw_length)

    def file_digest(self) -> FileDigest:
        return self.repo.file_digest()

    def save_snapshot(self, snap: Snapshot) -> bytes:
        return b""
