"""The pack writer and the backup's blob saver, in process (cas/repo/packwriter.py).

Aimed at what mutation testing found unpinned (docs/reliability.md §8.3): the
statistics a backup reports, when a packer counts as full, how the partly
filled packers are poured together, which packs are stored cold or cached,
when a periodic index file is due, what a failed index write leaves, and the
write order packs -> index file -> snapshot (spec §14.1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cas import crypto
from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.errors import BackendError, CasError
from cas.format import pack as packfmt
from cas.format.snapshot import Snapshot
from cas.repo import packwriter
from cas.repo.cache import LocalCache
from cas.repo.indexstore import IndexStore
from cas.repo.packer import FinishedPack
from cas.repo.packwriter import PACK_BLOBS, BlobSaver, PackWriter, WriteStats
from tests.support.repos import new_repo

KEYS = crypto.MasterKeys.generate()


class _Store(MemoryBackend):
    """Memory storage that records each write's name and ``cold`` flag, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, bool]] = []
        self.fail_index = 0  # index writes still to refuse

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        if name.startswith("index/") and self.fail_index:
            self.fail_index -= 1
            raise BackendError("index write refused (test)")
        super().write(name, data, cold=cold)
        self.writes.append((name, cold))

    def names(self, prefix: str) -> list[str]:
        return [n for n, _ in self.writes if n.startswith(prefix)]


def _store() -> _Store:
    s = _Store()
    s.create()
    return s


def _sealed(n: int, blob_type: BlobType = BlobType.DATA, size: int = 100) -> list[Any]:
    """``n`` sealed blobs of ``size`` random bytes: (id, sealed, raw length)."""
    out = []
    for _ in range(n):
        data = os.urandom(size)
        bid = KEYS.blob_id(blob_type, data)
        out.append((bid, packfmt.seal_blob(KEYS, blob_type, bid, data, None), len(data)))
    return out


def _ids(packs: list[FinishedPack]) -> list[bytes]:
    return sorted(e.blob_id for p in packs for e in p.entries)


# -- statistics ---------------------------------------------------------------------------


def test_write_stats_count_blobs_bytes_and_incompressible_data() -> None:
    s = WriteStats()
    s.add(BlobType.DATA, 100, 90)  # shrank by exactly 10%: still counts as incompressible
    s.add(BlobType.DATA, 100, 89)  # shrank by more
    s.add(BlobType.TREE, 50, 60)  # trees never count as data
    assert s.blobs == {BlobType.DATA: 2, BlobType.TREE: 1}
    assert (s.raw_bytes, s.stored_bytes) == (250, 239)
    assert (s.data_raw_bytes, s.data_incompressible_bytes) == (200, 100)


# -- PackWriter ---------------------------------------------------------------------------


def _writer(store: _Store, pack_size: int, **kw: Any) -> tuple[PackWriter, list[FinishedPack]]:
    stored: list[FinishedPack] = []
    return PackWriter(store, KEYS, pack_size, None, stored.append, **kw), stored


def test_a_packer_is_full_at_exactly_the_pack_size() -> None:
    (bid, sealed, raw), (bid2, sealed2, raw2) = _sealed(2)
    writer, _ = _writer(_store(), 2 * len(sealed), open_packs=1)
    assert writer.add(BlobType.DATA, bid, sealed, raw) is None
    full = writer.add(BlobType.DATA, bid2, sealed2, raw2)
    assert full is not None and full.size == 2 * len(sealed)
    assert writer.finish_open() == []  # a fresh packer took the full one's place
    writer, _ = _writer(_store(), 1 << 20, open_packs=0)  # at least one open packer
    assert writer.add(BlobType.DATA, bid, sealed, raw) is None
    assert [len(p.entries) for p in writer.finish_open()] == [1]


