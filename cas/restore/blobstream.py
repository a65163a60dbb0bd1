"""Data blobs loaded ahead of their use, many per storage request.

Restore needs blobs in a known order (the files of a directory, one after
another), and that order is mostly the order in which backup packed them.
A :class:`BlobStream` is told that order with :meth:`BlobStream.plan`; it
merges planned blobs that lie close together in one pack into one ranged
read, whatever their places in the plan (backup spreads blobs over several
open packs at random, spec §9.5, so a directory's files alternate between
packs; thousands of small files still cost a handful of requests), runs
the reads and the decryption on worker threads (libsodium, zstd and BLAKE3
release the GIL; on S3 each is a request in flight), and keeps at most
``budget`` bytes of loaded blobs ahead of the consumer.

A blob whose range cannot be read is retried on its own, so damage to one
part of a pack costs only the blobs it touches; a blob that still fails
raises its error from :meth:`BlobStream.get`, for the file that needs it.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

from cas.crypto import BlobType
from cas.errors import CasError
from cas.repo.index import Location

# Blobs this close together in a pack are read in one request (the bytes in
# between are read and dropped: cheaper than another request, even locally).
GAP = 256 * 1024
MAX_REQUEST = 8 << 20
BUDGET = 32 << 20
INLINE_MAX = 1 << 20


@runtime_checkable
class PackReader(Protocol):
    """What a blob stream needs from a repository."""

    def locate(self, blob_id: bytes) -> Location: ...

    def read_pack_range(self, pack_id: bytes, offset: int, length: int) -> bytes: ...

    def open_blob(
        self, blob_type: BlobType, blob_id: bytes, sealed: bytes, raw_length: int | None = None
    ) -> bytes | bytearray: ...

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes | bytearray: ...


_Loaded = dict[bytes, "bytes | bytearray | CasError"]


class BlobStream:
    """Loads planned data blobs ahead, grouped by pack; hands them out with ``get``."""

    def __init__(
        self,
        repo: PackReader,
        threads: int,
        *,
        budget: int = BUDGET,
        gap: int = GAP,
        max_request: int = MAX_REQUEST,
    ) -> None:
        self.repo = repo
        # 0: each read of less than INLINE_MAX bytes runs when it is issued, here
        # (a hand-off to a thread costs more than it saves); larger ones on one thread,
        # so a large blob is decrypted while the one before it is written.
        self.threads = max(0, threads)
        self.budget = budget
        # Reads in whole units (a version 2 repository, spec §9.6): a gap of a whole unit
        # or more would fetch units that other files need later, and read them twice.
        unit = getattr(repo, "read_unit", 0)
        self.gap = min(gap, unit - 1) if isinstance(unit, int) and unit > 0 else gap
        self.max_request = max_request
        self.requests = 0  # ranged reads issued (for tests and statistics)
        self._plan: deque[tuple[bytes, int]] = deque()
        self._uses: Counter[bytes] = Counter()  # planned uses not yet taken by get/discard
        self._ahead: dict[bytes, tuple[Future[_Loaded], int]] = {}
        self._ahead_bytes = 0
        # The blob ``get`` handed out last: still being written until the next ``get``,
        # so it counts against the budget (two blobs larger than the budget are not
        # held at once: one written, the next loaded ahead).
        self._out = 0
        self._pool: ThreadPoolExecutor | None = None
        # Planned blobs not yet requested, per pack, by offset: (offset, blob ID, size).
        # Entries of blobs requested since are skipped when met.
        self._queued: dict[bytes, list[tuple[int, bytes, int]]] = {}

    def plan(self, blobs: Iterable[tuple[bytes, int]]) -> None:
        """Append ``(blob ID, size)`` pairs in the order ``get`` will ask for them."""
        for blob_id, size in blobs:
            self._plan.append((blob_id, size))
            self._uses[blob_id] += 1
            try:
                loc = self.repo.locate(blob_id)
            except CasError:
                continue  # its request reports the error
            bisect.insort(self._queued.setdefault(loc.pack_id, []), (loc.offset, blob_id, size))
        self._pump()

    def discard(self, blobs: Iterable[tuple[bytes, int]]) -> None:
        """Planned blobs that will not be asked for after all (a file skipped)."""
        for blob_id, _ in blobs:
            if self._uses[blob_id] > 0:
                self._release(blob_id)

    def get(self, blob_id: bytes, size: int) -> bytes | bytearray:
        """The blob's plaintext; raises its CasError if it could not be loaded."""
        self._out = 0  # the caller is done with the one before
        if self._uses[blob_id] > 0 and blob_id not in self._ahead:
            self._pump(until=blob_id)
        entry = self._ahead.get(blob_id)
        if entry is None:  # not planned: load it alone
            return self.repo.load_blob(BlobType.DATA, blob_id, size)
        loaded = entry[0].result()
        value = loaded[blob_id]
        self._release(blob_id)
        self._out = size
        self._pump()
        if isinstance(value, CasError):
            raise value
        return value

    def close(self) -> None:
        """Stop the worker threads; what was loaded ahead is dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._plan.clear()
        self._uses.clear()
        self._ahead.clear()
        self._queued.clear()
        self._ahead_bytes = 0
        self._out = 0

    # -- scheduling ---------------------------------------------------------

    def _release(self, blob_id: bytes) -> None:
        self._uses[blob_id] -= 1
        if self._uses[blob_id] > 0:
            return
        del self._uses[blob_id]
        entry = self._ahead.pop(blob_id, None)
        if entry is not None:
            self._ahead_bytes -= entry[1]
            if entry[0].done() and not entry[0].cancelled():
                entry[0].result().pop(blob_id, None)  # free it now, not with its group

    def _pump(self, until: bytes | None = None) -> None:
        """Issue reads for the planned blobs while the next one fits in the budget beside
        what is held (or up to ``until``); one blob larger than the budget is read when
        nothing else is held.  (A blob that only had to start below the budget let a
        restore writer hold up to a whole large blob more: `big`'s writers 39-45 MiB
        instead of 37-40, docs/performance.md.)"""
        while self._plan:
            blob_id, size = self._plan[0]
            if self._uses[blob_id] <= 0 or blob_id in self._ahead:
                self._plan.popleft()
                continue  # discarded, or already on its way
            held = self._ahead_bytes + self._out
            if (self._ahead or self._out) and held + size > self.budget and until is None:
                return
            self._plan.popleft()
            self._request(blob_id, size)
            if blob_id == until:
                until = None

    def _request(self, blob_id: bytes, size: int) -> None:
        """One ranged read: this blob and the planned ones right after it in the same pack."""
        try:
            loc = self.repo.locate(blob_id)
        except CasError as e:
            failed: _Loaded = {blob_id: e}
            self._submit([(blob_id, size, None)], lambda: failed)
            return
        group = self._neighbours(blob_id, size, loc)
        first, last = group[0][2], group[-1][2]
        assert first is not None and last is not None
        start, end = first.offset, last.offset + last.length
        self._submit(group, lambda: self._load(loc.pack_id, start, end, group))

    def _neighbours(
        self, blob_id: bytes, size: int, loc: Location
    ) -> list[tuple[bytes, int, Location | None]]:
        """``blob_id`` and the planned blobs around it in its pack, not yet requested,
        with gaps of at most ``gap``, ``max_request`` bytes in all and no more than
        the budget leaves room for (they may come late in the plan), by offset."""
        room = self.budget - self._ahead_bytes - self._out - size
        queued = self._queued.get(loc.pack_id, [])
        at = bisect.bisect_left(queued, (loc.offset, b""))
        start, end = loc.offset, loc.offset + loc.length
        seen = {blob_id}
        after: list[tuple[bytes, int, Location | None]] = []
        before: list[tuple[bytes, int, Location | None]] = []
        i = at
        while i < len(queued):
            offset, nid, nsize = queued[i]
            i += 1
            if self._uses[nid] <= 0 or nid in self._ahead or nid in seen:
                continue
            nloc = self.repo.locate(nid)
            if offset < end or offset > end + self.gap:
                if offset < end:
                    continue  # a copy stored twice at once; or this blob's own entry
                break
            if offset + nloc.length - start > self.max_request or nsize > room:
                break
            room -= nsize
            after.append((nid, nsize, nloc))
            seen.add(nid)
            end = offset + nloc.length
        i = at - 1
        while i >= 0:
            offset, nid, nsize = queued[i]
            i -= 1
            if self._uses[nid] <= 0 or nid in self._ahead or nid in seen:
                continue
            nloc = self.repo.locate(nid)
            if offset + nloc.length > start or start - offset - nloc.length > self.gap:
                break
            if end - offset > self.max_request or nsize > room:
                break
            room -= nsize
            before.append((nid, nsize, nloc))
            seen.add(nid)
            start = offset
        # drop what was taken (and every stale entry met) from the pack's queue
        if queued:
            self._queued[loc.pack_id] = [
                q for q in queued if q[1] not in seen and self._uses[q[1]] > 0
            ]
        before.reverse()
        return [*before, (blob_id, size, loc), *after]

    def _submit(
        self, group: list[tuple[bytes, int, Location | None]], job: Callable[[], _Loaded]
    ) -> None:
        if self.threads == 0 and sum(size for _, size, _ in group) < INLINE_MAX:
            future: Future[_Loaded] = Future()
            future.set_result(job())  # _load turns every CasError into a result
        else:
            if self._pool is None:
                n = max(1, self.threads)
                self._pool = ThreadPoolExecutor(n, thread_name_prefix="cas-load")
            future = self._pool.submit(job)
        self.requests += 1
        for blob_id, size, _ in group:
            self._ahead[blob_id] = (future, size)
            self._ahead_bytes += size

    def _load(
        self, pack_id: bytes, start: int, end: int, group: list[tuple[bytes, int, Location | None]]
    ) -> _Loaded:
        """Read the range and open each blob in it (on a worker thread)."""
        out: _Loaded = {}
        try:
            raw = self.repo.read_pack_range(pack_id, start, end - start)
            if len(raw) != end - start:
                raise CasError(f"short read of pack {pack_id.hex()}")
        except CasError:
            # One by one, so a damaged or short pack costs only what it must.
            for blob_id, size, _ in group:
                try:
                    out[blob_id] = self.repo.load_blob(BlobType.DATA, blob_id, size)
                except CasError as e:
                    out[blob_id] = e
            return out
        for blob_id, size, loc in group:
            assert loc is not None
            sealed = raw[loc.offset - start : loc.offset - start + loc.length]
            try:
                out[blob_id] = self.repo.open_blob(BlobType.DATA, blob_id, sealed, size)
            except CasError as e:
                forget = getattr(self.repo, "forget_units", None)
                if forget is not None:  # damaged on the way? read its units again
                    forget(pack_id)
                try:  # the repository reads another copy if the blob is stored twice
                    out[blob_id] = self.repo.load_blob(BlobType.DATA, blob_id, size)
                except CasError:
                    out[blob_id] = e
        return out
