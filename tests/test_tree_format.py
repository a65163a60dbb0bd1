"""Tree blobs (spec/format.md §11): edges that mutation testing (tools/mutation.py,
docs/reliability.md §8.3) found unpinned by the vectors and the metadata tests."""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest

from cas.errors import FormatError
from cas.format import tree as treefmt
from cas.format.tree import Node

ID = b"\x01" * 32


def _raw(docs: list[Any]) -> bytes:
    raw: bytes = msgpack.packb({"nodes": docs, "v": 1}, use_bin_type=True)
    return raw


def _file(name: bytes, **changes: Any) -> dict[str, Any]:
    doc = Node(name, "file", 0o644, size=3, content=[ID], sizes=[3], digest=ID).to_doc()
    doc.update(changes)
    return doc


def test_the_node_maps_of_a_tree_come_back_as_they_are() -> None:
    """``decode_tree_docs`` (the restorer's reader while writers take the files) gives
    every map as it is, checking only that each has a byte-string name, in order."""
    docs = [_file(b"a"), _file(b"b", size="not checked here"), {"name": b"c"}]
    assert treefmt.decode_tree_docs(_raw(docs)) == docs
    assert treefmt.decode_tree_docs(_raw([])) == []


@pytest.mark.parametrize(
    "names",
    [[b"b", b"a"], [b"a", b"a"], [b"a", b"c", b"b"]],
    ids=["reversed", "twice", "last-two-swapped"],
)
def test_names_not_strictly_sorted_are_refused_by_both_readers(names: list[bytes]) -> None:
    raw = _raw([_file(n) for n in names])
    for decode in (treefmt.decode_tree_docs, treefmt.decode_tree):
        with pytest.raises(FormatError, match="names not strictly sorted"):
            decode(raw)


@pytest.mark.parametrize(
    "doc", [{"name": "text"}, {"type": "file"}, [b"a"], b"a"], ids=["text", "none", "list", "bytes"]
)
def test_a_node_without_a_byte_string_name_is_refused_by_docs(doc: Any) -> None:
    with pytest.raises(FormatError, match="not a map with a name"):
        treefmt.decode_tree_docs(_raw([_file(b"a"), doc]))


@pytest.mark.parametrize("key", treefmt._REQUIRED_INTS)
@pytest.mark.parametrize("value", [None, "1", 1.0, True, b"\x01"], ids=repr)
def test_each_required_integer_must_be_an_integer(key: str, value: Any) -> None:
    """§11.3: mode, uid, gid, size, the three times, inode and device are integers
    (booleans are not); missing (None: left out) or of another type refuses the node."""
    doc = _file(b"a")
    if value is None:
        del doc[key]
    else:
        doc[key] = value
    with pytest.raises(FormatError, match=f"field '{key}' missing or of the wrong type"):
        Node.from_doc(doc)


@pytest.mark.parametrize(
    "xattrs",
    [[[b"k", "v"]], [["k", b"v"]], [[b"k"]], [[b"k", b"v", b"w"]], [b"kv"], [(b"k", b"v")]],
    ids=["text-value", "text-name", "one", "three", "bytes", "not-a-list"],
)
def test_malformed_xattrs_are_refused(xattrs: list[Any]) -> None:
    """Each extended attribute is a list of two byte strings, name and value."""
    good = Node.from_doc(_file(b"a", xattrs=[[b"user.k", b"v"]]))
    assert good.xattrs == [(b"user.k", b"v")]
    doc = _file(b"a")
    doc["xattrs"] = xattrs
    with pytest.raises(FormatError, match="malformed xattrs"):
        Node.from_doc(doc)


def test_a_content_blob_of_no_bytes_is_accepted_and_a_negative_size_is_not() -> None:
    """§11.3 asks only that ``sizes`` add up to ``size``: an entry for a blob of no bytes
    (the empty blob, which no cas chunker cuts but the format allows) is read; a
    negative size, a size that is not an integer, an ID of 31 or 33 bytes, or lists
    of different lengths make a malformed content list."""
    node = Node.from_doc(_file(b"a", content=[ID, b"\x02" * 32], sizes=[3, 0]))
    assert (node.content, node.sizes, node.size) == ([ID, b"\x02" * 32], [3, 0], 3)
    for content, sizes in [
        ([ID, ID], [4, -1]),
        ([ID], [3.0]),
        ([ID[:31]], [3]),
        ([ID + b"\x01"], [3]),
        ([ID, ID], [3]),
    ]:
        with pytest.raises(FormatError, match="malformed content list"):
            Node.from_doc(_file(b"a", content=content, sizes=sizes))


def test_encoded_nodes_splice_into_the_same_tree_bytes() -> None:
    """A tree with some nodes given already encoded (the backup workers' path) is byte
    for byte the tree of the same nodes encoded together, in any order given."""
    nodes = [
        Node(b"b", "file", size=3, content=[b"\x01" * 32], sizes=[3]),
        Node(b"a", "dir", subtree=b"\x02" * 32),
        Node(b"c", "symlink", size=4, target=b"../x"),
        Node(b"\xff", "file"),
    ]
    whole = treefmt.encode_tree(nodes)
    for i in range(len(nodes)):
        mixed: list[Node | treefmt.EncodedNode] = list(nodes)
        n = nodes[i]
        mixed[i] = treefmt.EncodedNode(n.name, n.type, treefmt.encode_node(n))
        assert treefmt.encode_tree(mixed[::-1]) == whole
    every = [treefmt.EncodedNode(n.name, n.type, treefmt.encode_node(n)) for n in nodes]
    assert treefmt.encode_tree(every) == whole
    assert [n.name for n in treefmt.decode_tree(whole)] == [b"a", b"b", b"c", b"\xff"]


def test_encode_node_is_packb_of_the_node_map_in_any_thread_and_after_a_failure() -> None:
    """``encode_node`` keeps a msgpack Packer per thread: the bytes are ``packb``'s of the
    node's map, in threads side by side, and a node that cannot be packed leaves nothing
    behind in the Packer for the next one."""
    nodes = [
        Node(bytes([97 + i % 26]) * (1 + i % 7), "file", size=i, content=[ID], sizes=[i])
        for i in range(200)
    ]
    expected = [msgpack.packb(n.to_doc(), use_bin_type=True) for n in nodes]
    got: dict[int, list[bytes]] = {}

    def encode(k: int) -> None:
        got[k] = [treefmt.encode_node(n) for n in nodes]

    threads = [threading.Thread(target=encode, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[k] == expected for k in range(4))
    bad = Node(b"x", "file", xattrs=[(b"user.a", object())])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        treefmt.encode_node(bad)
    assert treefmt.encode_node(nodes[0]) == expected[0]
