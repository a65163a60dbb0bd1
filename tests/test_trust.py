"""What the provider does behind a client's back (issue 18, spec §13.6), for real.

On a local directory and on both S3 servers (moto and SeaweedFS, through
the CLI): a hidden snapshot stops ``forget --prune`` before it deletes
anything, a replayed superseded index file, a repository rolled back to an
earlier copy and another repository put at a known location (same password)
are each reported with exit 13 and as ``check`` findings, and nothing is
lost; a forget by another client (its own client state) leaves tombstones
that this client accepts without a word.  Restores are compared with the
source with ``filecmp``, which shares no code with cas.
"""

from __future__ import annotations

import filecmp
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cas.backend.base import Backend
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.backend.s3 import S3Backend
from cas.errors import EXIT_UNTRUSTED, FormatError, IntegrityError, UntrustedChange
from cas.format import generation as genfmt
from cas.ids import storage_id
from cas.repo import layout
from cas.repo.clientstate import ClientState
from cas.repo.connect import init_repository, open_repository
from cas.repo.generations import Generations
from tests.independent.compare import read_local, read_s3
from tests.independent.repository import RepositoryView
from tests.support.backends import s3_target
from tests.support.cli import Result, run_cas

PASSWORD = b"test-password"
KILLED = -signal.SIGKILL


@dataclass
class Place:
    """A repository location, the CLI options that reach it and a backend that looks
    behind cas's back (as the provider would)."""

    kind: str  # local, s3-moto, s3-seaweed
    args: list[str]
    raw: Backend
    env: dict[str, str] = field(default_factory=dict)
    read: Callable[[], RepositoryView] | None = None  # the independent reader

    def cas(self, *args: str | Path, state: Path | None = None) -> Result:
        env = dict(self.env)
        if state is not None:
            env["XDG_STATE_HOME"] = str(state)
        return run_cas(*self.args, *args, env=env)

    def ok(self, *args: str | Path, state: Path | None = None) -> Any:
        done = self.cas("--json", *args, state=state)
        assert done.code == 0, (args, done.code, done.err)
        return done.json()

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        return {o.name: self.raw.read(o.name) for o in self.raw.list(prefix)}

    def names(self, prefix: str) -> set[str]:
        return {o.name for o in self.raw.list(prefix)}

    def replace_all(self, objects: dict[str, bytes]) -> None:
        """Make the repository exactly ``objects`` (a rolled-back or swapped bucket)."""
        for o in list(self.raw.list("")):
            self.raw.delete(o.name)
        for name, data in objects.items():
            self.raw.write(name, data)


def _other(place: Place, tmp_path: Path, name: str, request: pytest.FixtureRequest) -> Place:
    """A second location on the same storage."""
    if place.kind.startswith("s3-"):
        target = s3_target(place.kind.removeprefix("s3-"), request)
        loc = f"s3://{target.bucket}/{target.prefix}-{name}"
        backend = S3Backend(
            target.bucket, f"{target.prefix}-{name}", endpoint_url=target.endpoint, path_style=True
        )
        return Place(place.kind, ["-r", loc, *place.args[2:]], backend, place.env)
    return Place("local", ["-r", str(tmp_path / name)], LocalBackend(tmp_path / name))


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3-moto", marks=pytest.mark.s3),
        pytest.param("s3-seaweed", marks=pytest.mark.s3),
    ]
)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "local":
        root = tmp_path / "repo"
        yield Place("local", ["-r", str(root)], LocalBackend(root), read=lambda: read_local(root))
        return
    target = s3_target(request.param.removeprefix("s3-"), request)
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    loc = f"s3://{target.bucket}/{target.prefix}"
    raw = target.backend()
    args = ["-r", loc, "--s3-endpoint", target.endpoint, "--s3-path-style"]
    read = partial(read_s3, target.endpoint, target.bucket, target.prefix)
    yield Place(request.param, args, raw, aws, read)
    raw.close()


