"""cas/browse: which trees diff and find read, on trees held in memory (no repository)."""

from __future__ import annotations

import hashlib

from cas.browse.differ import Differ
from cas.browse.finder import Finder, Query, resolve_ids
from cas.browse.nav import Entry, lookup, walk
from cas.crypto import BlobType
from cas.errors import CasError, IntegrityError
from cas.format.tree import Node, encode_tree


class Trees:
    """A BlobReader over encoded trees, counting the loads of each."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}
        self.loads: dict[bytes, int] = {}

    def add(self, nodes: list[Node]) -> bytes:
        raw = encode_tree(nodes)
        tree_id = hashlib.sha256(raw).digest()
        self.blobs[tree_id] = raw
        return tree_id

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        assert blob_type == BlobType.TREE
        self.loads[blob_id] = self.loads.get(blob_id, 0) + 1
        if blob_id not in self.blobs:
            raise IntegrityError(what=f"blob {blob_id.hex()[:8]}", detail="missing")
        return self.blobs[blob_id]


def file(name: bytes, *blobs: bytes, mode: int = 0o644) -> Node:
    return Node(name, "file", mode, size=len(blobs), content=list(blobs), sizes=[1] * len(blobs))


def directory(name: bytes, tree: bytes) -> Node:
    return Node(name, "dir", 0o755, subtree=tree)


def blob(n: int) -> bytes:
    return bytes([n]) * 32


def test_diff_does_not_read_a_subtree_both_sides_share() -> None:
    t = Trees()
    big = t.add([file(b"f%d" % i, blob(i)) for i in range(50)])
    old = t.add([directory(b"big", big), file(b"x", blob(100))])
    new = t.add([directory(b"big", big), file(b"x", blob(101)), file(b"y", blob(102))])
    d = Differ(t)
    changes = [(c.kind, c.path) for c in d.changes(Entry(b"/", None, old), Entry(b"/", None, new))]
    assert changes == [("M", b"/x"), ("+", b"/y")]
    assert big not in t.loads
    assert d.stats.bytes_added == 2 and d.stats.bytes_removed == 1


def test_find_skips_trees_known_to_hold_no_match() -> None:
    t = Trees()
    subtree = t.add([file(b"plain", blob(1))])
    roots = [t.add([directory(b"a", subtree), file(b"wanted-%d" % i, blob(9))]) for i in range(5)]
    finder = Finder(t, Query(patterns=[b"wanted-*"]))
    found = [[m.entry.path for m in finder.find(r)] for r in roots]
    assert found == [[b"/wanted-%d" % i] for i in range(5)]
    assert t.loads[subtree] == 1  # read once, then known to hold nothing
    by_blob = Finder(t, Query(blobs={blob(9)}))
    assert [m.ids for m in by_blob.find(roots[0])] == [(blob(9),)]
    # A pattern with a slash matches paths: nothing can be skipped.
    by_path = Finder(t, Query(patterns=[b"/a/*"]))
    assert [[m.entry.path for m in by_path.find(r)] for r in roots[:2]] == [[b"/a/plain"]] * 2
    # --exclude's syntax: * never crosses a slash, ** does; a name must match whole.
    top = Finder(t, Query(patterns=[b"/*"]))
    assert [m.entry.path for m in top.find(roots[0])] == [b"/a", b"/wanted-0"]
    deep = Finder(t, Query(patterns=[b"/**/plain", b"want"]))
    assert [m.entry.path for m in deep.find(roots[0])] == [b"/a/plain"]
    newline = t.add([file(b"x\n", blob(3))])
    assert list(Finder(t, Query(patterns=[b"x"])).find(newline)) == []


def test_lookup_and_walk_keep_an_explicit_stack() -> None:
    t = Trees()
    tree = t.add([file(b"leaf", blob(1))])
    for _ in range(5000):  # far deeper than Python's recursion limit
        tree = t.add([directory(b"d", tree)])
    paths = [e.path for e in walk(t, Entry(b"/", None, tree))]
    assert len(paths) == 5001 and paths[-1] == b"/d" * 5000 + b"/leaf"
    assert lookup(t, tree, b"/d" * 5000 + b"/leaf").node == file(b"leaf", blob(1))


def test_id_prefixes() -> None:
    known = [bytes.fromhex("ab" * 32), bytes.fromhex("ac" + "00" * 31)]
    assert resolve_ids(["AB"], lambda: known, "blob") == [known[0]]
    assert resolve_ids(["cd" * 32], lambda: known, "blob") == [bytes.fromhex("cd" * 32)]
    for bad in ("a", "zz", "ee"):
        try:
            resolve_ids([bad], lambda: known, "blob")
        except Exception as e:
            assert "blob" in str(e)
        else:
            raise AssertionError(bad)


def test_a_tree_that_cannot_be_read_is_reported_in_every_snapshot() -> None:
    t = Trees()
    missing = bytes(32)
    parent = t.add([directory(b"broken", missing)])
    roots = [t.add([directory(b"p", parent), file(b"n%d" % i, blob(1))]) for i in range(2)]
    errors: list[bytes] = []

    def on_error(path: bytes, error: CasError) -> None:
        errors.append(path)

    finder = Finder(t, Query(patterns=[b"nothing"]), on_error)
    for r in roots:
        assert list(finder.find(r)) == []
    assert errors == [b"/p/broken", b"/p/broken"]  # its parent was not taken for clean
    d = Differ(t, on_error)
    assert list(d.changes(Entry(b"/", None, roots[0]), Entry(b"/", None, parent))) != []
