"""The table of docs/reliability.md §7: every kind of object, damaged or missing, with the
local cache warm or absent (a second client with an empty cache directory).

Each row: the objects of one snapshot (``s2``) or a repository-wide one (key file, lock,
config) is damaged or deleted on a private copy of one repository of three snapshots of
three separate source trees.  The unaffected snapshots must list and restore bit-exact
(compared with their sources by ``tests/support/trees.py``, not by cas), the damaged one
loses only what the table says, and after the documented recovery a backup runs, ``check
--read-data`` passes and every snapshot left restores bit-exact.  For the rows without a
cache, every read command also runs against the damage: none may print a traceback, and
each ends with a documented exit code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cas.errors import EXIT_UNTRUSTED
from cas.repo import RepoOptions, open_repository, open_storage
from cas.repo.cache import cache_dir_for
from cas.walker import load_tree
from tests.support.cli import Result, run_cas
from tests.support.trees import compare_trees

SNAPS = ("s1", "s2", "s3")
KINDS = ("snapshot", "index", "key", "lock", "tree_pack", "data_pack", "config")
STATES = ("damaged", "missing")
CACHES = ("warm-cache", "empty-cache")
EXIT_CODES = {0, 1, 3, 10, 11, 12, 13}  # documented in `cas --help`; never 2 here (usage)


@dataclass
class Base:
    """The undamaged repository, its warm cache, its sources and where s2's objects are."""

    root: Path
    repo: Path
    cache: Path  # a cache root holding the warm cache of ``repo``
    src: Path
    ids: dict[str, str]  # s1/s2/s3 -> snapshot ID
    objects: dict[str, str]  # object kind -> name in the repository
    config_copy: Path


def _new_files(repo: Path, before: set[str]) -> list[Path]:
    return [p for p in repo.rglob("*") if p.is_file() and str(p) not in before]


def _middle_of_d1_tree(repo: Path, snapshot: str, source: Path) -> int:
    """The offset, in its pack, of the middle of the tree blob of ``d1`` in ``snapshot``."""
    r = open_repository(open_storage(str(repo), RepoOptions(cache=False)), b"test-password")
    try:
        tree = r.load_snapshot(bytes.fromhex(snapshot)).tree
        for part in (*source.parts[1:], "d1"):
            tree = next(n.subtree for n in load_tree(r, tree) if n.name == part.encode())
        assert tree is not None
        loc = r.locate(tree)
        return loc.offset + loc.length // 2
    finally:
        r.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    root = tmp_path_factory.mktemp("table")
    repo, src, cache = root / "repo", root / "src", root / "cache"
    assert run_cas("-r", repo, "init").code == 0
    config_copy = root / "config-copy"  # the config never changes: any copy of it is good
    shutil.copyfile(repo / "config", config_copy)
    (root / "pw2").write_text("second password\n")
    r = run_cas("-r", repo, "key", "add", "--new-password-file", root / "pw2")
    assert r.code == 0, r.err
    objects: dict[str, str] = {}
    for i, name in enumerate(SNAPS):
        for d in ("d1", "d2"):
            (src / name / d).mkdir(parents=True)
        (src / name / "d1" / "f").write_bytes(os.urandom(300_000))
        (src / name / "d2" / "g").write_bytes(os.urandom(5_000 + i))
        # atime after ctime: relatime leaves it alone when anything reads the file
        later = time.time_ns() + 3600 * 10**9
        for p in sorted((src / name).rglob("*"), reverse=True):
            os.utime(p, ns=(later, 1_000_000_000_000_000_000 + i))
        before = {str(p) for p in repo.rglob("*")}
        r = run_cas("-r", repo, "--cache-dir", cache, "backup", src / name)
        assert r.code == 0, r.err
        if name == "s2":  # what this backup wrote is s2's and only s2's
            new = _new_files(repo, before)
            packs = sorted((p for p in new if p.parent.parent.name == "data"), key=os.path.getsize)
            assert len(packs) == 2, packs
            objects["tree_pack"], objects["data_pack"] = (str(p.relative_to(repo)) for p in packs)
            # (and its generation record, index/gen-<n>, spec §13.6)
            (index,) = (p for p in new if p.parent.name == "index" and len(p.name) == 64)
            (snap,) = (p for p in new if p.parent.name == "snapshots")
            objects["index"], objects["snapshot"] = str(index.relative_to(repo)), snap.name
    listed = run_cas("-r", repo, "--cache-dir", cache, "--json", "snapshots").json()["snapshots"]
    ids = {Path(d["paths"][0]).name: d["id"] for d in listed}
    objects["snapshot"] = f"snapshots/{ids['s2']}"
    objects["d1_tree_byte"] = str(_middle_of_d1_tree(repo, ids["s2"], src / "s2"))
    keys = run_cas("-r", repo, "--cache-dir", cache, "--json", "key", "list").json()["keys"]
    objects["key"] = "keys/" + next(k["id"] for k in keys if not k["current"])
    objects["config"] = "config"
    for name in SNAPS:  # the cache then holds every snapshot, index and key file and tree pack
        target = root / "warm" / name
        r = run_cas("-r", repo, "--cache-dir", cache, "restore", ids[name], "--target", target)
        assert r.code == 0, r.err
    shutil.rmtree(root / "warm")
    # Last (any command removes it): a stale lock: a backup killed right after it stored its lock.
    r = run_cas(
        "-r", repo, "--no-cache", "backup", src / "s1", env={"CAS_FAILPOINTS": "lock-written"}
    )
    assert r.code == -signal.SIGKILL, r.err
    (lock,) = (repo / "locks").iterdir()
    objects["lock"] = f"locks/{lock.name}"
    return Base(root, repo, cache, src, ids, objects, config_copy)


