"""The unit cache (cas/repo/unitcache.py): reads of neighbouring ranges fetch each unit
once, every fetch is whole units (the last cut at the pack's end), threads wait for a
unit another thread is fetching instead of fetching it again, and a failed fetch
leaves nobody waiting."""

from __future__ import annotations

import itertools
import os
import threading

import pytest

from cas.errors import BackendError
from cas.repo.unitcache import UnitCache

UNIT = 16
PACK = os.urandom(10 * UNIT + 5)  # ten whole units and a short last one
ID = b"p" * 32


class Store:
    def __init__(self) -> None:
        self.fetches: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def fetch(self, start: int, length: int) -> bytes:
        assert start % UNIT == 0 and ((start + length) % UNIT == 0 or start + length == len(PACK))
        with self.lock:
            self.fetches.append((start, length))
        return PACK[start : start + length]

    def units(self) -> list[int]:
        return [k for s, n in self.fetches for k in range(s // UNIT, (s + n - 1) // UNIT + 1)]


def test_neighbouring_reads_fetch_each_unit_once() -> None:
    store, cache = Store(), UnitCache(UNIT)
    bounds = [0, 7, 20, 33, 40, 70, 71, 100, 150, len(PACK)]  # blobs end to end
    for lo, hi in itertools.pairwise(bounds):
        assert cache.read(store.fetch, ID, lo, hi - lo, len(PACK)) == PACK[lo:hi]
    assert sorted(store.units()) == list(range(11))


def test_the_cache_holds_at_most_its_units() -> None:
    store, cache = Store(), UnitCache(UNIT, kept=2)
    for k in range(10):
        cache.read(store.fetch, ID, k * UNIT + 1, 3, len(PACK))
    assert len(cache._units) == 2
    cache.read(store.fetch, ID, 1, 3, len(PACK))  # unit 0 was dropped: fetched again
    assert store.units().count(0) == 2


def test_a_thread_waits_for_a_unit_another_is_fetching() -> None:
    """A fetches units 0-2; B, reading units 2-4 meanwhile, fetches only 3-4 and takes
    unit 2 from A's read."""
    store, cache = Store(), UnitCache(UNIT)
    b_fetching = threading.Event()
    results: dict[str, bytes] = {}

    def fetch(start: int, length: int) -> bytes:
        if threading.current_thread().name == "A":
            assert b_fetching.wait(10)  # B has found unit 2 on its way before A is done
        else:
            b_fetching.set()
        return store.fetch(start, length)

    def read(name: str, offset: int, length: int) -> None:
        results[name] = cache.read(fetch, ID, offset, length, len(PACK))

    a = threading.Thread(target=read, args=("A", 5, 2 * UNIT), name="A")
    a.start()
    while not cache._reading:  # A has claimed its units
        threading.Event().wait(0.001)
    b = threading.Thread(target=read, args=("B", 2 * UNIT + 3, 2 * UNIT + 4), name="B")
    b.start()
    a.join()
    b.join()
    assert results == {"A": PACK[5 : 5 + 2 * UNIT], "B": PACK[2 * UNIT + 3 : 4 * UNIT + 7]}
    assert sorted(store.units()) == [0, 1, 2, 3, 4]


def test_a_failed_fetch_is_raised_and_its_units_are_free() -> None:
    store, cache = Store(), UnitCache(UNIT)

    def broken(start: int, length: int) -> bytes:
        raise BackendError("gone")

    with pytest.raises(BackendError):
        cache.read(broken, ID, 3, 40, len(PACK))
    assert not cache._reading and not cache._units
    assert cache.read(store.fetch, ID, 3, 40, len(PACK)) == PACK[3:43]


def test_a_forgotten_pack_is_fetched_again() -> None:
    """A blob that did not open (restore's BlobStream) may have been damaged on its way:
    its pack's units are dropped, and the next read asks the storage again."""
    store, cache = Store(), UnitCache(UNIT)
    cache.read(store.fetch, ID, 3, 40, len(PACK))
    cache.forget(ID)
    cache.read(store.fetch, ID, 3, 40, len(PACK))
    assert store.units() == [0, 1, 2, 0, 1, 2]
