"""Where a stored file has holes, from its blob list: what ``cas mount`` reports in
``st_blocks`` and ``lseek(SEEK_DATA/SEEK_HOLE)``, and what ``cas dump`` writes as a
sparse tar member.

Trees record no holes: backup reads a hole as zeros and chunks it like any data
(spec/format.md §11).  Restore leaves every all-zero, file-aligned 4 KiB block a
hole (and an all-zero partial block at the end), so that is the definition used
here.  Finding such blocks without reading every byte of every file:

- a blob that is all zero is recognised by its ID alone: the keyed ID of that many
  zero bytes (:class:`ZeroIds`), computed once per size;
- a blob may hold zero blocks among data only if it compressed well (a run of
  zeros compresses to almost nothing): a blob stored in at most 1/:data:`SCAN_RATIO`
  of its plaintext size is read and scanned block by block;
- every other blob counts as data.

So the result matches restore's holes except for zero blocks inside blobs that did
not compress to 1/8 (a few holes among incompressible data), which are shown as
data.  Pure apart from the callables given; no cas imports above the bottom.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

BLOCK = 4096  # restore's hole granularity (SparseWriter) and the allocation unit reported
SCAN_RATIO = 8  # a blob stored in at most 1/8 of its size is scanned for zero blocks
SCAN_MIN = BLOCK  # smaller blobs hold no whole block worth a read
ZERO_MAX = 64 << 20  # larger blobs are not hashed as zeros (far above any chunk size)
_ZERO_BLOCK = bytes(BLOCK)


class ZeroIds:
    """The ID an all-zero blob of each size would have (thread-safe, bounded memory)."""

    def __init__(self, blob_id: Callable[[bytes], bytes], capacity: int = 4096) -> None:
        self._blob_id = blob_id
        self._ids: OrderedDict[int, bytes] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def is_zero(self, blob_id: bytes, size: int) -> bool:
        """Whether ``blob_id`` is the ID of ``size`` zero bytes."""
        if not BLOCK <= size <= ZERO_MAX:
            return False
        with self._lock:
            zid = self._ids.get(size)
            if zid is not None:
                self._ids.move_to_end(size)
        if zid is None:
            zid = self._blob_id(bytes(size))
            with self._lock:
                self._ids[size] = zid
                if len(self._ids) > self._capacity:
                    self._ids.popitem(last=False)
        return blob_id == zid


def worth_scanning(size: int, stored: int | None) -> bool:
    """Whether a blob of ``size`` plaintext bytes stored in ``stored`` bytes may hold
    zero blocks among its data (it compressed to 1/SCAN_RATIO or less)."""
    return stored is not None and size >= SCAN_MIN and stored * SCAN_RATIO <= size


def data_extents(
    sizes: Sequence[int],
    kind: Callable[[int], str],
    load: Callable[[int], bytes],
) -> list[tuple[int, int]]:
    """``(offset, length)`` of the data of a file made of blobs of ``sizes``: every
    4 KiB-aligned block not wholly zero, runs merged, the last clipped at the end.

    ``kind(i)`` says what blob ``i`` is: ``"zero"`` (all zero), ``"scan"`` (may hold
    zero blocks: ``load(i)`` gives its plaintext) or ``"data"``.
    """
    total = sum(sizes)
    runs: list[list[int]] = []  # [first block, end block) of data, ascending

    def mark(first: int, end: int) -> None:
        if runs and first <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([first, end])

    pos = 0
    for i, size in enumerate(sizes):
        start, pos = pos, pos + size
        if size == 0:
            continue
        k = kind(i)
        if k == "zero":
            continue
        if k != "scan":
            mark(start // BLOCK, (pos + BLOCK - 1) // BLOCK)
            continue
        data = load(i)
        if len(data) != size:
            mark(start // BLOCK, (pos + BLOCK - 1) // BLOCK)
            continue
        b = start // BLOCK
        while b * BLOCK < pos:
            lo = max(b * BLOCK, start) - start
            hi = min((b + 1) * BLOCK, pos) - start
            if hi - lo == BLOCK:
                nonzero = data[lo:hi] != _ZERO_BLOCK
            else:
                nonzero = data.count(0, lo, hi) != hi - lo
            if nonzero:
                mark(b, b + 1)
            b += 1
    return [(f * BLOCK, min(e * BLOCK, total) - f * BLOCK) for f, e in runs]


def allocated_blocks(extents: Sequence[tuple[int, int]]) -> int:
    """The 4 KiB blocks the data extents occupy (what a filesystem would allocate)."""
    return sum((length + BLOCK - 1) // BLOCK for _, length in extents)


def seek(extents: Sequence[tuple[int, int]], size: int, offset: int, data: bool) -> int | None:
    """``lseek`` SEEK_DATA (``data``) or SEEK_HOLE from ``offset``: the position, or
    None where there is none (ENXIO).  The end of the file counts as a hole."""
    if offset < 0 or offset >= size:
        return None
    for start, length in extents:
        end = start + length
        if end <= offset:
            continue
        if data:
            return max(start, offset)
        return offset if offset < start else end
    return None if data else offset
