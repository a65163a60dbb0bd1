"""Repository locks (spec/format.md §13).

Commands that add to a repository (backup, forget) take a shared lock;
commands that remove data or rewrite the index (prune, rebuild-index) take
an exclusive one.  A lock is a sealed file ``locks/<sha256>``; there is no
compare-and-swap on object stores, so acquiring is optimistic:

1. list the locks, remove the stale ones, give up if a live one conflicts;
2. write our own lock file;
3. list again, and if a conflicting live lock has appeared meanwhile,
   delete ours and give up.

Step 3 is what makes this safe: of two conflicting lockers, the one that
lists last always sees the other's file, so they cannot both proceed.  They
may both give up; ``wait`` retries with jittered backoff, which breaks the
tie.  This needs storage whose listings show completed writes (local
directories, S3 since 2020).

A lock is stale when it has not been refreshed for ``STALE_AFTER``, or at
once when it was written on this host by a process that no longer exists.
Holders refresh their lock every ``REFRESH_EVERY`` from a daemon thread and
declare it lost (``check_alive`` raises) before others could call it stale,
so a long prune stops rather than run on after its lock was taken over.

Storage that refuses deletes (credentials without delete permission,
docs/deploy.md) does not stop a holder: a lock file the store will not
remove (AccessDenied) is left behind to go stale on time, as a crashed
holder's would, and listed in ``RepoLock.left_behind``; stale locks of
others it cannot remove are ignored as before and listed in
``RepoLock.stale_kept``.  Commands that must delete call ``require_delete``
before they take their lock, so they fail before doing any work.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import NamedTuple

from cas import crypto, failpoints
from cas.backend.base import Backend, ReadBackend
from cas.errors import AccessDenied, CasError, LockedError, ObjectNotFound
from cas.format.lock import LockInfo, decode_lock, encode_lock
from cas.ids import storage_id
from cas.repo import layout

__all__ = [
    "LOST_MARGIN",
    "REFRESH_EVERY",
    "STALE_AFTER",
    "Identity",
    "LockEntry",
    "LockInfo",
    "LockScan",
    "RepoLock",
    "acquire",
    "is_stale",
    "list_locks",
    "pid_alive",
    "remove_all",
    "remove_stale",
    "require_delete",
    "scan_locks",
]

STALE_AFTER = 600.0  # seconds without refresh after which anyone may remove a lock
REFRESH_EVERY = 120.0  # seconds between refreshes of a held lock
# A holder gives its lock up as lost this long before others may remove it,
# leaving room for clock skew between hosts and for a slow final write.
LOST_MARGIN = 60.0

# Retry delays of acquire(wait=...): short at first so a lock released soon
# is taken soon, growing so that many waiters do not hammer the storage.
_FIRST_RETRY = 0.1
_MAX_RETRY = 10.0

_NS = 1_000_000_000

Clock = Callable[[], int]
PidCheck = Callable[[int], bool]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host; True whenever it cannot tell."""
    if sys.platform == "win32":
        # On Windows os.kill(pid, 0) terminates the process instead of probing it.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        # PermissionError: it exists but belongs to another user.  Anything
        # else: unknown, and a live lock must never be taken for a dead one.
        return True
    return True


@dataclass(frozen=True)
class Identity:
    """Who takes a lock: written into the lock file and used to judge staleness."""

    hostname: str
    username: str
    pid: int

    @classmethod
    def current(cls) -> Identity:
        """This process on this host."""
        try:
            username = getpass.getuser()
        except Exception:
            # No login name in the environment or the password database (a
            # container running under an arbitrary uid): the uid will do.
            username = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
        return cls(socket.gethostname(), username, os.getpid())


class LockEntry(NamedTuple):
    """One readable lock file as found in a listing."""

    name: str
    info: LockInfo
    stale: bool


@dataclass(frozen=True)
class LockScan:
    """All lock files: the readable ones, oldest first, and those that could not be read."""

    entries: list[LockEntry]
    unreadable: list[tuple[str, str]]  # (name, reason): foreign or damaged files


def is_stale(info: LockInfo, now_ns: int, *, hostname: str, alive: PidCheck = pid_alive) -> bool:
    """Whether a lock may be removed: not refreshed for STALE_AFTER, or its process is gone.

    The process check applies only to locks written on ``hostname``: a pid
    from another host says nothing about the processes here.
    """
    if now_ns - info.time_ns > STALE_AFTER * _NS:
        return True
    return info.hostname == hostname and not alive(info.pid)


