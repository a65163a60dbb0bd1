"""What object and range lengths tell the storage provider (issue 18, spec §8.1, §9.5,
§9.6, §15): randomised placement, whole-unit reads, hidden blob counts, Padmé padding,
and version 1 repositories that stay version 1."""

from __future__ import annotations

import itertools
import os
import random
import struct
from pathlib import Path

import pytest

from cas import crypto
from cas.backend.base import Backend
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.check.checker import Checker, CheckOptions
from cas.crypto import BlobType
from cas.format import config as configfmt
from cas.format import pack as packfmt
from cas.manage.copier import copy_snapshots
from cas.mount.vfs import SnapshotView
from cas.repo import Repository, init_repository, keyring, open_repository
from cas.repo.packer import Packer
from cas.repo.store import RepositoryStore
from cas.restore.restorer import Restorer
from cas.walker import load_tree
from tests.independent.compare import assert_snapshot_is, read_local
from tests.support.cli import run_cas
from tests.support.repos import PASSWORD, SMALL_CHUNKS, cheap_kdf, populate

UNIT = packfmt.READ_UNIT
KEYS = crypto.MasterKeys.generate()


class Recording(MemoryBackend):
    """A memory backend that records every read: (name, offset, length or None)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, int, int | None]] = []

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.reads.append((name, offset, length))
        return super().read(name, offset, length)

    def ranged_pack_reads(self) -> list[tuple[str, int, int]]:
        return [(n, o, ln) for n, o, ln in self.reads if n.startswith("data/") and ln is not None]


def _pack_of(sizes: list[int], version: int) -> bytes:
    """A pack of blobs of these sealed sizes (random bytes: only the header is parsed)."""
    packer = Packer(KEYS, BlobType.DATA, version)
    for n in sizes:
        packer.add(os.urandom(32), os.urandom(n), n)
    return bytes(packer.finish().data)


# -- the header: its length does not give the count -----------------------------------------


def _header_length(pack: bytes) -> int:
    return int(struct.unpack("<I", pack[-8:-4])[0])


def test_header_length_does_not_depend_on_the_count() -> None:
    total = 3_000_000
    seen_v2: set[tuple[int, int]] = set()
    seen_v1: set[int] = set()
    for count in (0, 1, 2, 17, 100, 256):
        sizes = [total // count] * count if count else []
        if count:
            sizes[-1] += total - sum(sizes)
        pack = _pack_of(sizes, 2)
        assert pack[-4:] == b"CPK2"
        assert [e.length for e in packfmt.parse_pack(KEYS, pack)] == sizes
        # the size follows from the index entries (§9.6): readers cut ranges there
        assert len(pack) == packfmt.pack_size(2, sum(sizes), count)
        seen_v2.add((_header_length(pack), len(pack) - sum(sizes)))
        v1 = _pack_of(sizes, 1)
        assert len(v1) == packfmt.pack_size(1, sum(sizes), count)
        seen_v1.add(_header_length(v1))
    assert seen_v2 == {(45 + 41 * 256, 45 + 41 * 256 + 8)}  # the same for 0 to 256 blobs
    assert len(seen_v1) == 6  # the control: a version 1 header gives the count away
    # above 256 the header gives only the power of two above the count
    lengths = {_header_length(_pack_of([100] * n, 2)) for n in (257, 400, 512)}
    assert lengths == {45 + 41 * 512}
    assert _header_length(_pack_of([100] * 513, 2)) == 45 + 41 * 1024


def test_v2_header_refusals() -> None:
    pack = bytearray(_pack_of([1000, 2000], 2))
    (h,) = struct.unpack("<I", pack[-8:-4])
    sealed = bytes(pack[-8 - h : -8])
    plain = crypto.open_sealed(KEYS.index_key, sealed, packfmt.PACK_AD, "t")
    for bad in (plain[:2], struct.pack("<I", 3) + plain[4:], plain[:-1] + b"\x01"):
        resealed = bytes(KEYS.index.seal(bad, packfmt.PACK_AD))
        with pytest.raises(Exception) as info:
            packfmt.decode_header(KEYS, resealed, len(resealed) + 3000 + 8, 2)
        assert type(info.value).__name__ == "FormatError"


# -- placement: a file's chunks are spread over packs, and restore is exact ------------------


def _repo(backend: Backend, padding: str | None = None, pack_size: int = 1 << 20) -> Repository:
    return init_repository(
        backend,
        PASSWORD,
        chunker=SMALL_CHUNKS,
        pack_size=pack_size,
        kdf=cheap_kdf(),
        padding=padding,
    )


def _pack_sequence(repo: Repository, content: list[bytes]) -> list[bytes]:
    return [repo.locate(b).pack_id for b in content]


def test_a_files_chunks_are_spread_over_packs_and_restore_exactly(tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = _repo(backend)
    sid, files = populate(repo, n_files=12, seed=5)
    repo.flush()
    # One big file of ~4 MiB: its ~60 chunks go to 4 open packs at random.
    rnd = random.Random(9)
    big = rnd.randbytes(4 << 20)
    chunker = repo.chunker()
    content, pos = [], 0
    for end in chunker.cut_points(big):
        content.append(repo.save_blob(BlobType.DATA, big[pos:end])[0])
        pos = end
    repo.flush()
    packs = _pack_sequence(repo, content)
    assert len(set(packs)) >= 3
    # consecutive chunks change pack about 3 times in 4; in one pack they would never
    changes = sum(a != b for a, b in itertools.pairwise(packs))
    assert changes >= len(packs) // 3
    # and both restore exactly
    for name, data in files.items():
        assert _read_back(repo, sid, name) == data
    assert b"".join(repo.load_blob(BlobType.DATA, b) for b in content) == big
    for info in backend.list("data"):
        assert backend.read(info.name)[-4:] == b"CPK2"


def _read_back(repo: Repository, sid: bytes, name: bytes) -> bytes:
    snap = repo.load_snapshot(sid)
    node = next(n for n in load_tree(repo, snap.tree) if n.name == name)
    return b"".join(
        repo.load_blob(BlobType.DATA, b, s) for b, s in zip(node.content, node.sizes, strict=True)
    )


def test_the_partly_filled_packs_are_poured_together_at_the_end() -> None:
    backend = MemoryBackend()
    repo = _repo(backend)
    for i in range(40):  # 40 blobs of 10 KB: far below one pack
        repo.save_blob(BlobType.DATA, os.urandom(10_000) + bytes([i]))
    repo.flush()
    data_packs = [i for i in backend.list("data")]
    # one data pack (and no tree pack): as many packs as one open pack would leave
    assert len(data_packs) == 1


def test_a_cli_backup_restores_exactly_and_the_independent_reader_agrees(tmp_path: Path) -> None:
    repo, src, out = tmp_path / "repo", tmp_path / "src", tmp_path / "out"
    (src / "d").mkdir(parents=True)
    rnd = random.Random(3)
    for i in range(30):
        (src / "d" / f"f{i}").write_bytes(rnd.randbytes(rnd.randrange(10, 200_000)))
    (src / "big").write_bytes(rnd.randbytes(3 << 20))
    assert run_cas("-r", repo, "init", "--chunk-min", "4096", "--chunk-avg", "16384").code == 0
    done = run_cas("-r", repo, "--json", "backup", src)
    assert done.code == 0, done.err
    sid = done.json()["id"]
    assert run_cas("-r", repo, "restore", sid, "--target", out).code == 0
    view = read_local(repo)
    assert_snapshot_is(view, sid, src)
    restored = out / str(src).lstrip("/")
    for path in src.rglob("*"):
        if path.is_file():
            assert (restored / path.relative_to(src)).read_bytes() == path.read_bytes()
    for pack in (repo / "data").rglob("*"):
        if pack.is_file():
            assert pack.read_bytes()[-4:] == b"CPK2"


# -- reads: whole units only ----------------------------------------------------------------


def _assert_whole_units(backend: Recording, what: str) -> int:
    """Every ranged read of a pack starts on a unit and is whole units long or ends at
    the pack's end (which the provider knows), or is the pack's last unit (a header)."""
    reads = backend.ranged_pack_reads()
    assert reads, f"{what} read no pack range"
    for name, offset, length in reads:
        size = backend.stat(name).size
        units = offset % UNIT == 0 and (length % UNIT == 0 or offset + length == size)
        last_unit = offset + length == size and length == min(UNIT, size)
        assert units or last_unit, (what, name, offset, length, size)
    return len(reads)


def test_restore_copy_mount_and_check_read_whole_units(tmp_path: Path) -> None:
    backend = Recording()
    repo = _repo(backend)
    sid, files = populate(repo, n_files=20, seed=11)
    repo.flush()
    snap = repo.load_snapshot(sid)

    # restore
    backend.reads.clear()
    restorer = Restorer(repo, repo.file_digest)
    target = tmp_path / "restored"
    target.mkdir()
    restorer.restore(snap.tree, os.fsencode(target))
    for name, data in files.items():
        assert (target / os.fsdecode(name)).read_bytes() == data
    _assert_whole_units(backend, "restore")

    # copy (blob by blob, in this process)
    dst = init_repository(MemoryBackend(), PASSWORD, kdf=cheap_kdf(), share_ids_with=repo)
    backend.reads.clear()
    repo.reader._unit_cache = None  # each step reads from the storage (cas/repo/unitcache.py)
    result = copy_snapshots(repo, dst, [sid])
    assert result.blobs_copied >= len(files)
    _assert_whole_units(backend, "copy")

    # mount (the read-only view FUSE serves)
    backend.reads.clear()
    repo.reader._tree_packs.clear()
    repo.reader._unit_cache = None
    view = SnapshotView(RepositoryStore(repo), readahead_workers=0)
    view.refresh()
    latest = view.readlink(view.resolve(b"snapshots/latest"))
    for name, data in files.items():
        inode = view.resolve(b"snapshots/" + latest + b"/" + name)
        assert view.read(inode, 0, len(data) + 10) == data
        assert view.read(inode, 5, 100) == data[5:105]
    view.close()
    _assert_whole_units(backend, "mount")

    # check: pack headers (the last unit of each pack), then --read-data
    backend.reads.clear()
    repo.reader._unit_cache = None
    found = Checker(repo, CheckOptions(read_data=True, workers=1)).run()
    assert found.errors == 0, found.findings
    _assert_whole_units(backend, "check")


def test_a_version_1_repository_reads_exact_ranges() -> None:
    """The control: in version 1 a blob's read gives its exact length."""
    backend = Recording()
    repo = _v1_repo(backend)
    sid, files = populate(repo, n_files=5, seed=2)
    repo.flush()
    backend.reads.clear()
    repo.reader._tree_packs.clear()
    for name in files:
        _read_back(repo, sid, name)
    lengths = {ln for _, _, ln in backend.ranged_pack_reads()}
    assert any(ln % UNIT for ln in lengths)


