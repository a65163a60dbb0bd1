"""Backup worker processes, seen from the main process (cas/backup/worker.py does the work).

``SaverPool`` starts ``count`` workers, hands each batch of files to the
least loaded live one, and turns what they send into events for the
archiver.  Two kinds of message are answered at once on the thread that
reads the worker's socket, without waiting for the archiver: a worker's
question which chunks are new (``claim``: the main process's index and the
blobs in flight decide, and each new blob is claimed for that worker) and
the report of a stored pack (``adopt``: indexed like the main process's own
packs).  Batch results, the end of a flush, a worker's fatal error and its
death are queued for the archiver (``next_event``).

A worker that dies takes blobs it had claimed but not stored with it, and
files already answered may name them; so the backup stops with an error
(no snapshot is written; the packs stored so far are indexed and the next
run reuses them) rather than saving a snapshot that could miss data.
"""

from __future__ import annotations

import contextlib
import pickle
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cas import ipc
from cas.crypto import BlobType
from cas.errors import CasError
from cas.format.pack import PackEntry
from cas.repo.readerspec import ReaderSpec

WORKER_MODULE = "cas.backup.worker"
PER_WORKER = 3  # batches in flight per worker
# With the default number of workers, the first files are read by the main process:
# a backup this small is over before processes would start.
AUTO_START_FILES = 256
AUTO_START_BYTES = 64 << 20


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
    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[int, int] = field(default_factory=dict)  # job -> bytes in it
    alive: bool = True
    error: str | None = None  # what it said before it died
    requests: dict[str, Any] | None = None
    flushed: bool = False
    thread: threading.Thread | None = None

    def send(self, value: Any, fd: int | None = None) -> None:
        with self.lock:
            ipc.send(self.sock, value, fd)

    def load(self) -> int:
        return sum(self.jobs.values())


class SaverPool:
    """``count`` backup worker processes (started by ``start``)."""

    def __init__(
        self,
        spec: ReaderSpec,
        count: int,
        *,
        claim: Callable[[list[bytes]], bytes],
        adopt: Callable[[bytes, int, list[PackEntry]], None],
        add_sealed: Callable[[bytes, list[PackEntry]], None],
        level: int | None,
        pack_size: int,
        chunker: tuple[int, int, int],
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
        self._events: queue.Queue[tuple[_Worker, Any]] = queue.Queue()
        self._next_job = 0
        self._closing = False
        self.started = 0  # processes started (statistics, tests)

    @property
    def running(self) -> bool:
        """Whether workers were started and at least one can take work."""
        return any(w.alive for w in self._workers or [])

    def start(self) -> bool:
        """Start the workers (once); whether any could start."""
        if self._workers is not None:
            return self.running
        self._workers = []
        for i in range(self.count):
            # The backend may need the user's storage credentials (AWS_*): passed on as
            # they are; the key goes over the socket.
            started = ipc.start(WORKER_MODULE, self._init, storage_access=True)
            if started is None:
                break
            w = _Worker(*started)
            w.thread = threading.Thread(
                target=self._read, args=(w,), name=f"cas-backup-worker-{i}", daemon=True
            )
            w.thread.start()
            self._workers.append(w)
            self.started += 1
        return self.running

    def full(self) -> bool:
        """Every live worker has its share of batches: wait for an event first."""
        live = [w for w in self._workers or [] if w.alive]
        return bool(live) and all(len(w.jobs) >= self.per_worker for w in live)

    def busy(self) -> bool:
        """Batches are out at workers."""
        return any(w.jobs for w in self._workers or [])

    def submit(self, dir_fd: int, shown: bytes, files: list[list[Any]], size: int) -> int:
        """Hand a batch of files in ``dir_fd`` to the least loaded worker; its job number.

        Raises WorkerFailed if no worker can take it.
        """
        self._next_job += 1
        job = self._next_job
        msg = {"j": job, "dir": shown, "f": files}
        for w in sorted(
            (w for w in self._workers or [] if w.alive), key=lambda w: (len(w.jobs), w.load())
        ):
            try:
                w.send(msg, dir_fd)
            except OSError:
                continue  # its reader thread reports its death
            w.jobs[job] = size
            return job
        raise WorkerFailed("no backup worker process is left")

    def next_event(self) -> BatchDone | None:
        """The next finished batch (waits for one); None for an event that needs nothing
        of the caller.  Raises the error a worker stopped with, or WorkerFailed."""
        w, msg = self._events.get()
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
        if kind == "!":  # an error in this process, on the worker's reading thread
            w.alive = False
            raise msg[1]
        raise WorkerFailed(f"backup worker process {w.proc.pid} sent {kind!r}")

    def has_news(self) -> bool:
        """An event is waiting."""
        return not self._events.empty()

    def flush(self) -> None:
        """Have every worker store its open packs; returns once each has (and has
        reported them, so the index has them)."""
        live = [w for w in self._workers or [] if w.alive]
        for w in live:
            w.flushed = False
            w.send(["f"])
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
        self._closing = True
        for w in self._workers or []:
            if w.jobs or not w.flushed:
                with contextlib.suppress(OSError):
                    w.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(OSError):
                w.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread too
            if w.thread is not None:
                w.thread.join()
            ipc.stop(w.proc, w.sock)

    # -- the reading threads --------------------------------------------------------

    def _read(self, w: _Worker) -> None:
        """Answer the worker's questions, index its packs, queue the rest; None at the end."""
        try:
            while True:
                msg = ipc.recv(w.sock)
                kind = msg[0]
                if kind == "a":
                    w.send(["n", self._claim([bytes(b) for b in msg[1]])])
                elif kind == "k":
                    self._adopt(bytes(msg[1]), msg[2], _entries(msg[3]))
                elif kind == "t":
                    self._add_sealed(bytes(msg[1]), _entries(msg[2]))
                else:
                    self._events.put((w, msg))
        except (OSError, EOFError, ValueError):
            pass
        except Exception as e:  # claim or adopt failed here (an index file not written)
            self._events.put((w, ["!", e]))
            return
        self._events.put((w, None))

    def _died(self, w: _Worker) -> None:
        w.alive = False
        raise WorkerFailed(f"backup worker process {w.proc.pid} {ipc.ended(w.proc, w.error)}")


def _entries(wire: list[list[Any]]) -> list[PackEntry]:
    return [PackEntry(bytes(b), BlobType(t), off, n, raw) for b, t, off, n, raw in wire]


def _unpickle(raw: bytes) -> BaseException:
    try:
        e = pickle.loads(raw)  # from a worker this process started, over a private socket
    except Exception:
        return WorkerFailed("a backup worker process failed")
    return e if isinstance(e, BaseException) else WorkerFailed("a backup worker process failed")
