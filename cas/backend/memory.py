"""An in-memory backend with the same semantics as the real ones, for tests.

Backends opened with the same name share one store for the life of the
process, so a test can open ``memory://x`` twice (say, once to write a
repository and once through the CLI to check it) and see the same objects.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from cas.backend.base import Backend, ObjectInfo, check_name, check_prefix
from cas.backend.registry import BackendFactory
from cas.errors import BackendError, ObjectExists, ObjectNotFound


class _Store:
    """The objects behind one name; its lock guards ``objects`` and ``created``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, bytes] = {}
        self.created = False


_registry: dict[str, _Store] = {}
_registry_lock = threading.Lock()


class MemoryBackend:
    """A dict of immutable objects; thread-safe.

    ``MemoryBackend("x")`` shares its store with every other backend named
    "x" in this process; ``MemoryBackend()`` gets a private store.  Like a
    missing directory or bucket, a store refuses writes until ``create()``.
    """

    def __init__(self, name: str = "") -> None:
        if name:
            with _registry_lock:
                self._store = _registry.setdefault(name, _Store())
            self._name = name
        else:
            self._store = _Store()
            self._name = f"anonymous-{uuid.uuid4().hex[:12]}"

    @staticmethod
    def forget(name: str) -> None:
        """Drop the shared store ``name`` (backends already open on it keep their data)."""
        with _registry_lock:
            _registry.pop(name, None)

    @property
    def location(self) -> str:
        """``memory://<name>``."""
        return f"memory://{self._name}"

    def create(self) -> None:
        """Allow writes; creating an existing store is not an error."""
        with self._store.lock:
            self._store.created = True

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        """Store ``data`` as ``name`` unless a different object already has that name.

        ``cold`` is ignored: memory has one storage class.
        """
        check_name(name)
        data = bytes(data)  # a caller's bytearray must not alias the stored object
        with self._store.lock:
            if not self._store.created:
                raise BackendError(f"cannot write {name}: {self.location} was not created")
            existing = self._store.objects.get(name)
            if existing is None:
                self._store.objects[name] = data
            elif existing != data:
                raise ObjectExists(name=name)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes of ``name`` from ``offset`` (to the end if None)."""
        check_name(name)
        with self._store.lock:
            data = self._store.objects.get(name)
        if data is None:
            raise ObjectNotFound(name=name)
        return _slice(name, data, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        """Return the size of ``name``."""
        check_name(name)
        with self._store.lock:
            data = self._store.objects.get(name)
        if data is None:
            raise ObjectNotFound(name=name)
        return ObjectInfo(name=name, size=len(data))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield the objects under ``prefix`` + "/" (all objects if ``prefix`` is "")."""
        check_prefix(prefix)
        start = f"{prefix}/" if prefix else ""
        # Snapshot under the lock so that writes during iteration are safe.
        with self._store.lock:
            found = [
                ObjectInfo(name=n, size=len(d))
                for n, d in self._store.objects.items()
                if n.startswith(start)
            ]
        yield from found

    def delete(self, name: str) -> None:
        """Remove ``name`` if it exists."""
        check_name(name)
        with self._store.lock:
            self._store.objects.pop(name, None)

    def close(self) -> None:
        """Nothing to release."""


def _slice(name: str, data: bytes, offset: int, length: int | None) -> bytes:
    """Cut ``data`` as ``read`` promises, refusing ranges that run past its end."""
    if offset < 0 or (length is not None and length < 0):
        raise BackendError(f"invalid range for {name}: offset {offset}, length {length}")
    end = len(data) if length is None else offset + length
    if offset > len(data) or end > len(data):
        raise BackendError(
            f"short read of {name}: wanted bytes {offset}..{end}, object has {len(data)}"
        )
    return data[offset:end]


@dataclass(frozen=True)
class MemoryOptions:
    """Memory locations take no options."""


def open_memory(location: str, rest: str, options: MemoryOptions) -> Backend:
    """The memory backend of ``rest``, counting its operations (priced at zero)."""
    from cas.backend.accounting import AccountingBackend, PriceTable

    return AccountingBackend(MemoryBackend(rest), prices=PriceTable.free())


FACTORY = BackendFactory(("memory",), MemoryOptions, open_memory, "memory://", shared=False)
