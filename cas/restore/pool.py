"""Writer processes: restore's per-file work on every core.

Creating a file, writing it and applying its metadata is Python work per
file, and one interpreter runs it on one core.  The restorer's main process
walks the snapshot's trees, creates the directories, restores hardlinked
entries itself and applies each directory's metadata once everything in it
is done; the other entries of a directory go in batches (up to
``BATCH_FILES`` files or ``BATCH_BYTES`` bytes) to ``count`` writer
processes (cas/restore/worker.py), each with the directory's descriptor
(SCM_RIGHTS: no path, so any depth works and nothing planted in the target
is followed), the nodes, and where each of their blobs is stored.  A
writer reads and opens those blobs on its own backend and writes the files
as the restorer does in one process (``Restorer.restore_leaves``), then
reports what it did.  Each writer has at most ``per_writer`` batches
waiting (the restorer holds further ones for it, up to a bound), which
bounds the directories held open.  Each pack is read by one writer
(:class:`PackOwners`) and a file goes to the writer of its first blob's
pack, so a directory's files may go to several writers: a 64 KiB unit
shared by neighbouring blobs (spec §9.6) is then read once, not once by
each writer given a batch next to it.

With ``write_share`` (``--workers`` below the usable cores) the main process
takes parts of packs too (2 MiB of a pack at a time, so that its share can follow
its load; a 64 KiB unit at the edge of a part may then be read by both): a
part met for the first time is its own when it has used less CPU time so
far than the writer that used least (each writer reports its CPU time with
every finished batch).  It writes the files of its parts in the
one-process way, a few at a time while each writer has at least a batch's
worth out, so the walk keeps the writers fed.

What a writer cannot read (a damaged copy of a blob stored twice, a blob
missing from its list) comes back to be tried again in the main process,
which has the whole index.  A writer that dies is reported and its batches
are restored again by the main process, comparing with what the writer
left (its temporary names are removed); a writer that cannot start leaves
all the work to the main process.

Wire format (private to one run, frames of cas/ipc.py).  To a writer: one
``{"spec", "options", "prefix", "connections", "actions", "budget", "max_request"[, "units"]}``
frame, then per batch of N directories (at most restorer.BATCH_DIRS) a frame carrying their N
descriptors: ``{"j": id, "g": [[fresh, clean, shown
path, [node maps]] per directory, in the order of the descriptors], "loc": [[blob, pack
number, offset, length], ...], "packs": [pack ID by number, ...]}``.  From a writer:
``["p", bytes]`` progress (every 8 MiB written), ``["d", id, [[summary, [[action, name],
...] (empty unless "actions"), [warning, ...], [name to retry, ...]] per directory],
requests so far, CPU seconds so far, bytes written since the last progress]`` when a
batch is done,
``["x", message]`` when the restore must stop (the disk is full).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from cas import ipc
from cas.format.tree import Node
from cas.repo.index import Location
from cas.repo.readerspec import ReaderSpec
from cas.restore.blobstream import BUDGET, MAX_REQUEST

WORKER_MODULE = "cas.restore.worker"
PER_WRITER = 4  # batches in flight per writer process
# ... or, when the main process writes a share (``small_batches``), twice as many while
# those hold fewer files than this: batches of a handful of files each (small
# directories handed out as soon as the writer had room) kept a writer waiting for its
# next batch while the main process wrote (with two writers: no faster, not used).
FULL_FILES = 64
# With the default number of writers, the first files of a restore are written by
# the main process: a restore this small is over before processes would start.
AUTO_START_AFTER = 256
# Loading without threads (a local repository): this far ahead, in reads this large.
LOCAL_BUDGET = 4 << 20
# Read units a writer keeps when a re-read is only a pread: each pack has one writer and
# is read in order, so 32 units (2 MiB) read the linux tree's packs 1.03 times over
# against 128 units' 1.0, and leave each writer 6 MiB smaller (docs/performance.md,
# "Fewer read units kept by each restore writer").  Over S3, where a re-read is a
# request, a writer keeps the one-process restore's UNITS_KEPT.
LOCAL_UNITS_KEPT = 32
LOCAL_MAX_REQUEST = 256 << 10


Item = Node | dict[Any, Any]  # a node, or its map from the tree as it was stored


def _name(item: Item) -> Any:
    return item.get("name") if isinstance(item, dict) else item.name


class PackOwners:
    """Which writer reads each pack.

    Blobs stored one after another share 64 KiB read units (spec §9.6): a
    pack read by one writer has each unit read once, where files handed out
    by directory had the unit at the boundary of two batches read by both
    writers.  A backup fills a few packs side by side, each file going to
    one of them, so a restore meets those packs side by side too: a pack met
    for the first time goes to the writer with the fewest packs met in the
    last ``window`` blobs handed out, and the writers share the work evenly.
    """

    def __init__(self, window: int = 512) -> None:
        self.window = window
        self._owner: dict[Hashable, int] = {}  # pack ID (or part) -> its writer
        self._recent: dict[Hashable, int] = {}  # pack (or part) -> when last met, lately
        self._count = 0  # blobs handed out

    def owner(self, pack_id: Hashable, writers: int, here: Callable[[], bool] | None = None) -> int:
        """The writer (0 to ``writers`` - 1) that reads pack ``pack_id`` (or a part of a
        pack: any key), or ``writers``, the main process, for a pack met for the first
        time when ``here()`` says so."""
        self._count += 1
        self._recent[pack_id] = self._count
        w = self._owner.get(pack_id)
        if w is None and here is not None and here():
            w = self._owner[pack_id] = writers
        if w is None:
            since = self._count - self.window
            self._recent = {p: n for p, n in self._recent.items() if n > since}
            active = [0] * writers
            for p in self._recent:
                o = self._owner.get(p)
                if o is not None and o < writers:
                    active[o] += 1
            w = self._owner[pack_id] = active.index(min(active))
        return w


@dataclass
class Group:
    """The files of one directory in a batch for a writer."""

    directory: Any
    fd: int
    target: bytes
    nodes: list[Item]
    fresh: bool
    clean: bool
    planned: bool = False  # written by the main process: its blobs are planned there
    cost: float = 0.0  # estimated CPU seconds to write it (FILE_COST, BYTE_COST)


@dataclass
class Finished:
    """A batch a writer finished."""

    directory: Any
    summary: dict[str, Any]
    actions: list[tuple[str, bytes]]
    warnings: list[str]
    retry: list[Item]


@dataclass
class WriterEvent:
    """One thing a writer reported: progress, a finished batch, an abort, or its death."""

    bytes_done: int = 0
    done: list[Finished] = field(default_factory=list)  # per directory of the batch
    aborted: str | None = None
    redo: list[tuple[Any, list[Item]]] = field(default_factory=list)
    lost: str | None = None  # a writer died: the warning to show
    tmp_prefix: bytes = b""  # the dead writer's temporary names


@dataclass
class _Writer:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    prefix: bytes
    jobs: dict[int, list[tuple[Any, list[Item]]]] = field(default_factory=dict)
    alive: bool = True
    error: str | None = None  # what it said before it died
    requests: dict[str, Any] | None = None  # its backend's requests so far
    cpu: float = 0.0  # its CPU seconds, as of its last finished batch
    files: int = 0  # in the batches out at it
    costs: dict[int, float] = field(default_factory=dict)  # estimated cost per batch out
    thread: threading.Thread | None = None


class WriterPool:
    """``count`` writer processes, started with the first batch (or by ``start``:
    the restore command starts them before the index load when the snapshot is
    large enough to use them)."""

    def __init__(
        self,
        spec: ReaderSpec,
        count: int,
        *,
        numeric_owner: bool = False,
        verify: bool = False,
        delete: bool = False,
        connections: int = 4,
        per_writer: int = PER_WRITER,
    ) -> None:
        self.spec = spec
        self.count = max(1, count)
        self.per_writer = max(1, per_writer)
        self._options = {"numeric_owner": numeric_owner, "verify": verify, "delete": delete}
        self._connections = connections
        self.actions = True  # writers report each entry's action (the restorer sets it)
        self.small_batches = False  # up to twice per_writer batches of few files (it too)
        self._writers: list[_Writer] | None = None
        self._gone: list[_Writer] = []  # after close
        self._events: queue.Queue[tuple[_Writer, Any]] = queue.Queue()
        self._next_job = 0
        self._in_flight = 0
        self._closing = False
        self.started = 0  # writer processes started (for tests and statistics)

    # -- the restorer's side ------------------------------------------------

    def full(self, writer: int | None = None) -> bool:
        """Writer number ``writer`` (if alive; else every live writer) has its
        share of batches: wait for an event first."""
        writers = self._writers or []
        if writer is not None and writer < len(writers) and writers[writer].alive:
            return self._full(writers[writer])
        live = [w for w in writers if w.alive]
        return bool(live) and all(self._full(w) for w in live)

    def _full(self, w: _Writer) -> bool:
        n = len(w.jobs)
        if n < self.per_writer:
            return False
        return not self.small_batches or n >= 2 * self.per_writer or w.files >= FULL_FILES

    def files_out(self) -> int | None:
        """The fewest files out at a live writer (None: none alive)."""
        return min((w.files for w in self._writers or [] if w.alive), default=None)

    def size(self) -> int:
        """Writers started (numbered from 0, alive or not)."""
        return len(self._writers or [])

    def load(self, writer: int) -> int:
        """Batches out at writer number ``writer`` (a dead one's go to the others)."""
        writers = self._writers or []
        if writer < len(writers) and writers[writer].alive:
            return len(writers[writer].jobs)
        return min((len(w.jobs) for w in writers if w.alive), default=0)

    def work(self, writer: int) -> float | None:
        """CPU seconds writer number ``writer`` used (as it last reported) and the
        estimated cost of the batches out at it; None if it is dead."""
        writers = self._writers or []
        if writer < len(writers) and writers[writer].alive:
            w = writers[writer]
            return w.cpu + sum(w.costs.values())
        return None

    def busy(self) -> bool:
        """Batches are out at writers."""
        return self._in_flight > 0

    def has_news(self) -> bool:
        """An event is waiting."""
        # The queue's length without its lock (asked before every entry of the walk).
        return bool(self._events.queue)

    def submit(
        self, groups: list[Group], where: dict[bytes, Location], *, writer: int | None = None
    ) -> bool:
        """Hand a batch (the files of one or more directories) to writer number
        ``writer`` (if it is alive; else the least busy writer); False if none can
        take it."""
        writers = self._start()
        self._next_job += 1
        job = self._next_job
        packs: dict[bytes, int] = {}
        msg: dict[str, Any] = {
            "j": job,
            "g": [
                [
                    g.fresh,
                    g.clean,
                    g.target,
                    [n.to_doc() if isinstance(n, Node) else n for n in g.nodes],
                ]
                for g in groups
            ],
            "loc": [
                [b, packs.setdefault(loc.pack_id, len(packs)), loc.offset, loc.length]
                for b, loc in where.items()
            ],
        }
        msg["packs"] = list(packs)  # each pack ID once, by its number in "loc"
        while True:
            live = [w for w in writers if w.alive]
            if not live:
                return False
            w = min(live, key=lambda w: len(w.jobs))
            if writer is not None and writer < len(writers) and writers[writer].alive:
                w = writers[writer]
            try:  # the directories' descriptors with the frame, in one system call
                ipc.send(w.sock, msg, [g.fd for g in groups])
            except OSError:
                w.alive = False  # its reader reports the batches it had
                continue
            w.jobs[job] = [(g.directory, g.nodes) for g in groups]
            w.files += sum(len(g.nodes) for g in groups)
            w.costs[job] = sum(g.cost for g in groups)
            self._in_flight += 1
            return True

    def next_event(self) -> WriterEvent:
        """The next event (waits for one)."""
        w, msg = self._events.get()
        if msg is None:
            return self._died(w)
        kind = msg[0]
        if kind == "e":
            w.error = str(msg[1])
            return WriterEvent()
        if kind == "p":
            return WriterEvent(bytes_done=int(msg[1]))
        if kind == "x":
            return WriterEvent(aborted=str(msg[1]))
        _, job, results, requests, *rest = msg
        if requests:
            w.requests = requests
        if rest:
            w.cpu = float(rest[0])
        progress = int(rest[1]) if len(rest) > 1 else 0
        groups = w.jobs.pop(job)
        w.files -= sum(len(nodes) for _, nodes in groups)
        w.costs.pop(job, None)
        self._in_flight -= 1
        done = []
        for (directory, nodes), (summary, actions, warnings, retry) in zip(
            groups, results, strict=True
        ):
            again = set(retry)
            done.append(
                Finished(
                    directory,
                    summary,
                    [(a, bytes(n)) for a, n in actions],
                    list(warnings),
                    [n for n in nodes if _name(n) in again] if again else [],
                )
            )
        return WriterEvent(bytes_done=progress, done=done)

    def requests(self) -> dict[str, Any]:
        """Storage requests the writers made (by kind, bytes, estimated cost), summed."""
        total: dict[str, Any] = {}
        for w in self._writers or self._gone:
            for k, v in (w.requests or {}).items():
                total[k] = total.get(k, 0) + v
        return total

    def close(self) -> None:
        """Stop the writers: at once if batches are still out (the restore stopped),
        else when they see their socket close."""
        self._closing = True
        for w in self._writers or []:
            if self._in_flight:
                with contextlib.suppress(OSError):
                    w.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(OSError):
                w.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread too
            if w.thread is not None:
                w.thread.join()
            ipc.stop(w.proc, w.sock)
        self._gone, self._writers = self._writers or [], []

    # -- processes ----------------------------------------------------------

    def start(self) -> None:
        """Start the writer processes now (else with the first batch)."""
        self._start()

    def _start(self) -> list[_Writer]:
        if self._writers is not None:
            return self._writers
        self._writers = []
        base = b".cas-restore-" + os.urandom(6).hex().encode()
        for i in range(self.count):
            prefix = base + b"-w%d-" % i
            # The backend may need the user's storage credentials (AWS_*): passed on as
            # they are; the key goes over the socket.
            init = {
                "spec": self.spec.encode(),
                "options": self._options,
                "prefix": prefix,
                "connections": self._connections,
                "actions": self.actions,
                **self._loading(),
            }
            started = ipc.start(WORKER_MODULE, init, storage_access=True)
            if started is None:
                break
            w = _Writer(*started, prefix)
            w.thread = threading.Thread(
                target=self._read, args=(w,), name=f"cas-writer-{i}", daemon=True
            )
            w.thread.start()
            self._writers.append(w)
            self.started += 1
        return self._writers

    def _loading(self) -> dict[str, int]:
        """How much a writer loads ahead, and in reads of at most how many bytes.

        Without loading threads (a local repository) nothing is gained by reading
        ahead, and large reads only leave a writer's heap large: 2 MiB in reads of
        256 KiB (linux restore: summed peak 146-150 MiB instead of 232-237, no
        slower).  With threads (S3), the one-process budget shared out, and reads
        as large as ever (each is a request).
        """
        if self._connections == 0:
            return {
                "budget": LOCAL_BUDGET,
                "max_request": LOCAL_MAX_REQUEST,
                "units": LOCAL_UNITS_KEPT,
            }
        return {"budget": max(BUDGET // self.count, 4 << 20), "max_request": MAX_REQUEST}

    def _read(self, w: _Writer) -> None:
        """Pass the writer's messages on as events; None when it is gone."""
        try:
            while True:
                self._events.put((w, ipc.recv(w.sock)))
        except (OSError, EOFError, ValueError):
            pass
        self._events.put((w, None))

    def _died(self, w: _Writer) -> WriterEvent:
        w.alive = False
        if self._closing:
            return WriterEvent()
        how = ipc.ended(w.proc, w.error)
        redo = [group for groups in w.jobs.values() for group in groups]
        self._in_flight -= len(w.jobs)
        w.jobs.clear()
        w.costs.clear()
        w.files = 0
        return WriterEvent(
            redo=redo,
            lost=f"restore writer process {w.proc.pid} {how}; "
            f"its {len(redo)} unfinished batches are restored by the main process",
            tmp_prefix=w.prefix,
        )
