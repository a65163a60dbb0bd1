"""The tree walker (cas/walker.py) on hand-built trees in an in-memory blob reader."""

from __future__ import annotations

import hashlib

import pytest

from cas.crypto import BlobType
from cas.errors import BlobNotFound, CasError, FormatError, IntegrityError
from cas.format.tree import Node, encode_tree
from cas.walker import bottom_up, load_tree, trees, used_blobs


class FakeReader:
    """Tree blobs by ID; counts loads and refuses anything but a tree."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}
        self.loads: list[bytes] = []

    def tree(self, nodes: list[Node]) -> bytes:
        raw = encode_tree(nodes)
        tid = hashlib.sha256(raw).digest()
        self.blobs[tid] = raw
        return tid

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        assert blob_type is BlobType.TREE
        self.loads.append(blob_id)
        raw = self.blobs.get(blob_id)
        if raw is None:
            raise BlobNotFound(blob=blob_id.hex())
        return raw


def data(tag: int) -> bytes:
    return bytes([tag]) * 32


def file(name: bytes, *content: bytes) -> Node:
    return Node(name, "file", size=len(content), content=list(content), sizes=[1] * len(content))


def directory(name: bytes, subtree: bytes) -> Node:
    return Node(name, "dir", subtree=subtree)


class Example:
    """root/{a/{x}, b/{shared}, c/{shared}, f}: ``shared`` is one tree under two names."""

    def __init__(self) -> None:
        self.r = FakeReader()
        self.x = self.r.tree([file(b"deep", data(1))])
        self.a = self.r.tree([directory(b"x", self.x), file(b"g", data(2))])
        self.shared = self.r.tree([file(b"s", data(3), data(4))])
        self.b = self.r.tree([directory(b"shared", self.shared)])
        self.c = self.r.tree([directory(b"shared", self.shared), file(b"h", data(3))])
        self.root = self.r.tree(
            [
                directory(b"a", self.a),
                directory(b"b", self.b),
                directory(b"c", self.c),
                file(b"f", data(5)),
            ]
        )
        self.all_trees = {self.root, self.a, self.x, self.b, self.c, self.shared}


# -- load_tree ---------------------------------------------------------------------------


def test_load_tree_decodes_a_stored_tree() -> None:
    ex = Example()
    nodes = load_tree(ex.r, ex.a)
    assert [n.name for n in nodes] == [b"g", b"x"]
    assert nodes[1].subtree == ex.x and ex.r.loads == [ex.a]


def test_load_tree_errors_are_cas_errors() -> None:
    r = FakeReader()
    with pytest.raises(BlobNotFound):
        load_tree(r, data(9))
    r.blobs[data(8)] = b"\x93not a tree"
    with pytest.raises(FormatError):
        load_tree(r, data(8))


# -- trees (top down) --------------------------------------------------------------------


def test_trees_top_down_each_tree_once() -> None:
    ex = Example()
    seen: set[bytes] = set()
    order = [tid for tid, _ in trees(ex.r, ex.root, seen)]
    # Depth first, a tree before those below it, the last subtree first.
    assert order == [ex.root, ex.c, ex.shared, ex.b, ex.a, ex.x]
    assert seen == ex.all_trees
    assert sorted(ex.r.loads) == sorted(ex.all_trees)  # the shared tree loaded once
    # With the same ``seen``, nothing is walked again.
    assert list(trees(ex.r, ex.root, seen)) == []


def test_trees_yields_the_nodes_of_each_tree() -> None:
    ex = Example()
    got = dict(trees(ex.r, ex.root, set()))
    assert [n.name for n in got[ex.c]] == [b"h", b"shared"]


def test_trees_reports_an_unreadable_tree_and_goes_on() -> None:
    ex = Example()
    del ex.r.blobs[ex.b]
    errors: list[tuple[bytes, CasError]] = []
    got = [
        tid for tid, _ in trees(ex.r, ex.root, set(), on_error=lambda t, e: errors.append((t, e)))
    ]
    assert [t for t, _ in errors] == [ex.b] and isinstance(errors[0][1], BlobNotFound)
    assert set(got) == ex.all_trees - {ex.b}  # shared is still reached through c


def test_trees_without_on_error_raises() -> None:
    ex = Example()
    del ex.r.blobs[ex.x]
    with pytest.raises(BlobNotFound):
        list(trees(ex.r, ex.root, set()))


# -- used_blobs --------------------------------------------------------------------------


def test_used_blobs_is_every_tree_and_data_blob() -> None:
    ex = Example()
    used = used_blobs(ex.r, [ex.root])
    assert used == ex.all_trees | {data(i) for i in range(1, 6)}


def test_used_blobs_visits_shared_trees_once_across_roots() -> None:
    ex = Example()
    other = ex.r.tree([directory(b"again", ex.c), file(b"new", data(6))])
    used = used_blobs(ex.r, iter([ex.root, other]))
    assert ex.r.loads.count(ex.c) == 1 and ex.r.loads.count(ex.shared) == 1
    assert other in used and data(6) in used
    # Per root with one set: the same loads as one call.
    ex.r.loads.clear()
    acc: set[bytes] = set()
    for root in (ex.root, other):
        assert used_blobs(ex.r, [root], used=acc) is acc
    assert acc == used and len(ex.r.loads) == len(ex.all_trees) + 1


def test_used_blobs_names_the_root_of_an_unreadable_tree() -> None:
    ex = Example()
    broken_root = ex.r.tree([directory(b"lost", data(7)), directory(b"a", ex.a)])
    errors: list[tuple[bytes, bytes, str]] = []
    used = used_blobs(
        ex.r,
        [ex.root, broken_root],
        on_error=lambda root, tid, e: errors.append((root, tid, str(e))),
    )
    assert errors == [(broken_root, data(7), f"blob {data(7).hex()} is not in the index")]
    assert data(7) in used  # the failed tree counts as used, and is tried once


def test_used_blobs_on_error_may_refuse() -> None:
    ex = Example()
    del ex.r.blobs[ex.shared]

    class Refused(Exception):
        pass

    def refuse(root: bytes, tree_id: bytes, error: CasError) -> None:
        raise Refused(root, tree_id)

    with pytest.raises(Refused) as info:
        used_blobs(ex.r, [ex.root], on_error=refuse)
    assert info.value.args == (ex.root, ex.shared)
    with pytest.raises(BlobNotFound):  # without on_error the error itself propagates
        used_blobs(ex.r, [ex.root])


# -- bottom_up ---------------------------------------------------------------------------


def test_bottom_up_yields_each_tree_after_its_subdirectories() -> None:
    ex = Example()
    memo: dict[bytes, int] = {}  # tree -> number of files below it
    order = []
    for tid, nodes in bottom_up(lambda t: load_tree(ex.r, t), ex.root, memo):
        assert nodes is not None
        order.append(tid)
        memo[tid] = sum(
            memo[n.subtree] if n.subtree is not None else int(n.type == "file") for n in nodes
        )
    # Post-order, subdirectories in name order; the shared tree once.
    assert order == [ex.x, ex.a, ex.shared, ex.b, ex.c, ex.root]
    assert memo[ex.root] == 6 and ex.r.loads.count(ex.shared) == 1
    # What the memo holds is not walked again.
    more = ex.r.tree([directory(b"old", ex.root), file(b"n", data(1))])
    assert [t for t, _ in bottom_up(lambda t: load_tree(ex.r, t), more, memo)] == [more]


def test_bottom_up_yields_an_unreadable_tree_as_a_leaf() -> None:
    ex = Example()

    def load(tid: bytes) -> list[Node] | None:
        return None if tid == ex.a else load_tree(ex.r, tid)

    done: set[bytes] = set()
    got = []
    for tid, nodes in bottom_up(load, ex.root, done):
        done.add(tid)
        got.append((tid, nodes is None))
    assert got[0] == (ex.a, True) and ex.x not in done and ex.r.loads.count(ex.a) == 0


def test_bottom_up_follows_directories_only() -> None:
    r = FakeReader()
    sub = r.tree([])
    # A subtree on a file node is not a directory.  The tree decoder refuses such a
    # node (spec §11.3), so the nodes are handed to bottom_up without encoding them.
    odd = Node(b"odd", "file", subtree=sub)
    root = r.tree([])
    trees = {root: [odd], sub: []}
    assert [t for t, _ in bottom_up(trees.__getitem__, root, set())] == [root]


def test_bottom_up_refuses_a_tree_that_contains_itself() -> None:
    r = FakeReader()
    loop = data(9)
    r.blobs[loop] = encode_tree([directory(b"again", loop)])
    with pytest.raises(IntegrityError, match="contains itself"):
        list(bottom_up(lambda t: load_tree(r, t), loop, set()))


def test_walks_deeper_than_the_recursion_limit() -> None:
    r = FakeReader()
    tid = r.tree([file(b"leaf", data(1))])
    for _ in range(3000):
        tid = r.tree([directory(b"d", tid)])
    done: set[bytes] = set()
    n = 0
    for t, _ in bottom_up(lambda t: load_tree(r, t), tid, done):
        done.add(t)
        n += 1
    assert n == 3001
    assert len(used_blobs(r, [tid])) == 3002