def test_a_packer_is_full_at_pack_blobs_whatever_its_size() -> None:
    """Packs of tiny blobs close at PACK_BLOBS blobs (spec §9.5), when added and when
    poured together, and such a pack's version 2 header needs no padding."""
    one = _sealed(1)[0]
    writer, _ = _writer(_store(), 1 << 30, open_packs=1, version=2)
    fulls = [writer.add(BlobType.DATA, *one) for _ in range(PACK_BLOBS + 5)]
    [full] = [f for f in fulls if f is not None]
    assert fulls.index(full) == PACK_BLOBS - 1 and len(full) == PACK_BLOBS
    pack = full.finish()
    assert packfmt.parse_pack(KEYS, pack.data) == pack.entries
    blobs = PACK_BLOBS * len(one[1])
    assert pack.size == packfmt.pack_size(2, blobs, PACK_BLOBS)
    assert pack.size == blobs + 45 + 41 * PACK_BLOBS + 8  # b = n: no padding (§9.6)
    writer, _ = _writer(_store(), 1 << 30, open_packs=4)
    for _ in range(PACK_BLOBS + 10):
        full = writer.add(BlobType.DATA, *one)
        assert full is None  # four packers: none reaches PACK_BLOBS on its own
    poured = writer.pour_open(BlobType.DATA)
    assert [len(p.entries) for p in poured] == [PACK_BLOBS]
    assert sum(len(p) for p in writer._packers[BlobType.DATA]) == 10


def test_finish_open_pours_the_open_packers_together_into_few_packs() -> None:
    blobs = _sealed(40)
    size = len(blobs[0][1])
    writer, _ = _writer(_store(), 15 * size)  # four open packers, none fills up
    for bid, sealed, raw in blobs[:10]:
        assert writer.add(BlobType.DATA, bid, sealed, raw) is None
    for bid, sealed, raw in _sealed(3, BlobType.TREE):
        assert writer.add(BlobType.TREE, bid, sealed, raw) is None
    packs = writer.finish_open()
    data = [p for p in packs if p.entries[0].type == BlobType.DATA]
    assert [len(p.entries) for p in data] == [10]  # one pack, not one per open packer
    assert [len(p.entries) for p in packs if p not in data] == [3]
    assert _ids(data) == sorted(b[0] for b in blobs[:10])
    assert writer.finish_open() == []  # nothing left behind

    # More than a pack's worth left open: full packs first, the rest in one more.
    for bid, sealed, raw in blobs[10:]:
        full = writer.add(BlobType.DATA, bid, sealed, raw)
        assert full is None or full.size >= 15 * size
    packs = writer.finish_open()
    assert all(len(p.entries) <= 15 for p in packs)
    assert sum(len(p.entries) for p in packs) <= 30
    for p in packs:  # each one reads back: the blobs were copied whole
        assert packfmt.parse_pack(KEYS, p.data) == p.entries


def test_one_open_packer_is_finished_as_it_is() -> None:
    writer, _ = _writer(_store(), 1 << 20)
    bid, sealed, raw = _sealed(1)[0]
    writer.add(BlobType.DATA, bid, sealed, raw)
    [pack] = writer.finish_open()
    assert [e.blob_id for e in pack.entries] == [bid]


def test_take_open_gives_the_open_blobs_and_empties_the_packers() -> None:
    blobs = _sealed(8)
    writer, _ = _writer(_store(), 1 << 20)
    for bid, sealed, raw in blobs:
        writer.add(BlobType.DATA, bid, sealed, raw)
    taken = [e.blob_id for _, entries in writer.take_open(BlobType.DATA, 1 << 20) for e in entries]
    assert sorted(taken) == sorted(b[0] for b in blobs)
    assert writer.finish_open() == []


def test_pour_open_leaves_less_than_a_pack_open_in_one_packer() -> None:
    """What a backup worker does before handing its last blobs over: the open packers
    poured together, the full packs finished, the rest in one packer."""
    blobs = _sealed(40)
    size = len(blobs[0][1])
    writer, _ = _writer(_store(), 15 * size)  # four open packers
    for bid, sealed, raw in blobs[:12]:
        assert writer.add(BlobType.DATA, bid, sealed, raw) is None
    assert writer.pour_open(BlobType.DATA) == []  # less than a pack: nothing finished
    assert sorted(len(p) for p in writer._packers[BlobType.DATA]) == [0, 0, 0, 12]
    filled = []
    for bid, sealed, raw in blobs[12:]:
        full = writer.add(BlobType.DATA, bid, sealed, raw)
        if full is not None:  # one packer of the four may fill up on its own
            filled.append(full.finish())
    poured = writer.pour_open(BlobType.DATA)
    left = 40 - 15 * (len(filled) + len(poured))
    assert [len(p.entries) for p in filled + poured] == [15] * (len(filled) + len(poured))
    assert 0 < left < 15
    assert sorted(len(p) for p in writer._packers[BlobType.DATA]) == [0, 0, 0, left]
    poured += filled
    for p in poured:
        assert packfmt.parse_pack(KEYS, p.data) == p.entries
    taken = [e.blob_id for _, entries in writer.take_open(BlobType.DATA, 1 << 20) for e in entries]
    assert sorted(_ids(poured) + taken) == sorted(b[0] for b in blobs)  # each blob once