def scan_locks(
    backend: ReadBackend,
    lock_key: crypto.Sealer | bytes,
    *,
    clock: Clock = time.time_ns,
    pid_alive: PidCheck = pid_alive,
    hostname: str | None = None,
    skip: frozenset[str] = frozenset(),
) -> LockScan:
    """Read and judge every lock file (``hostname``: ours, by default this host's).

    Names in ``skip`` (our own lock, whose content we know) are not read.
    """
    host = socket.gethostname() if hostname is None else hostname
    now = clock()
    entries: list[LockEntry] = []
    unreadable: list[tuple[str, str]] = []
    for obj in backend.list(layout.LOCKS):
        if obj.name in skip:
            continue
        try:
            raw = backend.read(obj.name)
        except ObjectNotFound:
            continue  # released, or replaced by a refresh, since the listing
        try:
            info = decode_lock(raw, lock_key)
        except CasError as err:
            unreadable.append((obj.name, str(err)))
            continue
        entries.append(
            LockEntry(obj.name, info, is_stale(info, now, hostname=host, alive=pid_alive))
        )
    entries.sort(key=lambda e: (e.info.time_ns, e.name))
    unreadable.sort()
    return LockScan(entries, unreadable)


def list_locks(
    backend: ReadBackend,
    lock_key: crypto.Sealer | bytes,
    *,
    clock: Clock = time.time_ns,
    pid_alive: PidCheck = pid_alive,
    hostname: str | None = None,
) -> list[LockEntry]:
    """The readable lock files as (name, info, stale), oldest first; see ``scan_locks``."""
    return scan_locks(
        backend, lock_key, clock=clock, pid_alive=pid_alive, hostname=hostname
    ).entries


def remove_stale(
    backend: Backend,
    lock_key: crypto.Sealer | bytes,
    *,
    clock: Clock = time.time_ns,
    pid_alive: PidCheck = pid_alive,
    hostname: str | None = None,
) -> list[str]:
    """Delete the stale lock files; returns their names.  Unreadable files are kept."""
    scan = scan_locks(backend, lock_key, clock=clock, pid_alive=pid_alive, hostname=hostname)
    removed = [e.name for e in scan.entries if e.stale]
    for name in removed:
        backend.delete(name)
    return removed


def remove_all(backend: Backend) -> list[str]:
    """Delete every file under ``locks/``, live, stale or unreadable; returns their names.

    Only for a user who knows that no other process uses the repository: a
    holder whose lock is removed notices at its next refresh at the latest.
    """
    names = sorted(obj.name for obj in backend.list(layout.LOCKS))
    for name in names:
        backend.delete(name)
    return names


PROBE_COMMAND = "delete-probe"


def require_delete(
    backend: Backend,
    lock_key: crypto.Sealer | bytes,
    *,
    clock: Clock = time.time_ns,
    identity: Identity | None = None,
) -> None:
    """Raise AccessDenied if the storage refuses this client's deletes.

    A command that must delete calls this before it takes its lock.  It
    writes a shared lock file with command ``delete-probe`` and deletes it:
    a file that a refusal leaves behind blocks no prune (which reads the
    command, spec §13.5), is no snapshot writer, and goes stale like any
    lock of a process that stopped.  Probing with the command's own lock
    would leave, say, a ``prune`` lock that stops every prune for 10 minutes.
    """
    me = identity or Identity.current()
    now = clock()
    info = LockInfo(me.hostname, me.username, me.pid, now, False, PROBE_COMMAND, started_ns=now)
    raw = encode_lock(info, lock_key)
    name = layout.lock_name(storage_id(raw))
    backend.write(name, raw)
    try:
        backend.delete(name)
    except AccessDenied as err:
        short = name.rsplit("/", 1)[-1][:8]
        raise AccessDenied(f"it refused to delete lock file {short}, a probe") from err


def acquire(
    backend: Backend,
    lock_key: crypto.Sealer | bytes,
    *,
    exclusive: bool,
    command: str,
    clock: Clock = time.time_ns,
    wait: float = 0,
    pid_alive: PidCheck = pid_alive,
    identity: Identity | None = None,
    refresh_every: float = REFRESH_EVERY,
    on_wait: Callable[[LockedError, float], None] | None = None,
) -> RepoLock:
    """Lock the repository, shared or exclusive, and keep the lock refreshed until released.

    Raises LockedError naming a holder if a live conflicting lock exists (an
    exclusive lock conflicts with every lock, a shared one only with
    exclusive ones), after retrying for up to ``wait`` seconds.  Stale locks
    found on the way are removed; unreadable ones are ignored and reported
    in ``RepoLock.unreadable``.  ``on_wait`` is told before each wait why (the
    conflict) and how many seconds were waited so far.
    """
    if not 0 < refresh_every < STALE_AFTER - LOST_MARGIN:
        raise ValueError(f"refresh interval {refresh_every}s would let the lock go stale")
    me = identity or Identity.current()
    started = time.monotonic()
    deadline = started + max(wait, 0)
    delay = _FIRST_RETRY
    while True:
        try:
            name, info, unreadable, kept = _try_acquire(
                backend,
                lock_key,
                me,
                exclusive=exclusive,
                command=command,
                clock=clock,
                alive=pid_alive,
            )
            break
        except LockedError as err:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            if on_wait is not None:
                on_wait(err, time.monotonic() - started)
            # Jitter, so two lockers that backed off from each other do not collide again.
            time.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
        delay = min(delay * 2, _MAX_RETRY)
    lock = RepoLock(backend, lock_key, name, info, clock, unreadable)
    lock.stale_kept = kept
    lock._start(refresh_every)
    return lock


