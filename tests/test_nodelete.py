"""Storage that refuses deletes (issue 19, Deliver 2): a backup-only identity.

Backup, check, restore, copy and mount work with credentials that may put, get
and list but not delete: the lock file they cannot remove is left to go stale
(a warning, exit code unchanged, ``not_deleted`` in ``--json``), other clients
treat it as stale on time (spec §13.3), and prune, forget, repair and tag fail
with one line before doing any work.  A full-rights prune then cleans up.

The real servers: SeaweedFS, whose bucket policy denies s3:DeleteObject to one
identity (its identities cannot tell writing from deleting), and moto behind a
loopback proxy that answers 403 AccessDenied to every DELETE.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

import cas.repo
from cas import crypto
from cas.backend import S3Options
from cas.backend.faulty import Fault, FaultyBackend
from cas.backend.memory import MemoryBackend
from cas.backend.s3 import S3Backend, new_session
from cas.errors import AccessDenied, BackendError, LockedError
from cas.repo import RepoOptions, Repository, layout, locks
from tests.independent.compare import PASSWORD, assert_snapshot_is
from tests.independent.repository import S3Store, read_repository
from tests.support import sweep
from tests.support.cli import Result, finish, run_cas, start_cas
from tests.support.s3proxy import CountingProxy
from tests.support.s3server import FAKE_AWS_ENV, enforce_iam, start_moto_server, stop_process
from tests.support.seaweed import WRITER_KEY, WRITER_SECRET, SeaweedServer
from tests.support.trees import compare_trees
from tests.test_cli_json import check_lines

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def _refusing() -> FaultyBackend:
    """A memory store whose every delete is refused, as S3 refuses a backup-only user."""
    store = FaultyBackend(MemoryBackend())
    store.create()
    store.add("delete", Fault(times=None, error=AccessDenied("DeleteObject: AccessDenied")))
    return store


def _names(backend: Any) -> set[str]:
    return {o.name for o in backend.list(layout.LOCKS)}


def test_a_lock_the_store_will_not_delete_is_left_behind_without_an_error() -> None:
    store, key = _refusing(), crypto.MasterKeys.generate().index_key
    lock = locks.acquire(store, key, exclusive=False, command="backup", clock=lambda: T0)
    name = lock.name
    lock.release()  # no error
    assert [n for n, _ in lock.left_behind] == [name]
    assert _names(store) == {name}
    lock.release()  # a second release does not try again
    assert store.calls["delete"] == 1


def test_other_hosts_treat_a_left_behind_lock_as_stale_on_time() -> None:
    store, key = _refusing(), crypto.MasterKeys.generate().index_key
    me = locks.Identity("backup-host", "backup", 4242)
    with locks.acquire(
        store, key, exclusive=False, command="backup", clock=lambda: T0, identity=me
    ):
        pass
    trusted = locks.Identity("trusted-host", "admin", 1)

    def scan(at: int) -> list[bool]:
        entries = locks.list_locks(store, key, clock=lambda: at, hostname=trusted.hostname)
        return [e.stale for e in entries]

    assert scan(T0 + int(locks.STALE_AFTER * NS) - NS) == [False]
    assert scan(T0 + int(locks.STALE_AFTER * NS) + NS) == [True]
    # Before that an exclusive locker is refused; after it the file is ignored.
    with pytest.raises(Exception, match="held by backup@backup-host"):
        locks.acquire(
            store, key, exclusive=True, command="repair", clock=lambda: T0, identity=trusted
        )
    later = T0 + int(locks.STALE_AFTER * NS) + NS
    lock = locks.acquire(
        store, key, exclusive=True, command="repair", clock=lambda: later, identity=trusted
    )
    assert len(lock.stale_kept) == 1  # ignored; this store would not let it go either
    lock.release()


def test_a_command_that_must_delete_learns_it_before_taking_its_lock() -> None:
    store, key = _refusing(), crypto.MasterKeys.generate().index_key
    with pytest.raises(AccessDenied, match="refused to delete lock file"):
        locks.require_delete(store, key)
    # What the refusal leaves is a probe: it stops no prune and writes no snapshot.
    (left,) = locks.list_locks(store, key)
    assert (left.info.command, left.info.exclusive) == (locks.PROBE_COMMAND, False)
    ok = MemoryBackend()
    ok.create()
    locks.require_delete(ok, key)
    assert _names(ok) == set()


def test_a_transient_delete_failure_is_still_an_error_of_release() -> None:
    store = FaultyBackend(MemoryBackend())
    store.create()
    store.add("delete", Fault(times=None, error=BackendError("DeleteObject: 500")))
    key = crypto.MasterKeys.generate().index_key
    lock = locks.acquire(store, key, exclusive=False, command="backup")
    with pytest.raises(BackendError):
        lock.release()
    assert lock.left_behind == []


# -- real S3 servers ------------------------------------------------------------------


@dataclass
class NoDeleteSetup:
    """One repository, reached by a backup-only client and by a full-rights one."""

    name: str
    bucket: str
    prefix: str
    endpoint: str  # the store itself: what the full-rights client and the reader use
    limited_endpoint: str  # what the backup-only client uses
    limited_env: dict[str, str]
    cache: Path
    full_env: dict[str, str] = field(default_factory=lambda: dict(FAKE_AWS_ENV))

    def cas(
        self, *args: str | Path, full: bool = False, env: dict[str, str] | None = None
    ) -> Result:
        environment = dict(self.full_env if full else self.limited_env)
        environment["CAS_CACHE_DIR"] = str(self.cache / ("full" if full else "limited"))
        environment.update(env or {})
        endpoint = self.endpoint if full else self.limited_endpoint
        location = f"s3://{self.bucket}/{self.prefix}"
        result = run_cas(
            "-r", location, "--s3-endpoint", endpoint, "--s3-path-style", *args, env=environment
        )
        assert "Traceback" not in result.err, result.err
        return result

    def client(self) -> Any:
        """A boto3 client of the store with full rights."""
        return new_session(
            aws_access_key_id=self.full_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.full_env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        ).client("s3", endpoint_url=self.endpoint, config=Config(s3={"addressing_style": "path"}))

    def objects(self, under: str) -> set[str]:
        backend = S3Backend(self.bucket, self.prefix, client=self.client())
        try:
            return {o.name for o in backend.list(under)}
        finally:
            backend.close()


@pytest.fixture(scope="module")
def moto_iam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """A moto server of this module's own, enforcing IAM: an admin who may do anything
    and a backup client denied every delete (moto names some S3 actions its own way,
    ListObjectsV2 and HeadObject, so the client is allowed s3:* less the deletes)."""
    process, endpoint = start_moto_server(tmp_path_factory.mktemp("moto-iam") / "server.log")
    try:
        bucket_arns = [f"arn:aws:s3:::{MOTO_BUCKET}", f"arn:aws:s3:::{MOTO_BUCKET}/*"]
        keys = enforce_iam(
            endpoint,
            {
                "admin": _policy({"Effect": "Allow", "Action": "*", "Resource": "*"}),
                "backup-client": _policy(
                    {"Effect": "Allow", "Action": "s3:*", "Resource": bucket_arns},
                    {"Effect": "Deny", "Action": DELETES, "Resource": bucket_arns},
                ),
            },
        )
        env = {}
        for user, (key, secret) in keys.items():
            env[user] = {**FAKE_AWS_ENV, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        admin = new_session(
            aws_access_key_id=keys["admin"][0],
            aws_secret_access_key=keys["admin"][1],
            region_name="us-east-1",
        ).client("s3", endpoint_url=endpoint)
        admin.create_bucket(Bucket=MOTO_BUCKET)
        sweep.serve("moto-iam", admin, shared=(MOTO_BUCKET,))
        yield endpoint, env
    finally:
        sweep.unserve("moto-iam")
        stop_process(process)


MOTO_BUCKET = "cas-nodelete"
DELETES = ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:AbortMultipartUpload"]


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


@pytest.fixture(params=["seaweed-policy", "moto-iam", "moto-proxy"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NoDeleteSetup]:
    if request.param == "seaweed-policy":
        seaweed: SeaweedServer = request.getfixturevalue("seaweed_server")
        bucket = seaweed.new_bucket()
        seaweed.deny_deletes(bucket)
        env = {
            **FAKE_AWS_ENV,
            "AWS_ACCESS_KEY_ID": WRITER_KEY,
            "AWS_SECRET_ACCESS_KEY": WRITER_SECRET,
        }
        yield NoDeleteSetup(
            request.param, bucket, "repo", seaweed.endpoint, seaweed.endpoint, env, tmp_path
        )
        return
    if request.param == "moto-iam":
        endpoint, env = request.getfixturevalue("moto_iam")
        prefix = f"t-{uuid.uuid4().hex[:16]}/repo"
        yield NoDeleteSetup(
            request.param,
            MOTO_BUCKET,
            prefix,
            endpoint,
            endpoint,
            env["backup-client"],
            tmp_path,
            full_env=env["admin"],
        )
        return
    endpoint: str = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    proxy = CountingProxy(
        endpoint, fault=lambda method, _: (403, "AccessDenied") if method == "DELETE" else None
    )
    try:
        yield NoDeleteSetup(
            request.param, bucket, "repo", endpoint, proxy.endpoint, dict(FAKE_AWS_ENV), tmp_path
        )
    finally:
        proxy.close()


def _open_full(setup: NoDeleteSetup) -> Repository:
    """The repository, opened in this process with full rights (from the environment)."""
    return cas.repo.open(
        f"s3://{setup.bucket}/{setup.prefix}",
        lambda: b"test-password",
        RepoOptions(backend=(S3Options(endpoint=setup.endpoint, path_style=True),), cache=False),
    )


def repo_lock(repo: Repository, who: locks.Identity, at: int) -> locks.RepoLock:
    """An exclusive lock taken by ``who`` with the clock at ``at`` (ns)."""
    return locks.acquire(
        repo.backend,
        repo.keys.index,
        exclusive=True,
        command="repair",
        clock=lambda: at,
        identity=who,
    )


def _tree(root: Path) -> Path:
    for i in range(12):
        d = root / f"d{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(os.urandom(1000 + 5000 * i))
    (root / "d0" / "text.txt").write_text("hello\n" * 1000)
    return root


@pytest.mark.s3
def test_backup_check_restore_without_delete_rights_then_prune_cleans_up(
    setup: NoDeleteSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # for cas.repo.open in here
        monkeypatch.setenv(name, setup.full_env[name])
    src = _tree(tmp_path / "src")
    assert setup.cas("init", full=True).code == 0

    backup = setup.cas("--json", "backup", src)
    assert backup.code == 0, backup.err
    doc = json.loads(backup.out)
    left = doc["not_deleted"]
    assert [e["kind"] for e in left] == ["lock"], left
    assert left[0]["stale_at_ns"] > 0 and left[0]["stale_at"].endswith("Z")
    assert "warning: the storage refused to delete 1 lock file of this command" in backup.err
    assert doc["warnings"] == []
    assert left[0]["name"] in setup.objects(layout.LOCKS)
    check_lines("backup", [doc])  # docs/json.schema.json knows not_deleted
    # Seen from another host, the lock is live until STALE_AFTER after its time, then
    # ignored: an exclusive locker there is refused before and goes ahead after.
    repo = _open_full(setup)
    try:
        stale_at = left[0]["stale_at_ns"]
        trusted = locks.Identity("trusted-host", "admin", 1)
        with pytest.raises(LockedError):
            repo_lock(repo, trusted, stale_at - NS)
        repo_lock(repo, trusted, stale_at + NS).release()
    finally:
        repo.close()

    # Human output: the same warning, exit 0.
    again = setup.cas("backup", src)
    assert again.code == 0, again.err
    # (the trusted host removed the first backup's lock: it may delete)
    assert again.err.count("warning: ") == 1, again.err

    check = setup.cas("--json", "check", "--read-data")
    assert check.code == 0, check.out + check.err
    check_doc = json.loads(check.out)
    assert check_doc["summary"]["errors"] == 0
    check_lines("check", [check_doc])
    kinds = sorted(e["kind"] for e in check_doc["not_deleted"])
    # The second backup's lock is stale at once here (same host, its process ended).
    assert kinds == ["lock", "stale_lock"], check_doc["not_deleted"]
    assert "stale lock file of other processes" in check.err

    target = tmp_path / "restored"
    restore = setup.cas("--json", "restore", "latest", "--target", target)
    assert restore.code == 0, restore.err
    assert json.loads(restore.out)["not_deleted"]
    check_lines("restore", [json.loads(restore.out)])
    assert compare_trees(src, target / src.relative_to(src.anchor)) == []
    # Read by code written from the spec alone (tests/independent), with full rights.
    view = read_repository(S3Store(setup.client(), setup.bucket, setup.prefix), PASSWORD)
    assert_snapshot_is(view, doc["id"], src)

    # Commands that must delete stop at once, with one line, having changed nothing.
    before = setup.objects("snapshots") | setup.objects("index") | setup.objects("data")
    for args in (
        ["prune"],
        ["forget", "--keep-last", "1"],
        ["repair", "index"],
        ["tag", "--add", "x"],
    ):
        refused = setup.cas(*args)
        assert refused.code == 1, (args, refused.err)
        lines = refused.err.strip().splitlines()
        assert len(lines) == 1 and "refuses deletes to these credentials" in lines[0], lines
        assert "docs/deploy.md" in lines[0]
    assert setup.objects("snapshots") | setup.objects("index") | setup.objects("data") == before
    # The refusals left probes behind, never a prune lock (which would stop every prune
    # for 10 minutes when seen from another host).
    repo = _open_full(setup)
    try:
        commands = {e.info.command for e in locks.list_locks(repo.backend, repo.keys.index)}
    finally:
        repo.close()
    assert locks.PROBE_COMMAND in commands and "prune" not in commands, commands

    # A full-rights prune (here on the same host, where the leftovers' processes are
    # gone, so they are stale at once) removes every leftover lock.
    assert len(setup.objects(layout.LOCKS)) >= 3
    setup.cas("forget", "--keep-last", "1", full=True)
    prune = setup.cas("--json", "prune", full=True)
    assert prune.code == 0, prune.err
    assert "not_deleted" not in json.loads(prune.out)
    assert setup.objects(layout.LOCKS) == set()
    final = setup.cas("check", "--read-data", full=True)
    assert final.code == 0, final.out + final.err


def _mounted(mnt: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mnt) for line in f)


@pytest.mark.s3
def test_copy_and_mount_without_delete_rights(setup: NoDeleteSetup, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    assert setup.cas("init", full=True).code == 0
    assert setup.cas("backup", src).code == 0

    # copy: the source is the no-delete repository, the target a local one.
    target = tmp_path / "copy"
    location = f"s3://{setup.bucket}/{setup.prefix}"
    env = {**setup.limited_env, "CAS_OTHER_PASSWORD": "test-password"}
    init = run_cas(
        "-r", target, "init", "--copy-keys-from", location, "--s3-endpoint",
        setup.limited_endpoint, "--s3-path-style", env=env,
    )  # fmt: skip
    assert init.code == 0, init.err
    copy = setup.cas("--json", "copy", "--to", target, env={"CAS_OTHER_PASSWORD": "test-password"})
    assert copy.code == 0, copy.err
    doc = json.loads(copy.out)
    check_lines("copy", [doc])
    assert [e["kind"] for e in doc["not_deleted"]].count("lock") == 1, doc["not_deleted"]
    assert len(doc["snapshots_copied"]) == 1
    assert list((target / "locks").iterdir()) == []  # the target could delete its own

    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("no FUSE here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    environment = {**setup.limited_env, "CAS_CACHE_DIR": str(setup.cache / "limited")}
    proc = start_cas(
        "-r", location, "--s3-endpoint", setup.limited_endpoint, "--s3-path-style",
        "--json", "mount", mnt, env=environment,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60  # bounds a hang; not a timed assertion
        while not _mounted(mnt):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        latest = mnt / "snapshots" / "latest" / str(src).lstrip("/")
        assert (latest / "d0" / "text.txt").read_text() == "hello\n" * 1000
        proc.send_signal(signal.SIGTERM)
        result = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if _mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert result.code == 0, result.err
    summary = json.loads(result.out.splitlines()[-1])
    check_lines("mount", [json.loads(line) for line in result.out.splitlines()])
    assert "lock" in [e["kind"] for e in summary["not_deleted"]]
    assert "warning: the storage refused to delete" in result.err