@dataclass
class Case:
    """One row on its own copy of the base repository."""

    base: Base
    kind: str
    state: str
    cache: str
    repo: Path
    flags: tuple[str, ...]
    work: Path

    def cas(self, *args: str | Path, env: dict[str, str] | None = None) -> Result:
        r = run_cas("-r", self.repo, *self.flags, *args, env=env)
        assert "Traceback" not in r.err, r.err
        assert r.code in EXIT_CODES, (args, r.code, r.err)
        return r

    def restores_exactly(self, sid: str, name: str) -> None:
        target = self.work / f"restored-{sid[:8]}-{time.monotonic_ns()}"
        r = self.cas("restore", sid, "--target", target)
        assert r.code == 0, (name, r.err)
        source = self.base.src / name
        assert compare_trees(source, target / source.relative_to("/")) == []

    def snapshot_sources(self) -> dict[str, str]:
        """Each listed snapshot's ID and the source tree it is of."""
        r = self.cas("--json", "snapshots")
        return {d["id"]: Path(d["paths"][0]).name for d in r.json()["snapshots"]}


def _damage(path: Path, state: str, at: int | None = None) -> None:
    if state == "missing":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01  # in a data pack: inside the big blob
    path.write_bytes(bytes(data))


@pytest.fixture(
    params=[(k, s, c) for k in KINDS for s in STATES for c in CACHES], ids=lambda p: "-".join(p)
)
def case(request: pytest.FixtureRequest, base: Base, tmp_path: Path) -> Case:
    kind, state, cache = request.param
    repo = tmp_path / "repo"
    shutil.copytree(base.repo, repo)
    if cache == "warm-cache":
        cache_root = tmp_path / "cache"
        shutil.copytree(
            cache_dir_for(str(base.repo), base.cache), cache_dir_for(str(repo), cache_root)
        )
    else:
        cache_root = tmp_path / "empty-cache"
    at = int(base.objects["d1_tree_byte"]) if kind == "tree_pack" else None
    _damage(repo / base.objects[kind], state, at)
    flags = ("--cache-dir", str(cache_root))
    return Case(base, kind, state, cache, repo, flags, tmp_path)


# -- the table ------------------------------------------------------------------------------

# The exit codes of `cas snapshots` and of `cas restore s2` before the recovery, per
# (kind, state, cache): what still works, and what is lost (exit 1: some of s2 is not
# restored, and named; 0: nothing is lost).  Config rows open nothing at all.
WARM, EMPTY = CACHES


def _expected(kind: str, state: str, cache: str) -> tuple[int, int]:
    warm = cache == WARM
    if kind == "snapshot":
        if state == "damaged":
            return (0, 0) if warm else (3, 1)  # a warm cache serves the verified copy
        # deleted by hand: no tombstone, and the latest generation names it (spec §13.6)
        return EXIT_UNTRUSTED, EXIT_UNTRUSTED
    if kind == "index":
        if state == "damaged" and warm:
            return 0, 0
        return 0, 1  # s2's trees are in no readable index file
    if kind == "tree_pack":
        return (0, 0) if warm else (0, 1)  # the cache holds tree packs whole, verified
    if kind == "data_pack":
        return 0, 1
    return 0, 0  # key file, lock: nothing of any snapshot is lost


