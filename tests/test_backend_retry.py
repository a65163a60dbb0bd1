"""The retrying backend: what it retries, how long it waits, and when it gives up.

Faults come from the faulty backend over memory; the clock is a list that
records the delays asked for, so nothing here ever sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cas.backend.base import ObjectInfo
from cas.backend.faulty import Fault, FaultyBackend, truncate_reads
from cas.backend.memory import MemoryBackend
from cas.backend.retry import DEFAULT_ATTEMPTS, RetryBackend
from cas.errors import BackendError, ObjectExists, ObjectNotFound, TransientBackendError

NAME = "data/ab/ab01"


class Clock:
    """Records the delays asked for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def now(self) -> float:
        """The time the sleeps would have taken."""
        return sum(self.delays)


@pytest.fixture
def memory() -> MemoryBackend:
    backend = MemoryBackend()
    backend.create()
    return backend


@pytest.fixture
def faulty(memory: MemoryBackend) -> FaultyBackend:
    return FaultyBackend(memory, seed=3)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def retrying(inner: Any, clock: Clock, **options: Any) -> RetryBackend:
    # random() at its maximum makes each delay the full ceiling: predictable.
    options.setdefault("random", lambda: 1.0)
    return RetryBackend(inner, sleep=clock.sleep, clock=clock.now, **options)


def test_transient_failures_are_retried_until_they_pass(
    faulty: FaultyBackend, clock: Clock
) -> None:
    backend = retrying(faulty, clock)
    faulty.add("write", Fault(after=2, times=2))  # the 3rd write fails twice
    for i in range(4):
        backend.write(f"data/ab/{i}", b"x")
    assert faulty.calls["write"] == 6
    assert [i.name for i in faulty.injected] == ["data/ab/2", "data/ab/2"]
    assert backend.retries == 2
    assert clock.delays == [0.5, 1.0]
    assert backend.read("data/ab/2") == b"x"


@pytest.mark.parametrize("method", ["read", "stat", "delete", "create"])
def test_every_operation_is_retried(
    faulty: FaultyBackend, clock: Clock, memory: MemoryBackend, method: str
) -> None:
    memory.write(NAME, b"content")
    backend = retrying(faulty, clock)
    faulty.add(method, Fault(times=3))
    calls = {
        "read": lambda: backend.read(NAME, 1, 3),
        "stat": lambda: backend.stat(NAME),
        "delete": lambda: backend.delete(NAME),
        "create": backend.create,
    }
    result = calls[method]()
    assert faulty.calls[method] == 4
    assert backend.retries == 3
    if method == "read":
        assert result == b"ont"
    if method == "stat":
        assert result == ObjectInfo(NAME, 7)


def test_backoff_is_exponential_capped_and_jittered(memory: MemoryBackend, clock: Clock) -> None:
    faulty = FaultyBackend(memory)
    faulty.add("stat", Fault(times=None))
    backend = retrying(faulty, clock, attempts=9, base_delay=0.5, max_delay=10.0)
    with pytest.raises(TransientBackendError, match="gave up after 9 attempts"):
        backend.stat(NAME)
    assert clock.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert faulty.calls["stat"] == 9

    # Full jitter: a uniform draw times the ceiling.
    draws = iter([0.0, 0.25, 0.5])
    jittered = RetryBackend(
        faulty, sleep=clock.sleep, random=lambda: next(draws), attempts=4, base_delay=2.0
    )
    clock.delays.clear()
    with pytest.raises(TransientBackendError):
        jittered.stat(NAME)
    assert clock.delays == [0.0, 0.25 * 4.0, 0.5 * 8.0]


def test_default_delays_stay_within_a_minute(memory: MemoryBackend) -> None:
    backend = RetryBackend(memory, random=lambda: 1.0)
    worst = sum(backend.delay(n) for n in range(1, DEFAULT_ATTEMPTS))
    assert 30 < worst < 65
    real = RetryBackend(memory)
    assert all(0 <= real.delay(n) <= 30 for n in range(1, 20))


def test_giving_up_keeps_the_cause(faulty: FaultyBackend, clock: Clock) -> None:
    faulty.add("read", Fault(times=None))
    backend = retrying(faulty, clock, attempts=3)
    with pytest.raises(TransientBackendError) as caught:
        backend.read(NAME)
    message = str(caught.value)
    assert message.startswith("storage error: injected fault: read data/ab/ab01")
    # How long it tried: the two delays of the full ceiling, 0.5 s and 1 s.
    assert message.endswith("(gave up after 3 attempts in 1.5 s)")
    assert isinstance(caught.value.__cause__, TransientBackendError)
    assert faulty.calls["read"] == 3
    assert len(clock.delays) == 2


