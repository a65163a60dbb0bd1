"""Repository locks: conflicts, staleness, refresh, loss, and two real processes."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cas import crypto
from cas.backend.base import Backend
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.errors import (
    EXIT_LOCKED,
    BackendError,
    FormatError,
    IntegrityError,
    LockedError,
    UnsupportedVersion,
)
from cas.format.codec import seal_document
from cas.format.lock import LOCK_AD, LockInfo, decode_lock, encode_lock
from cas.ids import storage_id
from cas.repo import layout, locks

MINUTE_NS = 60 * 1_000_000_000
T0 = 1_700_000_000 * 1_000_000_000  # a fixed wall-clock time for injected clocks
HERE = socket.gethostname()
REPO_ROOT = Path(__file__).resolve().parent.parent

# Seconds: only bounds a hang (the refresher thread runs every 10 ms); never a timed assertion.
HANG = 120.0


@pytest.fixture(params=["memory", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An empty, created backend of each kind the brief covers."""
    b: Backend = MemoryBackend() if request.param == "memory" else LocalBackend(tmp_path / "repo")
    b.create()
    yield b
    b.close()


@pytest.fixture
def key() -> bytes:
    return crypto.MasterKeys.generate().index_key


def plant(
    backend: Backend,
    key: bytes,
    *,
    hostname: str = "hostB",
    username: str = "bob",
    pid: int = 4242,
    time_ns: int = T0,
    exclusive: bool = False,
    command: str = "backup",
) -> str:
    """Write another process's lock file directly; returns its name."""
    raw = encode_lock(LockInfo(hostname, username, pid, time_ns, exclusive, command), key)
    name = layout.lock_name(storage_id(raw))
    backend.write(name, raw)
    return name


def lock_names(backend: Backend) -> set[str]:
    return {o.name for o in backend.list(layout.LOCKS)}


def fixed(ns: int) -> Callable[[], int]:
    return lambda: ns


# -- format ---------------------------------------------------------------------


def test_lock_file_round_trips(key: bytes) -> None:
    info = LockInfo("h", "u", 17, T0, True, "prune")
    assert decode_lock(encode_lock(info, key), key) == info


def test_lock_file_hides_its_content_and_needs_the_key(key: bytes) -> None:
    raw = encode_lock(LockInfo("secret-host-name", "secret-user", 1, T0, False, "backup"), key)
    assert b"secret-host" not in raw and b"secret-user" not in raw and b"backup" not in raw
    other = crypto.MasterKeys.generate().index_key
    with pytest.raises(IntegrityError):
        decode_lock(raw, other)


