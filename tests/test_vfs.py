"""The read-only snapshot view (cas.mount.vfs) without FUSE: layout, metadata, reads, caching."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import random
import stat
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.errors import BlobNotFound
from cas.format.snapshot import Snapshot
from cas.format.tree import Node, encode_tree
from cas.mount.vfs import ROOT_INO, BlobCache, SnapshotView, time_name
from cas.repo import Repository, open_repository
from cas.repo.generations import Finding
from cas.repo.store import RepositoryStore
from cas.selection import SnapshotFilter
from tests.support.cli import run_cas
from tests.support.repos import PASSWORD, new_repo

BASE_NS = 1_780_000_000_123_456_789  # 2026


# -- building snapshots through the library ------------------------------------------


def file_node(repo: Repository, name: bytes, data: bytes, **meta: Any) -> Node:
    """A file node whose content is stored in the repository, cut by its chunker."""
    meta.setdefault("mode", 0o644)
    node = Node(name=name, type="file", size=len(data), **meta)
    pos = 0
    for end in repo.chunker().cut_points(data) if data else []:
        chunk = data[pos:end]
        node.content.append(repo.save_blob(BlobType.DATA, chunk)[0])
        node.sizes.append(len(chunk))
        pos = end
    return node


def dir_node(repo: Repository, name: bytes, children: list[Node], **meta: Any) -> Node:
    """A directory node with its tree stored."""
    tree, _ = repo.save_blob(BlobType.TREE, encode_tree(children))
    meta.setdefault("mode", 0o755)
    return Node(name=name, type="dir", subtree=tree, **meta)


def snapshot(
    repo: Repository,
    nodes: list[Node],
    time_ns: int = BASE_NS,
    host: str = "host-a",
    tags: tuple[str, ...] = (),
) -> bytes:
    """Store a snapshot whose root tree holds ``nodes``; returns its ID."""
    tree, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    snap = Snapshot(time_ns, tree, [b"/data"], host, "tester", tags=list(tags), program="test")
    return repo.save_snapshot(snap)


class CountingStore:
    """A SnapshotStore that counts data blob loads and can hide blobs."""

    def __init__(self, inner: RepositoryStore) -> None:
        self.inner = inner
        self.data_loads: list[bytes] = []
        self.missing: set[bytes] = set()
        self.trusted = True

    def snapshot_ids(self) -> list[bytes]:
        return self.inner.snapshot_ids()

    def load_snapshot(self, snapshot_id: bytes) -> Snapshot:
        return self.inner.load_snapshot(snapshot_id)

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        if blob_id in self.missing:
            raise BlobNotFound(blob=blob_id.hex())
        if blob_type == BlobType.DATA:
            self.data_loads.append(blob_id)
        return self.inner.load_blob(blob_type, blob_id, raw_length)

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        return self.inner.blob_id(blob_type, data)

    def stored_size(self, blob_id: bytes) -> int | None:
        return self.inner.stored_size(blob_id)

    def listing_trusted(self) -> bool:
        return self.trusted and self.inner.listing_trusted()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def repo() -> Repository:
    return new_repo(MemoryBackend())


def make_view(repo: Repository, **kw: Any) -> tuple[SnapshotView, CountingStore]:
    store = CountingStore(RepositoryStore(repo))
    kw.setdefault("readahead_workers", 0)
    view = SnapshotView(store, **kw)
    view.refresh()
    return view, store


@pytest.fixture
def closing() -> Iterator[list[SnapshotView]]:
    views: list[SnapshotView] = []
    yield views
    for v in views:
        v.close()


def names(view: SnapshotView, path: bytes) -> list[bytes]:
    return [e.name for e in view.readdir(view.resolve(path + b"/"))]


def os_error(excinfo: pytest.ExceptionInfo[OSError]) -> int | None:
    return excinfo.value.errno


# -- layout ---------------------------------------------------------------------------


def test_no_latest_link_while_the_listing_may_hide_snapshots(repo: Repository) -> None:
    """Under a trust finding (spec §13.6) the newest listed snapshot may not be the
    newest, so no ``latest`` link is shown (as restore and ls refuse ``latest``);
    the snapshots themselves stay, by time and by ID, and ``latest`` comes back once
    the listing is trusted again."""
    a = snapshot(repo, [file_node(repo, b"f", b"one")], BASE_NS, "host-a", ("daily",))
    store = CountingStore(RepositoryStore(repo))
    store.trusted = False
    view = SnapshotView(store, readahead_workers=0)
    try:
        view.refresh()
        ta = time_name(BASE_NS)
        assert names(view, b"snapshots") == [ta]
        assert names(view, b"hosts/host-a") == [ta]
        assert names(view, b"tags/daily") == [ta]
        assert names(view, b"ids") == [a.hex()[:8].encode()]
        with pytest.raises(OSError) as e:
            view.resolve(b"snapshots/latest")
        assert os_error(e) == errno.ENOENT
        assert view.read(view.resolve(b"snapshots/" + ta + b"/f"), 0, 100) == b"one"
        store.trusted = True
        snapshot(repo, [file_node(repo, b"f", b"two")], BASE_NS + 10**9)
        view.refresh()
        assert names(view, b"snapshots")[-1] == b"latest"
    finally:
        view.close()


def test_the_repository_store_trusts_its_listing_until_a_finding(repo: Repository) -> None:
    store = RepositoryStore(repo)
    assert store.listing_trusted()
    repo.generations.findings.append(Finding("snapshot_hidden", "a snapshot vanished"))
    try:
        assert not store.listing_trusted()
    finally:
        repo.generations.findings.pop()


def test_layout_by_time_id_host_and_tag(repo: Repository) -> None:
    a = snapshot(repo, [file_node(repo, b"f", b"one")], BASE_NS, "host-a", ("daily",))
    b = snapshot(repo, [file_node(repo, b"f", b"two")], BASE_NS + 3600 * 10**9, "host-b")
    view, _ = make_view(repo)
    try:
        assert names(view, b"/") == [b"snapshots", b"ids", b"hosts", b"tags"]
        ta, tb = time_name(BASE_NS), time_name(BASE_NS + 3600 * 10**9)
        assert ta == time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(BASE_NS // 10**9)).encode()
        assert names(view, b"snapshots") == [ta, tb, b"latest"]
        assert view.readlink(view.resolve(b"snapshots/latest")) == tb
        assert sorted(names(view, b"ids")) == sorted([a.hex()[:8].encode(), b.hex()[:8].encode()])
        assert names(view, b"hosts") == [b"host-a", b"host-b"]
        assert names(view, b"hosts/host-a") == [ta, b"latest"]
        assert names(view, b"tags") == [b"daily"]
        assert names(view, b"tags/daily") == [ta, b"latest"]
        # One snapshot, one directory: the same inode wherever it is shown.
        ino = view.resolve(b"snapshots/" + ta)
        assert view.resolve(b"ids/" + a.hex()[:8].encode()) == ino
        assert view.resolve(b"hosts/host-a/" + ta) == ino
        assert view.resolve(b"tags/daily/" + ta) == ino
        assert view.read(view.resolve(b"snapshots/" + tb + b"/f"), 0, 100) == b"two"
        top = view.getattr(ROOT_INO)
        assert stat.S_ISDIR(top.mode) and top.mode & 0o777 == 0o555
        assert top.nlink == 6
        snap_dir = view.getattr(ino)
        assert snap_dir.mtime_ns == BASE_NS and snap_dir.nlink == 2
        assert stat.S_ISLNK(view.getattr(view.resolve(b"snapshots/latest")).mode)
    finally:
        view.close()


def test_snapshots_in_the_same_second_get_suffixes(repo: Repository) -> None:
    ids = [
        snapshot(repo, [file_node(repo, b"n", b"%d" % i)], BASE_NS + i * 1000, tags=("t",))
        for i in range(3)
    ]
    view, _ = make_view(repo)
    try:
        base = time_name(BASE_NS)
        expected = [base, base + b"-1", base + b"-2"]
        assert names(view, b"snapshots") == [*expected, b"latest"]
        assert names(view, b"tags/t") == [*expected, b"latest"]
        assert view.readlink(view.resolve(b"snapshots/latest")) == base + b"-2"
        for i, name in enumerate(expected):
            data = view.read(view.resolve(b"snapshots/" + name + b"/n"), 0, 10)
            assert data == b"%d" % i, ids[i].hex()
    finally:
        view.close()


def test_short_ids_grow_until_unique(repo: Repository) -> None:
    from cas.mount import vfs

    listed = [
        vfs._Listed(bytes.fromhex("abcdef12" + "00" * 28), None, None),  # type: ignore[arg-type]
        vfs._Listed(bytes.fromhex("abcdef12" + "3" * 56), None, None),  # type: ignore[arg-type]
        vfs._Listed(bytes.fromhex("11" * 32), None, None),  # type: ignore[arg-type]
    ]
    assert sorted(vfs._short_ids(listed)) == [b"111111111", b"abcdef120", b"abcdef123"]


def test_new_snapshots_appear_and_removed_ones_go(repo: Repository) -> None:
    clock = Clock()
    snapshot(repo, [file_node(repo, b"f", b"first")], BASE_NS)
    view, _ = make_view(repo, clock=clock, refresh_seconds=3.0)
    try:
        assert len(names(view, b"snapshots")) == 2
        later = snapshot(repo, [file_node(repo, b"g", b"second" * 10_000)], BASE_NS + 10**12)
        clock.now += 1.0  # within the refresh interval: not listed yet
        assert len(names(view, b"snapshots")) == 2
        clock.now += 5.0
        newest = time_name(BASE_NS + 10**12)
        assert names(view, b"snapshots") == [time_name(BASE_NS), newest, b"latest"]
        assert view.readlink(view.resolve(b"snapshots/latest")) == newest
        # Its blobs are in an index file written after the mount started.
        assert view.read(view.resolve(b"snapshots/latest/g"), 0, 6) == b"second"
        assert view.resolve(b"ids/" + later.hex()[:8].encode())

        repo.backend.delete(f"snapshots/{later.hex()}")
        clock.now += 5.0
        assert names(view, b"snapshots") == [time_name(BASE_NS), b"latest"]
        assert view.readlink(view.resolve(b"snapshots/latest")) == time_name(BASE_NS)
    finally:
        view.close()


def test_host_and_tag_filters(repo: Repository) -> None:
    snapshot(repo, [], BASE_NS, "alpha", ("x",))
    snapshot(repo, [], BASE_NS + 10**9, "beta", ("x", "y"))
    snapshot(repo, [], BASE_NS + 2 * 10**9, "beta", ())
    for kw, count in (
        ({"hosts": ["beta"]}, 2),
        ({"tags": ["x"]}, 2),
        ({"hosts": ["beta"], "tags": ["x"]}, 1),
        ({"tags": ["nope"]}, 0),
    ):
        view, _ = make_view(repo, selection=SnapshotFilter.of(**kw))
        try:
            assert view.snapshot_count() == count, kw
            assert len([n for n in names(view, b"snapshots") if n != b"latest"]) == count
        finally:
            view.close()


def test_odd_host_and_tag_names_become_one_directory_name(repo: Repository) -> None:
    snapshot(repo, [], BASE_NS, "a/b", ("..", "t/u"))
    view, _ = make_view(repo)
    try:
        assert names(view, b"hosts") == [b"a_b"]
        assert sorted(names(view, b"tags")) == [b"_..", b"t_u"]
    finally:
        view.close()


# -- metadata -------------------------------------------------------------------------


def test_every_node_field_is_shown(repo: Repository) -> None:
    times = {"atime_ns": -5_000_000_001, "mtime_ns": BASE_NS + 7, "ctime_ns": BASE_NS + 9}
    nodes = [
        file_node(repo, b"suid", b"#!", mode=0o4755, uid=12345, gid=23456, **times),
        file_node(repo, b"sgid-sticky", b"x", mode=0o3640, xattrs=[(b"user.a", b"\0\xff")]),
        Node(name=b"link", type="symlink", mode=0o777, size=4, target=b"\xff\xfe/x"),
        Node(name=b"fifo", type="fifo", mode=0o620, uid=7),
        Node(name=b"sock", type="socket", mode=0o755),
        Node(name=b"null", type="chardev", mode=0o666, rdev=os.makedev(1, 3)),
        Node(name=b"loop", type="blockdev", mode=0o660, rdev=os.makedev(7, 200), flags=0),
        dir_node(repo, b"d", [], mode=0o1777, links=2, flags=0x10, **times),
        Node(name=b"caf\xe9\nname", type="fifo", mode=0o600),
    ]
    snapshot(repo, nodes)
    view, _ = make_view(repo)
    try:
        root = b"snapshots/latest/"

        def attr(name: bytes) -> Any:
            return view.getattr(view.resolve(root + name))

        a = attr(b"suid")
        assert a.mode == stat.S_IFREG | 0o4755 and (a.uid, a.gid) == (12345, 23456)
        assert (a.atime_ns, a.mtime_ns, a.ctime_ns) == (-5_000_000_001, BASE_NS + 7, BASE_NS + 9)
        assert a.size == 2 and a.nlink == 1 and a.blocks == 8
        assert attr(b"sgid-sticky").mode == stat.S_IFREG | 0o3640
        ino = view.resolve(root + b"sgid-sticky")
        assert view.listxattr(ino) == [b"user.a"]
        assert view.getxattr(ino, b"user.a") == b"\0\xff"
        link = attr(b"link")
        assert stat.S_ISLNK(link.mode) and link.size == len(nodes[2].target or b"")
        assert view.readlink(view.resolve(root + b"link")) == nodes[2].target
        assert stat.S_ISFIFO(attr(b"fifo").mode) and attr(b"fifo").uid == 7
        assert stat.S_ISSOCK(attr(b"sock").mode)
        assert stat.S_ISCHR(attr(b"null").mode) and attr(b"null").rdev == os.makedev(1, 3)
        assert stat.S_ISBLK(attr(b"loop").mode) and attr(b"loop").rdev == os.makedev(7, 200)
        d = attr(b"d")
        assert d.mode == stat.S_IFDIR | 0o1777 and d.mtime_ns == BASE_NS + 7 and d.nlink == 2
        assert view.getflags(view.resolve(root + b"d")) == 0x10
        assert b"caf\xe9\nname" in names(view, b"snapshots/latest")
        # The snapshot's own directory counts its subdirectories in its link count.
        assert view.getattr(view.resolve(b"snapshots/latest/")).nlink == 3
    finally:
        view.close()


def test_hardlinks_share_an_inode_within_a_snapshot_only(repo: Repository) -> None:
    def linked(name: bytes) -> Node:
        return file_node(repo, name, b"shared", inode=77, device=5, links=3)

    sub = dir_node(repo, b"sub", [linked(b"c")])
    other = file_node(repo, b"other", b"shared", inode=78, device=5, links=1)
    snapshot(repo, [linked(b"a"), linked(b"b"), sub, other], BASE_NS)
    snapshot(repo, [linked(b"a")], BASE_NS + 10**9)
    view, _ = make_view(repo)
    try:
        first = b"snapshots/" + time_name(BASE_NS) + b"/"
        inos = {view.resolve(first + p) for p in (b"a", b"b", b"sub/c")}
        assert len(inos) == 1
        assert view.getattr(inos.pop()).nlink == 3
        assert view.resolve(first + b"other") != view.resolve(first + b"a")
        assert view.resolve(b"snapshots/latest/a") != view.resolve(first + b"a")
    finally:
        view.close()


def test_errors_are_the_ones_a_filesystem_gives(repo: Repository) -> None:
    f = file_node(repo, b"f", b"data")
    gone = file_node(repo, b"gone", os.urandom(5000))
    snapshot(repo, [f, gone, dir_node(repo, b"d", [])])
    view, store = make_view(repo)
    try:
        top = b"snapshots/latest/"
        cases = [
            (lambda: view.resolve(top + b"missing"), errno.ENOENT),
            (lambda: view.lookup(ROOT_INO, b"nothing"), errno.ENOENT),
            (lambda: view.resolve(top + b"f/below"), errno.ENOTDIR),
            (lambda: view.read(view.resolve(top + b"d"), 0, 1), errno.EISDIR),
            (lambda: view.readlink(view.resolve(top + b"f")), errno.EINVAL),
            (lambda: view.readdir(view.resolve(top + b"f")), errno.ENOTDIR),
            (lambda: view.getxattr(view.resolve(top + b"f"), b"user.x"), errno.ENODATA),
            (lambda: view.getattr(10**9), errno.ENOENT),
        ]
        for call, code in cases:
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == code
        store.missing.update(gone.content)
        with pytest.raises(OSError) as e:
            view.read(view.resolve(top + b"gone"), 0, 10)
        assert e.value.errno == errno.EIO
        assert view.lookup(view.resolve(b"snapshots/latest/"), b"f").size == 4
    finally:
        view.close()


def test_a_damaged_tree_is_eio_and_the_rest_still_works(repo: Repository) -> None:
    good = dir_node(repo, b"good", [file_node(repo, b"x", b"x")])
    bad = dir_node(repo, b"bad", [file_node(repo, b"y", b"y")])
    snapshot(repo, [bad, good])
    view, store = make_view(repo)
    try:
        assert bad.subtree is not None
        store.missing.add(bad.subtree)
        with pytest.raises(OSError) as e:
            view.readdir(view.resolve(b"snapshots/latest/bad"))
        assert e.value.errno == errno.EIO
        assert names(view, b"snapshots/latest/good") == [b"x"]
    finally:
        view.close()


# -- content ---------------------------------------------------------------------------


def test_reads_match_the_content_at_any_offset(repo: Repository) -> None:
    rnd = random.Random(3)
    data = rnd.randbytes(1_500_000)
    node = file_node(repo, b"big", data)
    assert len(node.content) > 5  # small test chunks: many blobs
    snapshot(repo, [node, file_node(repo, b"empty", b"")])
    view, _ = make_view(repo, cache_bytes=256 << 10)
    try:
        ino = view.resolve(b"snapshots/latest/big")
        assert view.getattr(ino).size == len(data)
        boundaries = list(itertools.accumulate(node.sizes))
        probes = [(0, 1), (0, len(data)), (len(data) - 1, 10), (len(data), 5), (10**9, 1)]
        probes += [(b - 3, 7) for b in boundaries[:-1]]
        probes += [(rnd.randrange(len(data)), rnd.randrange(1, 300_000)) for _ in range(200)]
        for offset, size in probes:
            assert view.read(ino, offset, size) == data[offset : offset + size], (offset, size)
        assert view.read(view.resolve(b"snapshots/latest/empty"), 0, 100) == b""
        assert view.cache.size_bytes <= 256 << 10
    finally:
        view.close()


def test_a_read_loads_only_the_blobs_it_needs(repo: Repository) -> None:
    data = random.Random(4).randbytes(2_000_000)
    node = file_node(repo, b"big", data)
    snapshot(repo, [node])
    view, store = make_view(repo)
    try:
        ino = view.resolve(b"snapshots/latest/big")
        view.getattr(ino)
        assert store.data_loads == []  # stat and open read no content
        middle = sum(node.sizes[:4]) + 10
        assert view.read(ino, middle, 100) == data[middle : middle + 100]
        assert store.data_loads == [node.content[4]]
        assert view.read(ino, middle - 10, 5) == data[middle - 10 : middle - 5]
        assert store.data_loads == [node.content[4]]  # cached, and no readahead going back
        assert view.read(ino, middle + 100, 10) == data[middle + 100 : middle + 110]
        assert store.data_loads[:2] == [node.content[4], node.content[5]]  # going on: readahead
    finally:
        view.close()


def test_sequential_reads_prefetch_the_next_blobs(repo: Repository) -> None:
    data = random.Random(5).randbytes(2_000_000)
    node = file_node(repo, b"big", data)
    snapshot(repo, [node])
    ahead = node.sizes[1] + node.sizes[2]  # two blobs' worth
    view, store = make_view(repo, readahead_bytes=ahead)
    try:
        ino = view.resolve(b"snapshots/latest/big")
        assert view.read(ino, 0, 4096) == data[:4096]
        assert store.data_loads == node.content[:3]
        assert node.content[1] in view.cache and node.content[2] in view.cache
        pos = 4096
        while pos < len(data):
            assert view.read(ino, pos, 131072) == data[pos : pos + 131072]
            pos += 131072
        assert store.data_loads == node.content  # each blob loaded once, in order
    finally:
        view.close()


def test_background_prefetch_threads(repo: Repository) -> None:
    data = random.Random(6).randbytes(1_000_000)
    node = file_node(repo, b"big", data)
    snapshot(repo, [node])
    view, _ = make_view(repo, readahead_workers=2)
    try:
        ino = view.resolve(b"snapshots/latest/big")
        out = bytearray()
        while len(out) < len(data):
            out += view.read(ino, len(out), 65536)
        assert bytes(out) == data
    finally:
        view.close()


def test_concurrent_readers_get_correct_bytes(repo: Repository) -> None:
    data = random.Random(7).randbytes(1_200_000)
    snapshot(repo, [file_node(repo, b"big", data)])
    view, _ = make_view(repo, readahead_workers=2, cache_bytes=200_000)
    errors: list[str] = []
    try:
        ino = view.resolve(b"snapshots/latest/big")

        def reader(seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(60):
                off, size = rnd.randrange(len(data)), rnd.randrange(1, 200_000)
                if view.read(ino, off, size) != data[off : off + size]:
                    errors.append(f"{off}+{size}")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    finally:
        view.close()


def test_zero_blobs_are_holes_and_are_not_loaded(repo: Repository) -> None:
    rnd = random.Random(8)
    head, tail = rnd.randbytes(10_000), rnd.randbytes(5000)
    zero = bytes(64 << 10)
    zero_id, _ = repo.save_blob(BlobType.DATA, zero)
    small_zero_id, _ = repo.save_blob(BlobType.DATA, bytes(100))
    head_id, _ = repo.save_blob(BlobType.DATA, head)
    tail_id, _ = repo.save_blob(BlobType.DATA, tail)
    node = Node(
        name=b"sparse",
        type="file",
        mode=0o644,
        size=len(head) + 2 * len(zero) + 100 + len(tail),
        content=[head_id, zero_id, zero_id, small_zero_id, tail_id],
        sizes=[len(head), len(zero), len(zero), 100, len(tail)],
    )
    hole = Node(name=b"hole", type="file", size=len(zero), content=[zero_id], sizes=[len(zero)])
    snapshot(repo, [node, hole])
    view, store = make_view(repo)
    try:
        ino = view.resolve(b"snapshots/latest/sparse")
        # Data in blocks 0-2 (10,000 bytes) and, after 128 KiB of holes, 5,100
        # bytes from offset 141,072 (blocks 34-35, the 100 small zeros included).
        assert view.getattr(ino).blocks == (3 + 2) * 8
        assert view.getattr(view.resolve(b"snapshots/latest/hole")).blocks == 0
        content = head + zero + zero + bytes(100) + tail
        assert view.read(ino, 0, len(content)) == content
        assert zero_id not in store.data_loads
    finally:
        view.close()


def test_holes_inside_a_blob_count_and_seek(repo: Repository) -> None:
    rnd = random.Random(9)
    # One blob: 8 KiB of data, 1 MiB of zeros, 100 bytes of data.  It compresses to
    # almost nothing, so the view scans it; an incompressible blob is data throughout.
    mixed = rnd.randbytes(8192) + bytes(1 << 20) + rnd.randbytes(100)
    noise = rnd.randbytes(64 << 10)
    mixed_id, _ = repo.save_blob(BlobType.DATA, mixed)
    noise_id, _ = repo.save_blob(BlobType.DATA, noise)
    node = Node(
        name=b"mixed",
        type="file",
        size=len(mixed) + len(noise),
        content=[mixed_id, noise_id],
        sizes=[len(mixed), len(noise)],
    )
    snapshot(repo, [node])
    view, _ = make_view(repo)
    try:
        ino = view.resolve(b"snapshots/latest/mixed")
        end_of_zeros = (8192 + (1 << 20)) // 4096 * 4096  # the block holding the 100 bytes
        assert view.getattr(ino).blocks == (2 + 1 + 16) * 8
        assert view.seek(ino, 0, data=False) == 8192
        assert view.seek(ino, 8192, data=True) == end_of_zeros
        assert view.seek(ino, end_of_zeros, data=False) == node.size
        with pytest.raises(OSError) as e:
            view.seek(ino, node.size, data=True)
        assert os_error(e) == errno.ENXIO
    finally:
        view.close()


def test_blob_cache_loads_a_blob_once_for_concurrent_readers() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[bytes] = []

    def load(blob_id: bytes, size: int) -> bytes:
        calls.append(blob_id)
        started.set()
        release.wait(30)
        return blob_id * size

    cache = BlobCache(load, max_bytes=10, workers=1)
    results: list[bytes] = []
    t1 = threading.Thread(target=lambda: results.append(cache.get(b"a", 4)))
    t1.start()
    started.wait(30)
    t2 = threading.Thread(target=lambda: results.append(cache.get(b"a", 4)))
    t2.start()
    release.set()
    t1.join()
    t2.join()
    assert calls == [b"a"] and results == [b"aaaa", b"aaaa"]
    assert cache.get(b"b", 4) == b"bbbb" and cache.get(b"c", 4) == b"cccc"
    assert b"a" not in cache and cache.size_bytes == 8  # least recently used went first
    cache.close()


# -- a real tree, backed up with the CLI --------------------------------------------------


def _flags(path: bytes) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOATIME)
    try:
        raw = fcntl.ioctl(fd, 0x80086601, struct.pack("l", 0))
    except OSError:
        return 0
    finally:
        os.close(fd)
    value: int = struct.unpack("l", raw)[0]
    return value


def test_view_of_a_full_metadata_tree_matches_the_source(tmp_path: Path) -> None:
    from tests.support.trees import build_full_tree, unlock_tree

    src = tmp_path / "src"
    try:
        build_full_tree(src)
    except OSError as e:
        unlock_tree(src)
        pytest.skip(f"cannot build the full-metadata tree here: {e}")
    try:
        repo_dir = tmp_path / "repo"
        assert run_cas("-r", repo_dir, "init").code == 0
        r = run_cas("-r", repo_dir, "backup", src)
        assert r.code == 0, r.err
        repo = open_repository(LocalBackend(repo_dir), PASSWORD)
        view = SnapshotView(RepositoryStore(repo))
        try:
            view.refresh()
            _compare(view, os.fsencode(src), b"snapshots/latest" + os.fsencode(src))
        finally:
            view.close()
    finally:
        unlock_tree(src)


def _list(path: bytes) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME)
    try:
        return [os.fsencode(n) for n in os.listdir(fd)]
    finally:
        os.close(fd)


def _content(path: bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    try:
        out = bytearray()
        while block := os.read(fd, 1 << 20):
            out += block
        return bytes(out)
    finally:
        os.close(fd)


def _compare(view: SnapshotView, src: bytes, top: bytes) -> None:
    """Every entry under ``src`` against the view, read without touching access times."""
    groups_src: dict[tuple[int, int], set[bytes]] = {}
    groups_view: dict[int, set[bytes]] = {}
    todo = [b""]
    while todo:
        rel = todo.pop()
        path = src + rel
        st = os.lstat(path)
        ino = view.resolve(top + rel)
        a = view.getattr(ino)
        where = rel.decode(errors="replace")
        assert a.mode == st.st_mode, where
        assert (a.uid, a.gid) == (st.st_uid, st.st_gid), where
        assert (a.atime_ns, a.mtime_ns, a.ctime_ns) == (
            st.st_atime_ns,
            st.st_mtime_ns,
            st.st_ctime_ns,
        ), where
        assert a.nlink == st.st_nlink, where
        if stat.S_ISDIR(st.st_mode):
            assert sorted(names(view, top + rel)) == sorted(_list(path)), where
            todo += [rel + b"/" + n for n in _list(path)]
        else:
            assert a.size == st.st_size, where
            groups_src.setdefault((st.st_dev, st.st_ino), set()).add(rel)
            groups_view.setdefault(ino, set()).add(rel)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            assert a.rdev == st.st_rdev, where
        if stat.S_ISLNK(st.st_mode):
            assert view.readlink(ino) == os.readlink(path), where
        if stat.S_ISREG(st.st_mode):
            assert view.read(ino, 0, st.st_size + 1) == _content(path), where
        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            assert view.getflags(ino) == _flags(path), where
        xattrs = {
            os.fsencode(n): os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)
        }
        assert {n: view.getxattr(ino, n) for n in view.listxattr(ino)} == xattrs, where
    assert len(groups_src) > 50
    assert {frozenset(g) for g in groups_src.values()} == {
        frozenset(g) for g in groups_view.values()
    }
    assert any(len(g) > 1 for g in groups_view.values())