@pytest.mark.parametrize(
    "error",
    [
        ObjectNotFound(name=NAME),
        ObjectExists(name=NAME),
        BackendError("S3 PutObject s3://b/k failed: AccessDenied (HTTP 403)"),
    ],
    ids=["not-found", "exists", "forbidden"],
)
def test_permanent_errors_are_not_retried(
    faulty: FaultyBackend, clock: Clock, error: BackendError
) -> None:
    faulty.add("write", Fault(error=error))
    backend = retrying(faulty, clock)
    with pytest.raises(BackendError) as caught:
        backend.write(NAME, b"x")
    assert caught.value is error
    assert faulty.calls["write"] == 1
    assert backend.retries == 0
    assert clock.delays == []


def test_a_lost_reply_is_retried_into_success(faulty: FaultyBackend, clock: Clock) -> None:
    # The write landed but the caller never heard: the retry finds the same
    # object and succeeds; other content would still be refused.
    faulty.add("write", Fault(lost_reply=True))
    backend = retrying(faulty, clock)
    backend.write(NAME, b"data")
    assert [i.what for i in faulty.injected] == ["lost reply"]
    assert backend.read(NAME) == b"data"
    with pytest.raises(ObjectExists):
        backend.write(NAME, b"other")


def test_a_truncated_read_is_not_retried_by_the_decorator_alone(
    faulty: FaultyBackend, clock: Clock, memory: MemoryBackend
) -> None:
    # Detecting a short body is the backend's job (S3 raises a transient
    # error for it); a corrupting fault returns bytes, which pass through.
    memory.write(NAME, b"0123456789")
    faulty.add("read", truncate_reads(times=1))
    assert retrying(faulty, clock).read(NAME) == b"01234"


class FlakyListing:
    """A backend whose listings break after ``every`` entries, ``failures`` times in all.

    With ``resumable`` it offers ``list_after``, as S3 does.
    """

    def __init__(self, names: list[str], every: int, failures: int, resumable: bool) -> None:
        self.names = sorted(names)
        self.every = every
        self.failures = failures
        self.calls: list[str | None] = []
        if resumable:
            self.list_after = self._list_after

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self._listing(None)

    def _list_after(self, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        return self._listing(start_after)

    def _listing(self, start_after: str | None) -> Iterator[ObjectInfo]:
        self.calls.append(start_after)
        names = [n for n in self.names if start_after is None or n > start_after]
        for count, name in enumerate(names):
            if count == self.every and self.failures:
                self.failures -= 1
                raise TransientBackendError("connection reset while listing")
            yield ObjectInfo(name, 1)


def test_a_broken_listing_is_resumed_where_it_broke(clock: Clock) -> None:
    names = sorted(f"data/{i:02x}/{i:04x}" for i in range(40))
    flaky = FlakyListing(names, every=7, failures=99, resumable=True)
    # Five failures, more than the attempt limit of three: the count starts
    # afresh each time a retry gets further.
    backend = retrying(flaky, clock, attempts=3)
    assert [o.name for o in backend.list("data")] == names
    assert flaky.calls == [None, names[6], names[13], names[20], names[27], names[34]]
    assert backend.retries == 5


def test_a_broken_listing_without_resume_starts_over_without_duplicates(clock: Clock) -> None:
    names = sorted(f"data/{i:02x}/{i:04x}" for i in range(40))
    flaky = FlakyListing(names, every=30, failures=3, resumable=False)
    backend = retrying(flaky, clock, attempts=4)
    assert [o.name for o in backend.list("data")] == names
    assert flaky.calls == [None] * 4
    assert backend.retries == 3


def test_a_listing_that_never_progresses_gives_up(clock: Clock) -> None:
    flaky = FlakyListing(["data/00/a", "data/00/b"], every=0, failures=99, resumable=True)
    backend = retrying(flaky, clock, attempts=3)
    with pytest.raises(TransientBackendError, match="gave up after 3 attempts"):
        list(backend.list("data"))


def test_retry_listener_sees_each_retry(faulty: FaultyBackend, clock: Clock) -> None:
    seen: list[tuple[str, int, float]] = []
    faulty.add("write", Fault(times=2))
    backend = retrying(
        faulty, clock, on_retry=lambda op, n, delay, err: seen.append((op, n, delay))
    )
    backend.write(NAME, b"x")
    assert seen == [(f"PUT {NAME}", 1, 0.5), (f"PUT {NAME}", 2, 1.0)]


def test_attempts_must_be_positive(memory: MemoryBackend) -> None:
    with pytest.raises(ValueError):
        RetryBackend(memory, attempts=0)