# A lock document without ``started``, as cas wrote before it.
GOOD_LOCK = {
    "v": 1,
    "hostname": "h",
    "username": "u",
    "pid": 5,
    "time": T0,
    "exclusive": False,
    "command": "c",
}


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"v": 2}, UnsupportedVersion),
        ({"pid": 0}, FormatError),
        ({"pid": -1}, FormatError),
        ({"pid": True}, FormatError),
        ({"exclusive": 1}, FormatError),
        ({"hostname": None}, FormatError),
    ],
)
def test_decode_refuses_bad_documents(key: bytes, doc: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        decode_lock(seal_document(key, LOCK_AD, {**GOOD_LOCK, **doc}), key)


def test_a_decoded_lock_cannot_be_changed(key: bytes) -> None:
    """LockInfo is frozen (and so hashable): what a lock file said stays what it said."""
    info = decode_lock(seal_document(key, LOCK_AD, GOOD_LOCK), key)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.pid = 6  # type: ignore[misc]
    assert {info: 1}[decode_lock(seal_document(key, LOCK_AD, GOOD_LOCK), key)] == 1


def test_a_lock_without_started_was_started_at_0(key: bytes) -> None:
    """§13: ``started`` is optional, default 0 (a lock of an older cas counts as old)."""
    assert decode_lock(seal_document(key, LOCK_AD, GOOD_LOCK), key).started_ns == 0
    later = decode_lock(seal_document(key, LOCK_AD, {**GOOD_LOCK, "started": T0 - 1}), key)
    assert later.started_ns == T0 - 1


def test_decode_refuses_garbage(key: bytes) -> None:
    for raw in (b"", b"\x00" * 10, b"\x00" + os.urandom(60)):
        with pytest.raises(IntegrityError):
            decode_lock(raw, key)


# -- conflicts ------------------------------------------------------------------


def test_shared_locks_coexist(backend: Backend, key: bytes) -> None:
    with (
        locks.acquire(backend, key, exclusive=False, command="backup") as a,
        locks.acquire(backend, key, exclusive=False, command="backup") as b,
    ):
        assert lock_names(backend) == {a.name, b.name}
        assert not a.exclusive and not b.exclusive
    assert lock_names(backend) == set()


@pytest.mark.parametrize(
    ("held_exclusive", "want_exclusive"), [(False, True), (True, False), (True, True)]
)
def test_conflicting_live_lock_blocks(
    backend: Backend, key: bytes, held_exclusive: bool, want_exclusive: bool
) -> None:
    held = plant(backend, key, exclusive=held_exclusive, time_ns=time.time_ns(), command="prune")
    with pytest.raises(LockedError) as info:
        locks.acquire(backend, key, exclusive=want_exclusive, command="check")
    err = info.value
    assert err.exit_code == EXIT_LOCKED == 11
    message = str(err)
    assert "hostB" in message and "4242" in message and "prune" in message and "bob" in message
    assert ("exclusive" if held_exclusive else "shared") in message
    assert lock_names(backend) == {held}  # ours was not left behind


def test_real_holder_blocks_and_release_frees(backend: Backend, key: bytes) -> None:
    holder = locks.acquire(backend, key, exclusive=True, command="prune")
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        locks.acquire(backend, key, exclusive=False, command="backup")
    holder.release()
    holder.release()  # a second release is harmless
    assert lock_names(backend) == set()
    with locks.acquire(backend, key, exclusive=False, command="backup"):
        pass


# -- staleness ------------------------------------------------------------------


def test_old_lock_is_stale_and_removed(backend: Backend, key: bytes) -> None:
    old = plant(backend, key, exclusive=True, time_ns=T0)
    # Nine minutes on it is still live...
    with pytest.raises(LockedError, match="age 9m00s"):
        locks.acquire(
            backend, key, exclusive=True, command="prune", clock=fixed(T0 + 9 * MINUTE_NS)
        )
    # ...past ten it no longer blocks, and the locker removes it.
    later = fixed(T0 + 11 * MINUTE_NS)
    with locks.acquire(backend, key, exclusive=True, command="prune", clock=later) as lock:
        assert lock_names(backend) == {lock.name}
    assert old not in lock_names(backend)


def test_dead_pid_on_this_host_is_stale_at_once(backend: Backend, key: bytes) -> None:
    now = time.time_ns()
    dead = plant(backend, key, hostname=HERE, pid=999_999, exclusive=True, time_ns=now)
    elsewhere = plant(backend, key, hostname="hostB", pid=999_999, exclusive=False, time_ns=now)
    alive = lambda pid: pid != 999_999  # noqa: E731
    entries = {e.name: e.stale for e in locks.list_locks(backend, key, pid_alive=alive)}
    # The same pid on another host says nothing about processes here.
    assert entries == {dead: True, elsewhere: False}
    with locks.acquire(backend, key, exclusive=False, command="backup", pid_alive=alive) as lock:
        assert lock_names(backend) == {lock.name, elsewhere}


def test_pid_alive_probes_real_processes() -> None:
    assert locks.pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid is free now
    assert not locks.pid_alive(child.pid)


def test_list_and_remove(backend: Backend, key: bytes) -> None:
    now = T0 + 20 * MINUTE_NS
    stale = plant(backend, key, time_ns=T0)
    live = plant(backend, key, time_ns=now - MINUTE_NS, exclusive=True)
    backend.write("locks/" + "ab" * 32, b"not a lock")
    scan = locks.scan_locks(backend, key, clock=fixed(now))
    assert [(e.name, e.stale) for e in scan.entries] == [(stale, True), (live, False)]
    assert [name for name, _ in scan.unreadable] == ["locks/" + "ab" * 32]
    assert locks.remove_stale(backend, key, clock=fixed(now)) == [stale]
    assert lock_names(backend) == {live, "locks/" + "ab" * 32}
    assert sorted(locks.remove_all(backend)) == sorted([live, "locks/" + "ab" * 32])
    assert lock_names(backend) == set()


def test_unreadable_locks_are_ignored_and_reported(backend: Backend, key: bytes) -> None:
    foreign = plant(backend, crypto.MasterKeys.generate().index_key, exclusive=True)
    with locks.acquire(backend, key, exclusive=True, command="prune") as lock:
        assert [name for name, _ in lock.unreadable] == [foreign]
    assert lock_names(backend) == {foreign}  # never deleted by a locker


# -- races and waiting ----------------------------------------------------------


class RacingBackend(MemoryBackend):
    """Lets a rival exclusive lock appear right after our lock file is written."""

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self.key = key
        self.rival: str | None = None
        self.raced = False

    def write(self, name: str, data: bytes) -> None:
        super().write(name, data)
        if name.startswith("locks/") and not self.raced:
            self.raced = True  # before planting: plant() writes through here too
            self.rival = plant(self, self.key, exclusive=True, time_ns=time.time_ns())


def test_conflict_that_appears_after_writing_backs_off(key: bytes) -> None:
    backend = RacingBackend(key)
    backend.create()
    with pytest.raises(LockedError, match="hostB"):
        locks.acquire(backend, key, exclusive=False, command="backup")
    assert lock_names(backend) == {backend.rival}  # ours was withdrawn


def test_wait_retries_until_the_holder_releases(backend: Backend, key: bytes) -> None:
    holder = locks.acquire(backend, key, exclusive=True, command="prune")
    releaser = threading.Timer(0.05, holder.release)
    releaser.start()
    try:
        with locks.acquire(backend, key, exclusive=True, command="prune", wait=10) as lock:
            assert lock_names(backend) == {lock.name}
    finally:
        releaser.join()


def test_wait_gives_up_at_the_deadline(
    backend: Backend, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    real_sleep = time.sleep

    def recording_sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(locks.time, "sleep", recording_sleep)
    with (
        locks.acquire(backend, key, exclusive=True, command="prune"),
        pytest.raises(LockedError),
    ):
        locks.acquire(backend, key, exclusive=False, command="backup", wait=0.2)
    # it retried, and never slept past the deadline it was given
    assert slept and sum(slept) <= 0.2 + 1e-6


# -- refresh and loss -----------------------------------------------------------


class WatchedBackend(MemoryBackend):
    """Records lock deletions and can be told to fail writes."""

    def __init__(self) -> None:
        super().__init__()
        self.deleted = threading.Event()
        self.fail_writes = False
        self.write_attempted = threading.Event()

    def write(self, name: str, data: bytes) -> None:
        self.write_attempted.set()
        if self.fail_writes:
            raise BackendError("injected write failure")
        super().write(name, data)

    def delete(self, name: str) -> None:
        super().delete(name)
        self.deleted.set()


class Ticker:
    """A clock that moves on by one second each time it is read, or jumps when told."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        self.now += 1_000_000_000
        return self.now


def test_refresh_replaces_the_lock_file() -> None:
    backend = WatchedBackend()
    backend.create()
    key = crypto.MasterKeys.generate().index_key
    clock = Ticker()
    with locks.acquire(
        backend, key, exclusive=True, command="prune", clock=clock, refresh_every=0.01
    ) as lock:
        first_name, first_info = lock.name, lock.info
        assert backend.deleted.wait(HANG), "the refresh never replaced the lock file"
        assert lock.name != first_name
        assert lock.info.time_ns > first_info.time_ns
        assert lock_names(backend) == {lock.name}
        assert decode_lock(backend.read(lock.name), key).time_ns == lock.info.time_ns
        lock.check_alive()
    assert lock_names(backend) == set()


def test_lock_removed_by_someone_else_is_lost(backend: Backend, key: bytes) -> None:
    with locks.acquire(backend, key, exclusive=True, command="prune", refresh_every=0.01) as lock:
        deadline = time.monotonic() + HANG
        while not lock.lost and time.monotonic() < deadline:
            # Again and again: a refresh running during the listing may have
            # put a new file in place of the one removed.
            locks.remove_all(backend)
            time.sleep(0.01)
        assert lock.lost
        with pytest.raises(LockedError, match="lock was lost") as info:
            lock.check_alive()
        assert info.value.exit_code == EXIT_LOCKED
        # The refresh withdrew the replacement it had just written.
        assert lock_names(backend) == set()


def test_lock_not_refreshed_in_time_is_lost() -> None:
    backend = WatchedBackend()
    backend.create()
    key = crypto.MasterKeys.generate().index_key
    clock = Ticker()
    with locks.acquire(backend, key, exclusive=True, command="prune", clock=clock) as lock:
        clock.now += 8 * MINUTE_NS
        lock.check_alive()  # eight minutes without refresh: still ours
        clock.now += 2 * MINUTE_NS
        assert lock.lost  # others could call it stale soon: stop now
        with pytest.raises(LockedError, match="not refreshed for"):
            lock.check_alive()
        clock.now -= 10 * MINUTE_NS
        assert lock.lost  # for good, even if the clock looks fine again


def test_failing_refreshes_are_reported_in_the_loss() -> None:
    backend = WatchedBackend()
    backend.create()
    key = crypto.MasterKeys.generate().index_key
    clock = Ticker()
    with locks.acquire(
        backend, key, exclusive=True, command="prune", clock=clock, refresh_every=0.01
    ) as lock:
        backend.fail_writes = True
        # Two failed attempts: the first one's failure has then been recorded.
        for _ in range(2):
            backend.write_attempted.clear()
            assert backend.write_attempted.wait(HANG)
        clock.now += 10 * MINUTE_NS
        deadline = time.monotonic() + HANG
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(LockedError, match=r"not refreshed for .*injected write failure"):
            lock.check_alive()
        backend.fail_writes = False
    assert lock_names(backend) == set()


def test_refresh_interval_must_beat_staleness(backend: Backend, key: bytes) -> None:
    with pytest.raises(ValueError):
        locks.acquire(backend, key, exclusive=False, command="x", refresh_every=600)


def test_exit_with_error_keeps_the_error_even_if_release_fails(key: bytes) -> None:
    backend = WatchedBackend()
    backend.create()
    lock = locks.acquire(backend, key, exclusive=False, command="backup")

    def broken_delete(name: str) -> None:
        raise BackendError("injected delete failure")

    backend.delete = broken_delete  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="the real problem"), lock:
        raise RuntimeError("the real problem")
    with pytest.raises(BackendError):
        lock.release()  # a later release retries the delete, and reports it
    del backend.delete
    lock.release()
    assert lock_names(backend) == set()


# -- two real processes ---------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from cas.repo import locks
    from cas.backend.local import LocalBackend

    lock = locks.acquire(
        LocalBackend(sys.argv[1]), bytes.fromhex(sys.argv[2]), exclusive=True, command="child"
    )
    print("locked", flush=True)
    sys.stdin.readline()
    lock.release()
    """
)


def start_child(root: Path, key: bytes) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), key.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "locked\n"
    return child


def test_two_processes(tmp_path: Path, key: bytes) -> None:
    root = tmp_path / "repo"
    backend = LocalBackend(root)
    backend.create()

    # A child holding an exclusive lock keeps us out; once it exits normally
    # we get in.
    child = start_child(root, key)
    try:
        with pytest.raises(LockedError, match=f"pid {child.pid}"):
            locks.acquire(backend, key, exclusive=False, command="backup")
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()
    assert lock_names(backend) == set()
    with locks.acquire(backend, key, exclusive=False, command="backup"):
        pass

    # A child killed outright leaves its lock file behind, but its pid is dead
    # on this host, so the lock is stale at once (no ten-minute wait).
    child = start_child(root, key)
    child.send_signal(signal.SIGKILL)
    child.wait()  # reap it: a zombie would still answer kill(pid, 0)
    (left_behind,) = lock_names(backend)
    with locks.acquire(backend, key, exclusive=False, command="backup") as lock:
        assert lock_names(backend) == {lock.name}
    assert left_behind not in lock_names(backend)
