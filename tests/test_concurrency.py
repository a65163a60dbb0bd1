"""Several clients on one repository at once: nothing is lost, nothing is reported wrongly.

Issue 8, item 5; spec/format.md §13 and §14.  Every client is a real ``cas``
process, on a local repository and on S3 (moto's server over HTTP).  The
interleavings are made, not hoped for: a ``name@N:pause`` fail point
(cas/failpoints.py) holds a process at an exact step until the test lets
it go on, so "a check that listed the packs before a backup stored its
index" happens in every run.

Verified after every round, by code independent of cas's restore: every
snapshot reads back bit-exact (content hash, permission bits, symlink
targets; ``tests.test_crash.verify_in_process``) and ``check --read-data``
exits 0 with no error (duplicate blobs of racing backups and unindexed
packs of a running one are warnings).  Counts go to docs/reliability.md.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Result, finish, start_cas
from tests.test_crash import (
    PASSWORD,
    Manifest,
    MiB,
    Repo,
    Source,
    local_repo,
    parallel,
    s3_repo,
    verify_in_process,
)

# Findings concurrent clients may leave; anything else fails the test.
RACE_LEFTOVERS = {"blob_duplicate", "pack_unreferenced"}
PAUSE_DEADLINE = 120.0  # seconds; only bounds a hang, never a measured time

KINDS = [pytest.param("local", id="local"), pytest.param("moto", id="moto", marks=pytest.mark.s3)]
# Where S3 adds nothing the local run does not already show (the order of
# listings, locks), moto's run is one of the long variants.
KINDS_S3_SLOW = [
    pytest.param("local", id="local"),
    pytest.param("moto", id="moto", marks=[pytest.mark.s3, pytest.mark.slow]),
]


def make_repo(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Repo:
    """A new repository: a local directory or a fresh bucket on moto's server."""
    if kind == "local":
        return local_repo(tmp_path)
    endpoint = request.getfixturevalue("s3_server")
    return s3_repo(tmp_path, endpoint, request.getfixturevalue("s3_bucket"))