# -- padding -------------------------------------------------------------------------------


def test_padme_bound() -> None:
    for n in list(range(2, 5000)) + [
        random.Random(1).randrange(5000, 1 << 32) for _ in range(5000)
    ]:
        p = packfmt.padme(n)
        assert n <= p < n * 1.125 + 1
        assert packfmt.padme(p) == p  # a padded length is its own padding
    # lengths of sealed blobs (at least 46 bytes) grow by less than 12.5%,
    # from 64 KiB by less than 3.2%
    assert max(packfmt.padme(n) / n for n in range(46, 70_000)) < 1.125
    assert max(packfmt.padme(n) / n for n in range(64 << 10, (64 << 10) + 70_000)) < 1.032


def test_padding_round_trip_and_overhead_bound() -> None:
    backend = MemoryBackend()
    repo = _repo(backend, padding="padme")
    assert repo.config.padding == "padme" and repo.config.version == 2
    rnd = random.Random(4)
    blobs = {}
    raw = stored = 0
    for n in [0, 1, 63, 64, 65, 1000, 4095, 70_000] + [
        rnd.randrange(1, 300_000) for _ in range(60)
    ]:
        data = rnd.randbytes(n)  # incompressible: stored, so padding is all the overhead
        bid, _ = repo.save_blob(BlobType.DATA, data)
        blobs[bid] = data
    repo.flush()
    for bid, data in blobs.items():
        loc = repo.locate(bid)
        assert loc.length == packfmt.padme(loc.length)
        unpadded = crypto.SEAL_OVERHEAD + 1 + len(data)
        assert loc.length < (unpadded + 4) * 1.125 + 1
        raw += unpadded
        stored += loc.length
        assert repo.load_blob(BlobType.DATA, bid, len(data)) == data
    assert stored / raw < 1.125
    # reopened: the config keeps the padding, and a new session pads too
    again = open_repository(backend, PASSWORD)
    assert again.config.padding == "padme"
    bid, _ = again.save_blob(BlobType.DATA, b"x" * 5000)
    again.flush()
    assert again.locate(bid).length == packfmt.padme(again.locate(bid).length)
    assert again.load_blob(BlobType.DATA, bid) == b"x" * 5000


