"""Sizes for ``cas stats`` (cas/manage/stats.py), on hand-built trees and through the CLI."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.errors import IntegrityError
from cas.format.snapshot import Snapshot
from cas.format.tree import Node, encode_tree
from cas.manage.stats import StatsCollector, pack_totals
from tests.support.cli import run_cas
from tests.support.repos import new_repo, populate


class FakeStore:
    """Tree blobs by ID, and a stored length for each blob (sealed = raw + 40)."""

    def __init__(self) -> None:
        self.trees: dict[bytes, bytes] = {}
        self.loads = 0
        self.missing: set[bytes] = set()

    def tree(self, nodes: list[Node]) -> bytes:
        raw = encode_tree(nodes)
        tid = hashlib.sha256(raw).digest()
        self.trees[tid] = raw
        return tid

    def load(self, tree_id: bytes) -> bytes:
        self.loads += 1
        return self.trees[tree_id]

    def stored(self, blob_id: bytes) -> int | None:
        if blob_id in self.missing:
            return None
        raw = self.trees.get(blob_id)
        return (len(raw) if raw is not None else int.from_bytes(blob_id[:2], "big")) + 40

    def collector(self) -> StatsCollector:
        return StatsCollector(self.load, self.stored)


def blob(size: int, tag: int) -> tuple[bytes, int]:
    """A fake data blob ID whose first two bytes encode its size."""
    return size.to_bytes(2, "big") + bytes([tag]) * 30, size


def file(name: bytes, *chunks: tuple[bytes, int], links: int = 1, inode: int = 0) -> Node:
    return Node(
        name=name,
        type="file",
        size=sum(s for _, s in chunks),
        content=[b for b, _ in chunks],
        sizes=[s for _, s in chunks],
        links=links,
        inode=inode,
        device=1,
    )


def directory(name: bytes, subtree: bytes) -> Node:
    return Node(name=name, type="dir", subtree=subtree)


def test_sizes_dedup_and_hardlinks() -> None:
    store = FakeStore()
    a, b, c = blob(1000, 1), blob(500, 2), blob(300, 3)
    sub = store.tree(
        [
            file(b"x", a, b),  # 1500
            file(b"y", a),  # 1000, same chunk as x
            file(b"h1", c, links=2, inode=7),  # hardlinked pair: counted once
            Node(name=b"link", type="symlink", size=3, target=b"abc"),
        ]
    )
    root1 = store.tree([directory(b"sub", sub), file(b"h2", c, links=2, inode=7)])
    root2 = store.tree([directory(b"copy", sub), directory(b"sub", sub)])

    col = store.collector()
    s1 = col.add_snapshot(b"1" * 32, root1)
    assert (s1.restore_size, s1.files, s1.dirs, s1.others) == (2800, 3, 1, 1)
    loads = store.loads
    s2 = col.add_snapshot(b"2" * 32, root2)
    # Both copies of the subtree count, but h1 in them is one (device, inode): once.
    assert (s2.restore_size, s2.files, s2.dirs) == (2 * 2500 + 300, 5, 2)
    assert store.loads == loads + 1  # the shared subtree was not read again

    st = col.result()
    trees = sum(len(store.trees[t]) for t in (sub, root1, root2))
    assert st.restore_size == 2800 + 5300 and st.files == 8
    assert (st.data_blobs, st.tree_blobs) == (3, 3)
    assert st.raw_tree == trees
    assert st.raw_data == 1800 + trees
    assert st.stored_size == st.raw_data + 6 * 40
    assert st.dedup_ratio == pytest.approx(8100 / st.raw_data)
    assert st.compression_ratio == pytest.approx(st.raw_data / st.stored_size)
    doc = st.as_dict()
    assert doc["snapshot_count"] == 2 and doc["snapshots"][0]["id"] == (b"1" * 32).hex()


def test_missing_blobs_are_counted_not_fatal() -> None:
    store = FakeStore()
    a = blob(100, 1)
    store.missing.add(a[0])
    root = store.tree([file(b"f", a)])
    col = store.collector()
    col.add_snapshot(b"s" * 32, root)
    st = col.result()
    assert st.missing_blobs == 1 and st.stored_size == len(store.trees[root]) + 40


def test_empty_and_deep_trees() -> None:
    store = FakeStore()
    empty = store.tree([])
    col = store.collector()
    col.add_snapshot(b"e" * 32, empty)
    assert col.result().dedup_ratio == 0.0

    # Deeper than Python's recursion limit.
    tid = store.tree([file(b"leaf", blob(10, 1))])
    for _ in range(3000):
        tid = store.tree([directory(b"d", tid)])
    s = store.collector().add_snapshot(b"d" * 32, tid)
    assert (s.restore_size, s.dirs) == (10, 3000)

    nothing = StatsCollector(store.load, store.stored).result()
    assert nothing.dedup_ratio is None and nothing.compression_ratio is None


def test_a_tree_that_contains_itself_is_refused() -> None:
    store = FakeStore()
    loop = b"L" * 32
    store.trees[loop] = encode_tree([directory(b"again", loop)])
    with pytest.raises(IntegrityError):
        store.collector().add_snapshot(b"x" * 32, loop)


def test_against_a_real_repository() -> None:
    repo = new_repo(MemoryBackend())
    sid, files = populate(repo, n_files=3)
    snap = repo.load_snapshot(sid)
    repo.load_index()

    def stored(blob_id: bytes) -> int | None:
        loc = repo.index.get(blob_id)
        return None if loc is None else loc.length

    col = StatsCollector(lambda t: repo.load_blob(BlobType.TREE, t), stored)
    col.add_snapshot(sid, snap.tree)
    col.add_snapshot(sid, snap.tree)  # the same snapshot twice: data counted once
    st = col.result()
    total = sum(len(d) for d in files.values())
    assert st.restore_size == 2 * total
    assert st.raw_data - st.raw_tree == total  # random data: no chunk repeats
    assert st.missing_blobs == 0
    # Random data does not compress, so sealing only adds overhead (the tree may shrink).
    data_raw = st.raw_data - st.raw_tree
    assert data_raw + 40 * st.data_blobs < st.stored_size < st.raw_data + 200 * (st.data_blobs + 1)
    packs = pack_totals(repo)
    assert packs.packs >= 1 and packs.bytes >= st.stored_size


# -- through the CLI -----------------------------------------------------------------


def test_cli_stats(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello world\n" * 5000)  # compresses well
    (src / "b.txt").write_bytes(b"hello world\n" * 5000)  # deduplicates with a.txt
    os.link(src / "a.txt", src / "a-link.txt")
    assert run_cas("-r", repo, "init").code == 0
    first = run_cas("-r", repo, "--json", "backup", src)
    assert first.code == 0, first.err
    assert run_cas("-r", repo, "backup", src).code == 0

    whole = run_cas("-r", repo, "--json", "stats")
    assert whole.code == 0, whole.err
    doc = whole.json()
    assert doc["scope"] == "repository" and doc["snapshot_count"] == 2
    assert doc["restore_size"] == 2 * 2 * 60000  # the hardlink counts once
    assert doc["files"] == 4
    assert doc["dedup_ratio"] > 2 and doc["compression_ratio"] > 5
    assert doc["repository"]["packs"] >= 1
    assert doc["repository"]["pack_bytes"] >= doc["stored_size"]

    sid = first.json()["id"]
    one = run_cas("-r", repo, "--json", "stats", sid[:10])
    assert one.code == 0, one.err
    d1 = one.json()
    assert d1["scope"] == "snapshots" and [s["id"] for s in d1["snapshots"]] == [sid]
    assert d1["restore_size"] == 120000
    # The second backup stored no content: every data blob is the first one's. Trees may
    # differ (the snapshot records the directories above src, and on a shared machine
    # /tmp's mtime moves between the two backups), so the data part is compared.
    assert d1["data_blobs"] == doc["data_blobs"]
    assert d1["raw_data"] - d1["raw_tree"] == doc["raw_data"] - doc["raw_tree"]

    human = run_cas("-r", repo, "stats", sid[:10])
    assert human.code == 0 and "dedup ratio" in human.out and sid[:8] in human.out

    missing = run_cas("-r", repo, "stats", "ffffffff")
    assert missing.code == 1 and "no snapshot" in missing.err


def test_cli_stats_with_library_snapshots(tmp_path: Path) -> None:
    from cas.backend.local import LocalBackend

    repo = new_repo(LocalBackend(tmp_path / "repo"))
    tree, _ = repo.save_blob(BlobType.TREE, encode_tree([]))
    repo.save_snapshot(Snapshot(1, tree, [b"/x"], "h1", "u"))
    repo.save_snapshot(Snapshot(2, tree, [b"/x"], "h2", "u"))
    r = run_cas("-r", tmp_path / "repo", "--json", "stats", "--host", "h2")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["scope"] == "snapshots" and doc["snapshot_count"] == 1
    assert doc["restore_size"] == 0 and doc["tree_blobs"] == 1 and "repository" not in doc
