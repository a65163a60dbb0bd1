"""The storage protocol every backend implements.

A backend stores immutable objects under slash-separated relative names such
as ``config``, ``keys/<id>`` or ``data/ab/<id>``.  It knows nothing of
encryption, packs or snapshots: the repository layer decides names and
contents, the backend only keeps bytes.  Features such as retries, request
accounting or fault injection are decorators that wrap a backend and
implement this same protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from cas.errors import BackendError


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its name relative to the repository root and size in bytes."""

    name: str
    size: int


@runtime_checkable
class ReadBackend(Protocol):
    """Read access: all that check, restore and mount need."""

    @property
    def location(self) -> str:
        """Where the repository lives, as the user would type it (no secrets)."""
        ...

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes of object ``name`` from ``offset`` (to the end if None).

        Raises ObjectNotFound if the object does not exist and BackendError on
        any other failure, including a short read.
        """
        ...

    def stat(self, name: str) -> ObjectInfo:
        """Return the object's size; raise ObjectNotFound if it does not exist."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield every object whose name starts with ``prefix`` + "/", recursively, in no order."""
        ...

    def close(self) -> None:
        """Release connections and handles."""
        ...


@runtime_checkable
class Backend(ReadBackend, Protocol):
    """Read and write access."""

    def create(self) -> None:
        """Prepare an empty location for a new repository (directories, bucket check)."""
        ...

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        """Store ``data`` as ``name`` atomically and durably, never replacing an object.

        Readers see either nothing or the whole object.  Raises ObjectExists if
        ``name`` already exists with different content; writing identical
        content again succeeds (a retried write whose first reply was lost).

        ``cold`` is a hint that the object is rarely read (a data pack): a
        backend configured with a cheaper, colder storage class (S3
        ``StorageClass``) stores it there; every other backend ignores it.
        Decorators pass it on unchanged.
        """
        ...

    def delete(self, name: str) -> None:
        """Remove ``name``; removing an object that does not exist is not an error."""
        ...


# Bytes per piece when an object is stored from a file (write_file).
PIECE = 1 << 20


@runtime_checkable
class FileWrites(Protocol):
    """A backend that stores an object from a file in pieces, never holding it whole.

    Optional: :func:`write_file` reads the file whole and calls ``write`` for a
    backend without it.  Decorators implement it by passing the call on.
    """

    def write_file(self, name: str, file: BinaryIO, size: int, *, cold: bool = False) -> None:
        """Like ``write``, with the object's bytes in ``file``: exactly ``size`` bytes from
        offset 0 to its end.  The file must be seekable; each attempt rewinds it (so a
        retry sends the same bytes) and it is left open."""
        ...


def write_file(
    backend: Backend, name: str, file: BinaryIO, size: int, *, cold: bool = False
) -> None:
    """``backend.write_file(...)``, or ``backend.write`` of the file read whole."""
    if isinstance(backend, FileWrites):
        backend.write_file(name, file, size, cold=cold)
    else:
        backend.write(name, read_whole(file, size), cold=cold)


def read_whole(file: BinaryIO, size: int) -> bytearray:
    """The first ``size`` bytes of ``file`` (rewound first), read in pieces into one
    buffer; BackendError if the file is shorter."""
    out = bytearray(size)
    at = 0
    for piece in scan_pieces(file, size):
        out[at : at + len(piece)] = piece
        at += len(piece)
    return out


def scan_pieces(file: BinaryIO, size: int, piece: int = PIECE) -> Iterator[memoryview]:
    """The first ``size`` bytes of ``file`` (rewound first) in pieces of at most
    ``piece``, BackendError if the file is shorter; each piece is a view of one buffer
    that the next piece overwrites: for callers done with a piece before they ask for
    the next (hashing, comparing, writing it out).  No buffer per piece: in a process
    that keeps its heap small (cas/ipc.py) each fresh 1 MiB would be a new mapping
    whose pages all fault."""
    file.seek(0)
    buf = bytearray(min(piece, size))
    view = memoryview(buf)
    readinto = getattr(file, "readinto", None)
    left = size
    while left > 0:
        want = view[: min(piece, left)]
        if readinto is not None:
            n = readinto(want)
        else:  # a file object without readinto: one copy more
            data = file.read(len(want))
            n = len(data)
            want[:n] = data
        if not n:
            raise BackendError(f"a file to store is shorter than its {size} bytes")
        left -= n
        yield view[:n]


@runtime_checkable
class ResumableList(Protocol):
    """A backend whose listings come in ascending name order and can resume.

    The retrying backend uses this to continue a listing that failed part
    way after the last name it saw, instead of starting over.
    """

    def list_after(self, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """Like ``list(prefix)``, but only names greater than ``start_after``, ascending."""
        ...


@dataclass(frozen=True)
class UnfinishedUpload:
    """An upload that was started and never finished, which ``list`` does not show.

    ``name`` is where it is, relative to the repository root: for an S3
    multipart upload the object name it was writing, for a local write the
    hidden temporary file.  ``upload_id`` is what the store calls it (the S3
    upload ID; empty for a temporary file).  ``size`` is in bytes if known,
    ``started`` in seconds since the epoch if known.
    """

    name: str
    upload_id: str = ""
    size: int | None = None
    started: float | None = None

    def describe(self) -> str:
        """The name, with the upload ID when there is one: how people should see it."""
        return f"{self.name} (multipart upload {self.upload_id})" if self.upload_id else self.name


@runtime_checkable
class LeftoverUploads(Protocol):
    """A backend that can find and remove the leftovers of interrupted uploads.

    Optional: a backend that cannot leave anything behind (memory) does not
    implement it, and :func:`list_leftovers` reports nothing for it.
    Decorators implement it by passing the calls on.
    """

    def list_leftovers(self) -> Iterator[UnfinishedUpload]:
        """Yield every unfinished upload under the repository, in no order."""
        ...

    def abort_leftover(self, upload: UnfinishedUpload) -> None:
        """Abort ``upload`` and free what it stored; one that is already gone is not an error."""
        ...


def list_leftovers(backend: ReadBackend) -> Iterator[UnfinishedUpload]:
    """``backend.list_leftovers()``, or nothing for a backend that has no leftovers."""
    if isinstance(backend, LeftoverUploads):
        return backend.list_leftovers()
    return iter(())


def abort_leftover(backend: Backend, upload: UnfinishedUpload) -> None:
    """``backend.abort_leftover(upload)``; a backend without leftovers has nothing to abort."""
    if isinstance(backend, LeftoverUploads):
        backend.abort_leftover(upload)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid object name, else raise BackendError.

    A name is one or more non-empty components joined by "/", none starting
    with "." (which rules out "." and ".." escaping a local root, and keeps
    names apart from the local backend's hidden temporary files), and without
    backslashes or NUL bytes.  Every backend enforces the same rule, so a name
    that works in memory also works on disk and on S3.
    """
    if not isinstance(name, str) or not name:
        raise BackendError(f"invalid object name {name!r}: empty")
    if "\\" in name or "\x00" in name:
        raise BackendError(f"invalid object name {name!r}: contains a backslash or NUL")
    for part in name.split("/"):
        if not part or part.startswith("."):
            raise BackendError(
                f"invalid object name {name!r}: empty component or component starting with '.'"
            )
    return name


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is "" (meaning everything) or a valid name; else BackendError."""
    return prefix if prefix == "" else check_name(prefix)