def test_padded_payload_refusals() -> None:
    good = packfmt.pad_payload(b"\x00" + b"abc" * 10, "padme")
    assert packfmt.unpad_payload(good, "t") == b"\x00" + b"abc" * 10
    for bad in (good[:3], good[:1] + struct.pack("<I", 10_000) + good[5:], good[:-1] + b"\x01"):
        with pytest.raises(Exception) as info:
            packfmt.unpad_payload(bad, "t")
        assert type(info.value).__name__ == "FormatError"


def test_init_padding_via_the_cli(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    done = run_cas("-r", repo, "--json", "init", "--padding", "padme")
    assert done.code == 0, done.err
    doc = done.json()
    assert doc["padding"] == "padme" and doc["version"] == 2
    human = run_cas("-r", tmp_path / "other", "init")
    assert human.code == 0 and "created repository" in human.out
    shown = run_cas("-r", tmp_path / "other", "--json", "cat", "config")
    assert shown.json()["object"]["padding"] == "none"
    assert shown.json()["object"]["version"] == 2
    bad = run_cas("-r", tmp_path / "third", "init", "--padding", "zeros")
    assert bad.code == 2 and "zeros" in bad.err and "Traceback" not in bad.err
    # a padded repository backs up and restores exactly
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(300_000))
    (src / "b").write_bytes(b"text " * 10_000)
    backup = run_cas("-r", repo, "--json", "backup", src)
    assert backup.code == 0, backup.err
    assert run_cas("-r", repo, "restore", "latest", "--target", tmp_path / "out").code == 0
    out = tmp_path / "out" / str(src).lstrip("/")
    assert (out / "a").read_bytes() == (src / "a").read_bytes()
    assert (out / "b").read_bytes() == (src / "b").read_bytes()
    assert run_cas("-r", repo, "check", "--read-data").code == 0