def _tree(root: Path, seed: int, files: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{seed}-{i}").write_bytes(os.urandom(40_000 + 1000 * i))
    return root


def _restored_equals(place: Place, sid: str, src: Path, target: Path) -> None:
    place.ok("restore", sid, "--target", target)
    restored = target / src.relative_to("/")
    cmp = filecmp.dircmp(src, restored)
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files), cmp.report()
    for name in cmp.common_files:
        assert (src / name).read_bytes() == (restored / name).read_bytes()


def _refused(done: Result, words: str) -> None:
    assert done.code == EXIT_UNTRUSTED, (done.code, done.err)
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in done.err, done.err


def _read_anyway(done: Result, words: str) -> None:
    """A reading command reads on: a warning per finding (one names ``words``), exit 13."""
    assert done.code == EXIT_UNTRUSTED, (done.code, done.err)
    lines = done.err.strip().splitlines()
    assert all(ln.startswith("warning: ") and ln.endswith("see 'cas trust')") for ln in lines)
    assert any(words in ln for ln in lines) and "Traceback" not in done.err, done.err


def _kinds(place: Place) -> set[str]:
    done = place.cas("--json", "check")
    assert done.code == 1, done.err
    return {f["kind"] for f in done.json()["findings"]}


def test_a_hidden_snapshot_stops_forget_prune_and_nothing_is_lost(
    place: Place, tmp_path: Path
) -> None:
    place.ok("init")
    first_src = _tree(tmp_path / "a", 1)
    first = place.ok("backup", first_src)["id"]
    second = place.ok("backup", _tree(tmp_path / "b", 2))["id"]
    name = layout.snapshot_name(bytes.fromhex(first))
    hidden = place.raw.read(name)
    place.raw.delete(name)
    data_before = place.names(layout.DATA)

    _refused(place.cas("forget", "--keep-last", "1", "--prune"), f"snapshot {first[:8]}")
    assert place.names(layout.DATA) == data_before
    assert place.names(layout.SNAPSHOTS) == {layout.snapshot_name(bytes.fromhex(second))}
    _refused(place.cas("prune"), "without a tombstone")
    assert place.names(layout.DATA) == data_before
    assert "snapshot_hidden" in _kinds(place)
    found = place.cas("--json", "trust")
    assert found.code == EXIT_UNTRUSTED
    assert [f["kind"] for f in found.json()["findings"]] == ["snapshot_hidden"]

    place.raw.write(name, hidden)  # the provider gives it back: all is as it was
    assert place.ok("trust")["findings"] == []
    _restored_equals(place, first, first_src, tmp_path / "restored")


def test_a_replayed_superseded_index_file_is_reported(place: Place, tmp_path: Path) -> None:
    place.ok("init")
    first = place.ok("backup", _tree(tmp_path / "a", 1))["id"]
    kept_src = _tree(tmp_path / "b", 2)
    kept = place.ok("backup", kept_src)["id"]
    old_index = {
        n: d for n, d in place.objects(layout.INDEX).items() if layout.id_from_name(n) is not None
    }
    place.ok("forget", first, "--prune")  # supersedes and deletes those index files
    gone = {n: d for n, d in old_index.items() if n not in place.names(layout.INDEX)}
    assert gone
    for n, d in gone.items():  # the provider replays them
        place.raw.write(n, d)

    data_before = place.names(layout.DATA)
    _refused(place.cas("backup", _tree(tmp_path / "c", 3)), "replayed")
    _refused(place.cas("prune"), "replayed")
    assert place.names(layout.DATA) == data_before
    assert "index_replayed" in _kinds(place)
    for n in gone:
        place.raw.delete(n)
    _restored_equals(place, kept, kept_src, tmp_path / "restored")


