"""A live, read-only view of a repository for the mount (:class:`cas.mount.vfs.SnapshotStore`)."""

from __future__ import annotations

import threading

from cas.crypto import BlobType
from cas.errors import BlobNotFound
from cas.format.snapshot import Snapshot
from cas.repo.repository import Repository


class RepositoryStore:
    """The view's snapshot store over an open repository, following new backups.

    Backups may add snapshots while the mount runs (they take shared locks
    too).  A snapshot is written after the index files naming its blobs, so
    reading the new index files when a new snapshot shows up makes its
    blobs findable.  The master index is not thread-safe: it is only
    changed under ``_lock``, and a lookup that misses while it changes is
    retried under the lock.
    """

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        repo.load_index()

    def snapshot_ids(self) -> list[bytes]:
        """IDs of all snapshots now."""
        return self.repo.snapshot_ids()

    def load_snapshot(self, snapshot_id: bytes) -> Snapshot:
        """One snapshot; the index files written before it are read too."""
        snap = self.repo.load_snapshot(snapshot_id)
        with self._lock:
            self.repo.refresh_index()
        return snap

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        """One blob; a miss reads the new index files and tries once more."""
        try:
            return self.repo.load_blob(blob_type, blob_id, raw_length)
        except BlobNotFound:
            with self._lock:
                self.repo.refresh_index()
                return self.repo.load_blob(blob_type, blob_id, raw_length)

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        """The keyed ID of ``data``."""
        return self.repo.blob_id(blob_type, data)

    def stored_size(self, blob_id: bytes) -> int | None:
        """Sealed size of a stored blob, or None if the index does not know it."""
        try:
            return self.repo.locate(blob_id).length
        except BlobNotFound:
            return None

    def listing_trusted(self) -> bool:
        """Whether no trust finding stands (a hidden snapshot or a rollback makes the
        newest listed snapshot possibly not the newest: spec §13.6)."""
        return not self.repo.generations.findings