def _recover(c: Case) -> None:
    """The recovery docs/recovery.md gives for the row (each step exit 0)."""
    b, s2 = c.base, c.base.ids["s2"]
    steps: list[tuple[str, ...]] = []
    if c.kind == "snapshot" and c.state == "damaged":
        steps = [("forget", s2)]
    elif c.kind == "snapshot":
        steps = [("trust", "--accept")]  # it was us: a snapshot file deleted by hand
    elif c.kind == "index":
        steps = [("repair", "index")]
    elif c.kind == "key" and c.state == "damaged":
        steps = [("key", "remove", b.objects["key"].split("/")[1][:8])]
    elif c.kind == "lock" and c.state == "damaged":
        steps = [("unlock", "--remove-all")]
    elif c.kind in ("tree_pack", "data_pack") and c.state == "damaged":
        steps = [("repair", "packs", b.objects[c.kind].split("/")[-1][:8])]
    elif c.kind in ("tree_pack", "data_pack"):
        steps = [("repair", "index")]
    elif c.kind == "config":
        shutil.copyfile(b.config_copy, c.repo / "config")
    for step in steps:
        r = c.cas(*step)
        assert r.code == 0, (step, r.err)


@pytest.mark.damaged_repo_ok("each row damages or deletes one object of its copy")
def test_one_damaged_or_missing_object(case: Case) -> None:
    c, b = case, case.base
    s2_gone = c.kind == "snapshot" and not (c.state == "damaged" and c.cache == WARM)
    if c.kind == "config":
        r = c.cas("snapshots")
        assert r.code in (1, 10) and r.err.count("\n") == 1 and r.err.startswith("cas: "), r.err
        assert c.cas("restore", b.ids["s1"], "--target", c.work / "none").code in (1, 10)
        assert not (c.work / "none").exists()
    elif c.kind == "snapshot" and c.state == "missing":
        # A hidden snapshot: reading commands read on with a warning and exit 13, the
        # others stop before they write or delete anything, until `cas trust --accept`
        # (spec §13.6).
        r = c.cas("--json", "snapshots")
        assert r.code == EXIT_UNTRUSTED and "without a tombstone" in r.err, r.err
        assert sorted(d["id"] for d in r.json()["snapshots"]) == sorted([b.ids["s1"], b.ids["s3"]])
        r = c.cas("restore", b.ids["s1"], "--target", c.work / "s1")
        assert r.code == EXIT_UNTRUSTED and "without a tombstone" in r.err, r.err
        assert compare_trees(b.src / "s1", c.work / "s1" / (b.src / "s1").relative_to("/")) == []
        r = c.cas("forget", "--keep-last", "1", "--prune")
        assert r.code == EXIT_UNTRUSTED and r.err.count("\n") == 1, r.err
        assert "without a tombstone" in r.err, r.err
        r = c.cas("--json", "check")
        assert r.code == 1 and "snapshot_hidden" in r.out, r.out + r.err
    else:
        listing, restore_s2 = _expected(c.kind, c.state, c.cache)
        r = c.cas("--json", "snapshots")
        assert r.code == listing, r.err
        listed = [d["id"] for d in r.json()["snapshots"]]
        assert b.ids["s1"] in listed and b.ids["s3"] in listed
        assert (b.ids["s2"] in listed) == (not s2_gone)
        for name in ("s1", "s3"):
            c.restores_exactly(b.ids[name], name)
        r = c.cas("restore", b.ids["s2"], "--target", c.work / "s2-before")
        assert r.code == restore_s2, r.err
        source = b.src / "s2"
        landed = c.work / "s2-before" / source.relative_to("/")
        if restore_s2 == 0:
            assert compare_trees(source, landed) == []
        elif c.state == "damaged" and c.kind in ("data_pack", "tree_pack"):
            lost = "d1/f" if c.kind == "data_pack" else "d1"  # one blob, one tree
            assert f"s2/{lost}: not restored" in r.err, r.err
            assert (landed / "d2" / "g").read_bytes() == (source / "d2" / "g").read_bytes()
        if c.cache == EMPTY:
            _every_command_copes(c)
    _recover(c)
    r = c.cas("backup", b.src / "s2")  # the unchanged source: stores again what was lost
    if c.kind == "tree_pack" and r.code != 0:  # its parent's trees went: files read again
        assert r.code == 3 and "cannot read parent tree" in r.err, r.err
    else:
        assert r.code == 0, r.err
    lost_ancestors = c.kind == "tree_pack" and c.state == "missing"
    if lost_ancestors:
        # The trees of the source's parent directories (/tmp, ...) went with the pack, and
        # those directories have changed since: no backup brings them back.
        r = c.cas("--json", "repair", "snapshots", "--forget")
        assert r.code == 0 and len(r.json()["snapshots_rewritten"]) == 1, r.out + r.err
    r = c.cas("check", "--read-data")
    assert r.code == 0, r.out + r.err
    sources = c.snapshot_sources()
    # The recovery of a snapshot file forgets it; every other old s2 is whole again, but
    # the one whose root went with a lost tree pack, rewritten by repair snapshots.
    old_s2 = [] if c.kind == "snapshot" else ["s2"]
    assert sorted(sources.values()) == sorted([*SNAPS, *old_s2])
    for sid, name in sources.items():
        if lost_ancestors and sid not in (b.ids["s1"], b.ids["s3"]) and _repaired(c, sid):
            continue
        c.restores_exactly(sid, name)