def test_data_packs_are_stored_cold_and_tree_packs_cached(tmp_path: Path) -> None:
    store = _store()
    cache = LocalCache(tmp_path)
    stored: list[FinishedPack] = []
    writer = PackWriter(store, KEYS, 1 << 20, cache, stored.append)
    for t in BlobType:
        for bid, sealed, raw in _sealed(2, t):
            writer.add(t, bid, sealed, raw)
    packs = writer.finish_open()
    for p in packs:
        writer.store(p)
    assert stored == packs
    kinds = {p.entries[0].type: p for p in packs}
    cold = dict(store.writes)
    data, tree = kinds[BlobType.DATA], kinds[BlobType.TREE]
    assert cold[f"data/{data.pack_id.hex()[:2]}/{data.pack_id.hex()}"] is True
    assert cold[f"data/{tree.pack_id.hex()[:2]}/{tree.pack_id.hex()}"] is False
    assert cache.get("packs", tree.pack_id) == tree.data
    assert cache.get("packs", data.pack_id) is None


class _ShortStore(_Store):
    """Says every object is one byte shorter than written."""

    def stat(self, name: str) -> Any:
        info = super().stat(name)
        return type(info)(info.name, info.size - 1)


def test_a_pack_stored_with_the_wrong_size_is_refused_when_asked() -> None:
    store = _ShortStore()
    store.create()
    bid, sealed, raw = _sealed(1)[0]
    lenient, told = _writer(store, 1 << 20)
    lenient.add(BlobType.DATA, bid, sealed, raw)
    [pack] = lenient.finish_open()
    lenient.store(pack)  # no stat asked for: stored and told
    assert told == [pack]
    strict, told = _writer(store, 1 << 20, verify_size=True)
    with pytest.raises(CasError, match="wrong size"):
        strict.store(pack)
    assert told == []


# -- BlobSaver ----------------------------------------------------------------------------


def _saver(store: _Store, **kw: Any) -> tuple[BlobSaver, IndexStore]:
    indexes = IndexStore(store, KEYS)
    return BlobSaver(store, KEYS, 1 << 20, indexes, None, threads=0, **kw), indexes


def test_saver_counts_packs_and_writes_an_index_file_every_few_packs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packwriter, "INDEX_EVERY_PACKS", 3)
    store = _store()
    saver, indexes = _saver(store, batch_bytes=1)
    saver.writer = PackWriter(store, KEYS, 1, None, saver._stored, open_packs=1)  # one blob a pack
    for _ in range(7):
        data = os.urandom(64)
        assert saver.save(BlobType.DATA, data, KEYS.blob_id(BlobType.DATA, data))
    saver.wait()  # the uploads
    assert (saver.stats.packs, saver.stats.index_files) == (7, 2)
    assert len(store.names("index/")) == 2
    packs = [n for n, _ in store.writes if n.startswith("data/")]
    assert saver.stats.pack_bytes == sum(store.stat(n).size for n in packs)
    saver.flush()
    assert saver.stats.index_files == 3
    assert len(indexes.index) == 7


def _save(saver: BlobSaver, size: int) -> None:
    data = os.urandom(size)
    assert saver.save(BlobType.DATA, data, KEYS.blob_id(BlobType.DATA, data))


def test_small_blobs_are_sealed_in_batches_of_bytes_or_blobs() -> None:
    saver, _ = _saver(_store(), batch_bytes=1200)
    _save(saver, 600)
    assert saver.stats.blobs[BlobType.DATA] == 0  # waits for its batch
    _save(saver, 600)
    assert saver.stats.blobs[BlobType.DATA] == 2  # 1200 bytes: the batch is full
    saver, _ = _saver(_store())  # the default batch: 4 MiB or 512 blobs
    for _ in range(packwriter.BATCH_BLOBS - 1):
        _save(saver, 10)
    assert saver.stats.blobs[BlobType.DATA] == 0
    _save(saver, 10)
    assert saver.stats.blobs[BlobType.DATA] == 512 == packwriter.BATCH_BLOBS


