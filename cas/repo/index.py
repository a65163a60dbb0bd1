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
records, and no fold turns old records into Python objects.  Loading an
index file skips the pending dict: ``add_columns`` merges the file's columns
into the segments one segment at a time.  Pack extents are two arrays by
pack number, found by pack ID through an open-addressing table.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
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
# The pack number of a column entry that no listed range covers.
_NO_PACK = 0xFFFFFFFF


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

    def insert(self, s: int, recs: list[tuple[int, bytes, bytes]]) -> None:
        """Put new records into segment ``s``: each (its number in the segment as it
        is, its blob ID, its encoded value), in ID order.  The segment is built once,
        from slices of the old one around the new records."""
        rs = self.rsize
        view = memoryview(self.segs[s])
        parts: list[bytes | memoryview] = []
        adds = [0] * STRIDE
        done = 0
        for pos, blob_id, value in recs:
            at = pos * rs
            if at != done:
                parts.append(view[done:at])
                done = at
            parts.append(blob_id[2:])
            parts.append(value)
            adds[blob_id[1] + 1] += 1
        parts.append(view[done:])
        self.segs[s] = b"".join(parts)
        del parts
        view.release()
        base, table = s * STRIDE, self.table
        table[base : base + STRIDE] = array(
            "I", map(add, table[base : base + STRIDE], accumulate(adds))
        )
        self.count += len(recs)

    def fit(self, number: int, offset: int, length: int) -> tuple[int, int, int]:
        """Widen the fields if need be to hold these values (or values with no more
        bits); returns the widths."""
        w = self.widths
        widths = (
            max(w[0], _width(number)),
            max(w[1], _width(offset)),
            max(w[2], _width(length)),
        )
        if widths != w:
            # A field grew wider (or the first fill): every record is encoded again.
            self.widen(widths)
        return widths

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
        # By pack number, the end of its last blob and its number of blobs: with the
        # repository's header layout, the pack's size (readers round ranges out to
        # it, spec §9.6); found by pack ID through an open-addressing table of pack
        # numbers (a few bytes a pack, where a dict took over a hundred).
        self._ends: array[int] | list[int] = array("Q")
        self._counts = array("I")
        self._slots = array("I", [_NO_PACK]) * 8

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

    def get_many(self, blob_ids: Iterable[bytes], found: dict[bytes, Location]) -> None:
        """Put where each of ``blob_ids`` is stored into ``found`` (those it lacks stay
        out of it; those already in it are not looked up again).

        ``get`` for many blobs in one call (restore locates every blob it hands to a
        writer): one pack ID object per pack, not one per blob."""
        pending, find, packs = self._pending, self._run.find, self._packs
        pack_ids: dict[int, bytes] = {}
        for blob_id in blob_ids:
            if blob_id in found or len(blob_id) < 2:
                continue
            v = pending.get(blob_id) if pending else None
            if v is None:
                vals = find(blob_id)
                if vals is None:
                    continue
                number, offset, length = vals
            else:
                number, _, offset, length = _unpack_pending(v)
            pack_id = pack_ids.get(number)
            if pack_id is None:
                n = number * ID_LEN
                pack_id = pack_ids[number] = bytes(packs[n : n + ID_LEN])
            found[blob_id] = Location(pack_id, offset, length)

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
        self._note_extent(number, end, count)
        if added:
            self._or_p |= number
            self._or_o |= or_o
            self._or_n |= or_n
            if len(pending) >= max(PENDING_MIN, self._run.count >> PENDING_SHIFT):
                self.compact()
        return added

    def add_columns(
        self,
        packs: Sequence[tuple[bytes, int, int]],
        ids: bytes,
        offsets: Sequence[int],
        lengths: Sequence[int],
    ) -> int:
        """``add_pack`` of each (pack id, first, count) of ``packs`` in turn, its blobs
        the (``ids[32 * i : 32 * (i + 1)]``, ``offsets[i]``, ``lengths[i]``) for ``i``
        from ``first`` to ``first + count`` (an index file's columns; ranges in
        ascending order, not overlapping), then ``compact``; returns how many blobs
        were new.

        The blobs are merged into the segments straight from the columns, one
        segment at a time, never through the pending dict: the peak is the index,
        the columns and one segment's new records.
        """
        self.compact()
        run = self._run
        size = len(offsets)
        base = len(self._packs) // ID_LEN
        numbers = array("I", [_NO_PACK]) * size  # pack number of each listed blob
        for k, (pack_id, first, count) in enumerate(packs):
            self._packs += pack_id
            if count:
                numbers[first : first + count] = array("I", [base + k]) * count
                end = max(map(add, offsets[first : first + count], lengths[first : first + count]))
            else:
                end = 0
            self._note_extent(base + k, end, count)
        if not any(count for _, _, count in packs):
            return 0
        top_o, top_n = max(offsets), max(lengths)
        if min(offsets) < 0 or min(lengths) < 0:
            raise OverflowError("can't convert negative int to unsigned")
        widths = run.fit(base + len(packs) - 1, top_o, top_n)
        vw = sum(widths)
        so, sn = 8 * widths[0], 8 * (widths[0] + widths[1])
        firsts = ids[::ID_LEN]  # each blob's segment
        locate, find = run.locate, firsts.find
        added = 0
        for s in range(SEGMENTS):
            mine = []
            i = find(s)
            while i >= 0:
                if numbers[i] != _NO_PACK:
                    mine.append((ids[i * ID_LEN : (i + 1) * ID_LEN], i))
                i = find(s, i + 1)
            if not mine:
                continue
            mine.sort()  # by ID, the first listed first
            recs: list[tuple[int, bytes, bytes]] = []
            last = b""
            for blob_id, i in mine:
                if blob_id == last:
                    continue  # listed again: the first listing holds
                last = blob_id
                pos = locate(blob_id)
                if pos >= 0:
                    continue  # known: keeps its first location
                value = numbers[i] | offsets[i] << so | lengths[i] << sn
                recs.append((-1 - pos, blob_id, value.to_bytes(vw, "little")))
            if recs:
                run.insert(s, recs)
                added += len(recs)
        return added

    def extent(self, pack_id: bytes) -> tuple[int, int] | None:
        """(end of the last blob, number of blobs) of a pack this index lists, or None
        (a pack listed more than once: the larger)."""
        found = None
        slots, packs = self._slots, self._packs
        mask = len(slots) - 1
        h = int.from_bytes(pack_id[:4], "little") & mask
        while (number := slots[h]) != _NO_PACK:
            if packs[number * ID_LEN : (number + 1) * ID_LEN] == pack_id:
                e = (self._ends[number], self._counts[number])
                found = e if found is None else max(found, e)
            h = (h + 1) & mask
        return found

    def _note_extent(self, number: int, end: int, count: int) -> None:
        """Record pack ``number``'s extent (its ID is already in ``_packs``)."""
        try:
            self._ends.append(end)
        except OverflowError:  # past 64 bits (never written by cas): as Python ints
            self._ends = list(self._ends)
            self._ends.append(end)
        self._counts.append(count)
        if 2 * len(self._ends) > len(self._slots):
            self._slots = array("I", [_NO_PACK]) * (2 * len(self._slots))
            for n in range(len(self._ends) - 1):
                self._slot(n)
        self._slot(number)

    def _slot(self, number: int) -> None:
        slots, n = self._slots, number * ID_LEN
        mask = len(slots) - 1
        h = int.from_bytes(self._packs[n : n + 4], "little") & mask
        while slots[h] != _NO_PACK:
            h = (h + 1) & mask
        slots[h] = number

    def compact(self) -> None:
        """Fold pending entries into the sorted segments."""
        pending = self._pending
        if not pending:
            return
        if self._or_o < 0 or self._or_n < 0:
            raise OverflowError("can't convert negative int to unsigned")
        run = self._run
        widths = run.fit(self._or_p, self._or_o, self._or_n)
        vw = sum(widths)
        so, sn = 8 * widths[0], 8 * (widths[0] + widths[1])
        keys = sorted(pending)
        i, total = 0, len(keys)
        while i < total:
            s = keys[i][0]
            recs: list[tuple[int, bytes, bytes]] = []
            while i < total:
                blob_id = keys[i]
                if blob_id[0] != s:
                    break
                number, pos, offset, length = _unpack_pending(pending[blob_id])
                value = (number | offset << so | length << sn).to_bytes(vw, "little")
                recs.append((pos, blob_id, value))
                i += 1
            run.insert(s, recs)
        self._pending = {}
        self._or_p = self._or_o = self._or_n = 0

    def memory_bytes(self) -> int:
        """Bytes held by the index structures (records, buckets, pack table), for benchmarks."""
        run = self._run
        return (
            sum(len(s) for s in run.segs)
            + run.table.itemsize * len(run.table)
            + len(self._packs)
            + 8 * len(self._ends)
            + self._counts.itemsize * len(self._counts)
            + self._slots.itemsize * len(self._slots)
            + len(self._pending) * PENDING_ENTRY_BYTES
        )
