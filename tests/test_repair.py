"""repair index rebuilds from pack headers; repair snapshots stubs files whose data is lost."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from pathlib import Path

from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.format.codec import pack_canonical
from cas.format.tree import Node, decode_tree
from cas.manage.repair import STUB_TEXT, repair_snapshots
from cas.repo import layout, open_repository
from cas.repo.rebuild import rebuild_index
from tests.independent.compare import read_local
from tests.support.cli import run_cas
from tests.support.repos import PASSWORD, new_repo, populate


def test_rebuild_index_after_losing_every_index_file() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    sid, files = populate(repo, n_files=5)
    for o in list(backend.list(layout.INDEX)):
        backend.delete(o.name)
    repo = open_repository(backend, PASSWORD)
    result = rebuild_index(repo)
    assert result.packs_indexed == len(list(backend.list(layout.DATA)))
    assert not result.unreadable_packs
    repo = open_repository(backend, PASSWORD)
    snap = repo.load_snapshot(sid)
    for node in decode_tree(repo.load_blob(BlobType.TREE, snap.tree)):
        data = b"".join(
            repo.load_blob(BlobType.DATA, b, s)
            for b, s in zip(node.content, node.sizes, strict=True)
        )
        assert data == files[node.name]


def test_repair_snapshots_stubs_only_the_damaged_file() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend, pack_size=1 << 20)
    sid, files = populate(repo, n_files=20)
    repo = open_repository(backend, PASSWORD)
    repo.load_index()
    snap = repo.load_snapshot(sid)
    nodes = decode_tree(repo.load_blob(BlobType.TREE, snap.tree))
    victim = nodes[0]
    lost_pack = repo.locate(victim.content[0]).pack_id
    backend.delete(layout.pack_name(lost_pack))
    rebuild_index(open_repository(backend, PASSWORD))
    repo = open_repository(backend, PASSWORD)
    result = repair_snapshots(repo)
    assert len(result.snapshots_rewritten) == 1
    new_id = bytes.fromhex(result.snapshots_rewritten[sid.hex()])
    repo = open_repository(backend, PASSWORD)
    fixed = repo.load_snapshot(new_id)
    assert "repaired" in fixed.tags and repo.load_snapshot(sid)  # the original is kept
    stubbed = 0
    for node in decode_tree(repo.load_blob(BlobType.TREE, fixed.tree)):
        data = b"".join(
            repo.load_blob(BlobType.DATA, b, s)
            for b, s in zip(node.content, node.sizes, strict=True)
        )
        if "repaired" in node.extra:
            stubbed += 1
            assert data.startswith(STUB_TEXT.split(b":")[0])
        else:
            assert data == files[node.name]
    assert stubbed >= 1
    assert stubbed < len(files)


def test_repair_drops_only_a_refused_entry() -> None:
    """A tree entry that breaks spec §11.3 (a dir without subtree, a file whose content
    does not add up) is dropped by repair snapshots; its siblings are kept as they were."""
    backend = MemoryBackend()
    repo = new_repo(backend)
    sid, files = populate(repo, n_files=3)
    snap = repo.load_snapshot(sid)
    docs = [n.to_doc() for n in decode_tree(repo.load_blob(BlobType.TREE, snap.tree))]
    bad_dir = Node(name=b"a-dir", type="dir", mode=0o755).to_doc()  # no subtree
    bad_file = dict(docs[0], name=b"b-file", size=docs[0]["size"] + 1)
    raw = pack_canonical({"v": 1, "nodes": sorted([*docs, bad_dir, bad_file], key=_name)})
    tree, _ = repo.save_blob(BlobType.TREE, raw)
    broken = repo.save_snapshot(dataclasses.replace(snap, tree=tree))
    result = repair_snapshots(open_repository(backend, PASSWORD))
    assert sorted(result.damaged_paths) == [
        "/a-dir (a dir node without subtree)",
        "/b-file (a file's content list does not add up to its size)",
    ]
    repo = open_repository(backend, PASSWORD)
    fixed = repo.load_snapshot(bytes.fromhex(result.snapshots_rewritten[broken.hex()]))
    kept = decode_tree(repo.load_blob(BlobType.TREE, fixed.tree))
    assert [n.name for n in kept] == sorted(files)
    assert [n.to_doc() for n in kept] == docs


def _name(doc: dict[str, object]) -> object:
    return doc["name"]


def test_after_repair_check_passes_and_unaffected_files_restore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(4)
    for i in range(30):
        (src / f"f{i}").write_bytes(rnd.randbytes(rnd.randrange(10_000, 200_000)))
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init", "--pack-size", str(1 << 20)).code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    packs = sorted(p for p in (repo / "data").rglob("*") if p.is_file())
    victim = max(packs, key=lambda p: p.stat().st_size)  # a data pack, not the tree pack
    victim.unlink()
    damaged = run_cas("-r", repo, "--json", "check")
    assert damaged.code == 1
    assert run_cas("-r", repo, "repair", "index").code == 0
    fixed = run_cas("-r", repo, "--json", "repair", "snapshots", "--forget")
    assert fixed.code == 0, fixed.err
    lost = fixed.json()["damaged_paths"]
    assert 0 < len(lost) < 30
    clean = run_cas("-r", repo, "--json", "check", "--read-data")
    assert clean.code == 0, clean.out
    out = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "--target", out).code == 0
    restored = out / str(src).lstrip("/")
    stubs = 0
    for f in src.iterdir():
        data = (restored / f.name).read_bytes()
        if any(p.endswith("/" + f.name) for p in lost):
            stubs += 1
            assert data.startswith(b"cas: this file could not be recovered")
        else:
            assert data == f.read_bytes()
    assert stubs == len(lost)

    # Read by code written from the spec alone: only the repaired snapshot is left,
    # whole; the lost files are stubs marked ``repaired``, the others the source's.
    view = read_local(repo)
    (snap,) = view.snapshots.values()
    assert snap.doc["repaired_from"] and "repaired" in snap.doc["tags"]
    entries = snap.below(src)
    assert sorted(entries) == sorted(os.fsencode(f.name) for f in src.iterdir())
    for name, e in entries.items():
        if any(p.endswith("/" + os.fsdecode(name)) for p in lost):
            assert "repaired" in e.node
        else:
            assert e.sha256 == hashlib.sha256((src / os.fsdecode(name)).read_bytes()).hexdigest()
