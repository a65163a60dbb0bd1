"""The checker's counts, messages and diagnoses that the damaged fixtures do not pin.

Each test was written against a mutant of cas/check/checker.py that the rest of
the suite let pass (docs/reliability.md §8.3); all run in memory.
"""

from __future__ import annotations

import time

import pytest

from cas.backend.memory import MemoryBackend
from cas.check.checker import CheckOptions, _age, check
from cas.crypto import BlobType
from cas.format import generation as genfmt
from cas.format import index as indexfmt
from cas.format import pack as packfmt
from cas.format.snapshot import Snapshot
from cas.format.tree import Node, encode_tree
from cas.ids import storage_id
from cas.repo import Repository, layout, open_repository
from tests.support.damaged import BUILDERS, _pack_entries, write_pack
from tests.support.repos import PASSWORD, flip_byte, new_repo, populate


def _snapshot(repo: Repository, nodes: list[Node]) -> bytes:
    tree, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    return repo.save_snapshot(Snapshot(time.time_ns(), tree, [b"/x"], "h", "u", program="test"))


def test_summary_counts_files_and_directories_not_other_entries() -> None:
    store = MemoryBackend()
    repo = new_repo(store)
    blob, _ = repo.save_blob(BlobType.DATA, b"content")
    f = Node(name=b"f", type="file", size=7, content=[blob], sizes=[7])
    inner, _ = repo.save_blob(BlobType.TREE, encode_tree([f]))
    _snapshot(
        repo,
        [
            Node(name=b"d", type="dir", subtree=inner),
            f,
            Node(name=b"l", type="symlink", target=b"f", size=1),
            Node(name=b"p", type="fifo"),
        ],
    )
    repo.flush()
    result = check(repo)
    assert result.findings == []
    s = result.summary
    assert (s.snapshots, s.trees, s.dirs, s.files) == (1, 2, 1, 2)


def test_listing_progress_counts_every_object() -> None:
    store = MemoryBackend()
    populate(new_repo(store), n_files=2)
    seen: list[tuple[str, int, int]] = []
    check(
        open_repository(store, PASSWORD),
        progress=lambda phase, done, total: seen.append((phase, done, total)),
    )
    listed = [done for phase, done, _ in seen if phase == "list"]
    in_layout = [o for o in store.list("") if o.name.split("/", 1)[0] in layout.DIRECTORIES]
    assert listed[-1] == len(in_layout) and listed == sorted(listed)
    assert ("locks", 0, 0) in seen and ("leftovers", 0, 0) in seen


@pytest.mark.parametrize("damaged", ["data_pack", "dup_pack"])
def test_a_damaged_copy_is_found_intact_in_the_other_pack(damaged: str) -> None:
    """Either copy of a blob stored twice damaged: the other one is found, whichever
    pack's ID sorts first."""
    d = BUILDERS["duplicates"](MemoryBackend())
    dup = d.names["first_blob"].removeprefix("blob:")
    (entry,) = [e for e in _pack_entries(d, d.names[damaged]) if e.blob_id.hex() == dup]
    flip_byte(d.backend, d.names[damaged], entry.offset + entry.length // 2)
    result = check(d.open(), CheckOptions(read_data=True))
    kinds = {f.kind: f for f in result.findings}
    assert "blob_damaged" not in kinds and result.errors == 1  # the pack alone
    other = d.names["dup_pack" if damaged == "data_pack" else "data_pack"]
    assert (
        f"the copy in pack {other.rsplit('/', 1)[1][:8]} is intact"
        in kinds["blob_copy_damaged"].message
    )


def test_duplicate_blobs_message_counts_them() -> None:
    d = BUILDERS["duplicates"](MemoryBackend())
    (finding,) = [f for f in check(d.open()).findings if f.kind == "blob_duplicate"]
    assert finding.message.startswith("1 of its 2 blobs is also stored in other packs")
    repo = d.open()
    both = _pack_entries(d, d.names["data_pack"])[:2]
    pack = write_pack(repo, BlobType.DATA, [repo.load_blob(BlobType.DATA, e.blob_id) for e in both])
    last = max(repo.index_files())
    while True:  # an index file sorting last, so that the new pack holds the copies
        raw = indexfmt.encode_index(
            indexfmt.IndexFile({pack: repo.read_pack_header(pack)}), repo.keys.index_key
        )
        if storage_id(raw) > last:
            break
    d.backend.write(layout.index_name(storage_id(raw)), raw)
    messages = sorted(
        f.message for f in check(d.open()).findings if f.object == layout.pack_name(pack)
    )
    assert messages[0].startswith("2 of its 2 blobs are also stored in other packs")


def test_a_generation_that_does_not_name_the_one_before_is_reported() -> None:
    store = MemoryBackend()
    repo = new_repo(store)
    populate(repo, n_files=1)
    populate(repo, n_files=1, seed=2)
    gens = sorted(n for o in store.list("") if (n := layout.generation_from_name(o.name)))
    assert len(gens) >= 2 and check(repo).findings == []
    last = layout.generation_name(gens[-1])
    record = genfmt.decode_generation(store.read(last), repo.keys.index)
    record.prev = bytes(32)
    store.delete(last)
    store.write(last, genfmt.encode_generation(record, repo.keys.index_key))
    (finding,) = check(open_repository(store, PASSWORD)).findings
    assert (finding.kind, finding.object) == ("generation_damaged", last)
    assert f"does not name generation {gens[-1] - 1}" in finding.message


def test_every_damaged_pack_header_is_reported() -> None:
    d = BUILDERS["pack_header_flipped"](MemoryBackend())  # the tree pack's header
    size = d.backend.stat(d.names["data_pack"]).size
    flip_byte(d.backend, d.names["data_pack"], size - packfmt.TRAILER_SIZE - 20)
    found = sorted(f.object for f in check(d.open()).findings if f.kind == "pack_header_damaged")
    assert found == sorted([d.names["data_pack"], d.names["tree_pack"]])


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (3599, "60m"),
        (3600, "1h"),
        (86399, "24h"),
        (86400, "1d"),
    ],
)
def test_ages_are_shown_in_the_largest_whole_unit(seconds: float, shown: str) -> None:
    assert _age(seconds) == shown
