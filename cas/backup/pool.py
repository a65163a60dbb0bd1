"""Backup worker processes, seen from the main process (cas/backup/worker.py does the work).

``SaverPool`` starts ``count`` workers, hands each batch of files (or of a new
directory's file names: ``submit_names``) to the least loaded live one, and
turns what they send into events for the archiver.  Some messages are dealt
with as soon as they are read, between two entries of the walk: a worker's
question which chunks are new (``claim``: the main process's index and the
blobs in flight decide, and each new blob is claimed for that worker), the
report of a stored pack (``adopt``: indexed like the main process's own packs)
and, at the end, the sealed blobs of a worker's last pack (``add_sealed``:
packed with the main process's own).  Batch results, the end of a flush, a
worker's fatal error and its death are queued for the archiver
(``next_event``).  No thread reads the sockets: the walk would compete with it
for the GIL (each ``readdir`` and ``lstat`` releases it).

A worker that dies takes blobs it had claimed but not stored with it, and
files already answered may name them; so the backup stops with an error
(no snapshot is written; the packs stored so far are indexed and the next
run reuses them) rather than saving a snapshot that could miss data.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cas import ipc
from cas.errors import CasError
from cas.format.pack import BLOB_TYPES, PackColumns, PackEntry
from cas.repo.readerspec import ReaderSpec

WORKER_MODULE = "cas.backup.worker"
PER_WORKER = 3  # batches in flight per worker
# With the default number of workers, the first files are read by the main process:
# a backup this small is over before processes would start.
AUTO_START_FILES = 256
AUTO_START_BYTES = 64 << 20
_RECV = 1 << 20  # bytes read from a worker's socket at a time
# While workers run, the main process gives the free pages of its malloc heap back at
# most this often (seconds): the messages it decodes, the blobs it reads and seals and
# the entries of packs it indexes come and go in between longer-lived allocations, and
# the free space between them would stay resident (10-18 MiB at a `linux` backup's
# peak, spread over up to 7 arenas before ``one_arena``).
TRIM_EVERY = 0.5
_U32 = struct.Struct("<I")  # a frame's length (cas/ipc.py)
# What became of a file handed to a worker by name (worker.py ``names``): saved,
# ``[SAVED, encoded node, size seen, bytes added, new blobs, bytes read, warnings]``;
# skipped, ``[SKIPPED, warnings, bytes read]``; handed back to the main process, ``[BACK]``;
# not looked at, ``[AGAIN]``: a worker reads at most NAMES_BYTES of files of one batch of
# names (their sizes are not known before), the rest is handed out again, split among
# the workers, so a directory of large files keeps every worker busy.
SAVED, SKIPPED, BACK, AGAIN = 0, 1, 2, 3
NAMES_BYTES = 2 << 20
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class WorkerFailed(CasError):
    """{detail}; the backup stopped without a snapshot (what it stored is kept: run it again)"""


@dataclass
class BatchDone:
    """A batch a worker finished: its job number and the result of each file."""

    job: int
    results: list[list[Any]]


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    jobs: dict[int, int] = field(default_factory=dict)  # job -> bytes in it
    alive: bool = True
    error: str | None = None  # what it said before it died
    requests: dict[str, Any] | None = None
    flushed: bool = False
    received: bytearray = field(default_factory=bytearray)  # not yet a whole frame

    def load(self) -> int:
        return sum(self.jobs.values())


class SaverPool:
    """``count`` backup worker processes (started by ``start``).

    Everything runs on the caller's thread: their messages are read when the
    archiver asks for news (``has_news``, between the entries it walks) or
    waits for an event, so no thread of this process competes for the GIL
    with the walk.
    """

    def __init__(
        self,
        spec: ReaderSpec,
        count: int,
        *,
        claim: Callable[[list[bytes]], bytes],
        adopt: Callable[[bytes, int, PackColumns], None],
        add_sealed: Callable[[bytes, list[PackEntry]], None],
        level: int | None,
        pack_size: int,
        chunker: tuple[int, int, int, str],
        connections: int,
        per_worker: int = PER_WORKER,
    ) -> None:
        self.count = max(1, count)
        self.per_worker = max(1, per_worker)
        self._claim = claim
        self._adopt = adopt
        self._add_sealed = add_sealed
        self._init = {
            "spec": spec.encode(),
            "level": level,
            "pack_size": pack_size,
            "chunker": list(chunker),
            "connections": connections,
        }
        self._workers: list[_Worker] | None = None
        self._by_fd: dict[int, _Worker] = {}
        self._poll = select.poll()  # not select(): descriptors may be above 1024
        self._events: deque[tuple[_Worker, Any]] = deque()
        self._next_job = 0
        self._recv_buf = bytearray(_RECV)
        self._recv_view = memoryview(self._recv_buf)
        self._trimmed = 0.0  # time.monotonic() of the last trim_heap
        self.trims = 0  # how often (statistics, tests)
        self.started = 0  # processes started (statistics, tests)
        # Made before the backup starts a thread (its sealing and upload threads come
        # with its first blob): every thread of this process then allocates from one
        # malloc arena, and what one thread frees serves all (ipc.one_arena).
        ipc.one_arena()

    @property
    def running(self) -> bool:
        """Whether workers were started and at least one can take work."""
        return any(w.alive for w in self._workers or [])

    def start(self) -> bool:
        """Start the workers (once); whether any could start."""
        if self._workers is not None:
            return self.running
        ipc.keep_heap_small()  # the workers' last packs come here (add_sealed)
        self._workers = []
        for _ in range(self.count):
            # The backend may need the user's storage credentials (AWS_*): passed on as
            # they are; the key goes over the socket.
            started = ipc.start(WORKER_MODULE, self._init, storage_access=True)
            if started is None:
                break
            w = _Worker(*started)
            self._workers.append(w)
            self._by_fd[w.sock.fileno()] = w
            self._poll.register(w.sock, select.POLLIN)
            self.started += 1
        return self.running

    def full(self) -> bool:
        """Every live worker has its share of batches: wait for an event first."""
        live = [w for w in self._workers or [] if w.alive]
        return bool(live) and all(len(w.jobs) >= self.per_worker for w in live)

    def worker_cpu(self) -> float | None:
        """CPU seconds the live workers have used, on average (from /proc); None where
        that cannot be read."""
        total, live = 0.0, 0
        for w in self._workers or []:
            if not w.alive:
                continue
            try:
                with open(f"/proc/{w.proc.pid}/stat", "rb") as f:
                    total += cpu_seconds(f.read())
            except (OSError, IndexError, ValueError):
                return None
            live += 1
        return total / live if live else None

    def submit(self, dir_fd: int, shown: bytes, files: list[list[Any]], size: int) -> int:
        """Hand a batch of files in ``dir_fd`` to the least loaded worker; its job number.

        Raises WorkerFailed if no worker can take it.
        """
        self._next_job += 1
        return self._send({"j": self._next_job, "dir": shown, "f": files}, dir_fd, size)

    def submit_names(
        self, dir_fd: int, shown: bytes, names: list[bytes], larger_than: int | None
    ) -> int:
        """Hand files of a new directory by name alone (the worker ``lstat``s them and
        answers with their encoded nodes, cas/backup/worker.py ``names``); its job number.

        Raises WorkerFailed if no worker can take it.
        """
        self._next_job += 1
        msg: dict[str, Any] = {"j": self._next_job, "dir": shown, "n": names}
        if larger_than is not None:
            msg["x"] = larger_than
        return self._send(msg, dir_fd, 0)

    def _send(self, msg: dict[str, Any], dir_fd: int, size: int) -> int:
        job: int = msg["j"]
        for w in sorted(
            (w for w in self._workers or [] if w.alive), key=lambda w: (len(w.jobs), w.load())
        ):
            try:
                ipc.send(w.sock, msg, dir_fd)
            except OSError:
                continue  # reading its socket reports its death
            w.jobs[job] = size
            return job
        raise WorkerFailed("no backup worker process is left")

    def has_news(self) -> bool:
        """Whether an event is waiting (what the workers sent is read first)."""
        if not self._events:
            self._pump(0)
        return bool(self._events)

    def next_event(self) -> BatchDone | None:
        """The next finished batch (waits for one); None for an event that needs nothing
        of the caller.  Raises the error a worker stopped with, or WorkerFailed."""
        while not self._events:
            self._pump(None)
        w, msg = self._events.popleft()
        if msg is None:
            self._died(w)
        kind = msg[0]
        if kind == "d":
            w.jobs.pop(msg[1], None)
            return BatchDone(msg[1], msg[2])
        if kind == "f":
            w.flushed = True
            w.requests = msg[1] or None
            return None
        if kind == "e":
            w.error = str(msg[1])
            return None
        if kind == "x":
            w.alive = False
            raise _unpickle(msg[1])
        raise WorkerFailed(f"backup worker process {w.proc.pid} sent {kind!r}")

    def flush(self) -> None:
        """Have every worker store its full packs and hand over its last one's blobs;
        returns once each has (so the index has them all)."""
        live = [w for w in self._workers or [] if w.alive]
        for w in live:
            w.flushed = False
            with contextlib.suppress(OSError):  # gone: reading its socket reports that
                ipc.send(w.sock, ["f"])
        while not all(w.flushed for w in live):
            event = self.next_event()
            if event is not None:
                raise WorkerFailed("a backup worker process finished a batch nobody gave it")

    def requests(self) -> dict[str, Any]:
        """Storage requests the workers made, summed."""
        total: dict[str, Any] = {}
        for w in self._workers or []:
            for k, v in (w.requests or {}).items():
                total[k] = total.get(k, 0) + v
        return total

    def close(self) -> None:
        """Stop the workers: at once if batches are still out (the backup failed), else
        when they see their socket close."""
        for w in self._workers or []:
            if w.jobs or not w.flushed:
                with contextlib.suppress(OSError):
                    w.proc.send_signal(signal.SIGKILL)
            ipc.stop(w.proc, w.sock)

    # -- reading the sockets ----------------------------------------------------------

    def _pump(self, timeout: int | None) -> None:
        """Read what the workers sent (waiting up to ``timeout`` ms, None: until
        something comes): answer questions, index stored packs, queue the rest."""
        now = time.monotonic()
        if now - self._trimmed >= TRIM_EVERY:
            self._trimmed = now
            self.trims += 1
            ipc.trim_heap()
        for fd, _ in self._poll.poll(timeout):
            w = self._by_fd[fd]
            try:
                # Into one buffer kept for the run: recv() would allocate (and, in a
                # process that keeps its heap small, map and unmap) a fresh 1 MiB each time.
                got = w.sock.recv_into(self._recv_buf)
            except OSError:
                got = 0
            if not got:
                self._poll.unregister(fd)
                self._events.append((w, None))
                continue
            data = self._recv_view[:got]
            if not w.received:
                # The frames that came whole are decoded where they are; only the
                # start of one still coming is copied aside.
                w.received += data[self._frames(w, data) :]
                continue
            w.received += data
            with memoryview(w.received) as view:
                used = self._frames(w, view)
            del w.received[:used]

    def _frames(self, w: _Worker, data: memoryview) -> int:
        """Handle the whole frames at the start of ``data``; the bytes they took."""
        start, end = 0, len(data)
        while end - start >= _U32.size:
            (n,) = _U32.unpack_from(data, start)
            begin = start + _U32.size
            if end - begin < n:
                break
            msg = msgpack.unpackb(data[begin : begin + n], raw=False)  # copies what it keeps
            start = begin + n
            self._handle(w, msg)
        return start

    def _handle(self, w: _Worker, msg: Any) -> None:
        kind = msg[0]
        if kind == "a":
            answer = self._claim(msg[1])  # msgpack's bin type decodes to bytes
            with contextlib.suppress(OSError):  # gone: reading its socket reports that
                ipc.send(w.sock, ["n", answer])
        elif kind == "k":
            self._adopt(msg[1], msg[2], _columns(msg[3:]))
        elif kind == "t":
            self._add_sealed(msg[1], _entries(msg[2]))
        else:
            self._events.append((w, msg))

    def _died(self, w: _Worker) -> None:
        w.alive = False
        raise WorkerFailed(f"backup worker process {w.proc.pid} {ipc.ended(w.proc, w.error)}")


def cpu_seconds(stat: bytes) -> float:
    """User plus system CPU seconds from a /proc/PID/stat line: fields 14 and 15, in
    clock ticks (proc(5)), after the command name, which may hold spaces and
    parentheses.  IndexError or ValueError for a line that is not one."""
    fields = stat.rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _columns(wire: list[Any]) -> PackColumns:
    """A stored pack's blobs as a worker sends them (worker.py ``entry_columns``): their
    IDs, types, offsets, lengths and raw lengths."""
    ids, types, code, numbers = wire
    n = len(types)
    values = array("Q")
    if code in ("I", "Q") and len(ids) == 32 * n:
        values = array(code)
        with contextlib.suppress(ValueError):  # not a whole number of values: refused below
            values.frombytes(numbers)
    if len(values) != 3 * n or len(numbers) != 3 * n * values.itemsize:
        raise WorkerFailed("a backup worker process sent a pack report that is not one")
    return PackColumns(ids, types, values[:n], values[n : 2 * n], values[2 * n :])


def _entries(wire: list[list[Any]]) -> list[PackEntry]:
    # One per blob the workers store: BlobType(t) (an enum call) cost more than the rest.
    types = BLOB_TYPES
    return [PackEntry(b, types[t], off, n, raw) for b, t, off, n, raw in wire]


def _unpickle(raw: bytes) -> BaseException:
    try:
        e = pickle.loads(raw)  # from a worker this process started, over a private socket
    except Exception:
        return WorkerFailed("a backup worker process failed")
    return e if isinstance(e, BaseException) else WorkerFailed("a backup worker process failed")
