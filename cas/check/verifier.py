"""``check --read-data`` on every core: packs verified in helper processes.

Verifying a pack (its SHA-256 name, its header, every blob opened and
re-hashed) is C work per byte but Python work per blob, and a repository of
small files has many blobs: on one interpreter the second core idles.  A
:class:`VerifierPool` starts ``count`` processes (``python -m
cas.check.verifier FD``); each gets the repository's location, backend
options and key over its socket (cas/repo/readerspec.py), then pack IDs, and
answers each with the outcome of ``verify_pack`` on a backend of its own.
Each process runs ``threads`` verifications at once (more than one where
storage latency dominates, as on S3).

The same processes salvage packs for prune's repack (``salvage``): each reads
a pack, proves it and the blobs to keep, and sends back those blobs' sealed
bytes, so the main process only packs and stores them.

Results come back in the order the packs were given.  A process that dies
is reported in ``lost`` and its packs are done by the caller's own
function instead; so is every pack when no process can start.

Wire format (frames of cas/ipc.py): to a helper ``{"spec", "threads"}``, then
``[pack ID, None]`` (verify) or ``[pack ID, [blob ID, ...]]`` (salvage those)
frames; from it ``[pack ID, None or pickled CasError, its storage requests so
far, None or [sealed bytes, [[blob ID, type, offset, length, raw length], ...]]]``.
"""

from __future__ import annotations

import contextlib
import pickle
import select
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cas import crypto, failpoints, ipc
from cas.backend import request_summary
from cas.crypto import BlobType
from cas.errors import CasError
from cas.format.pack import PackEntry
from cas.repo.blobreader import BlobRef, reseal
from cas.repo.index import Location
from cas.repo.readerspec import ReaderSpec, open_located
from cas.wording import counted

MODULE = "cas.check.verifier"

# A salvaged pack: the sealed bytes of the blobs kept, and their entries in them.
Salvaged = tuple[bytes, list[PackEntry]]


@dataclass
class _Helper:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    out: deque[bytes] = field(default_factory=deque)  # packs sent, not answered
    requests: dict[str, Any] | None = None  # its backend's requests so far


