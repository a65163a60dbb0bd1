"""Restore paths the other restore tests did not pin, in-process.

Each test was written against a mutant of cas/restore/restorer.py that the rest
of the suite let pass (docs/reliability.md §8.3).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas.restore.restorer import SPARSE_BLOCK, SparseWriter


@pytest.mark.parametrize(
    "pieces",
    [[b"\0"], [b"\0" * 100], [b"\0", b"\0"], [b"x", b"\0" * (SPARSE_BLOCK + 1)], [b""]],
    ids=["one-zero", "short-zeros", "two-writes", "ends-in-a-hole", "empty"],
)
def test_sparse_writer_keeps_the_size_of_a_file_ending_in_zeros(
    tmp_path: Path, pieces: list[bytes]
) -> None:
    """A file whose last bytes are zeros not written (a hole, or a tail of zeros)
    still gets its full size, even a file of one zero byte."""
    data = b"".join(pieces)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        writer = SparseWriter(fd)
        if len(pieces) == 1:
            assert writer.write_all(data) == len(data)
        else:
            for piece in pieces:
                writer.write(piece)
            assert writer.finish() == len(data)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data


def test_write_all_leaves_a_short_zero_tail_a_hole(tmp_path: Path) -> None:
    """Whole blocks of data then fewer than 4096 zeros: the zeros are not written, as
    when the file is written piece by piece (same allocated blocks as a reference)."""
    data = b"x" * SPARSE_BLOCK + bytes(100)
    ref = tmp_path / "ref"
    with open(ref, "wb") as f:
        f.write(data[:SPARSE_BLOCK])
        f.truncate(len(data))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        assert SparseWriter(fd).write_all(data) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
    assert os.stat(tmp_path / "f").st_blocks == ref.stat().st_blocks