def test_connections_are_set_before_the_first_upload_only() -> None:
    store = _store()
    saver, _ = _saver(store, batch_bytes=1)
    saver.set_connections(0)
    assert saver.connections == 2  # at least one: ignored
    saver.set_connections(3)
    assert saver.connections == 3
    saver.writer = PackWriter(store, KEYS, 1, None, saver._stored, open_packs=1)
    _save(saver, 10)  # a full pack: uploading threads started
    saver.set_connections(5)
    assert saver.connections == 3
    saver.close()


def test_saver_writes_an_index_file_after_enough_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packwriter, "INDEX_EVERY_BLOBS", 4)
    store = _store()
    saver, _ = _saver(store)
    entries = [packfmt.PackEntry(os.urandom(32), BlobType.DATA, 0, 100, 60)] * 3
    saver.adopt(os.urandom(32), 300, entries)
    assert store.names("index/") == []  # 3 blobs: not yet
    saver.adopt(os.urandom(32), 100, entries[:1])
    assert len(store.names("index/")) == 1  # the 4th blob
    assert (saver.stats.packs, saver.stats.pack_bytes) == (2, 400)
    assert saver.stats.blobs[BlobType.DATA] == 4
    assert (saver.stats.raw_bytes, saver.stats.stored_bytes) == (240, 400)


def test_a_failed_index_write_keeps_its_packs_for_the_next_one() -> None:
    store = _store()
    saver, indexes = _saver(store)
    saved = []
    for _ in range(3):
        data = os.urandom(64)
        saved.append(KEYS.blob_id(BlobType.DATA, data))
        saver.save(BlobType.DATA, data, saved[-1])
    store.fail_index = 1
    with pytest.raises(BackendError):
        saver.flush()
    assert saver.stats.index_files == 0
    saver.flush()  # nothing open any more: the index file names the pack stored before
    [name] = store.names("index/")
    fid = bytes.fromhex(name.rsplit("/", 1)[1])
    listed = [e.blob_id for es in indexes.read(fid).packs.values() for e in es]
    assert sorted(listed) == sorted(saved)
    assert saver.stats.index_files == 1


def test_saver_tells_known_blobs_and_claims_only_new_ones() -> None:
    store = _store()
    saver, _ = _saver(store)
    a, b, c = (os.urandom(32) for _ in range(3))
    assert saver.save(BlobType.DATA, b"a", a) is True
    assert saver.save(BlobType.DATA, b"a", a) is False  # in flight
    assert saver.claim([a, b, b]) == b"\0\1\0"
    assert saver.has(b) and not saver.has(c)
    saver.flush()
    assert saver.has(a)  # indexed now
    assert saver.claim([a, c]) == b"\0\1"


def test_a_worker_saver_hands_each_pack_over_and_forgets_its_blobs() -> None:
    store = _store()
    handed: list[FinishedPack] = []
    saver = BlobSaver(store, KEYS, 1 << 20, None, None, threads=0, on_pack=handed.append)
    data = os.urandom(64)
    bid = KEYS.blob_id(BlobType.DATA, data)
    assert saver.save(BlobType.DATA, data, bid)
    saver.flush()
    [pack] = handed
    assert (saver.stats.packs, saver.stats.pack_bytes) == (1, len(pack.data))
    assert not saver.has(bid)  # the process that asked for it indexes it
    assert store.names("index/") == []


def test_add_sealed_packs_and_counts_blobs_sealed_elsewhere() -> None:
    store = _store()
    saver, indexes = _saver(store)
    blobs = _sealed(3)
    body, entries, off = b"", [], 0
    for bid, sealed, raw in blobs:
        entries.append(packfmt.PackEntry(bid, BlobType.DATA, off, len(sealed), raw))
        body += sealed
        off += len(sealed)
    saver.add_sealed(body, entries)
    saver.flush()
    assert saver.stats.blobs[BlobType.DATA] == 3
    assert saver.stats.stored_bytes == len(body)
    assert all(indexes.index.get(b[0]) is not None for b in blobs)