def _try_acquire(
    backend: Backend,
    lock_key: crypto.Sealer | bytes,
    me: Identity,
    *,
    exclusive: bool,
    command: str,
    clock: Clock,
    alive: PidCheck,
) -> tuple[str, LockInfo, list[tuple[str, str]], list[str]]:
    """One attempt of the list / write / list-again protocol; LockedError on conflict.

    Returns our lock's name and content, the unreadable lock files, and the
    stale ones the store refused to delete.
    """
    before = scan_locks(backend, lock_key, clock=clock, pid_alive=alive, hostname=me.hostname)
    kept: list[str] = []
    for entry in before.entries:
        # Best effort: the file is ignored as stale whether or not it goes.
        if entry.stale and not _delete_quietly(backend, entry.name):
            kept.append(entry.name)
    _raise_on_conflict(before.entries, exclusive, clock())

    now = clock()
    info = LockInfo(me.hostname, me.username, me.pid, now, exclusive, command, started_ns=now)
    raw = encode_lock(info, lock_key)
    name = layout.lock_name(storage_id(raw))
    backend.write(name, raw)
    failpoints.hit("lock-written")
    try:
        after = scan_locks(
            backend,
            lock_key,
            clock=clock,
            pid_alive=alive,
            hostname=me.hostname,
            skip=frozenset({name}),
        )
        # Give up on any conflict rather than pick a winner: the other locker
        # may already have finished its own second listing and be running.
        _raise_on_conflict([e for e in after.entries if e.name != name], exclusive, clock())
    except BaseException:
        _delete_quietly(backend, name)
        raise
    unreadable = sorted(set(before.unreadable) | set(after.unreadable))
    return name, info, unreadable, kept


def _raise_on_conflict(entries: Iterable[LockEntry], exclusive: bool, now_ns: int) -> None:
    for entry in entries:
        if not entry.stale and (exclusive or entry.info.exclusive):
            raise _locked_by(entry, now_ns)


def _locked_by(entry: LockEntry, now_ns: int) -> LockedError:
    i = entry.info
    age = _format_age(now_ns - i.time_ns)
    kind = "exclusive" if i.exclusive else "shared"
    return LockedError(
        f"{kind} lock {entry.name.rsplit('/', 1)[-1][:8]} held by {i.username}@{i.hostname}"
        f" (pid {i.pid}, command {i.command!r}, age {age})",
        lock=entry.name,
        hostname=i.hostname,
        username=i.username,
        pid=i.pid,
        command=i.command,
        exclusive=i.exclusive,
        age_s=(now_ns - i.time_ns) / _NS,
    )


def _format_age(ns: int) -> str:
    """``45s``, ``3m05s``, ``2h07m``; a lock from a clock ahead of ours shows as 0s."""
    s = max(ns, 0) // _NS
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _delete_quietly(backend: Backend, name: str) -> bool:
    """Delete during cleanup, where a failure must not hide the error being raised.

    Returns False only when the store refused the delete (AccessDenied).
    """
    try:
        backend.delete(name)
    except AccessDenied:
        return False
    except CasError:
        pass
    return True


