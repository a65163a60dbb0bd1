"""A fault-injecting backend decorator for tests, after kopia's faulty storage.

Faults are scripted per method and checked in the order they were added::

    faulty = FaultyBackend(MemoryBackend(), seed=1)
    faulty.add("write", Fault(after=2, times=2))        # the 3rd and 4th writes fail
    faulty.add("*", Fault(probability=0.1, times=None))  # then 10% of all calls
    faulty.add("read", truncate_reads(prefix="data/"))   # packs come back short
    faulty.add("read", flip_last_byte(after=5, times=1)) # the 6th read is damaged

A fault either raises (by default a TransientBackendError, which the retrying
backend retries), or, with ``lost_reply``, lets a write or delete happen and
then raises, as when the store did the work but its reply never arrived; or,
with ``corrupt``, returns damaged bytes from a read without raising, as a
store or network that breaks data silently.  ``injected`` records what was
done, so a test can assert that the faults it scripted really happened.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from cas.backend.base import (
    Backend,
    ObjectInfo,
    UnfinishedUpload,
    abort_leftover,
    list_leftovers,
    write_file,
)
from cas.errors import TransientBackendError

METHODS = ("create", "write", "read", "stat", "list", "delete")

ErrorFactory = Callable[[str, str], BaseException]


def transient(method: str, name: str) -> BaseException:
    """The default injected error: a TransientBackendError naming the call."""
    return TransientBackendError(f"injected fault: {method} {name}")


@dataclass
class Fault:
    """One scripted fault.

    ``after`` matching calls pass untouched, then the fault hits ``times``
    calls (None: every later call), each with ``probability``.  Only calls
    whose object name (or listing prefix) starts with ``prefix`` match.
    For a listing, ``after_items`` entries are yielded before the error.
    """

    after: int = 0
    times: int | None = 1
    probability: float = 1.0
    prefix: str = ""
    error: ErrorFactory | BaseException | None = None
    lost_reply: bool = False
    corrupt: Callable[[bytes], bytes] | None = None
    after_items: int = 0
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def make_error(self, method: str, name: str) -> BaseException:
        """The exception this fault raises for ``method`` on ``name``."""
        if self.error is None:
            return transient(method, name)
        if isinstance(self.error, BaseException):
            return self.error
        return self.error(method, name)


@dataclass(frozen=True)
class Injection:
    """One fault that happened: the method, the object name or prefix, and what was done."""

    method: str
    name: str
    what: str


def truncate_reads(
    *, after: int = 0, times: int | None = None, probability: float = 1.0, prefix: str = ""
) -> Fault:
    """A fault that returns only the first half of what a read asked for."""
    return Fault(
        after=after,
        times=times,
        probability=probability,
        prefix=prefix,
        corrupt=lambda data: data[: len(data) // 2],
    )


def flip_last_byte(
    *, after: int = 0, times: int | None = None, probability: float = 1.0, prefix: str = ""
) -> Fault:
    """A fault that returns a read's bytes with the last one inverted."""
    return Fault(
        after=after, times=times, probability=probability, prefix=prefix, corrupt=_flip_last
    )


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF]) if data else data


class FaultyBackend:
    """Wraps ``inner`` and injects the faults added with :meth:`add`; thread-safe."""

    def __init__(self, inner: Backend, *, seed: int = 0) -> None:
        self._inner = inner
        self._faults: dict[str, list[Fault]] = {m: [] for m in METHODS}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.calls: dict[str, int] = dict.fromkeys(METHODS, 0)
        self.injected: list[Injection] = []

    @property
    def inner(self) -> Backend:
        """The wrapped backend."""
        return self._inner

    @property
    def location(self) -> str:
        """The wrapped backend's location."""
        return self._inner.location

    def add(self, method: str, fault: Fault) -> Fault:
        """Script ``fault`` for ``method`` (one of METHODS, or "*" for all); returns it."""
        if method != "*" and method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS} or '*'")
        with self._lock:
            for m in METHODS if method == "*" else (method,):
                self._faults[m].append(fault)
        return fault

    def clear(self) -> None:
        """Remove every scripted fault (the record of injected ones stays)."""
        with self._lock:
            for faults in self._faults.values():
                faults.clear()

    # -- the protocol ------------------------------------------------------------

    def create(self) -> None:
        """Prepare the location, unless a fault strikes."""
        fault = self._strike("create", "")
        if fault is not None and not fault.lost_reply:
            raise fault.make_error("create", "")
        self._inner.create()
        if fault is not None:
            raise fault.make_error("create", "")

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        """Store ``data``, unless a fault strikes before (or, with lost_reply, after) it."""
        fault = self._strike("write", name)
        if fault is not None and not fault.lost_reply:
            raise fault.make_error("write", name)
        self._inner.write(name, data, cold=cold)
        if fault is not None:
            raise fault.make_error("write", name)

    def write_file(self, name: str, file: BinaryIO, size: int, *, cold: bool = False) -> None:
        """Store ``size`` bytes of ``file``; the faults scripted for ``write`` strike it too."""
        fault = self._strike("write", name)
        if fault is not None and not fault.lost_reply:
            raise fault.make_error("write", name)
        write_file(self._inner, name, file, size, cold=cold)
        if fault is not None:
            raise fault.make_error("write", name)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read (a range of) ``name``; a fault raises or damages the bytes."""
        fault = self._strike("read", name)
        if fault is not None and fault.corrupt is None:
            raise fault.make_error("read", name)
        data = self._inner.read(name, offset, length)
        if fault is not None and fault.corrupt is not None:
            return fault.corrupt(data)
        return data

    def stat(self, name: str) -> ObjectInfo:
        """The size of ``name``, unless a fault strikes."""
        fault = self._strike("stat", name)
        if fault is not None:
            raise fault.make_error("stat", name)
        return self._inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """The objects under ``prefix``; a fault raises after ``after_items`` entries."""
        fault = self._strike("list", prefix)
        if fault is None:
            yield from self._inner.list(prefix)
            return
        for count, info in enumerate(self._inner.list(prefix)):
            if count >= fault.after_items:
                break
            yield info
        raise fault.make_error("list", prefix)

    def delete(self, name: str) -> None:
        """Remove ``name``, unless a fault strikes before (or, with lost_reply, after) it."""
        fault = self._strike("delete", name)
        if fault is not None and not fault.lost_reply:
            raise fault.make_error("delete", name)
        self._inner.delete(name)
        if fault is not None:
            raise fault.make_error("delete", name)

    def list_leftovers(self) -> Iterator[UnfinishedUpload]:
        """The wrapped backend's unfinished uploads (never faulty)."""
        return list_leftovers(self._inner)

    def abort_leftover(self, upload: UnfinishedUpload) -> None:
        """Abort an unfinished upload of the wrapped backend (never faulty)."""
        abort_leftover(self._inner, upload)

    def close(self) -> None:
        """Close the wrapped backend (never faulty)."""
        self._inner.close()

    # -- helpers -------------------------------------------------------------------

    def _strike(self, method: str, name: str) -> Fault | None:
        """Count the call and return the first fault that hits it, if any."""
        with self._lock:
            self.calls[method] += 1
            hit: Fault | None = None
            for fault in self._faults[method]:
                if not name.startswith(fault.prefix):
                    continue
                fault.seen += 1
                if hit is not None or fault.seen <= fault.after:
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                fault.fired += 1
                hit = fault
            if hit is not None:
                what = (
                    "corrupt"
                    if hit.corrupt is not None
                    else "lost reply"
                    if hit.lost_reply
                    else "error"
                )
                self.injected.append(Injection(method, name, what))
            return hit
