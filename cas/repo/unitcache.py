"""The read units at the ends of recent ranged reads, so the next read does not fetch them again.

In a version 2 repository every ranged read of a pack covers whole aligned
units (spec §9.6).  Reads of neighbouring blobs (the last files of one
directory and the first of the next, restored one after the other; a mount
or ``copy`` reading blob after blob) often need the same unit at their
boundary, and without this each read fetched it again: a restore of the
``linux`` tree read its packs six times over.  A :class:`UnitCache` keeps the
first and last unit of each read (the only ones a read of neighbouring blobs
can leave partly unused), ``UNITS_KEPT`` of them at most.  A read takes the
units it finds here off its ends (or waits for a thread that is reading
them now) and asks the storage for the units in between: still one range of
whole units, so the provider learns nothing new.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

# Units kept per reader (64 KiB each in a version 2 repository: 8 MiB at most; with 32,
# evictions left the linux restore at 1.6 times its packs, with 128 at 1.1).
UNITS_KEPT = 128


class UnitCache:
    """Whole units of packs, by (pack ID, unit number); thread-safe."""

    def __init__(self, unit: int, kept: int = UNITS_KEPT) -> None:
        self.unit = unit
        self.kept = kept
        self._lock = threading.Lock()
        self._units: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._reading: dict[tuple[bytes, int], threading.Event] = {}

    def read(
        self,
        fetch: Callable[[int, int], bytes],
        pack_id: bytes,
        offset: int,
        length: int,
        size: int,
    ) -> bytes:
        """``length`` bytes from ``offset`` of a pack of ``size`` bytes; ``fetch(start,
        length)`` reads whole units (the last cut at ``size``) from the storage."""
        unit = self.unit
        first, last = offset // unit, (offset + length - 1) // unit
        have: dict[int, bytes] = {}
        wait: dict[int, threading.Event] = {}
        done = threading.Event()
        with self._lock:
            lo, hi = first, last
            while lo <= hi and self._take(pack_id, lo, have, wait):
                lo += 1
            while hi >= lo and self._take(pack_id, hi, have, wait):
                hi -= 1
            mine = sorted({lo, hi}) if lo <= hi else []
            for k in mine:
                self._reading[(pack_id, k)] = done
        middle = b""
        try:
            if mine:
                start = lo * unit
                middle = fetch(start, min((hi + 1) * unit, size) - start)
                with self._lock:
                    self._put(pack_id, lo, middle[:unit])
                    if hi != lo:
                        self._put(pack_id, hi, middle[(hi - lo) * unit :])
        finally:
            with self._lock:
                for k in mine:
                    self._reading.pop((pack_id, k), None)
            done.set()
        for k, event in wait.items():  # after publishing ours: no thread waits in a circle
            event.wait()
            with self._lock:
                got = self._units.get((pack_id, k))
            if got is None:  # its read failed, or it is gone already: read it here
                got = fetch(k * unit, min((k + 1) * unit, size) - k * unit)
            have[k] = got
        skip = offset - first * unit
        if not have:
            return middle if skip == 0 and length == len(middle) else middle[skip : skip + length]
        parts = [have[k] for k in range(first, lo)]
        parts.append(middle)
        parts.extend(have[k] for k in range(max(hi, lo - 1) + 1, last + 1))
        # The range's bytes of each part, joined once (joining the parts and slicing
        # that held the range twice over).
        pieces, end = [], offset + length
        pos = first * unit
        for part in parts:
            lo_, hi_ = max(offset - pos, 0), min(end - pos, len(part))
            if lo_ < hi_:
                pieces.append(memoryview(part)[lo_:hi_])
            pos += len(part)
        return b"".join(pieces)

    def forget(self, pack_id: bytes) -> None:
        """Drop the units of a pack (a blob in them did not open: the next read fetches
        them again, in case the bytes were damaged on their way)."""
        with self._lock:
            for key in [k for k in self._units if k[0] == pack_id]:
                del self._units[key]

    def _take(
        self, pack_id: bytes, k: int, have: dict[int, bytes], wait: dict[int, threading.Event]
    ) -> bool:
        """Whether unit ``k`` is here (into ``have``) or on its way (into ``wait``)."""
        key = (pack_id, k)
        got = self._units.get(key)
        if got is not None:
            self._units.move_to_end(key)
            have[k] = got
            return True
        event = self._reading.get(key)
        if event is not None:
            wait[k] = event
            return True
        return False

    def _put(self, pack_id: bytes, k: int, data: bytes) -> None:
        self._units[(pack_id, k)] = data
        self._units.move_to_end((pack_id, k))
        while len(self._units) > self.kept:
            self._units.popitem(last=False)