class Held:
    """A ``cas --json ARGS`` started in the background, to be held at fail point ``pause``
    (``name[@N]``: the N-th time the step is reached) until the test lets it go on."""

    def __init__(self, repo: Repo, *args: str | Path, pause: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cas-pause-"))
        self.name = (pause or "").split("@")[0]
        env = {**repo.env, "CAS_FAILPOINTS_DIR": str(self.dir)}
        if pause is not None:
            env["CAS_FAILPOINTS"] = f"{pause}:pause"
        self.proc = start_cas(*repo.args, "--json", *args, password=PASSWORD, env=env)

    def reached(self) -> Held:
        """Wait until the process is paused at its fail point; fail if it ends first."""
        flag = self.dir / f"{self.name}.paused"
        deadline = time.monotonic() + PAUSE_DEADLINE
        while not flag.exists():
            if self.proc.poll() is not None:
                r = self.finish()
                pytest.fail(f"ended before reaching {self.name}: {r.code} {r.err}")
            assert time.monotonic() < deadline, f"never reached {self.name}"
            time.sleep(0.01)
        return self

    def go(self) -> None:
        """Let the paused process go on."""
        (self.dir / f"{self.name}.go").touch()

    def finish(self) -> Result:
        """Let it go on and wait for it to end."""
        self.go()
        r = finish(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
        return r


def ok(r: Result, what: str = "") -> Any:
    """A finished ``cas --json`` run that must have succeeded: its document."""
    assert r.code == 0, (what, r.code, r.err)
    return r.json()


def check_clean(repo: Repo, allowed: set[str] = RACE_LEFTOVERS, data: bool = True) -> list[str]:
    """``check`` (``--read-data``) exits 0 with no error; returns the kinds it warned about."""
    r = repo.cas("--json", "check", *(["--read-data"] if data else []))
    return findings_ok(r, allowed)


def findings_ok(r: Result, allowed: set[str]) -> list[str]:
    """A check's result: exit 0, no error, only ``allowed`` kinds of warning."""
    doc = ok(r, "check")
    assert doc["summary"]["errors"] == 0, doc["findings"]
    kinds = [f["kind"] for f in doc["findings"]]
    assert set(kinds) <= allowed, doc["findings"]
    return kinds


@dataclass
class Known:
    """Every snapshot stored so far and what it must read back as."""

    snapshots: dict[str, tuple[Path, Manifest]]

    def add(self, doc: dict[str, Any], src: Source, expected: Manifest) -> None:
        self.snapshots[doc["id"]] = (src.root, expected)

    def verify(self, repo: Repo) -> int:
        """Every snapshot exact (library reads, compared with the manifests); files compared."""
        return verify_in_process(repo, [(sid, p, m) for sid, (p, m) in self.snapshots.items()])

    def verify_around_prune(self, repo: Repo) -> dict[str, Any]:
        """Clean check and every snapshot exact, before and after a prune; its result."""
        assert check_clean(repo, set()) == []
        self.verify(repo)
        pruned: dict[str, Any] = ok(repo.cas("--json", "prune"), "prune")["result"]
        assert check_clean(repo, set()) == []
        self.verify(repo)
        return pruned


# -- 1. two backups at once ---------------------------------------------------------


def two_sources(tmp_path: Path, seed: int) -> tuple[Source, Source]:
    """Two trees with a large part in common (the same bytes under the same names)."""
    a = Source(tmp_path / "a", seed)
    a.add(2 * MiB, files=6, subdir="shared")
    b = Source(tmp_path / "b", seed + 1)
    shutil.copytree(a.root / "shared", b.root / "shared", symlinks=True)
    return a, b


# How the two backups of a round meet: both held after storing their packs
# (each stores every shared blob: neither index exists yet), one held while the
# other runs to the end, or no pause at all.
MEETINGS = ["both-before-index", "one-waits", "free"]


def race_two_backups(repo: Repo, a: Source, b: Source, meeting: str) -> tuple[Result, Result]:
    if meeting == "both-before-index":
        ha = Held(repo, "backup", a.root, pause="before-index").reached()
        hb = Held(repo, "backup", b.root, pause="before-index").reached()
        ha.go()
        return ha.finish(), hb.finish()
    if meeting == "one-waits":
        ha = Held(repo, "backup", a.root, pause="pack-stored").reached()
        rb = repo.cas("--json", "backup", b.root)
        return ha.finish(), rb
    ha, hb = Held(repo, "backup", a.root), Held(repo, "backup", b.root)
    return ha.finish(), hb.finish()


def two_backups_rounds(repo: Repo, tmp_path: Path, rounds: int, seed: int) -> dict[str, int]:
    a, b = two_sources(tmp_path, seed)
    known = Known({})
    stats = {"rounds": 0, "backups": 0, "duplicates_seen": 0, "files_compared": 0}
    for i in range(rounds):
        # new shared content (both race to store it) and content of each one's own
        for name in ("a", "b"):
            shutil.rmtree(a.root.parent / name / "shared")
        shared = Source(tmp_path / f"shared{i}", seed + 100 + i)
        shared.add(2 * MiB, files=6, subdir="shared")
        for src in (a, b):
            shutil.copytree(shared.root / "shared", src.root / "shared", symlinks=True)
            src.churn()
            src.add(MiB, files=4)
        ma, mb = a.manifest(), b.manifest()
        meeting = MEETINGS[i % len(MEETINGS)]
        ra, rb = race_two_backups(repo, a, b, meeting)
        da, db = ok(ra, f"backup a, {meeting}"), ok(rb, f"backup b, {meeting}")
        known.add(da, a, ma)
        known.add(db, b, mb)
        stats["backups"] += 2
        # check: racing backups leave duplicate blobs (warnings), never an error
        kinds = check_clean(repo, {"blob_duplicate"})
        stats["duplicates_seen"] += "blob_duplicate" in kinds
        if meeting == "both-before-index":
            assert "blob_duplicate" in kinds, kinds
        stats["files_compared"] += known.verify(repo)
        # a third backup of both trees sends nothing new
        both = ok(repo.cas("--json", "backup", a.root, b.root), "third backup")
        assert both["summary"]["data_added"] == 0, both["summary"]
        # prune gives the duplicates back without losing anything
        pruned = ok(repo.cas("--json", "prune", "--max-unused", "0%"), "prune")
        assert pruned["result"]["deferred_packs"] == 0, pruned
        assert check_clean(repo, set()) == []
        stats["files_compared"] += known.verify(repo)
        stats["rounds"] += 1
    for sid, (root, expected) in list(known.snapshots.items())[-2:]:
        repo.restore_exact(sid, root, expected)
    print(f"\ntwo backups at once ({repo.args[1]}): {stats}")
    return stats


@pytest.mark.parametrize("kind", KINDS)
def test_two_backups_at_once(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    repo = make_repo(kind, tmp_path, request)
    rounds = 3 if kind == "local" else 2
    stats = two_backups_rounds(repo, tmp_path, rounds=rounds, seed=11)
    assert stats["rounds"] == rounds and stats["duplicates_seen"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_backups_at_once_long(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repo = make_repo(kind, tmp_path, request)
    rounds = 12 if kind == "local" else 6
    stats = two_backups_rounds(repo, tmp_path, rounds=rounds, seed=23)
    assert stats["rounds"] == rounds


# -- 2. check during backup -----------------------------------------------------------


def one_snapshot(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, seed: int
) -> tuple[Repo, Source, Known]:
    """A repository holding one snapshot of a 2 MiB tree, and that tree grown by 3 MiB."""
    repo = make_repo(kind, tmp_path, request)
    src = Source(tmp_path / "src", seed)
    src.add(2 * MiB)
    known = Known({})
    known.add(ok(repo.cas("--json", "backup", src.root)), src, src.manifest())
    src.churn()
    src.add(3 * MiB)
    return repo, src, known


# Where the backup is held while check runs: packs stored but no index (they are
# unreferenced: a warning), the index stored but no snapshot.
BACKUP_HELD_AT = ["pack-stored@2", "index-written"]


@pytest.mark.parametrize("kind", KINDS_S3_SLOW)
@pytest.mark.parametrize("held", BACKUP_HELD_AT)
def test_check_while_a_backup_writes(
    kind: str, held: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repo, src, known = one_snapshot(kind, tmp_path, request, seed=5)
    expected = src.manifest()
    backup = Held(repo, "backup", src.root, pause=held).reached()
    # both checks at once, while the backup holds its lock and has written part of its data
    quick, full = parallel(
        lambda: repo.cas("--json", "check"), lambda: repo.cas("--json", "check", "--read-data")
    )
    for r in (quick, full):
        kinds = findings_ok(r, {"pack_unreferenced"})
        assert ("pack_unreferenced" in kinds) == (backup.name == "pack-stored"), kinds
    known.add(ok(backup.finish(), "backup"), src, expected)
    known.verify_around_prune(repo)


# A check held after listing one directory, while a whole backup runs: the
# backup's packs, index and snapshot appear between the check's listings.
CHECK_HELD_AT = ["check-listed-data", "check-listed-index", "check-listed-snapshots"]


@pytest.mark.parametrize("kind", KINDS_S3_SLOW)
@pytest.mark.parametrize("held", CHECK_HELD_AT)
def test_backup_between_the_listings_of_a_check(
    kind: str, held: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repo, src, known = one_snapshot(kind, tmp_path, request, seed=6)
    expected = src.manifest()
    check = Held(repo, "check", "--read-data", pause=held).reached()
    known.add(ok(repo.cas("--json", "backup", src.root), "backup"), src, expected)
    findings_ok(check.finish(), {"pack_unreferenced"})
    known.verify_around_prune(repo)


# -- 3. backup during prune --------------------------------------------------------------


def forgotten_and_kept(repo: Repo, tmp_path: Path, seed: int) -> tuple[Source, Known]:
    """Two snapshots, the first forgotten: prune has packs to mark and delete."""
    src = Source(tmp_path / "src", seed)
    src.add(2 * MiB, subdir="old")
    old = ok(repo.cas("--json", "backup", src.root))["id"]
    shutil.rmtree(src.root / "old")
    src.add(2 * MiB)
    known = Known({})
    known.add(ok(repo.cas("--json", "backup", src.root)), src, src.manifest())
    ok(repo.cas("--json", "forget", old))
    return src, known


# How far the backup gets while prune is held between its pack and index listings:
# its index stored (the snapshot not yet), or to the end.
BACKUP_GETS_TO = [
    pytest.param("local", "before-snapshot", id="before-snapshot-local"),
    pytest.param("local", "the-end", id="the-end-local"),
    pytest.param("moto", "before-snapshot", id="before-snapshot-moto", marks=pytest.mark.s3),
    pytest.param("moto", "the-end", id="the-end-moto", marks=[pytest.mark.s3, pytest.mark.slow]),
]


@pytest.mark.parametrize(("kind", "gets_to"), BACKUP_GETS_TO)
def test_backup_between_the_listings_of_a_prune(
    kind: str, gets_to: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repo = make_repo(kind, tmp_path, request)
    src, known = forgotten_and_kept(repo, tmp_path, seed=8)
    src.churn()
    src.add(2 * MiB)
    expected = src.manifest()
    prune = Held(repo, "prune", pause="prune-listed-packs").reached()
    if gets_to == "the-end":
        known.add(ok(repo.cas("--json", "backup", src.root), "backup"), src, expected)
        pruned = ok(prune.finish(), "prune")
    else:
        backup = Held(repo, "backup", src.root, pause=gets_to).reached()
        pruned = ok(prune.finish(), "prune")
        known.add(ok(backup.finish(), "backup"), src, expected)
    # nothing was deleted that the new snapshot needs; what prune marked stays readable
    assert pruned["plan"]["missing_packs"] == 0, pruned
    assert known.verify_around_prune(repo)["deferred_packs"] == 0


@pytest.mark.parametrize("kind", KINDS_S3_SLOW)
def test_backup_while_prune_deletes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A backup started while prune deletes packs (held after its first deletion)."""
    repo = make_repo(kind, tmp_path, request)
    src, known = forgotten_and_kept(repo, tmp_path, seed=9)
    src.churn()
    src.add(MiB)
    expected = src.manifest()
    prune = Held(repo, "prune", pause="prune-pack-deleted").reached()
    known.add(ok(repo.cas("--json", "backup", src.root), "backup"), src, expected)
    ok(prune.finish(), "prune")
    known.verify_around_prune(repo)


# -- 4. forget, snapshots and restore during a backup ------------------------------------


@pytest.mark.parametrize("kind", KINDS_S3_SLOW)
def test_forget_snapshots_restore_during_a_backup(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repo = make_repo(kind, tmp_path, request)
    src = Source(tmp_path / "src", seed=10)
    src.add(MiB)
    first = ok(repo.cas("--json", "backup", src.root))["id"]
    src.churn()
    src.add(MiB)
    known = Known({})
    known.add(ok(repo.cas("--json", "backup", src.root)), src, src.manifest())
    (kept,) = known.snapshots
    src.churn()
    src.add(3 * MiB)
    expected = src.manifest()
    backup = Held(repo, "backup", src.root, pause="pack-stored@2").reached()
    ok(repo.cas("--json", "forget", first), "forget")
    assert repo.snapshot_ids() == {kept}
    root, manifest = known.snapshots[kept]
    repo.restore_exact("latest", root, manifest)
    known.add(ok(backup.finish(), "backup"), src, expected)
    assert repo.snapshot_ids() == set(known.snapshots)
    known.verify_around_prune(repo)
