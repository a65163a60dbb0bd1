"""Corruption: damaged packs, index files, snapshots, key files and config, through the CLI.

Every damage is found by ``cas check --read-data`` (exit 1, or a one-line
error when the repository cannot even be opened).  ``cas restore`` never
writes wrong data: it restores every file whose data is intact, bit-exact,
names each file (or directory) it could not restore and exits 1; damage to
bytes it does not need (a pack header, which restore does not read) leaves
it unaffected.  The expected outcome of every case is computed from the
repository before the damage: which blobs become unusable, hence which
entries of the snapshot cannot come back.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cas.backend.local import LocalBackend
from cas.crypto import BlobType
from cas.errors import EXIT_UNTRUSTED
from cas.format.tree import decode_tree
from cas.ids import storage_id
from cas.repo import layout, open_repository
from tests.independent.repository import LocalStore
from tests.test_crash import (
    PASSWORD,
    Manifest,
    MiB,
    Repo,
    Source,
    local_repo,
    manifest,
    parallel,
    restored_root,
)

# -- the repository before damage ----------------------------------------------------


@dataclass
class Entry:
    """One entry of a snapshot, relative to the restore target, and what it needs."""

    path: str
    tree: bytes | None = None  # directories: their tree blob
    blobs: list[bytes] = field(default_factory=list)  # files: their data blobs


@dataclass
class Layout:
    """Where everything is: built once, then each test damages its own copy."""

    root: Path
    src: Path
    snapshots: dict[str, tuple[Manifest, bytes, list[Entry]]]  # id -> manifest, root, entries
    s1: str
    s2: str
    packs: dict[bytes, list[tuple[bytes, int, int]]]  # pack -> (blob, offset, length)
    index: dict[bytes, set[bytes]]  # index file -> packs it lists
    blob_pack: dict[bytes, bytes]
    tree_packs: set[bytes]
    sizes: dict[str, int] = field(default_factory=dict)  # object name -> size

    def damaged_pack_loses(self, pid: bytes, lo: int, hi: int) -> set[bytes]:
        """Blobs that no longer load after bytes lo..hi of pack ``pid`` changed.

        Only those overlapping the damage: data blobs are read one by one (ranged
        reads), and a tree pack whose whole bytes fail their hash is read one tree
        range at a time (issue 16: one damaged tree loses one directory, not the pack).
        """
        return {b for b, off, n in self.packs[pid] if off < hi and lo < off + n}


def _entries(repo: Any, tree: bytes, prefix: str, out: list[Entry]) -> None:
    for n in decode_tree(repo.load_blob(BlobType.TREE, tree)):
        path = prefix + os.fsdecode(n.name)
        if n.type == "dir":
            assert n.subtree is not None
            out.append(Entry(path, tree=n.subtree))
            _entries(repo, n.subtree, path + "/", out)
        else:
            out.append(Entry(path, blobs=list(n.content)))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """s1: two directories of three files, a small file and a symlink; s2 adds a third."""
    tmp = tmp_path_factory.mktemp("corruption")
    repo = local_repo(tmp)
    src = Source(tmp / "src", seed=5)
    src.add(1200 << 10, files=3, subdir="d0")
    src.add(1200 << 10, files=3, subdir="d1")
    (src.root / "small.txt").write_bytes(b"a small file\n")
    m1 = src.manifest()
    s1 = repo.ok("backup", src.root)["id"]
    src.add(MiB, files=3, subdir="d2")
    m2 = src.manifest()
    s2 = repo.ok("backup", src.root)["id"]

    backend = LocalBackend(tmp / "repo")
    r = open_repository(backend, PASSWORD.encode())
    snapshots = {}
    for sid, m in ((s1, m1), (s2, m2)):
        root = r.load_snapshot(bytes.fromhex(sid)).tree
        entries: list[Entry] = []
        _entries(r, root, "", entries)
        snapshots[sid] = (m, root, entries)
    packs: dict[bytes, list[tuple[bytes, int, int]]] = {}
    index: dict[bytes, set[bytes]] = {}
    for fid in r.index_files():
        f = r.read_index_file(fid)
        index[fid] = set(f.packs)
        for pid, es in f.packs.items():
            packs[pid] = [(e.blob_id, e.offset, e.length) for e in es]
    blob_pack = {b: pid for pid, es in packs.items() for b, _, _ in es}
    trees = {e.tree for _, _, es in snapshots.values() for e in es if e.tree is not None}
    trees.update(root for _, root, _ in snapshots.values())
    tree_packs = {blob_pack[t] for t in trees}
    sizes = {o.name: o.size for o in backend.list("")}
    assert len(index) == 2 and len(packs) >= 5, (index, packs)
    return Layout(
        tmp / "repo", src.root, snapshots, s1, s2, packs, index, blob_pack, tree_packs, sizes
    )


# -- damage ----------------------------------------------------------------------------


@dataclass
class Damaged:
    """A private copy of the repository after damage, and the blobs that no longer load."""

    repo: Repo
    lay: Layout
    lost: set[bytes] = field(default_factory=set)
    lost_snapshots: set[str] = field(default_factory=set)
    unopenable: bool = False  # key file or config: no command gets past opening
    check_detects: bool = True
    # the storage contradicts the generation records (spec §13.6): check reports it,
    # every other command stops with exit 13 before it reads or deletes anything
    untrusted: bool = False

    def path(self, name: str) -> Path:
        return Path(self.repo.args[1]) / name


def _copy(tmp_path: Path, lay: Layout) -> Damaged:
    root = tmp_path / "repo"
    shutil.copytree(lay.root, root)
    env = {"CAS_CACHE_DIR": str(tmp_path / "cache")}
    repo = Repo(
        ["-r", str(root)], env, tmp_path, lambda: LocalBackend(root), lambda: LocalStore(root)
    )
    return Damaged(repo, lay)


def flip(path: Path, pos: int) -> None:
    """Invert one byte in place (the object keeps its name)."""
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)


def _data_pack(d: Damaged) -> bytes:
    """The pack holding the first blob of d0/f01.bin (of s1)."""
    _, _, entries = d.lay.snapshots[d.lay.s1]
    (f,) = [e for e in entries if e.path.endswith("/d0/f01.bin")]
    return d.lay.blob_pack[f.blobs[0]]


def _tree_of(d: Damaged, suffix: str) -> bytes:
    _, _, entries = d.lay.snapshots[d.lay.s2]
    (e,) = [e for e in entries if e.path.endswith(suffix) and e.tree is not None]
    assert e.tree is not None
    return e.tree


def _flip_blob(d: Damaged, blob: bytes) -> None:
    pid = d.lay.blob_pack[blob]
    off, length = next((o, n) for b, o, n in d.lay.packs[pid] if b == blob)
    flip(d.path(layout.pack_name(pid)), off + length // 2)
    d.lost.update(d.lay.damaged_pack_loses(pid, off, off + length))


def blob_flipped(d: Damaged) -> None:
    pid = _data_pack(d)
    _flip_blob(d, d.lay.packs[pid][1][0])


def pack_header_flipped(d: Damaged) -> None:
    """Restore reads blobs by the index, never this header: only check notices."""
    name = layout.pack_name(_data_pack(d))
    flip(d.path(name), d.lay.sizes[name] - 8 - 20)


def pack_trailer_flipped(d: Damaged) -> None:
    name = layout.pack_name(_data_pack(d))
    flip(d.path(name), d.lay.sizes[name] - 2)


def pack_truncated(d: Damaged) -> None:
    pid = _data_pack(d)
    name = layout.pack_name(pid)
    keep = d.lay.sizes[name] // 2
    truncate(d.path(name), keep)
    d.lost.update(d.lay.damaged_pack_loses(pid, keep, d.lay.sizes[name]))


def pack_deleted(d: Damaged) -> None:
    pid = _data_pack(d)
    d.path(layout.pack_name(pid)).unlink()
    d.lost.update(b for b, _, _ in d.lay.packs[pid])


def pack_renamed(d: Damaged) -> None:
    """Moved to the name of another ID: gone from where the index looks."""
    pid = _data_pack(d)
    other = hashlib.sha256(pid).digest()
    src = d.path(layout.pack_name(pid))
    dst = d.path(layout.pack_name(other))
    dst.parent.mkdir(exist_ok=True)
    src.rename(dst)
    d.lost.update(b for b, _, _ in d.lay.packs[pid])


def tree_flipped(d: Damaged) -> None:
    _flip_blob(d, _tree_of(d, "/d1"))


def tree_pack_deleted(d: Damaged) -> None:
    """The tree pack of s1: s2 keeps its own root but loses the unchanged d0 and d1."""
    pid = d.lay.blob_pack[d.lay.snapshots[d.lay.s1][1]]
    d.path(layout.pack_name(pid)).unlink()
    d.lost.update(b for b, _, _ in d.lay.packs[pid])


def _index_of(d: Damaged, which: str) -> bytes:
    """The index file written by the backup of s1 or of s2."""
    root = d.lay.snapshots[getattr(d.lay, which)][1]
    (fid,) = [f for f, packs in d.lay.index.items() if d.lay.blob_pack[root] in packs]
    return fid


def _lose_index(d: Damaged, fid: bytes) -> None:
    others = set().union(*(p for f, p in d.lay.index.items() if f != fid))
    d.lost.update(b for pid in d.lay.index[fid] - others for b, _, _ in d.lay.packs[pid])


def index_flipped(d: Damaged) -> None:
    fid = _index_of(d, "s1")
    flip(d.path(layout.index_name(fid)), 100)
    _lose_index(d, fid)


def index_truncated(d: Damaged) -> None:
    fid = _index_of(d, "s1")
    truncate(d.path(layout.index_name(fid)), 40)
    _lose_index(d, fid)


def index_deleted(d: Damaged) -> None:
    fid = _index_of(d, "s2")
    d.path(layout.index_name(fid)).unlink()
    _lose_index(d, fid)


def snapshot_flipped(d: Damaged) -> None:
    flip(d.path(layout.snapshot_name(bytes.fromhex(d.lay.s2))), 50)
    d.lost_snapshots.add(d.lay.s2)


def snapshot_truncated(d: Damaged) -> None:
    truncate(d.path(layout.snapshot_name(bytes.fromhex(d.lay.s2))), 30)
    d.lost_snapshots.add(d.lay.s2)


def snapshot_deleted(d: Damaged) -> None:
    """Deleted behind cas's back: no tombstone, while the latest generation names it
    (spec §13.6), so check reports ``snapshot_hidden`` and the other commands stop."""
    d.path(layout.snapshot_name(bytes.fromhex(d.lay.s2))).unlink()
    d.lost_snapshots.add(d.lay.s2)
    d.untrusted = True


def _key(d: Damaged) -> Path:
    (key,) = (Path(d.repo.args[1]) / "keys").iterdir()
    return key


def key_flipped(d: Damaged) -> None:
    flip(_key(d), 20)
    d.unopenable = True


def key_secret_flipped(d: Damaged) -> None:
    """Inside the sealed master keys (base64 text, a letter changed), renamed to its new hash."""
    key = _key(d)
    text = key.read_bytes()
    pos = text.index(b'"keys": "') + 20
    swapped = text[:pos] + (b"A" if text[pos : pos + 1] != b"A" else b"B") + text[pos + 1 :]
    key.unlink()
    (key.parent / storage_id(swapped).hex()).write_bytes(swapped)
    d.unopenable = True


def key_truncated(d: Damaged) -> None:
    truncate(_key(d), 50)
    d.unopenable = True


def key_deleted(d: Damaged) -> None:
    _key(d).unlink()
    d.unopenable = True


def config_magic_flipped(d: Damaged) -> None:
    flip(d.path("config"), 0)
    d.unopenable = True


def config_version_flipped(d: Damaged) -> None:
    flip(d.path("config"), 7)
    d.unopenable = True


def config_sealed_flipped(d: Damaged) -> None:
    flip(d.path("config"), 40)
    d.unopenable = True


def config_truncated(d: Damaged) -> None:
    truncate(d.path("config"), 20)
    d.unopenable = True


def config_deleted(d: Damaged) -> None:
    d.path("config").unlink()
    d.unopenable = True


CASES: list[Any] = [
    blob_flipped,
    pack_header_flipped,
    pack_trailer_flipped,
    pack_truncated,
    pack_deleted,
    pack_renamed,
    tree_flipped,
    tree_pack_deleted,
    index_flipped,
    index_truncated,
    index_deleted,
    snapshot_flipped,
    snapshot_truncated,
    snapshot_deleted,
    key_flipped,
    key_secret_flipped,
    key_truncated,
    key_deleted,
    config_magic_flipped,
    config_version_flipped,
    config_sealed_flipped,
    config_truncated,
    config_deleted,
]


# -- what check and restore must say ------------------------------------------------


def expected_restore(d: Damaged, sid: str) -> tuple[set[str], Manifest]:
    """(entries restore must name as failed, manifest of what it must write)."""
    m, _, entries = d.lay.snapshots[sid]
    src_rel = str(d.lay.src.resolve().relative_to("/"))
    failed: set[str] = set()
    for e in entries:
        if any(e.path == f or e.path.startswith(f + "/") for f in failed):
            continue  # inside a directory that could not be read
        if (e.tree is not None and e.tree in d.lost) or d.lost.intersection(e.blobs):
            failed.add(e.path)
    gone = {f.removeprefix(src_rel + "/") for f in failed if f.startswith(src_rel + "/")}
    written = {k: v for k, v in m.items() if not any(k == g or k.startswith(g + "/") for g in gone)}
    return failed, written


def assert_check_detects(d: Damaged) -> dict[str, Any]:
    r = d.repo.cas("--json", "check", "--read-data")
    if d.unopenable:
        assert r.code != 0, r.out
        assert r.err.startswith("cas: ") and r.err.count("\n") == 1, r.err
        return {"kinds": ["(cannot open) " + r.err.strip()]}
    if not d.check_detects:
        assert r.code == 0, r.err
        return {"kinds": []}
    assert r.code == 1, (r.code, r.out, r.err)
    doc = r.json()
    assert doc["summary"]["errors"] >= 1
    kinds = sorted({f["kind"] for f in doc["findings"] if f["severity"] == "error"})
    assert not d.untrusted or "snapshot_hidden" in kinds, kinds
    return {"kinds": kinds}


def assert_restore_safe(d: Damaged, sid: str) -> str:
    """Restore ``sid``; returns how it went ("exact", "partial" or "refused")."""
    target = d.repo.work / f"restore-{sid[:8]}"
    r = d.repo.cas("--json", "restore", sid, "--target", target)
    if d.untrusted:
        # A reading command reads on, names the finding and ends with exit 13 (§13.6).
        assert r.code == EXIT_UNTRUSTED, (r.code, r.out, r.err)
        assert "without a tombstone" in r.err and "Traceback" not in r.err, r.err
        if sid in d.lost_snapshots:
            assert not target.exists() or not any(target.iterdir())
            return "refused"
    if d.unopenable or sid in d.lost_snapshots or d.lay.snapshots[sid][1] in d.lost:
        # Nothing to go on: a one-line error, exit 1 (or 10 for a missing config)
        # and not a byte written.
        assert r.code in (1, 10, 12), (r.code, r.out, r.err)
        assert r.err.startswith("cas: ") and r.err.count("\n") == 1, r.err
        assert not target.exists() or not any(target.iterdir())
        return "refused"
    failed, written = expected_restore(d, sid)
    assert r.out, f"restore gave up instead of naming what it could not restore: {r.err}"
    doc = r.json()
    got_failed = {str(Path(p).relative_to(target)) for p in doc["summary"]["failed"]}
    assert got_failed == failed, (got_failed, failed, r.err)
    assert manifest(restored_root(target, d.lay.src)) == written
    assert r.code == (EXIT_UNTRUSTED if d.untrusted else 1 if failed else 0), (r.code, r.err)
    for f in failed:
        assert f in r.err  # named on stderr for people too
    return "partial" if failed else "exact"


@pytest.mark.parametrize("damage", CASES)
@pytest.mark.damaged_repo_ok(
    "leaves each fault of CASES in its copy of the repository, to see check and restore meet it"
)
def test_damage_is_detected_and_restore_stays_exact(
    tmp_path: Path, built: Layout, damage: Callable[[Damaged], None]
) -> None:
    d = _copy(tmp_path, built)
    damage(d)
    # (a repository that does not open refuses every snapshot alike: one is enough)
    sids = (built.s2,) if d.unopenable else (built.s1, built.s2)
    found, *restored = parallel(
        lambda: assert_check_detects(d), *(partial(assert_restore_safe, d, sid) for sid in sids)
    )
    outcomes = {sid[:8]: r for sid, r in zip(sids, restored, strict=True)}
    print(f"\n{damage.__name__}: check {found['kinds']}, restore {outcomes}")
    if d.lost and not d.unopenable:
        assert "partial" in outcomes.values() or "refused" in outcomes.values()


def test_a_second_key_file_keeps_the_repository_open(tmp_path: Path, built: Layout) -> None:
    """With two key files, damage to one leaves the other usable (spec §4.5).

    check reads what is stored (not the cache), so it reports the damaged key
    file as an error; the repository still opens and restores exactly.
    """
    d = _copy(tmp_path, built)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    d.repo.ok("key", "add", "--new-password-file", tmp_path / "pw")
    first = sorted((d.path("keys")).iterdir())[0]
    flip(first, 10)
    r = d.repo.cas("check")
    assert r.code == 1 and first.name in r.out
    assert assert_restore_safe(d, built.s1) == "exact"


def _random_flips(tmp_path: Path, lay: Layout, count: int, seed: int) -> dict[str, int]:
    """Flip one random byte of a random object ``count`` times; every one must be caught."""
    rnd = random.Random(seed)
    by_kind: dict[str, list[str]] = {}
    for n in sorted(lay.sizes):
        by_kind.setdefault(n.split("/")[0], []).append(n)
    by_kind.pop("locks", None)
    tally: dict[str, int] = {}
    for i in range(count):
        # every kind of object equally often, whatever its size
        name = rnd.choice(by_kind[rnd.choice(sorted(by_kind))])
        pos = rnd.randrange(lay.sizes[name])
        d = _copy(tmp_path / f"flip{i}", lay)
        flip(d.path(name), pos)
        kind = name.split("/")[0]
        d.unopenable = kind in ("keys", "config")
        # What the flip breaks: the blob under it, or (index, snapshot) the whole file.
        if kind == "data":
            pid = bytes.fromhex(name.rsplit("/", 1)[1])
            d.lost.update(lay.damaged_pack_loses(pid, pos, pos + 1))
        elif kind == "index":
            _lose_index(d, bytes.fromhex(name.rsplit("/", 1)[1]))
        elif kind == "snapshots":
            d.lost_snapshots.add(name.rsplit("/", 1)[1])
        sids = (lay.s2,) if d.unopenable else (lay.s1, lay.s2)
        parallel(
            partial(assert_check_detects, d), *(partial(assert_restore_safe, d, s) for s in sids)
        )
        tally[kind] = tally.get(kind, 0) + 1
        shutil.rmtree(tmp_path / f"flip{i}")
    print(f"\nrandom byte flips detected: {tally}")
    return tally


def test_random_byte_flips(tmp_path: Path, built: Layout) -> None:
    assert sum(_random_flips(tmp_path, built, count=4, seed=1).values()) == 4


@pytest.mark.slow
def test_random_byte_flips_many(tmp_path: Path, built: Layout) -> None:
    assert sum(_random_flips(tmp_path, built, count=60, seed=2).values()) == 60


@pytest.mark.damaged_repo_ok("flips a byte of an index, a snapshot and a key file")
def test_check_sees_damage_behind_a_warm_cache(tmp_path: Path, built: Layout) -> None:
    """The user's cache holds intact copies; check must still judge what is stored."""
    d = _copy(tmp_path, built)
    assert d.repo.cas("check").code == 0  # fills the cache, as everyday use does
    for directory in ("index", "snapshots", "keys"):
        flip(sorted(d.path(directory).iterdir())[0], 30)
    r = d.repo.cas("--json", "check", "--read-data")
    assert r.code == 1, f"check passed with index, snapshot and key files damaged: {r.out}"


@pytest.mark.damaged_repo_ok("flips a byte of the config")
def test_damaged_config_is_not_called_a_wrong_password(tmp_path: Path, built: Layout) -> None:
    d = _copy(tmp_path, built)
    (tmp_path / "pw").write_text("another password\n")
    d.repo.ok("key", "add", "--new-password-file", tmp_path / "pw")
    flip(d.path("config"), 40)
    r = d.repo.cas("snapshots")
    assert r.code == 1 and "config" in r.err, (r.code, r.err)