def _repaired(c: Case, sid: str) -> bool:
    (doc,) = (d for d in c.cas("--json", "snapshots").json()["snapshots"] if d["id"] == sid)
    return "repaired" in doc.get("tags", [])


# -- every read command against the damage ---------------------------------------------------


def _every_command_copes(c: Case) -> None:
    """Each command serves what it can: no traceback, a documented exit code (Case.cas)."""
    b = c.base
    s1, s2, s3 = (b.ids[n][:8] for n in SNAPS)
    f1, f2 = str(b.src / "s1" / "d1" / "f"), str(b.src / "s2" / "d1" / "f")
    other = c.work / "copy-target"
    env = {"CAS_OTHER_PASSWORD": "test-password"}
    assert run_cas("-r", other, "init", "--copy-keys-from", c.repo, env=env).code == 0
    assert c.cas("dump", s1, f1).code == 0
    runs = [
        ("snapshots",),
        ("ls", s2),
        ("find", "f"),
        ("diff", s1, s2),
        ("dump", s2, f2),
        ("restore", "latest", "--target", str(c.work / "latest")),
        ("stats",),
        ("check",),
        ("forget", "--dry-run", s2),
        ("forget", "--keep-last", "1", "--dry-run"),
        ("key", "list"),
        ("prune", "--dry-run"),
        ("backup", "--dry-run", str(b.src / "s2")),
    ]
    for args in runs:
        r = c.cas(*args, env=env)
        for line in r.err.splitlines():
            # Stopping: one line starting "cas: "; going on: warnings and progress.
            assert line.startswith(("cas: ", "warning: ", "  ")) or not line.strip(), (args, r.err)
        assert r.err.count("cas: ") <= 1, (args, r.err)
    for args in (("ls", s1), ("ls", s3), ("diff", s1, s3)):
        assert c.cas(*args).code == 0, args  # the unaffected ones are served whole
    r = c.cas("--json", "copy", "--to", str(other), env=env)
    copied = run_cas("-r", other, "--no-cache", "--json", "snapshots").json()["snapshots"]
    sources = {Path(d["paths"][0]).name for d in copied}
    assert {"s1", "s3"} <= sources, (sources, r.err)
    _mount_serves_the_rest(c)


def _mount_serves_the_rest(c: Case) -> None:
    """A brief mount: s1's file reads back exact, the damaged parts fail alone."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError:
        return  # no FUSE here: tests/test_mount.py says why
    os.close(fd)
    from tests.test_mount import Mount, force_unmount

    mnt = c.work / "mnt"
    mnt.mkdir()
    m = Mount(c.repo, mnt, *c.flags)
    try:
        ids = os.listdir(mnt / "ids")
        assert c.base.ids["s1"][:8] in " ".join(ids)
        s1 = next(i for i in ids if c.base.ids["s1"].startswith(i))
        f1 = c.base.src / "s1" / "d1" / "f"
        shown = mnt / "ids" / s1 / str(f1).lstrip("/")
        assert shown.read_bytes() == f1.read_bytes()
        for i in ids:  # the others: whatever can be read is, the rest fails with EIO
            for _dirpath, _dirs, files in os.walk(mnt / "ids" / i):
                for name in files:
                    with contextlib.suppress(OSError):
                        (Path(_dirpath) / name).read_bytes()
        assert m.proc.poll() is None, m.stderr()  # still serving
        assert m.stop() == 0, m.stderr()
        assert "Traceback" not in m.stderr(), m.stderr()
    finally:
        m.close()
        force_unmount(mnt)
