"""The narrow interfaces that backup, restore and browsing are written against.

Each consumer names only what it uses, so the archiver cannot reach into
key management and the restorer cannot write to the repository; tests can
hand them small fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: a restore writer need not import the chunker
    from cas.chunking.chunker import Guess
    from cas.chunking.resync import ParentChunks
    from cas.crypto import BlobType
    from cas.format.snapshot import Snapshot


class BlobReader(Protocol):
    """Read access to blobs by ID (restore, mount, check, parent trees)."""

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes: ...


class Chunks(Protocol):
    """A keyed chunker."""

    def iter_chunks(
        self,
        read: Callable[[int], bytes],
        guess: Guess | None = None,
    ) -> Iterator[bytes]: ...


class BlobWriter(BlobReader, Protocol):
    """What a backup needs: dedup lookups, blob storage and the final snapshot."""

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes: ...

    def has_blob(self, blob_id: bytes) -> bool: ...

    def save_blob(
        self, blob_type: BlobType, data: bytes, blob_id: bytes | None = None
    ) -> tuple[bytes, bool]: ...

    def file_digest(self) -> Digest: ...

    def save_snapshot(self, snap: Snapshot) -> bytes: ...


class FileChunker(Protocol):
    """Chunks an open file elsewhere (cas/chunking/worker.py) and reports each chunk.

    ``chunks`` yields (size, blob ID) pairs (resynchronised with ``parent``'s
    chunks when given, cas/chunking/resync.py); afterwards ``digest`` and
    ``bytes_read`` describe the file as read.  ``failed`` once it cannot serve.
    """

    failed: bool
    digest: bytes
    bytes_read: int

    def chunks(
        self, fd: int, size: int, parent: ParentChunks | None = None
    ) -> Generator[tuple[int, bytes], None, None]: ...


class Digest(Protocol):
    """An incremental whole-file digest."""

    def update(self, data: bytes | memoryview) -> None: ...

    def digest(self) -> bytes: ...
