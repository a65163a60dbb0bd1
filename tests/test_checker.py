"""The checker, at library level: damaged fixtures against saved findings, tracing,
pack selection for --read-data and the resumable state."""

from __future__ import annotations

import json
import math
import os
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cas.backend.base import Backend, ObjectInfo
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.check import state as checkstate
from cas.check.checker import CheckOptions, check
from cas.check.findings import KINDS, Affected, CheckResult
from cas.check.state import CheckState, Subset, parse_duration, parse_subset, select_packs
from cas.crypto import BlobType
from cas.errors import UsageError
from cas.format import index as indexfmt
from cas.format.pack import PackEntry
from cas.format.snapshot import Snapshot
from cas.format.tree import Node, decode_tree, encode_tree
from cas.ids import storage_id
from cas.repo import Repository, layout, locks, open_repository
from cas.repo.prune import PruneOptions, execute_prune, plan_prune
from tests.support.damaged import (
    BUILDERS,
    FIXTURES,
    Damaged,
    expected,
    healthy,
    resolve,
    write_index,
    write_pack,
)
from tests.support.repos import PASSWORD, cheap_kdf, flip_byte, new_repo, populate

DAY = 86400.0


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, created backend: in memory or in a directory."""
    backend: Backend = (
        MemoryBackend() if request.param == "memory" else LocalBackend(tmp_path / "r")
    )
    backend.create()
    yield backend
    backend.close()


def _run(d: Damaged, **options: object) -> CheckResult:
    opts = CheckOptions(read_data=d.read_data)
    for k, v in options.items():
        setattr(opts, k, v)
    return check(d.open(), opts)


def _triples(result: CheckResult) -> list[tuple[str, str, str]]:
    return sorted((f.kind, str(f.severity), f.object) for f in result.findings)


# -- damaged fixtures against their saved findings ----------------------------------


def test_every_fixture_has_a_builder_and_back() -> None:
    saved = {p.stem for p in FIXTURES.glob("*.json")}
    assert saved == set(BUILDERS)
    for name in saved:
        for f in expected(name)["findings"]:
            assert KINDS[f["kind"]][0] == f["severity"], (name, f)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.damaged_repo_ok(
    "each fixture but 'healthy' is a repository damaged one way (tests/support/damaged.py)"
)
def test_damaged_fixture_gives_the_saved_findings(name: str, store: Backend) -> None:
    d = BUILDERS[name](store)
    result = _run(d)
    assert _triples(result) == resolve(expected(name)["findings"], d.names)
    for f in result.findings:
        assert f.message and "\n" not in f.message
        json.dumps(f.as_dict())
    assert result.errors == sum(f["severity"] == "error" for f in expected(name)["findings"])


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.damaged_repo_ok(
    "each fixture but 'healthy' is a repository damaged one way (tests/support/damaged.py)"
)
def test_headers_read_one_at_a_time_give_the_saved_findings(name: str, store: Backend) -> None:
    """``header_workers`` (one for a local repository, cas/cli/cmd_check.py) changes how
    many pack headers are read at once, never what is found."""
    d = BUILDERS[name](store)
    result = _run(d, header_workers=1)
    assert _triples(result) == resolve(expected(name)["findings"], d.names)


def test_header_workers_bounds_the_headers_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    for seed in range(3):
        populate(repo, n_files=2, seed=seed)
    repo = open_repository(backend, PASSWORD)
    lock = threading.Lock()
    active, most, calls = 0, 0, 0
    real = repo.read_pack_header

    def counted(pack_id: bytes) -> list[PackEntry]:
        nonlocal active, most, calls
        with lock:
            active += 1
            calls += 1
            most = max(most, active)
        try:
            return real(pack_id)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(repo, "read_pack_header", counted)
    result = check(repo, CheckOptions(header_workers=1))
    assert result.findings == []
    assert calls == result.summary.packs_stored >= 3
    assert most == 1


def test_missing_pack_is_traced_to_every_file_that_needs_it() -> None:
    d = BUILDERS["pack_deleted"](MemoryBackend())
    (finding,) = _run(d).findings
    assert finding.affected == [Affected(d.snapshot, b"/" + name) for name in sorted(d.files)]


def test_damaged_blob_is_traced_to_its_snapshot_and_path() -> None:
    d = BUILDERS["pack_byte_flipped"](MemoryBackend())
    result = _run(d)
    blob = next(f for f in result.findings if f.kind == "blob_damaged")
    repo = d.open()
    nodes = decode_tree(repo.load_blob(BlobType.TREE, repo.load_snapshot(d.snapshot).tree))
    blob_id = bytes.fromhex(blob.object.removeprefix("blob:"))
    (owner,) = [n.name for n in nodes if blob_id in n.content]
    assert blob.affected == [Affected(d.snapshot, b"/" + owner)]
    pack = next(f for f in result.findings if f.kind == "pack_damaged")
    assert "1 of" in pack.message and "header is intact" in pack.message


def test_flipped_blob_is_not_found_without_read_data() -> None:
    d = BUILDERS["pack_byte_flipped"](MemoryBackend())
    assert _run(d, read_data=False).findings == []


def test_orphan_pack_hint_for_a_missing_tree() -> None:
    d = BUILDERS["index_missing"](MemoryBackend())
    tree = next(f for f in _run(d).findings if f.kind == "tree_missing")
    assert d.names["tree_pack"] in tree.message and "rebuild" in tree.message
    assert tree.affected == [Affected(d.snapshot, b"/")]


def _nested_repo(backend: Backend) -> tuple[Repository, bytes, bytes, bytes]:
    """/home/me/{a,b}/x.txt where a and b are the same tree; returns repo, snapshot, blob, tree."""
    repo = new_repo(backend)
    data = b"nested content " * 50
    blob, _ = repo.save_blob(BlobType.DATA, data)
    f = Node(name=b"x.txt", type="file", mode=0o644, size=len(data), content=[blob])
    f.sizes = [len(data)]
    shared, _ = repo.save_blob(BlobType.TREE, encode_tree([f]))
    me, _ = repo.save_blob(
        BlobType.TREE,
        encode_tree(
            [Node(name=n, type="dir", mode=0o755, subtree=shared) for n in (b"a", b"b\xff")]
        ),
    )
    home, _ = repo.save_blob(
        BlobType.TREE, encode_tree([Node(name=b"me", type="dir", mode=0o755, subtree=me)])
    )
    root, _ = repo.save_blob(
        BlobType.TREE, encode_tree([Node(name=b"home", type="dir", mode=0o755, subtree=home)])
    )
    sid = repo.save_snapshot(Snapshot(1, root, [b"/home/me"], "h", "u"))
    return repo, sid, blob, shared


def test_trace_through_nested_and_shared_trees() -> None:
    backend = MemoryBackend()
    repo, sid, blob, _ = _nested_repo(backend)
    # A second snapshot sharing every tree: each tree is read once, traced twice.
    snap = repo.load_snapshot(sid)
    sid2 = repo.save_snapshot(Snapshot(2, snap.tree, snap.paths, "h", "u"))
    repo.load_index()
    backend.delete(layout.pack_name(repo.locate(blob).pack_id))
    result = check(repo)
    (finding,) = result.findings
    assert finding.kind == "pack_missing"
    paths = [b"/home/me/a/x.txt", b"/home/me/b\xff/x.txt"]
    assert finding.affected == sorted(Affected(s, p) for s in (sid, sid2) for p in paths)
    assert result.summary.trees == 4 and result.summary.snapshots == 2
    assert finding.as_dict()["affected"][1]["path"] == "/home/me/b\\xff/x.txt"


def test_missing_subtree_is_traced_to_the_directory() -> None:
    backend = MemoryBackend()
    repo, sid, _, shared = _nested_repo(backend)
    repo.load_index()
    backend.delete(layout.pack_name(repo.locate(shared).pack_id))  # the pack of all trees
    result = check(repo)
    (finding,) = result.findings
    assert finding.kind == "pack_missing"
    assert finding.affected == [Affected(sid, b"/")]  # even the root tree is gone


def _mark_packs(d: Damaged, garbage_names: list[str]) -> None:
    """Replace the index by one that lists ``garbage_names`` as marked by prune (§13.5)."""
    repo = d.open()
    old = layout.id_from_name(d.names["index"])
    assert old is not None
    live = repo.read_index_file(old).packs
    packs: dict[bytes, list[PackEntry]] = {}
    garbage: dict[bytes, tuple[int, list[PackEntry]]] = {}
    for name in sorted(o.name for o in d.backend.list(layout.DATA)):
        pack_id = layout.id_from_name(name)
        assert pack_id is not None
        entries = live.get(pack_id) or repo.read_pack_header(pack_id)
        if name in garbage_names:
            garbage[pack_id] = (1, entries)
        else:
            packs[pack_id] = entries
    raw = indexfmt.encode_index(
        indexfmt.IndexFile(packs, supersedes=[old], garbage=garbage), repo.keys.index_key
    )
    d.backend.write(layout.index_name(storage_id(raw)), raw)


def test_marked_packs_are_readable_and_may_go() -> None:
    d = BUILDERS["pack_unreferenced"](MemoryBackend())
    # The orphan is marked (unneeded); so is the data pack, which the snapshot needs.
    _mark_packs(d, [d.names["orphan"], d.names["data_pack"]])
    result = check(d.open(), CheckOptions(read_data=True))
    assert result.findings == []
    assert result.summary.packs_marked == 2 and result.summary.packs_read == 3
    d.backend.delete(d.names["orphan"])  # prune deleted an unneeded marked pack: fine
    assert check(d.open()).findings == []
    d.backend.delete(d.names["data_pack"])  # ... but this one a snapshot still needs
    (finding,) = check(d.open()).findings
    assert (finding.kind, finding.object) == ("pack_missing", d.names["data_pack"])
    assert "marked for deletion" in finding.message
    assert len(finding.affected) == len(d.files)


def test_repository_pruned_beside_a_backup_checks_clean() -> None:
    """Real prune: packs it marks (and a snapshot that still needs them) are no findings."""
    backend = MemoryBackend()
    repo = new_repo(backend)
    old, _ = populate(repo, n_files=2, seed=9)
    populate(repo, n_files=2, seed=10)
    snapshot_file = backend.read(layout.snapshot_name(old))
    backend.delete(layout.snapshot_name(old))
    writer = locks.acquire(backend, repo.keys.index_key, exclusive=False, command="backup")
    try:
        pruning = open_repository(backend, PASSWORD)
        execute_prune(pruning, plan_prune(pruning, PruneOptions(0.05)))  # marks, deletes nothing
        result = check(open_repository(backend, PASSWORD), CheckOptions(read_data=True))
        assert result.findings == [] and result.summary.packs_marked > 0
        backend.write(layout.snapshot_name(old), snapshot_file)  # a slow backup lands
        result = check(open_repository(backend, PASSWORD), CheckOptions(read_data=True))
        assert result.findings == [] and result.summary.snapshots == 2
    finally:
        writer.release()


def test_inconsistent_nodes_are_reported() -> None:
    repo = new_repo(MemoryBackend())
    blob, _ = repo.save_blob(BlobType.DATA, b"x" * 100)
    nodes = [
        Node(name=b"d", type="dir", mode=0o755),  # no subtree
        Node(name=b"f", type="file", size=99, content=[blob], sizes=[100]),
    ]
    root, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    sid = repo.save_snapshot(Snapshot(1, root, [b"/x"], "h", "u"))
    result = check(repo)
    assert [(f.kind, f.affected) for f in result.findings] == [
        ("node_invalid", [Affected(sid, b"/d")]),
        ("node_invalid", [Affected(sid, b"/f")]),
    ]


def test_missing_data_blob_is_reported_once_per_blob() -> None:
    repo = new_repo(MemoryBackend())
    ghost = os.urandom(32)
    nodes = [Node(name=n, type="file", size=10, content=[ghost], sizes=[10]) for n in (b"a", b"b")]
    root, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    sid = repo.save_snapshot(Snapshot(1, root, [b"/x"], "h", "u"))
    (finding,) = check(repo).findings
    assert (finding.kind, finding.object) == ("blob_missing", f"blob:{ghost.hex()}")
    assert finding.affected == [Affected(sid, b"/a"), Affected(sid, b"/b")]


def test_damaged_index_file_does_not_stop_the_check() -> None:
    d = healthy(MemoryBackend())
    repo = d.open()
    # A second, undecodable index file whose name matches its content.
    junk = b"\x00" * 64
    d.backend.write(layout.index_name(storage_id(junk)), junk)
    result = check(repo)
    assert [f.kind for f in result.findings] == ["index_damaged"]
    assert result.summary.snapshots == 1 and result.summary.files == 3


def test_flipped_bytes_anywhere_never_raise() -> None:
    """Whatever byte of whatever object is damaged, check returns findings (no exception)."""
    d = healthy(MemoryBackend())
    repo = d.open()
    rnd = random.Random(7)
    for info in sorted(d.backend.list(""), key=lambda o: o.name):
        if info.name == layout.CONFIG or info.name.startswith(layout.KEYS):
            continue  # these stop the repository from opening at all, before any check
        original = d.backend.read(info.name)
        size = len(original)
        for pos in {0, size // 2, size - 1, size - 5, size - 20, rnd.randrange(size)}:
            flip_byte(d.backend, info.name, pos)
            result = check(repo, CheckOptions(read_data=True))
            assert result.errors >= 1, (info.name, pos)
            d.backend.delete(info.name)
            d.backend.write(info.name, original)
    assert check(repo, CheckOptions(read_data=True)).findings == []


def test_damaged_key_file_is_reported() -> None:
    d = healthy(MemoryBackend())
    repo = d.open()
    repo.add_key(b"second", cheap_kdf())
    second = sorted(o.name for o in d.backend.list(layout.KEYS) if layout.id_from_name(o.name))
    victim = next(n for n in second if layout.id_from_name(n) != repo.key_id)
    flip_byte(d.backend, victim, 5)
    assert _triples(check(repo)) == [("name_mismatch", "error", victim)]


def test_progress_reports_every_phase() -> None:
    d = healthy(MemoryBackend())
    phases: list[str] = []
    check(d.open(), CheckOptions(read_data=True), lambda p, done, total: phases.append(p))
    wanted = ["list", "index", "keys", "locks", "leftovers", "packs", "headers", "read-data"]
    assert [p for p in dict.fromkeys(phases)] == [*wanted, "snapshots"]


# -- leftovers ----------------------------------------------------------------------


def test_old_local_temp_files_are_leftovers(tmp_path: Path) -> None:
    d = healthy(LocalBackend(tmp_path / "r"))
    old = tmp_path / "r" / "data" / "ab" / ".tmp-old"
    old.parent.mkdir(exist_ok=True)
    old.write_bytes(b"x" * 10)
    os.utime(old, (1, 1))
    (tmp_path / "r" / "index" / ".tmp-fresh").write_bytes(b"y")  # a write in progress
    (tmp_path / "r" / ".DS_Store").write_bytes(b"z")  # foreign clutter: not ours
    result = check(d.open())
    assert _triples(result) == [("leftover_upload", "warning", "data/ab/.tmp-old")]
    assert "10 bytes" in result.findings[0].message
    fresh = check(d.open(), CheckOptions(leftover_min_age=0))
    assert [f.object for f in fresh.findings] == ["data/ab/.tmp-old", "index/.tmp-fresh"]


@pytest.mark.s3
def test_s3_multipart_uploads_are_leftovers(s3_server: str, s3_bucket: str) -> None:
    from cas.backend.s3 import S3Backend
    from tests.support.s3server import make_s3_client

    backend = S3Backend(s3_bucket, "repo", endpoint_url=s3_server, path_style=True)
    d = healthy(backend)
    client = make_s3_client(s3_server)
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="repo/data/ab/" + "a" * 64)
    client.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/x")  # not this repository
    result = check(d.open(), CheckOptions(leftover_min_age=0))
    assert [(f.kind, f.object) for f in result.findings] == [
        ("leftover_upload", f"data/ab/{'a' * 64} (multipart upload {upload['UploadId']})")
    ]


# -- pack selection --------------------------------------------------------------------


def _ids(n: int, seed: int = 0) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(32) for _ in range(n)]


def test_parse_subset_and_duration() -> None:
    assert parse_subset("2/5") == Subset(2, 5)
    assert parse_subset("12.5%") == Subset(percent=12.5)
    assert str(parse_subset("3/7")) == "3/7" and str(parse_subset("10%")) == "10%"
    for bad in ("0/5", "6/5", "x/2", "0%", "101%", "%", "1/0", "-1/2", "nan%"):
        with pytest.raises(UsageError):
            parse_subset(bad)
    assert parse_duration("30d") == 30 * DAY
    assert parse_duration("2w") == 14 * DAY
    assert parse_duration("12h") == 12 * 3600 and parse_duration("90") == 90
    for bad in ("", "d", "0d", "-3d", "3y"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_groups_partition_the_packs() -> None:
    packs = _ids(1000)
    groups = [select_packs(packs, subset=Subset(n, 7)) for n in range(1, 8)]
    assert sorted(p for g in groups for p in g) == sorted(packs)
    assert all(100 < len(g) < 190 for g in groups)  # about 1000/7 each
    assert select_packs(packs, subset=Subset(1, 1)) == sorted(packs)


def test_percent_takes_the_least_recently_verified() -> None:
    packs = _ids(40)
    assert len(select_packs(packs, subset=Subset(percent=10))) == 4
    assert len(select_packs(packs, subset=Subset(percent=1))) == 1  # rounds up
    state = CheckState()
    state.observe(packs, 0)
    for i, p in enumerate(packs):
        state.mark_verified(p, 100.0 + i)
    chosen = select_packs(packs, subset=Subset(percent=25), state=state, now=1000)
    assert chosen == sorted(packs[:10])
    # Repeated runs that record what they read cycle through every pack.
    seen: set[bytes] = set()
    for night in range(4):
        chosen = select_packs(packs, subset=Subset(percent=25), state=state, now=2000 + night)
        for p in chosen:
            state.mark_verified(p, 2000 + night)
        seen.update(chosen)
    assert seen == set(packs)


def test_max_age_spreads_a_full_read_over_the_period() -> None:
    """Nightly runs with --max-age 30d read about 1/30 each night and every pack in time."""
    packs = _ids(3000)
    state = CheckState()
    max_age = 30 * DAY
    last_verified: dict[bytes, float] = {}
    per_night = []
    for night in range(90):
        now = night * DAY
        state.observe(packs, now)
        chosen = select_packs(packs, max_age=max_age, state=state, now=now)
        per_night.append(len(chosen))
        for p in chosen:
            assert now - last_verified.get(p, 0.0) <= max_age
            last_verified[p] = now
            state.mark_verified(p, now)
    assert set(last_verified) == set(packs)
    assert max(per_night) < 3000 / 30 * 1.6  # never the whole repository at once
    assert 3000 / 30 * 0.6 < sum(per_night[31:61]) / 30 < 3000 / 30 * 1.4


def test_max_age_combines_with_a_group() -> None:
    packs = _ids(200)
    state = CheckState()
    state.observe(packs, 0)
    chosen = select_packs(packs, subset=Subset(1, 2), max_age=DAY, state=state, now=2 * DAY)
    assert chosen == select_packs(packs, subset=Subset(1, 2))  # all overdue: the whole group


# -- the state file and resuming ----------------------------------------------------------


def test_state_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rid = bytes(range(32))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert checkstate.state_path(rid) == tmp_path / "xdg" / "cas" / rid.hex() / "check-state.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert (
        checkstate.state_path(rid) == tmp_path / "home/.cache/cas" / rid.hex() / "check-state.json"
    )
    assert (
        checkstate.state_path(rid, tmp_path / "c")
        == tmp_path / "c" / rid.hex() / "check-state.json"
    )


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"version": 99, "packs": {}}', b'{"version": 1, "packs": {"zz": {}}}', b"[]"],
)
def test_damaged_state_file_starts_afresh(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "check-state.json"
    path.write_bytes(content)
    state, note = CheckState.load(path)
    assert state.packs == {} and note is not None and "starting afresh" in note


def test_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "check-state.json"
    state, note = CheckState.load(path)
    assert note is None and state.packs == {}
    a, b = _ids(2)
    state.observe([a, b], 10.0)
    state.mark_verified(a, 20.0)
    state.save()
    again, note = CheckState.load(path)
    assert note is None
    assert again.last_verified(a) == 20.0 and again.last_verified(b) is None
    assert again.packs[b].seen == 10.0
    again.observe([a], 30.0)  # b was pruned
    assert list(again.packs) == [a]


def test_resumable_read_data_with_max_age(tmp_path: Path) -> None:
    d = healthy(MemoryBackend())
    path = tmp_path / "check-state.json"
    clock = [1_000_000.0]

    def run(**kw: object) -> CheckResult:
        state, _ = CheckState.load(path)
        opts = CheckOptions(state=state, clock=lambda: clock[0])
        for k, v in kw.items():
            setattr(opts, k, v)
        result = check(d.open(), opts)
        state.save()
        return result

    assert run(read_data=True).summary.packs_read == 2
    assert run(max_age=DAY).summary.packs_read == 0  # both verified just now
    clock[0] += 2 * DAY
    assert run(max_age=DAY).summary.packs_read == 2


class _Interrupting:
    """A read backend that raises KeyboardInterrupt on the n-th whole-pack read."""

    def __init__(self, inner: Backend, after: int) -> None:
        self.inner, self.after, self.reads = inner, after, 0
        self.location = inner.location

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith("data/") and offset == 0 and length is None:
            self.reads += 1
            if self.reads > self.after:
                raise KeyboardInterrupt
        return self.inner.read(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def close(self) -> None:
        self.inner.close()


class _Hooked:
    """A read backend that runs ``hook(operation, name)`` before each read or stat."""

    def __init__(self, inner: Backend, hook: Callable[[str, str], None]) -> None:
        self.inner, self.hook = inner, hook
        self.location = inner.location

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.hook("read", name)
        return self.inner.read(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        self.hook("stat", name)
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def close(self) -> None:
        self.inner.close()


def _supersede(d: Damaged, name: str) -> None:
    """What prune and index repair do: a new index file replaces ``name``, which goes."""
    repo = d.open()
    old = layout.id_from_name(name)
    assert old is not None
    packs = repo.read_index_file(old).packs
    raw = indexfmt.encode_index(indexfmt.IndexFile(packs, [old]), repo.keys.index_key)
    d.backend.write(layout.index_name(storage_id(raw)), raw)
    d.backend.delete(name)


def _is_index_file(name: str) -> bool:
    """An index file, not a generation record (which lives under index/ too, §13.6)."""
    return name.startswith("index/") and layout.id_from_name(name) is not None


def test_index_replaced_during_the_check_is_read_again() -> None:
    d = healthy(MemoryBackend())
    done: list[str] = []

    def hook(op: str, name: str) -> None:
        if op == "read" and _is_index_file(name) and not done:
            done.append(name)
            _supersede(d, name)

    repo = d.open()
    repo.backend = _Hooked(d.backend, hook)  # type: ignore[assignment]
    result = check(repo)
    assert done and result.findings == [] and result.summary.index_files == 1

    def always(op: str, name: str) -> None:
        if op == "read" and _is_index_file(name):
            _supersede(d, name)

    repo.backend = _Hooked(d.backend, always)  # type: ignore[assignment]
    kinds = {f.kind for f in check(repo).findings}
    assert "check_incomplete" in kinds


def test_pack_deleted_during_the_check_matters_only_if_needed() -> None:
    d = healthy(MemoryBackend())
    repo = d.open()
    unused = _write_pack_and_index(repo)
    victims = [layout.pack_name(unused), d.names["data_pack"]]

    def hook(op: str, name: str) -> None:
        if op == "stat" and name in victims:  # just before its header is read
            d.backend.delete(name)

    repo.backend = _Hooked(d.backend, hook)  # type: ignore[assignment]
    (finding,) = check(repo).findings
    assert (finding.kind, finding.object) == ("pack_missing", d.names["data_pack"])
    assert "during the check" in finding.message and len(finding.affected) == len(d.files)


def _write_pack_and_index(repo: Repository) -> bytes:
    """An indexed pack that no snapshot uses."""
    pack_id = write_pack(repo, BlobType.DATA, [b"unused " * 300])
    write_index(repo, {pack_id: repo.read_pack_header(pack_id)})
    return pack_id


def test_interrupted_read_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkstate, "SAVE_INTERVAL", 0.0)  # save after every pack
    d = healthy(MemoryBackend())
    path = tmp_path / "check-state.json"
    repo = d.open()
    repo.backend = _Interrupting(d.backend, after=1)  # type: ignore[assignment]
    state, _ = CheckState.load(path)
    with pytest.raises(KeyboardInterrupt):
        check(repo, CheckOptions(read_data=True, state=state, workers=1))
    saved, _ = CheckState.load(path)
    verified = [p for p, r in saved.packs.items() if r.verified is not None]
    assert len(verified) == 1
    # The next run with a long max-age reads only the pack not yet verified... once due:
    # never-verified packs fall due within max-age of being first seen.
    state, _ = CheckState.load(path)
    later = max(r.seen for r in saved.packs.values()) + 10 * DAY
    result = check(d.open(), CheckOptions(max_age=10 * DAY, state=state, clock=lambda: later))
    assert result.summary.packs_read == 1
    assert math.isclose(
        state.packs[verified[0]].verified or 0, saved.packs[verified[0]].verified or 0
    )