def test_adopting_a_pack_as_columns_counts_indexes_and_lists_it_as_entries_would() -> None:
    """A worker's pack adopted from columns (no PackEntry per blob in the main
    process): the same statistics, index lookups and index file as from entries."""
    entries = [
        packfmt.PackEntry(os.urandom(32), BlobType.DATA, 0, 120, 100),  # incompressible
        packfmt.PackEntry(os.urandom(32), BlobType.TREE, 120, 150, 400),
        packfmt.PackEntry(os.urandom(32), BlobType.DATA, 270, 130, 300),
    ]
    pack_id = os.urandom(32)
    files, stats = [], []
    for columns in (False, True):
        store = _store()
        saver, indexes = _saver(store)
        if columns:
            saver.adopt_columns(
                pack_id,
                400,
                packfmt.PackColumns(
                    b"".join(e.blob_id for e in entries),
                    bytes(int(e.type) for e in entries),
                    [e.offset for e in entries],
                    [e.length for e in entries],
                    [e.raw_length for e in entries],
                ),
            )
        else:
            saver.adopt(pack_id, 400, entries)
        for e in entries:
            loc = indexes.index.get(e.blob_id)
            assert loc is not None and (loc.pack_id, loc.offset, loc.length) == (
                pack_id,
                e.offset,
                e.length,
            )
        saver.flush()
        (name,) = store.names("index/")
        files.append(indexes.read(bytes.fromhex(name.rsplit("/", 1)[1])).packs)
        stats.append(saver.stats)
    assert files[0] == files[1] == {pack_id: entries}
    assert stats[0] == stats[1]
    assert stats[1].blobs[BlobType.DATA] == 2 and stats[1].blobs[BlobType.TREE] == 1
    assert (stats[1].raw_bytes, stats[1].stored_bytes) == (800, 400)
    assert (stats[1].packs, stats[1].pack_bytes) == (1, 400)
    assert (stats[1].data_raw_bytes, stats[1].data_incompressible_bytes) == (400, 100)
    with pytest.raises(ValueError):  # columns of different lengths
        saver.adopt_columns(
            pack_id, 400, packfmt.PackColumns(entries[0].blob_id, b"\0\0", [0, 1], [1, 1], [1, 1])
        )


# -- the write order of a snapshot ----------------------------------------------------------


def test_a_snapshot_is_written_after_its_packs_and_their_index_file() -> None:
    store = _store()
    repo = new_repo(store)
    blob, _ = repo.save_blob(BlobType.DATA, os.urandom(1000))
    tree, _ = repo.save_blob(BlobType.TREE, b"[]")
    store.writes.clear()
    repo.save_snapshot(Snapshot(1, tree, [b"/x"], "h", "u"))
    order = [n.split("/")[0] for n, _ in store.writes]
    snap = order.index("snapshots")
    assert order[:snap].count("data") == 2 and "index" in order[order.index("data") : snap]
    assert repo.locate(blob).pack_id.hex() in {n.rsplit("/", 1)[1] for n in store.names("data/")}


def test_pack_choices_are_uniform_and_drawn_from_the_os_in_bulk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The open pack a blob goes to comes from the OS's randomness, read 4 KiB at a
    time (not one system call per blob), without favouring any pack: a byte is
    used only below the largest multiple of ``n`` (for n = 3, byte 255 is dropped)."""
    calls = []
    pools = iter([bytes(range(256)) * 16, bytes([255, 1]) + bytes(4094)])

    def urandom(n: int) -> bytes:
        calls.append(n)
        return next(pools)

    monkeypatch.setattr(packwriter.os, "urandom", urandom)
    choices = packwriter.Choices()
    assert [choices.below(1) for _ in range(3)] == [0, 0, 0] and calls == []
    drawn = [choices.below(3) for _ in range(255)]
    assert drawn == [b % 3 for b in range(255)]  # 85 of each value
    assert calls == [4096]
    choices._at = 4096 - 1  # the last byte of the pool: 255, rejected for n = 3
    choices._pool = bytes(4095) + bytes([255])
    assert choices.below(3) == 1  # from the next pool: 255 skipped, then 1
    assert calls == [4096, 4096]
    assert {choices.below(4) for _ in range(500)} <= {0, 1, 2, 3}
