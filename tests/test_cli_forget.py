"""``cas forget`` and ``cas tag`` through the real CLI, on snapshots with chosen times."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cas.backend.local import LocalBackend
from cas.crypto import BlobType
from cas.format.snapshot import Snapshot
from cas.format.tree import encode_tree
from cas.repo import Repository, open_repository
from tests.support.cli import Result, run_cas
from tests.support.repos import PASSWORD, new_repo

UTC_ENV = {"TZ": "UTC"}  # forget counts days in the local time zone


class Fixture:
    """A local repository and a way to add snapshots of an empty tree at chosen times."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = new_repo(LocalBackend(root))
        self.tree, _ = self.repo.save_blob(BlobType.TREE, encode_tree([]))

    def add(
        self, when: str, host: str = "h1", paths: tuple[bytes, ...] = (b"/data",), tags: str = ""
    ) -> str:
        t = datetime.strptime(when, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        snap = Snapshot(
            int(t.timestamp()) * 10**9,
            self.tree,
            list(paths),
            host,
            "tester",
            tags=[x for x in tags.split(",") if x],
            program="test",
        )
        return self.repo.save_snapshot(snap).hex()

    def cas(self, *args: str) -> Result:
        return run_cas("-r", self.root, *args, env=UTC_ENV)

    def ids(self) -> set[str]:
        return {p.name for p in (self.root / "snapshots").iterdir()}

    def reopen(self) -> Repository:
        return open_repository(LocalBackend(self.root), PASSWORD)


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path / "repo")


def removed(r: Result) -> set[str]:
    assert r.code == 0, r.err
    return set(r.json()["removed"])


def test_dry_run_shows_what_is_kept_and_why(fx: Fixture) -> None:
    a = fx.add("2024-01-01 10:00")
    b = fx.add("2024-01-01 18:00")
    c = fx.add("2024-01-02 09:00")
    d = fx.add("2024-01-03 09:00")
    e = fx.add("2024-01-03 12:00")
    before = fx.ids()

    r = fx.cas("--json", "forget", "--keep-daily", "2", "--keep-last", "1", "--dry-run")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["dry_run"] and doc["policy"] == ["last 1", "daily 2"]
    (group,) = doc["groups"]
    assert group["key"] == {"hostname": "h1", "paths": ["/data"], "tags": None}
    assert {s["id"]: s["reasons"] for s in group["keep"]} == {e: ["last", "daily"], c: ["daily"]}
    assert [s["id"] for s in group["remove"]] == [a, b, d]
    assert set(doc["removed"]) == {a, b, d}
    assert fx.ids() == before

    human = fx.cas("forget", "--keep-daily", "2", "--keep-last", "1", "-n")
    assert human.code == 0, human.err
    assert "host h1; paths /data:" in human.out
    assert "keep 2 snapshots:" in human.out and "remove 3 snapshots:" in human.out
    assert f"{e[:8]}  2024-01-03 12:00:00" in human.out and "last, daily" in human.out
    assert human.out.rstrip().endswith("would remove 3 snapshots")
    assert fx.ids() == before


def test_forget_removes_the_planned_snapshots_and_is_idempotent(fx: Fixture) -> None:
    ids = [fx.add(f"2024-02-{day:02d} 12:00") for day in range(1, 11)]
    assert removed(fx.cas("--json", "forget", "--keep-last", "3")) == set(ids[:7])
    assert fx.ids() == set(ids[7:])
    listed = fx.cas("--json", "snapshots")
    assert [s["id"] for s in listed.json()["snapshots"]] == ids[7:]
    assert removed(fx.cas("--json", "forget", "--keep-last", "3")) == set()

    human = fx.cas("forget", "--keep-last", "1")
    assert human.code == 0 and human.out.rstrip().endswith("removed 2 snapshots")
    assert fx.ids() == {ids[-1]}