class VerifierPool:
    """``count`` verifying processes, each ``threads`` packs at a time."""

    def __init__(
        self,
        spec: ReaderSpec,
        count: int,
        threads: int = 1,
        role: str = "check",
        target: tuple[str, bytes, int | None, str | None] | None = None,
        share: bool = False,
    ) -> None:
        self.spec = spec
        # The calling process takes jobs too, one at a time, whenever every helper has
        # its window full and no answer is waiting (``here`` does them): on N cores,
        # N - 1 helpers and the caller do the work of N processes with one interpreter
        # fewer (check, whose main process waits for the helpers otherwise).
        self.share = share
        # (key type, key material, zstd level, padding) of the repository ``reseal``
        # seals for
        self.target = target
        self.role = role  # the command, in messages
        self.count = max(1, count)
        self.threads = max(1, threads)
        self.lost: list[str] = []  # one message per process that died
        self.started = 0
        self.shared = 0  # jobs the calling process did itself (``share``)
        self.requests: dict[str, Any] = {}  # the helpers' storage requests, summed

    def verify(
        self,
        pack_ids: list[bytes],
        here: Callable[[bytes], object],
        idle: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[bytes, CasError | None]]:
        """``(pack ID, None or its CasError)`` for each pack, in order; ``here`` verifies
        a pack in this process when no helper can.  ``idle`` is other work of the caller,
        done a slice at a time whenever every helper has its window full and no answer is
        waiting, before this process takes packs itself (``share``); it returns whether
        any is left."""
        jobs = [(p, None) for p in pack_ids]
        for pack_id, _, error, _ in self._run(jobs, lambda p, _: here(p), idle):
            yield pack_id, error

    def salvage(
        self,
        jobs: list[tuple[bytes, set[bytes]]],
        here: Callable[[bytes, set[bytes]], Salvaged],
    ) -> Iterator[tuple[bytes, Salvaged]]:
        """For each ``(pack ID, blob IDs to keep)``, in order: the kept blobs' sealed
        bytes and entries (Repository.salvage), done in the helpers (``here`` where
        none can); the first pack that fails raises its error."""
        for pack_id, _, error, result in self._run(
            [(p, ["salvage", sorted(keep)]) for p, keep in jobs],
            lambda p, arg: here(p, set(arg[1])),
        ):
            if error is not None:
                raise error
            assert result is not None
            yield pack_id, result

    def reseal(
        self,
        jobs: Iterable[tuple[bytes, list[BlobRef]]],
        here: Callable[[list[BlobRef]], Salvaged],
    ) -> Iterator[tuple[bytes, Salvaged]]:
        """For each ``(key, blobs)``, in order: the blobs read from this pool's
        repository and sealed again with the ``target`` keys it was made with (copy),
        their sealed bytes and entries.  A batch a helper could not do is done by
        ``here`` (which may find another copy of a damaged blob); its error is raised."""
        wire = ((key, ["copy", [_ref_wire(r) for r in refs]]) for key, refs in jobs)
        for key, arg, error, result in self._run(wire, lambda _, arg: here(_refs(arg[1]))):
            if error is not None:  # here: the index may know another copy
                yield key, here(_refs(arg[1]))
                continue
            assert result is not None
            yield key, result

    def _run(
        self,
        jobs: Iterable[tuple[bytes, Any]],
        here: Callable[[bytes, Any], Any],
        idle: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[bytes, Any, CasError | None, Any]]:
        """``(key, argument, error, result)`` for each job, in order.  Jobs are taken from
        ``jobs`` only as the helpers have room for them (``2 × threads`` each), so a
        caller may produce them as it goes (copy walks trees while blobs travel).
        ``idle`` (see ``verify``) is called while it has work, instead of waiting."""
        helpers = self._start()
        source = iter(jobs)
        args: dict[bytes, Any] = {}
        order: deque[bytes] = deque()  # every job taken, in order
        todo: deque[bytes] = deque()  # taken, not sent
        done: dict[bytes, tuple[CasError | None, Any]] = {}
        window = 2 * self.threads

        def take() -> bool:
            job = next(source, None)
            if job is None:
                return False
            args[job[0]] = job[1]
            order.append(job[0])
            todo.append(job[0])
            return True

        try:
            while order or take():
                key = order[0]
                while key not in done:
                    live = [h for h in helpers if h.sock.fileno() >= 0]
                    for h in live:
                        while len(h.out) < window and (todo or take()):
                            nxt = todo.popleft()
                            if not self._send(h, nxt, args[nxt]):
                                todo.appendleft(nxt)
                                break
                    live = [h for h in helpers if h.sock.fileno() >= 0]
                    if not live:  # none left: the rest here
                        done[key] = _here(here, key, args[key])
                        with contextlib.suppress(ValueError):
                            todo.remove(key)
                        continue
                    if idle is not None:  # the caller's own work first, a slice at a time
                        if not self._receive(live, done, here, args, wait=False) and not idle():
                            idle = None
                        continue
                    mine = self.share and bool(todo or take())
                    if not self._receive(live, done, here, args, wait=not mine) and mine:
                        job = todo.popleft()  # the oldest not sent: done here
                        done[job] = _here(here, job, args[job])
                        self.shared += 1
                order.popleft()
                error, result = done.pop(key)
                yield key, args.pop(key), error, result
        finally:
            for h in helpers:
                self._stop(h)
                for k, v in (h.requests or {}).items():
                    self.requests[k] = self.requests.get(k, 0) + v

    # -- helpers ----------------------------------------------------------------

    def _start(self) -> list[_Helper]:
        helpers = []
        for _ in range(self.count):
            init: dict[str, Any] = {"spec": self.spec.encode(), "threads": self.threads}
            if self.target is not None:
                init["target"] = list(self.target)
            started = ipc.start(MODULE, init, storage_access=True)
            if started is None:
                break
            h = _Helper(*started)
            helpers.append(h)
            self.started += 1
        return helpers

    def _send(self, h: _Helper, pack_id: bytes, arg: Any) -> bool:
        try:
            ipc.send(h.sock, [pack_id, arg])
        except OSError:
            return False  # it died: the next receive finds out
        h.out.append(pack_id)
        return True

    def _receive(
        self,
        live: list[_Helper],
        done: dict[bytes, tuple[CasError | None, Any]],
        here: Callable[[bytes, Any], Any],
        args: dict[bytes, Any],
        wait: bool = True,
    ) -> bool:
        """Wait for answers (``wait``: else take only those already there); a helper
        that closed has its packs done here.  Whether any helper was ready."""
        waiting = select.poll()  # not select(): descriptors may be above 1024
        for h in live:
            if h.out:
                waiting.register(h.sock, select.POLLIN)
        ready = {fd for fd, _ in waiting.poll(None if wait else 0)}
        for h in live:
            if h.sock.fileno() not in ready:
                continue
            try:
                pack_id, error, requests, result = ipc.recv(h.sock)
            except (OSError, EOFError, ValueError):
                self._died(h, done, here, args)
                continue
            if requests:
                h.requests = requests
            with contextlib.suppress(ValueError):
                h.out.remove(bytes(pack_id))
            done[bytes(pack_id)] = (
                None if error is None else _error(error),
                None if result is None else _salvaged(result),
            )
        return bool(ready)

    def _died(
        self,
        h: _Helper,
        done: dict[bytes, tuple[CasError | None, Any]],
        here: Callable[[bytes, Any], Any],
        args: dict[bytes, Any],
    ) -> None:
        self._stop(h)
        how = ipc.ended(h.proc)
        n = len(h.out)
        self.lost.append(
            f"{self.role} process {h.proc.pid} {how}; its {counted(n, 'pack')} "
            f"{'was' if n == 1 else 'were'} done by the main process"
        )
        while h.out:
            pack_id = h.out.popleft()
            done[pack_id] = _here(here, pack_id, args[pack_id])

    def _stop(self, h: _Helper) -> None:
        if h.sock.fileno() < 0:
            return
        if h.out:  # stopped early (an interrupt, a failure): no need to finish
            with contextlib.suppress(OSError):
                h.proc.kill()
        ipc.stop(h.proc, h.sock)


