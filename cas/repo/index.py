"""The in-memory master index: blob ID -> (pack, offset, length), compact.

A Python dict of bytes keys costs about 200 bytes per blob; a million-blob
repository would need 200 MB just to know what it holds.  Here every blob is
one fixed-width record in sorted ``bytes`` buffers:

    ID bytes 2..31 (30 bytes) | pack number | offset | stored length

The first ID byte selects one of 256 segments (one ``bytes`` each), the
second one of the segment's 256 buckets (a table of u32 record numbers);
neither is stored.  Field widths are the fewest bytes that hold the largest
value present.  Blob IDs are keyed hashes and so uniformly spread, which
keeps segments and buckets even and a lookup to a few comparisons.

New blobs collect in a small dict (ID -> one int packing pack number, offset,
length and the position the record will take in its segment, found by the
duplicate check) that is folded into the segments whenever it grows past a
32nd of them.  A fold rebuilds only the segments it adds to, one at a time,
by copying slices of the old segment around the new records: the peak is the
index plus the pending dict plus one segment, never a second copy of all
records, and no fold turns old records into Python objects.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from operator import add

ID_LEN = 32
TAIL = ID_LEN - 2
SEGMENTS = 256
STRIDE = 257  # table entries per segment: 256 bucket starts and the segment's end

# Pending values pack (pack number, position, offset, length) into one int;
# values too large for these fields (never written by cas) are kept as a tuple.
_P_BITS, _POS_BITS, _O_BITS = 32, 32, 64
_POS_SHIFT = _P_BITS
_O_SHIFT = _POS_SHIFT + _POS_BITS
_N_SHIFT = _O_SHIFT + _O_BITS
_P_MASK, _POS_MASK, _O_MASK = (1 << _P_BITS) - 1, (1 << _POS_BITS) - 1, (1 << _O_BITS) - 1

# Fold pending blobs into the segments at this many, or at count >> PENDING_SHIFT.
PENDING_MIN = 16384
PENDING_SHIFT = 5
# What one pending blob costs: dict slot, ID bytes object, packed int (measured).
PENDING_ENTRY_BYTES = 160


@dataclass(frozen=True, slots=True)
class Location:
    """Where a blob's sealed bytes are stored."""

    pack_id: bytes
    offset: int
    length: int


