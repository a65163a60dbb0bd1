"""A backend decorator that serves small immutable objects from a local cache.

Key files, snapshots and index files are read by nearly every command and
never change once written (their names are their SHA-256), so after the
first run they come from disk instead of the network.  Listings always go
to the backend, so a deleted object is never resurrected; a complete
listing of a cached directory also drops cache entries that are gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from cas.backend.base import (
    Backend,
    ObjectInfo,
    UnfinishedUpload,
    abort_leftover,
    list_leftovers,
    read_whole,
    write_file,
)
from cas.repo.cache import LocalCache

CACHED = ("keys", "snapshots", "index")


def _split(name: str) -> tuple[str, bytes] | None:
    kind, _, rest = name.partition("/")
    if kind not in CACHED or len(rest) != 64 or "/" in rest:
        return None
    try:
        return kind, bytes.fromhex(rest)
    except ValueError:
        return None


class CachingBackend:
    """Wraps a backend; whole reads of cached kinds go through ``cache``."""

    def __init__(self, inner: Backend, cache: LocalCache) -> None:
        self.inner = inner
        self.cache = cache

    @property
    def location(self) -> str:
        """The wrapped backend's location."""
        return self.inner.location

    def create(self) -> None:
        """Create the wrapped location."""
        self.inner.create()

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Whole cached-kind objects from the cache when present (verified), else the backend."""
        key = _split(name) if offset == 0 and length is None else None
        if key is not None:
            data = self.cache.get(*key)
            if data is not None:
                return data
        data = self.inner.read(name, offset, length)
        if key is not None:
            self.cache.put(key[0], key[1], data)
        return data

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        """Write through: the backend first, then the cache."""
        self.inner.write(name, data, cold=cold)
        key = _split(name)
        if key is not None:
            self.cache.put(key[0], key[1], data)

    def write_file(self, name: str, file: BinaryIO, size: int, *, cold: bool = False) -> None:
        """Write through from a file; a cached kind (small objects) is read whole for the
        cache."""
        if _split(name) is not None:
            self.write(name, read_whole(file, size), cold=cold)
        else:
            write_file(self.inner, name, file, size, cold=cold)

    def stat(self, name: str) -> ObjectInfo:
        """Always asks the backend."""
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """The backend's listing; a complete listing of a cached kind prunes the cache."""
        seen: set[bytes] = set()
        for info in self.inner.list(prefix):
            key = _split(info.name)
            if key is not None:
                seen.add(key[1])
            yield info
        if prefix in CACHED:
            self.cache.keep_only(prefix, seen)

    def delete(self, name: str) -> None:
        """Delete from the backend and the cache."""
        self.inner.delete(name)
        key = _split(name)
        if key is not None:
            self.cache.remove(*key)

    def list_leftovers(self) -> Iterator[UnfinishedUpload]:
        """The wrapped backend's unfinished uploads (never cached)."""
        return list_leftovers(self.inner)

    def abort_leftover(self, upload: UnfinishedUpload) -> None:
        """Abort an unfinished upload of the wrapped backend."""
        abort_leftover(self.inner, upload)

    def close(self) -> None:
        """Close the wrapped backend."""
        self.inner.close()
