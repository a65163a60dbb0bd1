"""The compact in-memory index against a plain dict as the model."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cas.repo.index import MasterIndex


def test_lookup_matches_a_dict_through_compactions() -> None:
    rnd = random.Random(5)
    idx = MasterIndex()
    model: dict[bytes, tuple[bytes, int, int]] = {}
    for p in range(300):
        pack = rnd.randbytes(32)
        blobs = []
        for _ in range(rnd.randrange(1, 600)):
            bid = rnd.randbytes(32)
            # offsets and lengths grow over time, forcing wider fields
            off, length = rnd.randrange(1 << min(8 + p // 10, 31)), rnd.randrange(42, 1 << 24)
            blobs.append((bid, off, length))
            model.setdefault(bid, (pack, off, length))
        idx.add_pack(pack, blobs)
    idx.compact()
    assert len(idx) == len(model)
    for bid, (pack, off, length) in model.items():
        loc = idx.get(bid)
        assert loc is not None and (loc.pack_id, loc.offset, loc.length) == (pack, off, length)
    for _ in range(1000):
        assert idx.get(os.urandom(32)) is None


def test_first_location_wins() -> None:
    idx = MasterIndex()
    bid = os.urandom(32)
    assert idx.add_pack(b"a" * 32, [(bid, 0, 100)]) == 1
    assert idx.add_pack(b"b" * 32, [(bid, 50, 100)]) == 0
    idx.compact()
    loc = idx.get(bid)
    assert loc is not None and loc.pack_id == b"a" * 32
    assert idx.pack_ids() == {b"a" * 32, b"b" * 32}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), unique=True, max_size=300))
def test_records_come_back_in_order(ids: list[bytes]) -> None:
    idx = MasterIndex()
    idx.add_pack(b"p" * 32, [(b, i, 100 + i) for i, b in enumerate(ids)])
    idx.compact()
    assert [r[0] for r in idx._run.iter_records()] == sorted(ids)
    for i, b in enumerate(ids):
        loc = idx.get(b)
        assert loc is not None and (loc.offset, loc.length) == (i, 100 + i)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 1 << 20)),
            max_size=80,
        ),
        max_size=8,
    ),
    st.integers(1, 3),
)
def test_merging_compactions_keep_every_record(
    batches: list[list[tuple[bytes, int]]], prefix_len: int
) -> None:
    """Compacting after each pack (merge into the sorted buffer) equals a dict."""
    idx = MasterIndex()
    want: dict[bytes, tuple[bytes, int]] = {}
    for n, batch in enumerate(batches):
        pack = bytes([n]) * 32
        # Shared prefixes put several records into one bucket.
        blobs = [(b"\x07" * prefix_len + b[prefix_len:], off) for b, off in batch]
        idx.add_pack(pack, [(b, off, 10) for b, off in blobs])
        for b, off in blobs:
            want.setdefault(b, (pack, off))
        idx.compact()
        assert len(idx) == len(want)
    assert [r[0] for r in idx._run.iter_records()] == sorted(want)
    for b, (pack, off) in want.items():
        loc = idx.get(b)
        assert loc is not None and (loc.pack_id, loc.offset) == (pack, off)