def test_a_repository_rolled_back_to_an_earlier_copy_is_reported(
    place: Place, tmp_path: Path
) -> None:
    place.ok("init")
    first_src = _tree(tmp_path / "a", 1)
    first = place.ok("backup", first_src)["id"]
    earlier = place.objects()
    place.ok("backup", _tree(tmp_path / "b", 2))
    place.replace_all(earlier)

    listed = place.cas("--json", "snapshots")
    _read_anyway(listed, "older than generation")
    assert [s["id"] for s in listed.json()["snapshots"]] == [first]
    _refused(place.cas("forget", "--keep-last", "1", "--prune"), "rolled back")
    # Data still comes out, named by ID (it cannot be forged, only hidden); "latest"
    # is what a rollback falsifies, so it is refused and nothing is written.
    done = place.cas("restore", "latest", "--target", tmp_path / "t1")
    assert done.code == EXIT_UNTRUSTED and "Traceback" not in done.err, done.err
    assert "name the snapshot by its ID" in done.err.strip().splitlines()[-1], done.err
    assert not (tmp_path / "t1").exists()
    done = place.cas("restore", first, "--target", tmp_path / "t2")
    _read_anyway(done, "older than generation")
    restored = tmp_path / "t2" / first_src.relative_to("/")
    assert sorted(p.name for p in restored.iterdir()) == sorted(p.name for p in first_src.iterdir())
    for name in os.listdir(first_src):
        assert (first_src / name).read_bytes() == (restored / name).read_bytes()
    assert place.objects() == earlier
    assert "generation_rollback" in _kinds(place)
    # A restored bucket is a legitimate change: accepted, and all goes on.
    accepted = place.ok("trust", "--accept")
    assert accepted["accepted"] and accepted["generation"] == 3
    assert place.ok("trust")["findings"] == []
    place.ok("backup", _tree(tmp_path / "c", 3))
    _restored_equals(place, first, first_src, tmp_path / "restored")


