"""Retries with exponential backoff and full jitter, as a backend decorator.

Only :class:`~cas.errors.TransientBackendError` is retried: 5xx replies,
throttling (503 SlowDown), timeouts, reset connections and bodies that end
early.  Everything else (403, a missing object, an object that exists with
other content, an invalid name) is raised at once, because sending the same
request again cannot change the answer.

Every operation of the protocol is safe to repeat: reads, stats and
listings change nothing, deleting a missing object succeeds, and writing
the identical object again succeeds (a backend compares the stored object
when its conditional write is refused, see cas.backend.s3).  That is what
makes retrying a write whose reply was lost correct.

This is the one place cas retries: the S3 backend's botocore client is
configured to make a single attempt, so that retries do not multiply
(botocore's 3 attempts under ours would be up to 24 requests per call),
truncated bodies, which botocore does not retry, get the same treatment as
any other failure, and tests control the clock.

Delays follow "full jitter" (AWS Architecture Blog, "Exponential Backoff
and Jitter"): before retry *n* the backend sleeps a uniformly random time in
``[0, min(max_delay, base_delay * 2**(n-1)))``, so that many clients
throttled together do not come back together.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

from cas.backend.base import (
    Backend,
    ObjectInfo,
    ResumableList,
    UnfinishedUpload,
    abort_leftover,
    list_leftovers,
    write_file,
)
from cas.errors import TransientBackendError

T = TypeVar("T")

DEFAULT_ATTEMPTS = 8
DEFAULT_BASE_DELAY = 0.5  # seconds
DEFAULT_MAX_DELAY = 30.0  # seconds

RetryListener = Callable[[str, int, float, TransientBackendError], None]


class RetryBackend:
    """Retries transient failures of ``inner`` up to ``attempts`` tries per call.

    ``sleep``, ``random`` and ``clock`` are injectable so that tests run
    without waiting: ``random`` returns a float in [0, 1).  ``on_retry`` is
    called before each sleep with (operation, attempt that failed, delay,
    error); ``operation`` is ``PUT``, ``GET``, ``HEAD``, ``LIST``, ``DELETE``
    or another word, then the object's name.  Giving up, the error says after
    how many attempts and how long (by ``clock``).
    With the defaults a call gives up after 8 attempts and at most about a
    minute of waiting (31 s on average).
    """

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random.random,
        on_retry: RetryListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._inner = inner
        self._attempts = attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._sleep = sleep
        self._random = random
        self._on_retry = on_retry
        self._clock = clock
        self._lock = threading.Lock()
        self._retries = 0

    @property
    def inner(self) -> Backend:
        """The wrapped backend."""
        return self._inner

    @property
    def location(self) -> str:
        """The wrapped backend's location."""
        return self._inner.location

    @property
    def attempts(self) -> int:
        """Attempts per call before giving up."""
        return self._attempts

    @property
    def retries(self) -> int:
        """How many times a call was retried so far, over all calls."""
        with self._lock:
            return self._retries

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter."""
        ceiling = min(self._max_delay, self._base_delay * 2.0 ** (attempt - 1))
        return float(self._random()) * ceiling

    def create(self) -> None:
        """Prepare the location."""
        self._call("create", self._inner.create)

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        """Store ``data`` as ``name``; a retry of a write that did land succeeds."""
        self._call(f"PUT {name}", lambda: self._inner.write(name, data, cold=cold))

    def write_file(self, name: str, file: BinaryIO, size: int, *, cold: bool = False) -> None:
        """Store ``size`` bytes of ``file`` as ``name``; each attempt rewinds the file."""
        self._call(f"PUT {name}", lambda: write_file(self._inner, name, file, size, cold=cold))

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read (a range of) ``name``; a truncated body is read again."""
        return self._call(f"GET {name}", lambda: self._inner.read(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        """The size of ``name``."""
        return self._call(f"HEAD {name}", lambda: self._inner.stat(name))

    def delete(self, name: str) -> None:
        """Remove ``name``."""
        self._call(f"DELETE {name}", lambda: self._inner.delete(name))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """The objects under ``prefix``; a listing that fails part way is resumed.

        A backend with ``list_after`` (S3) resumes after the last name
        yielded; any other listing starts again and skips names already
        yielded.  The attempt count starts afresh whenever a retry made
        progress, so a long listing is not doomed by scattered failures.
        """
        last: str | None = None
        seen: set[str] = set()
        resumable = isinstance(self._inner, ResumableList)
        failures = 0
        started = self._clock()
        while True:
            progressed = False
            try:
                if resumable and last is not None:
                    assert isinstance(self._inner, ResumableList)
                    listing = self._inner.list_after(prefix, last)
                else:
                    listing = self._inner.list(prefix)
                for info in listing:
                    if not resumable:
                        if info.name in seen:
                            continue
                        seen.add(info.name)
                    last = info.name
                    progressed = True
                    yield info
                return
            except TransientBackendError as err:
                if progressed:
                    failures, started = 1, self._clock()
                else:
                    failures += 1
                self._backoff(f"LIST {prefix or '/'}", failures, err, started)

    def list_leftovers(self) -> Iterator[UnfinishedUpload]:
        """The wrapped backend's unfinished uploads, listed again whole after a failure."""
        found = self._call("LIST leftovers", lambda: list(list_leftovers(self._inner)))
        return iter(found)

    def abort_leftover(self, upload: UnfinishedUpload) -> None:
        """Abort an unfinished upload (aborting one already gone succeeds, so retrying is safe)."""
        self._call(f"abort {upload.describe()}", lambda: abort_leftover(self._inner, upload))

    def close(self) -> None:
        """Close the wrapped backend."""
        self._inner.close()

    # -- helpers ---------------------------------------------------------------

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        attempt = 1
        started = self._clock()
        while True:
            try:
                return call()
            except TransientBackendError as err:
                self._backoff(operation, attempt, err, started)
                attempt += 1

    def _backoff(
        self, operation: str, attempt: int, err: TransientBackendError, started: float
    ) -> None:
        """Sleep before the next attempt, or raise if ``attempt`` was the last one (saying
        how long the attempts took since ``started``: a user waited that long)."""
        if attempt >= self._attempts:
            detail = err.fields.get("detail") or str(err)
            took = self._clock() - started
            raise TransientBackendError(
                f"{detail} (gave up after {attempt} attempts in {took:.1f} s)",
                reason=err.fields.get("reason"),
            ) from err
        delay = self.delay(attempt)
        with self._lock:
            self._retries += 1
        if self._on_retry is not None:
            self._on_retry(operation, attempt, delay, err)
        self._sleep(delay)