# -- version 1 stays version 1 ---------------------------------------------------------------


def _v1_repo(backend: Backend) -> Repository:
    """A version 1 repository as cas 0.1 made it: its config says version 1."""
    backend.create()
    keys = crypto.MasterKeys.generate()
    cfg = configfmt.Config(os.urandom(32), SMALL_CHUNKS, 1 << 20, version=1)
    keyring.write_key(backend, keys, PASSWORD, cheap_kdf())
    backend.write("config", configfmt.encode_config(cfg, keys.data))
    return open_repository(backend, PASSWORD)


def test_a_version_1_repository_stays_version_1(tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = _v1_repo(backend)
    assert repo.config.version == 1 and repo.config.padding is None
    sid, files = populate(repo, n_files=8, seed=3)
    repo.flush()
    packs = list(backend.list("data"))
    assert packs
    for info in packs:
        assert backend.read(info.name)[-4:] == b"CPK1"
    again = open_repository(backend, PASSWORD)
    assert again.config.version == 1
    for name, data in files.items():
        assert _read_back(again, sid, name) == data
    found = Checker(again, CheckOptions(read_data=True, workers=1)).run()
    assert found.errors == 0, found.findings
    assert backend.read("config")[7] == 1  # never rewritten


def test_a_version_1_repository_made_by_the_cli_reads_back(tmp_path: Path) -> None:
    """A repository of cas 0.1 on disk (its config rewritten as version 1 before any
    data): backup, restore and check through the CLI keep it version 1."""
    repo = tmp_path / "repo"
    _v1_repo(LocalBackend(str(repo)))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(200_000))
    assert run_cas("-r", repo, "backup", src).code == 0
    assert run_cas("-r", repo, "check", "--read-data").code == 0
    assert run_cas("-r", repo, "restore", "latest", "--target", tmp_path / "out").code == 0
    out = tmp_path / "out" / str(src).lstrip("/") / "f"
    assert out.read_bytes() == (src / "f").read_bytes()
    assert (repo / "config").read_bytes()[7] == 1
    shown = run_cas("-r", repo, "--json", "cat", "config").json()
    assert shown["object"]["version"] == 1
    for pack in (repo / "data").rglob("*"):
        if pack.is_file():
            assert pack.read_bytes()[-4:] == b"CPK1"