def test_another_repository_at_a_known_location_is_reported(
    place: Place, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    place.ok("init")
    mine = place.ok("backup", _tree(tmp_path / "a", 1))["id"]
    mine_objects = place.objects()
    # Another repository, same password, made by someone else (another client state).
    other = _other(place, tmp_path, "other", request)
    other.ok("init", state=tmp_path / "stranger")
    other.ok("backup", _tree(tmp_path / "b", 2), state=tmp_path / "stranger")
    place.replace_all(other.objects())

    _read_anyway(place.cas("snapshots"), "another repository was put in its place")
    _refused(place.cas("forget", "--keep-last", "1", "--prune"), "another repository")
    assert "repository_swapped" in _kinds(place)
    place.replace_all(mine_objects)  # put back: nothing was lost
    assert [s["id"] for s in place.ok("snapshots")["snapshots"]] == [mine]


def test_a_forget_by_another_client_is_accepted_silently(place: Place, tmp_path: Path) -> None:
    place.ok("init")
    first = place.ok("backup", _tree(tmp_path / "a", 1))["id"]
    kept_src = _tree(tmp_path / "b", 2)
    kept = place.ok("backup", kept_src)["id"]
    assert len(place.ok("snapshots")["snapshots"]) == 2  # this client saw both

    other = tmp_path / "other-client"
    done = place.ok("forget", first, "--prune", state=other)
    assert done["removed"] == [first] and done["prune"]["result"]["packs_deleted"] > 0

    listed = place.cas("--json", "snapshots")
    assert listed.code == 0 and listed.err == "", listed.err
    assert [s["id"] for s in listed.json()["snapshots"]] == [kept]
    assert place.ok("trust")["findings"] == []
    assert place.ok("forget", "--keep-last", "1", "--prune")["removed"] == []  # by paths
    assert place.cas("check").code == 0
    _restored_equals(place, kept, kept_src, tmp_path / "restored")
    # read per spec by the independent reader: the records chain, the tombstone is there
    assert place.read is not None
    view = place.read()
    assert list(view.snapshots) == [kept]
    records = [view.generations[n] for n in sorted(view.generations)]
    assert any(r.get("forgotten") == [bytes.fromhex(first)] for r in records)
    assert records[-1]["snapshots"] == [bytes.fromhex(kept)]


# -- fail points of the new writes --------------------------------------------------


def test_a_backup_killed_before_its_generation_leaves_nothing_to_report(tmp_path: Path) -> None:
    place = Place("local", ["-r", str(tmp_path / "repo")], LocalBackend(tmp_path / "repo"))
    place.ok("init")
    first = place.ok("backup", _tree(tmp_path / "a", 1))["id"]
    env = {"CAS_FAILPOINTS": "before-generation"}
    killed = run_cas(*place.args, "backup", _tree(tmp_path / "b", 2), env=env)
    assert killed.code == KILLED, killed.err
    # its snapshot is stored but in no generation: a snapshot like any other
    assert len(place.ok("snapshots")["snapshots"]) == 2
    assert place.ok("trust")["findings"] == []
    assert place.cas("check").code == 0
    place.ok("forget", first, "--prune")
    assert len(place.ok("snapshots")["snapshots"]) == 1


def test_a_forget_killed_after_its_tombstone_is_finished_by_the_next(tmp_path: Path) -> None:
    place = Place("local", ["-r", str(tmp_path / "repo")], LocalBackend(tmp_path / "repo"))
    place.ok("init")
    first = place.ok("backup", _tree(tmp_path / "a", 1))["id"]
    place.ok("backup", _tree(tmp_path / "b", 2))
    killed = run_cas(*place.args, "forget", first, env={"CAS_FAILPOINTS": "forget-tombstoned"})
    assert killed.code == KILLED, killed.err
    # tombstoned, still stored: seen again, and forgotten again without a finding
    assert len(place.ok("snapshots")["snapshots"]) == 2
    other = tmp_path / "other-client"
    assert len(place.ok("snapshots", state=other)["snapshots"]) == 2
    place.ok("forget", first, "--prune")
    assert len(place.ok("snapshots", state=other)["snapshots"]) == 1
    assert place.ok("trust", state=other)["findings"] == []


# -- the generation records -------------------------------------------------------


def test_two_clients_never_both_write_one_generation(tmp_path: Path) -> None:
    """Write-once (an exclusive link on a local disk): of clients racing for the next
    number, one wins it, the others catch up and take the next; the chain holds."""
    backend = LocalBackend(tmp_path / "repo")
    repo = init_repository(backend, PASSWORD)
    clients = [
        open_repository(
            LocalBackend(tmp_path / "repo"), PASSWORD, None, ClientState(tmp_path / f"s{i}")
        )
        for i in range(6)
    ]
    numbers: list[int] = []
    barrier = threading.Barrier(len(clients))

    def commit(c: Any) -> None:
        barrier.wait()
        numbers.append(c.generations.commit(added=[os.urandom(32)], command="test"))

    threads = [threading.Thread(target=commit, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, len(clients) + 1))
    prev = None
    snapshots: set[bytes] = set()
    for n in range(1, len(clients) + 1):
        raw = backend.read(layout.generation_name(n))
        record = genfmt.decode_generation(raw, repo.keys.index)
        assert record.n == n and record.prev == prev and record.repo_id == repo.config.repo_id
        assert snapshots < set(record.snapshots)  # nothing another client added is lost
        snapshots, prev = set(record.snapshots), storage_id(raw)


def test_a_record_under_another_number_or_key_is_refused() -> None:
    backend = MemoryBackend()
    repo = init_repository(backend, PASSWORD)
    raw = genfmt.encode_generation(
        genfmt.Generation(1, repo.config.repo_id, 0, []), repo.keys.index
    )
    with pytest.raises(IntegrityError):
        genfmt.decode_generation(raw, repo.keys.data)  # the wrong key
    with pytest.raises(FormatError):
        genfmt.encode_generation(genfmt.Generation(0, repo.config.repo_id, 0, []), repo.keys.index)
    backend.write(layout.generation_name(2), raw)  # record 1 stored as generation 2
    gens = Generations(backend, repo.keys, repo.config.repo_id, None)
    with pytest.raises(Exception, match="is not generation 2"):
        gens.sync()


def test_a_client_that_saw_a_generation_refuses_an_older_one(tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = init_repository(backend, PASSWORD)
    state = ClientState(tmp_path / "state")
    gens = Generations(backend, repo.keys, repo.config.repo_id, state)
    gens.commit(added=[b"\x01" * 32])
    gens.commit(added=[b"\x02" * 32])
    backend.delete(layout.generation_name(2))
    later = Generations(backend, repo.keys, repo.config.repo_id, state)
    with pytest.raises(UntrustedChange, match="older than generation 2"):
        later.sync()
    later = Generations(backend, repo.keys, repo.config.repo_id, state)
    later.strict = False
    later.sync()
    assert [f.kind for f in later.findings] == ["generation_rollback"]
