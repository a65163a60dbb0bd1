"""The in-memory master index: blob ID -> (pack, offset, length), compact.

A Python dict of bytes keys costs about 200 bytes per blob; a million-blob
repository would need 200 MB just to know what it holds.  Here every blob is
one fixed-width record in a single sorted ``bytes`` buffer:

    ID bytes 2..31 (30 bytes) | pack number | offset | stored length

The first two ID bytes select one of 65,536 buckets (a table of u32 record
numbers) and are not stored; field widths are the fewest bytes that hold
the largest value present.  Blob IDs are keyed hashes and so uniformly
spread, which keeps the buckets even and a lookup to a few comparisons.
New blobs collect in a small dict that is folded into the buffer whenever
it grows past a fraction of it, so memory stays proportional to the count.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate

ID_LEN = 32
TAIL = ID_LEN - 2
BUCKETS = 1 << 16


@dataclass(frozen=True, slots=True)
class Location:
    """Where a blob's sealed bytes are stored."""

    pack_id: bytes
    offset: int
    length: int


def _width(value: int) -> int:
    return max(1, (value.bit_length() + 7) // 8)


def _widths(
    at_least: tuple[int, int, int], values: Collection[tuple[int, int, int]]
) -> tuple[int, int, int]:
    """Field widths that hold ``values`` and are no narrower than ``at_least``."""
    return (
        max(at_least[0], _width(max(v[0] for v in values))),
        max(at_least[1], _width(max(v[1] for v in values))),
        max(at_least[2], _width(max(v[2] for v in values))),
    )


class _Run:
    """An immutable sorted buffer of fixed-width records with a bucket table."""

    def __init__(self, records: list[bytes], widths: tuple[int, int, int]) -> None:
        # records: full 32-byte ID + encoded values, sorted, unique by ID.
        self.widths = widths
        self.rsize = TAIL + sum(widths)
        self.count = len(records)
        counts = array("I", bytes(4 * (BUCKETS + 1)))
        for r in records:
            counts[(r[0] << 8 | r[1]) + 1] += 1
        # Prefix sums: bucket b's records are buckets[b] .. buckets[b + 1] - 1.
        self.buckets = array("I", accumulate(counts)) if records else counts
        self.data = b"".join([r[2:] for r in records])

    @classmethod
    def merged(cls, old: _Run, new: list[bytes]) -> _Run:
        """``old`` plus ``new`` (sorted full records of old's widths, IDs not in ``old``).

        Buckets without new records are copied as they are, in slices, so a
        merge costs one new buffer, not a list of every record.
        """
        rs, data, view = old.rsize, old.data, memoryview(old.data)
        added = array("I", bytes(4 * (BUCKETS + 1)))
        parts: list[bytes | memoryview] = []
        done = 0  # records of ``old`` already placed
        i = 0
        while i < len(new):
            b = new[i][0] << 8 | new[i][1]
            j = i
            while j < len(new) and (new[j][0] << 8 | new[j][1]) == b:
                j += 1
            lo, hi = old.buckets[b], old.buckets[b + 1]
            parts.append(view[done * rs : lo * rs])
            mixed = [data[k * rs : (k + 1) * rs] for k in range(lo, hi)]
            mixed += [r[2:] for r in new[i:j]]
            mixed.sort()
            parts.append(b"".join(mixed))
            added[b + 1] = j - i
            done, i = hi, j
        parts.append(view[done * rs :])
        run = cls([], old.widths)
        run.count = old.count + len(new)
        run.buckets = array(
            "I", (x + y for x, y in zip(old.buckets, accumulate(added), strict=True))
        )
        run.data = b"".join(parts)
        return run

    def find(self, blob_id: bytes) -> int:
        """Record number of ``blob_id`` or -1."""
        b = blob_id[0] << 8 | blob_id[1]
        lo, hi = self.buckets[b], self.buckets[b + 1]
        tail, rs, data = blob_id[2:], self.rsize, self.data
        while lo < hi:
            mid = (lo + hi) >> 1
            if data[mid * rs : mid * rs + TAIL] < tail:
                lo = mid + 1
            else:
                hi = mid
        if lo < self.buckets[b + 1] and data[lo * rs : lo * rs + TAIL] == tail:
            return lo
        return -1

    def values(self, rec: int) -> tuple[int, int, int]:
        pos = rec * self.rsize + TAIL
        out = []
        for w in self.widths:
            out.append(int.from_bytes(self.data[pos : pos + w], "little"))
            pos += w
        return out[0], out[1], out[2]

    def iter_records(self) -> Iterator[tuple[bytes, int, int, int]]:
        """Every (blob id, pack number, offset, length) in ID order."""
        for rec in range(self.count):
            b = bisect_right(self.buckets, rec) - 1
            start = rec * self.rsize
            yield (bytes((b >> 8, b & 0xFF)) + self.data[start : start + TAIL], *self.values(rec))


def _encode(blob_id: bytes, vals: tuple[int, int, int], widths: tuple[int, int, int]) -> bytes:
    (p, o, n), (wp, wo, wn) = vals, widths
    return b"".join(
        (blob_id, p.to_bytes(wp, "little"), o.to_bytes(wo, "little"), n.to_bytes(wn, "little"))
    )


class MasterIndex:
    """Which pack holds each blob.  Not thread-safe: callers serialise access."""

    def __init__(self) -> None:
        self._packs = bytearray()  # pack IDs, 32 bytes each, indexed by pack number
        self._run = _Run([], (1, 1, 1))
        self._pending: dict[bytes, tuple[int, int, int]] = {}

    def __len__(self) -> int:
        return self._run.count + len(self._pending)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._pending or self._run.find(blob_id) >= 0

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
        vals = self._pending.get(blob_id)
        if vals is None:
            rec = self._run.find(blob_id)
            if rec < 0:
                return None
            vals = self._run.values(rec)
        n = vals[0] * ID_LEN
        return Location(bytes(self._packs[n : n + ID_LEN]), vals[1], vals[2])

    def add_pack(self, pack_id: bytes, blobs: Iterable[tuple[bytes, int, int]]) -> int:
        """Record the (blob id, offset, length) of one pack; returns how many blobs were new.

        A blob already known keeps its first location: duplicates are
        harmless for reading and left for prune to clean up.
        """
        number = len(self._packs) // ID_LEN
        self._packs += pack_id
        added = 0
        for blob_id, offset, length in blobs:
            if blob_id not in self._pending and self._run.find(blob_id) < 0:
                self._pending[blob_id] = (number, offset, length)
                added += 1
        if len(self._pending) >= max(65536, self._run.count // 8):
            self.compact()
        return added

    def compact(self) -> None:
        """Fold pending entries into the sorted buffer."""
        if not self._pending:
            return
        old = self._run
        widths = _widths(old.widths, self._pending.values())
        records = sorted(_encode(k, v, widths) for k, v in self._pending.items())
        self._pending = {}
        if widths == old.widths and old.count:
            self._run = _Run.merged(old, records)
            return
        # First fill, or a field grew wider: every record is encoded again.
        records += [_encode(k, (p, o, n), widths) for k, p, o, n in old.iter_records()]
        records.sort()
        self._run = _Run(records, widths)

    def memory_bytes(self) -> int:
        """Bytes held by the index structures (records, buckets, pack table), for benchmarks."""
        return (
            len(self._run.data)
            + self._run.buckets.itemsize * len(self._run.buckets)
            + len(self._packs)
            + len(self._pending) * 200
        )