def test_groups_and_filters(fx: Fixture) -> None:
    h1_old = fx.add("2024-03-01 12:00", host="h1")
    h1_new = fx.add("2024-03-02 12:00", host="h1")
    h2_old = fx.add("2024-03-01 13:00", host="h2")
    h2_new = fx.add("2024-03-02 13:00", host="h2")
    other_path = fx.add("2024-03-01 14:00", host="h1", paths=(b"/etc",))

    # Default grouping: host and paths; each group keeps its own newest.
    r = fx.cas("--json", "forget", "--keep-last", "1", "-n")
    assert removed(r) == {h1_old, h2_old}
    assert len(r.json()["groups"]) == 3

    # One group: only the newest of all survives.
    r = fx.cas("--json", "forget", "--keep-last", "1", "--group-by", "", "-n")
    assert removed(r) == {h1_old, h2_old, h1_new, other_path}

    # Filters: only h2 is considered.
    assert removed(fx.cas("--json", "forget", "--keep-last", "1", "--host", "h2")) == {h2_old}
    assert fx.ids() == {h1_old, h1_new, h2_new, other_path}

    r = fx.cas("--json", "forget", "--keep-last", "1", "--path", "/data", "--group-by", "")
    assert removed(r) == {h1_old, h1_new}


def test_keep_within_and_keep_tag(fx: Fixture) -> None:
    old_tagged = fx.add("2023-01-01 00:00", tags="keep")
    old = fx.add("2023-06-01 00:00")
    recent = fx.add("2024-05-25 00:01")  # exactly 7d would be out: "within" is strict
    newest = fx.add("2024-06-01 00:00")

    r = fx.cas("--json", "forget", "--keep-within", "7d", "--keep-tag", "keep")
    assert removed(r) == {old}
    reasons = {s["id"]: s["reasons"] for s in r.json()["groups"][0]["keep"]}
    assert reasons == {old_tagged: ["tag keep"], recent: ["within 7d"], newest: ["within 7d"]}

    by_tags = fx.cas("--json", "forget", "--keep-last", "1", "--group-by", "tags", "-n")
    assert removed(by_tags) == {recent}


def test_forget_by_id(fx: Fixture) -> None:
    a = fx.add("2024-01-01 00:00")
    b = fx.add("2024-01-02 00:00")
    c = fx.add("2024-01-03 00:00")
    r = fx.cas("--json", "forget", a[:12], "latest")
    assert removed(r) == {a, c}
    assert fx.ids() == {b}
    human = fx.cas("forget", b)
    assert human.code == 0 and "snapshots given:" in human.out and b[:8] in human.out
    assert fx.ids() == set()

    missing = fx.cas("forget", "abcdef")
    assert missing.code == 1 and "no snapshot" in missing.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no keep rule"),
        (("--keep-within", "0d"), "no keep rule"),
        (("--keep-within", "5w"), "invalid duration"),
        (("--keep-last", "-1"), "not a count"),
        (("--keep-last", "many"), "not a count"),
        (("--keep-last", "1", "--group-by", "user"), "cannot group by"),
        (("--keep-last", "1", "IDPREFIX"), "not both"),
        (("--host", "h1", "IDPREFIX"), "not both"),
        (("--keep-last", "1", "--prune", "--max-unused", "150%"), "between"),
    ],
)
def test_usage_errors_change_nothing(fx: Fixture, args: tuple[str, ...], message: str) -> None:
    sid = fx.add("2024-01-01 00:00")
    args = tuple(sid[:8] if a == "IDPREFIX" else a for a in args)
    r = fx.cas("forget", *args)
    assert r.code == 2, (r.code, r.err)
    assert message in r.err and "Traceback" not in r.err
    assert fx.ids() == {sid}


def test_keep_unlimited(fx: Fixture) -> None:
    ids = [fx.add(f"2024-01-{d:02d} {h:02d}:00") for d in (1, 2) for h in (1, 2)]
    r = fx.cas("--json", "forget", "--keep-daily", "unlimited", "-n")
    assert removed(r) == {ids[0], ids[2]}