class RepoLock:
    """A held lock; a context manager.  Obtain one from :func:`acquire`.

    A daemon thread rewrites the lock file with a fresh time every refresh
    interval (the new file first, then the old one is deleted, so the lock
    never vanishes in between).  If the lock file was removed by someone
    else, or could not be refreshed for so long that others may consider it
    stale, the lock is *lost*: ``lost`` becomes True for good and
    ``check_alive`` raises, and long operations must call it between steps.
    """

    def __init__(
        self,
        backend: Backend,
        lock_key: crypto.Sealer | bytes,
        name: str,
        info: LockInfo,
        clock: Clock,
        unreadable: list[tuple[str, str]],
    ) -> None:
        self._backend = backend
        self._lock_key = lock_key
        self._clock = clock
        self._name = name
        self._info = info
        self.unreadable = unreadable  # lock files ignored because they could not be read
        # Guards the fields below, and serialises a refresh against release().
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost_reason: str | None = None
        self._last_error: BaseException | None = None
        self._released = False
        self._leftovers: list[str] = []  # our old lock files whose deletion failed
        # Lock files of ours the store refused to delete (AccessDenied): left to go
        # stale, STALE_AFTER after the time in each, and not tried again.
        self.left_behind: list[tuple[str, LockInfo]] = []
        # Stale lock files of others that could not be deleted when acquiring.
        self.stale_kept: list[str] = []
        self._infos: dict[str, LockInfo] = {name: info}

    @property
    def name(self) -> str:
        """The current lock file's name (it changes with every refresh)."""
        with self._mutex:
            return self._name

    @property
    def info(self) -> LockInfo:
        """The current lock file's content."""
        with self._mutex:
            return self._info

    @property
    def exclusive(self) -> bool:
        """Whether this is an exclusive lock."""
        return self._info.exclusive

    @property
    def lost(self) -> bool:
        """Whether the lock can no longer be relied on (see the class docstring)."""
        with self._mutex:
            return self._why_lost() is not None

    def check_alive(self) -> None:
        """Raise LockedError if the lock was lost; call it before each step of a long job."""
        with self._mutex:
            reason = self._why_lost()
        if reason is not None:
            raise LockedError(
                f"lock was lost: {reason}; stopping so as not to damage the repository"
            )

    def release(self) -> None:
        """Stop refreshing and delete the lock file; a second call only retries failed deletes.

        Raises BackendError if a lock file could not be deleted (it becomes
        stale by itself once this process has ended); a delete the store refuses
        (AccessDenied) is no error: the file is added to ``left_behind``.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._mutex:
            if not self._released:
                self._released = True
                self._leftovers.append(self._name)
            self._delete_leftovers(raise_errors=True)

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.release()
            return
        # The error that ended the block matters more than a failed cleanup.
        with contextlib.suppress(CasError):
            self.release()

    # -- refreshing --------------------------------------------------------------

    def _start(self, interval: float) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="cas-lock-refresh", daemon=True
        )
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._refresh()
            except Exception as err:
                # Keep trying: a later refresh may succeed in time, and if none
                # does the lock's age marks it lost.  Printing is the CLI's job.
                with self._mutex:
                    self._last_error = err
                    self._why_lost()
            with self._mutex:
                if self._lost_reason is not None:
                    return

    def _refresh(self) -> None:
        with self._mutex:
            if self._stop.is_set() or self._why_lost() is not None:
                return
            info = replace(self._info, time_ns=self._clock())
            raw = encode_lock(info, self._lock_key)
            new_name = layout.lock_name(storage_id(raw))
            self._backend.write(new_name, raw)
            # Only now check that the old file is still there: checking before
            # the write would leave a window in which it could be removed
            # (and the lock taken over) unnoticed.
            try:
                self._backend.stat(self._name)
            except ObjectNotFound:
                self._lost_reason = f"lock file {self._name} was removed by another process"
                _delete_quietly(self._backend, new_name)
                return
            except BaseException:
                _delete_quietly(self._backend, new_name)
                raise
            self._leftovers.append(self._name)
            self._name, self._info = new_name, info
            self._infos[new_name] = info
            self._last_error = None
            self._delete_leftovers(raise_errors=False)

    def _why_lost(self) -> str | None:
        """The reason the lock is lost, or None; records it for good.  Hold the mutex."""
        if self._lost_reason is None and not self._released:
            age = self._clock() - self._info.time_ns
            if age > (STALE_AFTER - LOST_MARGIN) * _NS:
                why = f"not refreshed for {_format_age(age)}, others may consider it stale"
                if self._last_error is not None:
                    why += f" (last refresh failed: {self._last_error})"
                self._lost_reason = why
        return self._lost_reason

    def _delete_leftovers(self, *, raise_errors: bool) -> None:
        """Delete our superseded lock files; hold the mutex.  Failed ones stay listed."""
        failed: list[str] = []
        error: CasError | None = None
        for name in self._leftovers:
            try:
                self._backend.delete(name)
            except AccessDenied:
                # Never removable by us: it goes stale by its time, like a crashed holder's.
                self.left_behind.append((name, self._infos[name]))
            except CasError as err:
                failed.append(name)
                error = err
            else:
                self._infos.pop(name, None)
        self._leftovers = failed
        if error is not None and raise_errors:
            raise error
