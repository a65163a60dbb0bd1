"""repair index rebuilds from pack headers; repair snapshots stubs files whose data is lost."""

from __future__ import annotations

from cas import layout
from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.format.tree import decode_tree
from cas.repair import STUB_TEXT, rebuild_index, repair_snapshots
from cas.repository import open_repository
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
