"""Generation records (spec/format.md §13.6): edges that mutation testing
(tools/mutation.py, docs/reliability.md §8.3) found unpinned by the vectors."""

from __future__ import annotations

import pytest

from cas import crypto
from cas.errors import FormatError
from cas.format import generation as genfmt
from cas.format.codec import seal_document

KEY = crypto.MasterKeys.generate().index_key
REPO = b"\x02" * 32


def _record(n: int) -> genfmt.Generation:
    return genfmt.Generation(n, REPO, 1, [b"\x01" * 32], command="test")


def _sealed_as_is(n: int) -> bytes:
    """A record of number ``n`` sealed without the writer's check."""
    doc = {"v": 1, "n": n, "repo": REPO, "time": 1, "snapshots": [], "command": "test"}
    return seal_document(KEY, genfmt.GENERATION_AD, doc)


@pytest.mark.parametrize("n", [1, (1 << 63) - 1])
def test_the_first_and_last_numbers_are_written_and_read(n: int) -> None:
    """§13.6: ``1 <= n < 2^63``, both ends included."""
    g = _record(n)
    assert genfmt.decode_generation(genfmt.encode_generation(g, KEY), KEY) == g
    assert genfmt.decode_generation(_sealed_as_is(n), KEY).n == n


@pytest.mark.parametrize("n", [0, -1, 1 << 63, (1 << 63) + 1, (1 << 64) - 1])
def test_numbers_out_of_range_are_neither_written_nor_read(n: int) -> None:
    with pytest.raises(FormatError, match=f"generation {n} out of range"):
        genfmt.encode_generation(_record(n), KEY)
    with pytest.raises(FormatError, match=f"generation {n} out of range"):
        genfmt.decode_generation(_sealed_as_is(n), KEY)


@pytest.mark.parametrize("key", ["snapshots", "forgotten", "retired"])
@pytest.mark.parametrize(
    "ids",
    [
        [b"\x01" * 31],
        [b"\x01" * 33],
        ["\x01" * 32],
        [b"\x02" * 32, b"\x01" * 32],
        [b"\x01" * 32] * 2,
    ],
    ids=["31-bytes", "33-bytes", "text", "unsorted", "twice"],
)
def test_id_lists_hold_sorted_32_byte_ids_only(key: str, ids: list[object]) -> None:
    """§13.6: readers refuse ID lists holding anything but 32-byte strings, or not
    sorted in ascending order without duplicates."""
    doc = {"v": 1, "n": 1, "repo": REPO, "time": 1, "snapshots": [], "command": "test"}
    doc[key] = ids
    with pytest.raises(FormatError, match=f"field '{key}' is not"):
        genfmt.decode_generation(seal_document(KEY, genfmt.GENERATION_AD, doc), KEY)
