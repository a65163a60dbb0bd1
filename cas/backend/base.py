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
from typing import Protocol, runtime_checkable


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

    def write(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name`` atomically and durably, never replacing an object.

        Readers see either nothing or the whole object.  Raises ObjectExists if
        ``name`` already exists with different content; writing identical
        content again succeeds (a retried write whose first reply was lost).
        """
        ...

    def delete(self, name: str) -> None:
        """Remove ``name``; removing an object that does not exist is not an error."""
        ...


@runtime_checkable
class ResumableList(Protocol):
    """A backend whose listings come in ascending name order and can resume.

    The retrying backend uses this to continue a listing that failed part
    way after the last name it saw, instead of starting over.
    """

    def list_after(self, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """Like ``list(prefix)``, but only names greater than ``start_after``, ascending."""
        ...
