"""cas/sparse.py: the holes of a stored file, as restore's SparseWriter would leave them."""

from __future__ import annotations

import os

import pytest

from cas.sparse import BLOCK, ZeroIds, allocated_blocks, data_extents, seek, worth_scanning


def extents_of(blobs: list[bytes], scan: bool = True) -> list[tuple[int, int]]:
    """The extents of a file made of ``blobs``: all-zero ones as zero blobs, the others
    scanned (or counted as data)."""

    def kind(i: int) -> str:
        if blobs[i].count(0) == len(blobs[i]) and len(blobs[i]) >= BLOCK:
            return "zero"
        return "scan" if scan else "data"

    return data_extents([len(b) for b in blobs], kind, lambda i: blobs[i])


def test_zero_blocks_are_holes_at_file_aligned_offsets() -> None:
    z = bytes
    data = os.urandom(100)
    # A blob of 3 blocks: data, zeros, data (a hole in the middle of a blob).
    assert extents_of([data + z(BLOCK - 100) + z(BLOCK) + data]) == [
        (0, BLOCK),
        (2 * BLOCK, 100),
    ]
    # A zero block spanning two blobs counts as a hole; a partial zero block does not.
    assert extents_of([data + z(BLOCK - 100 + 50), z(BLOCK - 50) + data]) == [
        (0, BLOCK),
        (2 * BLOCK, 100),
    ]
    # All-zero blobs are holes without being read; a trailing zero tail is a hole.
    assert extents_of([z(3 * BLOCK), data + z(10)]) == [(3 * BLOCK, 110)]
    assert extents_of([z(8 * BLOCK)]) == []
    assert extents_of([data, z(BLOCK + 7)]) == [(0, BLOCK)]  # the partial last block: a hole
    # Not scanned: data wherever it is not a zero blob.
    assert extents_of([data + z(3 * BLOCK)], scan=False) == [(0, 100 + 3 * BLOCK)]
    assert extents_of([]) == []


def test_blocks_and_seek() -> None:
    ext = [(BLOCK, BLOCK), (5 * BLOCK, 100)]
    assert allocated_blocks(ext) == 2
    size = 8 * BLOCK
    assert seek(ext, size, 0, data=True) == BLOCK
    assert seek(ext, size, 0, data=False) == 0
    assert seek(ext, size, BLOCK + 1, data=False) == 2 * BLOCK
    assert seek(ext, size, 2 * BLOCK, data=True) == 5 * BLOCK
    assert seek(ext, size, 5 * BLOCK + 100, data=True) is None
    assert seek(ext, size, 5 * BLOCK + 100, data=False) == 5 * BLOCK + 100
    assert seek(ext, size, size, data=False) is None
    assert seek([], size, 0, data=True) is None


@pytest.mark.parametrize(
    ("size", "stored", "scan"),
    [(1 << 20, 1000, True), (1 << 20, 1 << 19, False), (1000, 10, False), (1 << 20, None, False)],
)
def test_which_blobs_are_scanned(size: int, stored: int | None, scan: bool) -> None:
    assert worth_scanning(size, stored) is scan


def test_zero_ids_are_computed_once_per_size() -> None:
    calls = []

    def blob_id(data: bytes) -> bytes:
        calls.append(len(data))
        return b"Z%d" % len(data) if data.count(0) == len(data) else b"D"

    zeros = ZeroIds(blob_id, capacity=2)
    assert zeros.is_zero(b"Z8192", 8192) and not zeros.is_zero(b"X", 8192)
    assert not zeros.is_zero(b"Z100", 100)  # smaller than a block: never a hole
    assert calls == [8192]