def test_forget_then_prune(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    assert run_cas("-r", repo, "init").code == 0
    for seed in (1, 2):
        (src / "f").write_bytes(random.Random(seed).randbytes(200_000))
        assert run_cas("-r", repo, "backup", src).code == 0, seed
    packs_before = len(list((repo / "data").rglob("*")))

    dry = run_cas("-r", repo, "--json", "forget", "--keep-last", "1", "--prune", "--dry-run")
    assert dry.code == 0, dry.err
    (forget_doc,) = (json.loads(line) for line in dry.out.splitlines())  # one summary
    prune_doc = forget_doc["prune"]
    assert len(forget_doc["removed"]) == 1 and prune_doc["dry_run"]
    assert len(list((repo / "snapshots").iterdir())) == 2

    real = run_cas("-r", repo, "--json", "forget", "--keep-last", "1", "--prune")
    assert real.code == 0, real.err
    (forget_doc,) = (json.loads(line) for line in real.out.splitlines())
    prune_doc = forget_doc["prune"]
    assert len(forget_doc["removed"]) == 1
    assert prune_doc["plan"]["packs_to_remove"] >= 1
    assert len(list((repo / "data").rglob("*"))) < packs_before
    restored = run_cas("-r", repo, "restore", "latest", "--target", tmp_path / "out")
    assert restored.code == 0, restored.err
    assert (tmp_path / "out" / src.relative_to("/") / "f").read_bytes() == (src / "f").read_bytes()


# -- tag -----------------------------------------------------------------------------


def test_tag_rewrites_snapshots_new_first(fx: Fixture) -> None:
    a = fx.add("2024-01-01 00:00", tags="x")
    b = fx.add("2024-01-02 00:00", host="h2")

    r = fx.cas("--json", "tag", "--add", "y", "--add", "z", "--remove", "x", a[:10])
    assert r.code == 0, r.err
    (change,) = r.json()["changed"]
    new_a = change["new_id"]
    assert change["id"] == a and change["tags"] == ["y", "z"]
    assert fx.ids() == {new_a, b}
    snap = fx.reopen().load_snapshot(bytes.fromhex(new_a))
    assert snap.tags == ["y", "z"] and snap.hostname == "h1"
    assert snap.time_ns == int(datetime(2024, 1, 1, tzinfo=UTC).timestamp()) * 10**9
    assert snap.extra["original"] == bytes.fromhex(a)

    # Re-tagging keeps the first original; an unchanged snapshot is not rewritten.
    r = fx.cas("--json", "tag", "--set", "only", new_a)
    newer = r.json()["changed"][0]["new_id"]
    assert fx.reopen().load_snapshot(bytes.fromhex(newer)).extra["original"] == bytes.fromhex(a)
    r = fx.cas("--json", "tag", "--add", "only", newer)
    doc = r.json()
    assert doc["changed"] == [] and doc["unchanged"] == 1

    # No IDs: every snapshot that passes the filters.
    r = fx.cas("--json", "tag", "--add", "all", "--host", "h2")
    assert [c["id"] for c in r.json()["changed"]] == [b]
    human = fx.cas("tag", "--set", "")
    assert human.code == 0 and "changed 2 snapshots, 0 unchanged" in human.out
    assert all(s.tags == [] for _, s in fx.reopen().iter_snapshots())
    assert len(fx.ids()) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to do"),
        (("--set", "a", "--add", "b"), "cannot be combined"),
        (("--add", ""), "cannot be empty"),
    ],
)
def test_tag_usage_errors(fx: Fixture, args: tuple[str, ...], message: str) -> None:
    sid = fx.add("2024-01-01 00:00")
    r = fx.cas("tag", *args)
    assert r.code == 2 and message in r.err
    assert fx.ids() == {sid}
