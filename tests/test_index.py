"""The compact in-memory index against a plain dict as the model."""

from __future__ import annotations

import os
import random
import tracemalloc
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from cas.repo import index as index_mod
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
    found: dict[bytes, Any] = {}
    idx.get_many([*model, *(os.urandom(32) for _ in range(1000))], found)
    assert {b: (v.pack_id, v.offset, v.length) for b, v in found.items()} == model


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


# -- the index against a dict, through any sequence of operations -----------------------


def _id_pool() -> st.SearchStrategy[list[bytes]]:
    """IDs that often share their first two bytes (one bucket), all but the last, or
    all but the first or second (neighbouring segments and buckets, one tail)."""
    one = st.one_of(
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=30, max_size=30).map(lambda t: b"\x07\x07" + t),
        st.integers(0, 255).map(lambda b: b"\x07\x07" + bytes(29) + bytes((b,))),
        st.integers(0, 255).map(lambda b: b"\x07" + bytes((b,)) + b"\x5a" * 30),
        st.integers(0, 255).map(lambda b: bytes((b,)) + b"\xff" * 31),
    )
    return st.lists(one, min_size=1, max_size=40, unique=True)


# Offsets and lengths of every width, past 64 bits too.
_values = st.one_of(
    st.integers(0, 255),
    st.integers(0, 1 << 40),
    st.integers(0, 1 << 70),
    st.sampled_from([256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 64) - 1, 1 << 64]),
)


@settings(max_examples=300, deadline=None)
@given(st.data(), _id_pool(), st.integers(1, 70))
def test_index_matches_a_dict_through_random_operations(
    data: st.DataObject, pool: list[bytes], fold_at: int
) -> None:
    """add_pack / compact / lookups in any order, with duplicate IDs, crowded buckets,
    fields that need more bytes as they go, and folds inside add_pack (fold_at)."""
    absent = [b for b in (bytes(32), b"\x07\x07" + bytes(30), b"\xff" * 32) if b not in pool]
    packs = [bytes((i,)) * 32 for i in range(3)]  # a pack listed twice counts twice
    idx = MasterIndex()
    model: dict[bytes, tuple[bytes, int, int]] = {}
    listed: list[bytes] = []
    ops: st.SearchStrategy[tuple[Any, ...]] = st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(packs),
            st.lists(st.tuples(st.sampled_from(pool), _values, _values), max_size=12),
        ),
        st.tuples(st.just("empty packs"), st.integers(1, 300)),  # pack numbers past 255
        st.tuples(st.just("compact")),
        st.tuples(st.just("check")),
    )

    def check() -> None:
        assert len(idx) == len(model)
        assert idx.pack_count == len(listed)
        assert idx.pack_ids() == set(listed)
        for b in pool + absent:
            loc, want = idx.get(b), model.get(b)
            assert (b in idx) == (want is not None)
            assert (loc and (loc.pack_id, loc.offset, loc.length)) == want
        # get_many: the same in one call, what it lacks left out, IDs asked twice once
        found: dict[bytes, Any] = {}
        idx.get_many(pool + absent + pool[:3] + [b"", b"\x01"], found)
        assert {b: (v.pack_id, v.offset, v.length) for b, v in found.items()} == model

    with mock.patch.object(index_mod, "PENDING_MIN", fold_at):
        for op in data.draw(st.lists(ops, max_size=25)):
            if op[0] == "add":
                _, pack, blobs = op
                new = {b for b, _, _ in blobs if b not in model}
                assert idx.add_pack(pack, blobs) == len(new)
                listed.append(pack)
                for b, off, length in blobs:
                    model.setdefault(b, (pack, off, length))
            elif op[0] == "empty packs":
                for i in range(op[1]):
                    idx.add_pack(i.to_bytes(32, "big"), [])
                    listed.append(i.to_bytes(32, "big"))
            elif op[0] == "compact":
                idx.compact()
            else:
                check()
        check()
        idx.compact()
        check()
    records = list(idx._run.iter_records())
    assert [r[0] for r in records] == sorted(model)
    for blob_id, number, offset, length in records:
        assert (listed[number], offset, length) == model[blob_id]


def test_values_past_64_bits_survive_pending_and_compaction() -> None:
    idx = MasterIndex()
    big = [(os.urandom(32), (1 << 64) + i, (1 << 70) + i) for i in range(3)]
    small = [(os.urandom(32), i, 100) for i in range(3)]
    idx.add_pack(b"a" * 32, small)
    idx.compact()
    idx.add_pack(b"b" * 32, big)
    for bid, off, length in big:  # pending
        loc = idx.get(bid)
        assert loc is not None and (loc.pack_id, loc.offset, loc.length) == (b"b" * 32, off, length)
    idx.compact()  # every record encoded again, wider
    for pack, blobs in ((b"a" * 32, small), (b"b" * 32, big)):
        for bid, off, length in blobs:
            loc = idx.get(bid)
            assert loc is not None and (loc.pack_id, loc.offset, loc.length) == (pack, off, length)


def _pending_bytes_per_blob(blobs: list[tuple[bytes, int, int]]) -> float:
    """Bytes allocated per blob by adding ``blobs`` (IDs and values made beforehand)."""
    idx = MasterIndex()
    # Tuples made inside come from the interpreter's free list when it holds some (up
    # to 2,000 per size, refilled by whatever ran before in this process), and
    # tracemalloc does not see those: held here, the free list is empty, so every
    # tuple is counted whatever ran before.
    drained = [tuple(range(i, i + size)) for size in range(1, 8) for i in range(4096)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        idx.add_pack(b"p" * 32, blobs)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del drained
    assert len(idx._pending) == len(blobs)  # nothing folded yet
    return grown / len(blobs)


def test_a_pending_blob_costs_one_packed_int_not_a_tuple() -> None:
    """The pending dict holds one int per blob; values too wide for it (never written
    by cas) fall back to a tuple, which costs more: the packing is not lost."""
    n = 4000
    ids = [os.urandom(32) for _ in range(n)]
    packed = _pending_bytes_per_blob([(b, i << 10, 5000 + i) for i, b in enumerate(ids)])
    wide = _pending_bytes_per_blob(
        [(b, (i << 10) + (1 << 64), 5000 + i) for i, b in enumerate(ids)]
    )
    assert packed + 16 < wide, (packed, wide)