def _here(fn: Callable[[bytes, Any], Any], pack_id: bytes, arg: Any) -> tuple[CasError | None, Any]:
    try:
        return None, fn(pack_id, arg)
    except CasError as e:
        return e, None


def _entries_wire(entries: list[PackEntry]) -> list[list[Any]]:
    return [[e.blob_id, int(e.type), e.offset, e.length, e.raw_length] for e in entries]


def _ref_wire(r: BlobRef) -> list[Any]:
    loc = r.location
    return [int(r.type), r.blob_id, loc.pack_id, loc.offset, loc.length, r.raw_length]


def _refs(wire: list[Any]) -> list[BlobRef]:
    return [
        BlobRef(BlobType(t), bytes(b), Location(bytes(p), off, n), raw)
        for t, b, p, off, n, raw in wire
    ]


def _salvaged(wire: Any) -> Salvaged:
    body, entries = wire
    return bytes(body), [
        PackEntry(bytes(b), BlobType(t), off, n, raw) for b, t, off, n, raw in entries
    ]


def _error(raw: Any) -> CasError:
    """The helper's CasError, as raised there (same class and message)."""
    try:
        error = pickle.loads(bytes(raw))  # from our own helper process
    except Exception as e:
        return CasError(f"check process sent an unreadable answer: {e}")
    return error if isinstance(error, CasError) else CasError(str(error))


# -- the helper process -------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    # pieces of packs and blobs of up to 8 MiB come and go: in their own mappings,
    # given back when freed, not left in the heap above the process's resting size
    ipc.keep_heap_small()
    init = ipc.recv(sock)
    reader = open_located(ReaderSpec.decode(bytes(init["spec"])))
    sending = threading.Lock()

    target = init.get("target")
    target_keys = None if target is None else crypto.key_factory(target[0], bytes(target[1]))

    def work(key: bytes, arg: Any) -> None:
        result: Any = None
        try:
            if arg is None:
                reader.verify_pack(key)
                failpoints.hit("check-verify-pack")
            elif arg[0] == "salvage":
                body, entries = reader.salvage(key, {bytes(b) for b in arg[1]})
                failpoints.hit("prune-salvage-pack")
                result = [body, _entries_wire(entries)]
            else:  # "copy"
                if target_keys is None:
                    raise CasError("no target keys for a copy")
                body, entries = reseal(
                    reader.load_at, _refs(arg[1]), target_keys, target[2], target[3]
                )
                failpoints.hit("copy-reseal-batch")
                result = [body, _entries_wire(entries)]
            answer: Any = None
        except CasError as e:
            result = None
            try:
                answer = pickle.dumps(e)
            except Exception:  # an error that does not pickle: its class and message
                answer = pickle.dumps(CasError(f"{type(e).__name__}: {e}"))
        with sending:
            ipc.send(sock, [key, answer, request_summary(reader.backend), result])

    threads = int(init["threads"])
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        while True:
            key, arg = ipc.recv(sock)
            if pool is None:
                work(bytes(key), arg)
            else:
                pool.submit(work, bytes(key), arg)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        reader.close()


def main(argv: list[str]) -> None:
    """Entry point: ``python -m cas.check.verifier FD``."""
    ipc.run_helper(argv, _serve)


if __name__ == "__main__":
    main(sys.argv)