def _width(value: int) -> int:
    return max(1, (value.bit_length() + 7) // 8)


class _Run:
    """Sorted fixed-width records in 256 segments, with a bucket table.

    ``table[s * STRIDE + b]`` is the number of the first record of bucket
    ``b`` within segment ``s``; ``table[s * STRIDE + 256]`` is the segment's
    record count.  Segment ``s`` holds the records of IDs starting with byte
    ``s``; bucket ``b`` those whose second byte is ``b``.
    """

    __slots__ = ("count", "rsize", "segs", "table", "widths")

    def __init__(self, widths: tuple[int, int, int] = (1, 1, 1)) -> None:
        self.widths = widths
        self.rsize = TAIL + sum(widths)
        self.count = 0
        self.segs: list[bytes] = [b""] * SEGMENTS
        self.table = array("I", bytes(4 * SEGMENTS * STRIDE))

    def locate(self, blob_id: bytes) -> int:
        """Record number of ``blob_id`` in its segment, or ``-1 - n`` where ``n`` is
        the number it would take (the records before it stay where they are)."""
        k = blob_id[0] * STRIDE + blob_id[1]
        t = self.table
        lo, end = t[k], t[k + 1]
        hi = end
        tail, rs, data = blob_id[2:], self.rsize, self.segs[blob_id[0]]
        while lo < hi:
            mid = (lo + hi) >> 1
            if data[mid * rs : mid * rs + TAIL] < tail:
                lo = mid + 1
            else:
                hi = mid
        if lo < end and data[lo * rs : lo * rs + TAIL] == tail:
            return lo
        return -1 - lo

    def find(self, blob_id: bytes) -> tuple[int, int, int] | None:
        """(pack number, offset, length) of ``blob_id``, or None."""
        rec = self.locate(blob_id)
        if rec < 0:
            return None
        rs = self.rsize
        pos = rec * rs
        wp, wo, _ = self.widths
        x = int.from_bytes(self.segs[blob_id[0]][pos + TAIL : pos + rs], "little")
        so = 8 * wp
        sn = so + 8 * wo
        return x & ((1 << so) - 1), (x >> so) & ((1 << (sn - so)) - 1), x >> sn

    def iter_records(self) -> Iterator[tuple[bytes, int, int, int]]:
        """Every (blob id, pack number, offset, length) in ID order."""
        rs, t = self.rsize, self.table
        wp, wo, _ = self.widths
        so = 8 * wp
        sn = so + 8 * wo
        for s, data in enumerate(self.segs):
            for b in range(256):
                k = s * STRIDE + b
                for rec in range(t[k], t[k + 1]):
                    pos = rec * rs
                    x = int.from_bytes(data[pos + TAIL : pos + rs], "little")
                    yield (
                        bytes((s, b)) + data[pos : pos + TAIL],
                        x & ((1 << so) - 1),
                        (x >> so) & ((1 << (sn - so)) - 1),
                        x >> sn,
                    )

    def widen(self, widths: tuple[int, int, int]) -> None:
        """Encode every record again with (wider) ``widths``, one segment at a time."""
        rs, (wp, wo, _) = self.rsize, self.widths
        so, sn = 8 * wp, 8 * (wp + wo)
        mp, mo = (1 << so) - 1, (1 << (sn - so)) - 1
        so2, sn2 = 8 * widths[0], 8 * (widths[0] + widths[1])
        vw = sum(widths)
        for s, data in enumerate(self.segs):
            parts = []
            for pos in range(0, len(data), rs):
                x = int.from_bytes(data[pos + TAIL : pos + rs], "little")
                parts.append(data[pos : pos + TAIL])
                parts.append(
                    (x & mp | ((x >> so) & mo) << so2 | (x >> sn) << sn2).to_bytes(vw, "little")
                )
            self.segs[s] = b"".join(parts)
        self.widths = widths
        self.rsize = TAIL + vw


def _unpack_pending(v: int | tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """(pack number, position, offset, length) of a pending value."""
    if type(v) is int:
        return v & _P_MASK, (v >> _POS_SHIFT) & _POS_MASK, (v >> _O_SHIFT) & _O_MASK, v >> _N_SHIFT
    assert isinstance(v, tuple)
    return v


class MasterIndex:
    """Which pack holds each blob.  Not thread-safe: callers serialise access."""

    def __init__(self) -> None:
        self._packs = bytearray()  # pack IDs, 32 bytes each, indexed by pack number
        self._run = _Run()
        # blob ID -> packed (pack number, position in its segment, offset, length)
        self._pending: dict[bytes, int | tuple[int, int, int, int]] = {}
        # OR of the pending pack numbers, offsets and lengths: their widths
        self._or_p = self._or_o = self._or_n = 0
        # pack ID -> (end of its last blob, number of blobs): with the repository's
        # header layout, the pack's size (readers round ranges out to it, spec §9.6)
        self._extents: dict[bytes, tuple[int, int]] = {}

    def __len__(self) -> int:
        return self._run.count + len(self._pending)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._pending or self._run.locate(blob_id) >= 0

    @property
    def pack_count(self) -> int:
        """How many pack entries have been added (a pack listed twice counts twice)."""
        return len(self._packs) // ID_LEN

    def pack_ids(self) -> set[bytes]:
        """Every pack the index names."""
        p = self._packs
        return {bytes(p[i : i + ID_LEN]) for i in range(0, len(p), ID_LEN)}

    def get(self, blob_id: bytes) -> Location | None:
        """Where ``blob_id`` is stored, or None."""
        pending = self._pending
        v = pending.get(blob_id) if pending else None
        if v is None:
            vals = self._run.find(blob_id)
            if vals is None:
                return None
            number, offset, length = vals
        else:
            number, _, offset, length = _unpack_pending(v)
        n = number * ID_LEN
        return Location(bytes(self._packs[n : n + ID_LEN]), offset, length)

    def add_pack(self, pack_id: bytes, blobs: Iterable[tuple[bytes, int, int]]) -> int:
        """Record the (blob id, offset, length) of one pack; returns how many blobs were new.

        A blob already known keeps its first location: duplicates are
        harmless for reading and left for prune to clean up.
        """
        number = len(self._packs) // ID_LEN
        self._packs += pack_id
        pending, locate = self._pending, self._run.locate
        or_o = or_n = 0
        added = count = end = 0
        for blob_id, offset, length in blobs:
            count += 1
            if offset + length > end:
                end = offset + length
            if blob_id in pending:
                continue
            pos = locate(blob_id)
            if pos >= 0:
                continue
            pos = -1 - pos
            if (offset | length) >> _O_BITS or number >> _P_BITS or pos >> _POS_BITS:
                pending[blob_id] = (number, pos, offset, length)
            else:
                pending[blob_id] = (
                    number | pos << _POS_SHIFT | offset << _O_SHIFT | length << _N_SHIFT
                )
            or_o |= offset
            or_n |= length
            added += 1
        self._extents[pack_id] = max((end, count), self._extents.get(pack_id, (0, 0)))
        if added:
            self._or_p |= number
            self._or_o |= or_o
            self._or_n |= or_n
            if len(pending) >= max(PENDING_MIN, self._run.count >> PENDING_SHIFT):
                self.compact()
        return added

    def extent(self, pack_id: bytes) -> tuple[int, int] | None:
        """(end of the last blob, number of blobs) of a pack this index lists, or None."""
        return self._extents.get(pack_id)

    def compact(self) -> None:
        """Fold pending entries into the sorted segments."""
        pending = self._pending
        if not pending:
            return
        if self._or_o < 0 or self._or_n < 0:
            raise OverflowError("can't convert negative int to unsigned")
        run = self._run
        widths = (
            max(run.widths[0], _width(self._or_p)),
            max(run.widths[1], _width(self._or_o)),
            max(run.widths[2], _width(self._or_n)),
        )
        if widths != run.widths:
            # A field grew wider (or the first fill): every record is encoded again.
            run.widen(widths)
        rs, vw = run.rsize, sum(widths)
        so, sn = 8 * widths[0], 8 * (widths[0] + widths[1])
        segs, table = run.segs, run.table
        keys = sorted(pending)
        i, total = 0, len(keys)
        while i < total:
            s = keys[i][0]
            data = segs[s]
            view = memoryview(data)
            parts: list[bytes | memoryview] = []
            adds = [0] * STRIDE
            done = 0
            while i < total:
                blob_id = keys[i]
                if blob_id[0] != s:
                    break
                number, pos, offset, length = _unpack_pending(pending[blob_id])
                at = pos * rs
                if at != done:
                    parts.append(view[done:at])
                    done = at
                parts.append(blob_id[2:])
                parts.append((number | offset << so | length << sn).to_bytes(vw, "little"))
                adds[blob_id[1] + 1] += 1
                i += 1
            parts.append(view[done:])
            segs[s] = b"".join(parts)
            del parts
            view.release()
            base = s * STRIDE
            table[base : base + STRIDE] = array(
                "I", map(add, table[base : base + STRIDE], accumulate(adds))
            )
        run.count += total
        self._pending = {}
        self._or_p = self._or_o = self._or_n = 0

    def memory_bytes(self) -> int:
        """Bytes held by the index structures (records, buckets, pack table), for benchmarks."""
        run = self._run
        return (
            sum(len(s) for s in run.segs)
            + run.table.itemsize * len(run.table)
            + len(self._packs)
            + len(self._pending) * PENDING_ENTRY_BYTES
        )
