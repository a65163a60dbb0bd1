"""Write-only keys (issue 19 Deliver 1, spec §4.4): a client that backs up and reads nothing.

``cas key add --write-only`` (with a full key) stores a key file of type
``write-only``.  With it ``backup`` works, incrementally too: it compares with
its own last backup of the same paths, kept in the client state (the files
cache), since it cannot open the trees it stored.  Everything it stores is
sealed to the repository's public key (scheme 1), and every command that
reads or removes what is stored refuses it with one line and exit 14 before
it locks or writes anything.  A full key restores its backups bit for bit
and ``check --read-data`` passes; so does the independent reader, which
reads the write-only key file from the spec text alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cas import crypto
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.errors import EXIT_WRITE_ONLY, IntegrityError, UnsupportedVersion, WrongPassword
from cas.format import config as configfmt
from cas.repo import layout
from cas.repo.connect import init_repository, open_repository
from tests.independent.compare import assert_snapshot_is, read_local, read_s3, s3_store
from tests.independent.format import x25519_keys
from tests.independent.repository import LocalStore, Store, open_write_only_key
from tests.support.backends import S3Target
from tests.support.cli import Result, finish, run_cas, start_cas
from tests.support.trees import compare_trees
from tests.test_cli_json import check_lines

FULL = "test-password"
WRITE_ONLY = "write-only-password"


def _tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello\n" * 100)
    (root / "d" / "b.bin").write_bytes(os.urandom(70_000))
    (root / "d" / "c.txt").write_bytes(b"c" * 5000)
    (root / "empty").mkdir()
    os.symlink("a.txt", root / "link")


def _local_listing(repo: Path) -> Callable[[], dict[str, str]]:
    def listing() -> dict[str, str]:
        out = {}
        for p in sorted(repo.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(repo))] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out

    return listing


def _s3_listing(target: S3Target) -> Callable[[], dict[str, str]]:
    def listing() -> dict[str, str]:
        client = target.client()
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=target.bucket, Prefix=target.prefix + "/"
        ):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["ETag"]
        return out

    return listing


class Client:
    """``cas`` against one repository, with a full or the write-only password."""

    def __init__(self, location: str, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.location, self.env, self.args = location, env, args

    def run(self, *args: str | Path, password: str = FULL) -> Result:
        result = run_cas("-r", self.location, *self.args, *args, password=password, env=self.env)
        assert "Traceback" not in result.err, result.err
        return result

    def wo(self, *args: str | Path) -> Result:
        return self.run(*args, password=WRITE_ONLY)

    def refused(self, commands: list[tuple[str | Path, ...]]) -> None:
        """Each command with the write-only key fails in one line with exit 14 (run side
        by side: they are independent, and each fails before it locks)."""
        procs = [
            start_cas("-r", self.location, *self.args, *a, password=WRITE_ONLY, env=self.env)
            for a in commands
        ]
        for args, proc in zip(commands, procs, strict=True):
            result = finish(proc)
            assert "Traceback" not in result.err, (args, result.err)
            assert result.code == EXIT_WRITE_ONLY, (args, result.code, result.out, result.err)
            lines = result.err.strip().splitlines()
            assert len(lines) == 1 and "the key is write-only" in lines[0], (args, result.err)


def _lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.out.splitlines()]


def _round_trip(
    c: Client,
    src: Path,
    tmp_path: Path,
    listing: Callable[[], dict[str, str]],
    read_paths: Callable[[str, Path], list[tuple[str | Path, ...]]],
    first_backup_args: tuple[str, ...] = (),
) -> tuple[str, str]:
    """Add a write-only key, back up twice with it (the second through the files cache),
    and restore both with the full key; returns the two snapshot IDs."""
    assert c.run("init").code == 0
    pw = tmp_path / "wo-password"
    pw.write_text(WRITE_ONLY)
    added = c.run("--json", "key", "add", "--write-only", "--new-password-file", pw)
    assert added.code == 0, added.err
    assert added.json()["type"] == "write-only"
    check_lines("key add", _lines(added))

    first = c.wo("--json", "backup", src, *first_backup_args)
    assert first.code == 0, first.err
    check_lines("backup", _lines(first))
    one = first.json()
    assert one["parent"] is None and one["summary"]["files_new"] == 3

    (src / "a.txt").write_bytes(b"changed\n")
    (src / "d" / "new.txt").write_bytes(b"new file\n")
    (src / "d" / "c.txt").unlink()
    second = c.wo("--json", "backup", src)
    assert second.code == 0, second.err
    two = second.json()
    s = two["summary"]
    # Its own last backup is the parent: the unchanged file is not read again.
    assert two["parent"] == one["id"]
    assert (s["files_new"], s["files_changed"], s["files_unchanged"]) == (1, 1, 1), s
    assert s["bytes_read"] == len(b"changed\n") + len(b"new file\n")

    listed = c.wo("--json", "snapshots")
    assert listed.code == 0, listed.err
    check_lines("snapshots", _lines(listed))
    assert sorted(listed.json()["sealed"]) == sorted([one["id"], two["id"]])

    # Every read path with the write-only key fails in one line, writing nothing.
    before = listing()
    c.refused(read_paths(two["id"], tmp_path))
    assert listing() == before

    # The full key reads everything the write-only key wrote.
    target = tmp_path / "restored"
    restored = c.run("restore", "latest", "--target", target)
    assert restored.code == 0, restored.err
    assert compare_trees(src, target / src.relative_to(src.anchor)) == []
    checked = c.run("--json", "check", "--read-data")
    assert checked.code == 0, checked.out + checked.err
    return one["id"], two["id"]


def _every_read_path(sid: str, tmp_path: Path) -> list[tuple[str | Path, ...]]:
    other = tmp_path / "other-repo"
    (tmp_path / "mnt").mkdir(exist_ok=True)
    return [
        ("restore", "latest", "--target", tmp_path / "never"),
        ("forget", "--keep-last", "1"),
        ("prune",),
        ("check", "--read-data"),
        ("dump", f"{sid}:/", "--target", tmp_path / "never.tar"),
        ("ls", "latest"),
        ("find", "*"),
        ("diff", sid, "latest"),
        ("cat", "snapshot", sid),
        ("mount", tmp_path / "mnt"),
        ("check",),
        ("key", "add", "--new-password-file", tmp_path / "wo-password"),
        ("key", "remove", "00"),
        ("copy", "--to", other),
        ("stats",),
        ("snapshots", "--host", "h"),
        ("snapshots", "--latest", "1"),
        ("snapshots", "--group-by", "tags"),
        ("tag", "--add", "x", sid),
        ("repair", "index"),
        ("unlock",),
        ("trust", "--accept"),
    ]


def _some_read_paths(sid: str, tmp_path: Path) -> list[tuple[str | Path, ...]]:
    """On S3 (the refusal comes before any storage request of the command itself)."""
    return _every_read_path(sid, tmp_path)[:5]


def test_write_only_backups_restore_exactly_and_every_read_path_refuses(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    repo = tmp_path / "repo"
    c = Client(str(repo), {})
    # The first backup through a worker process (which gets the write-only key).
    one, two = _round_trip(
        c, src, tmp_path, _local_listing(repo), _every_read_path, ("--workers", "1")
    )

    # What the write-only key stored is sealed to the public key (scheme 1, §5.5): the
    # snapshots, and every data and tree blob (all of them are its own here).
    for sid in (one, two):
        assert (repo / layout.snapshot_name(bytes.fromhex(sid))).read_bytes()[0] == 1
    full = open_repository(LocalBackend(repo), FULL.encode())
    packs = full.pack_sizes()
    assert packs
    assert isinstance(full.keys, crypto.MasterKeys)
    for pid in packs:
        for e in full.read_pack_header(pid):
            sealed = full.read_pack_range(pid, e.offset, e.length)
            assert sealed[0] == 1, e
            # A reader of scheme 0 only (cas before issue 19) refuses it as newer (§4.4).
            ad = crypto.blob_ad(e.type, e.blob_id)
            with pytest.raises(UnsupportedVersion, match="upgrade cas"):
                crypto.open_sealed(full.keys.data_key, sealed, ad, "blob")
    full.close()
    # cat of what is not sealed under the data key works: key files, the config it carries.
    assert c.wo("--json", "cat", "config").code == 0
    # The independent reader: the full key reads both snapshots, the write-only key
    # file opens from the spec text and carries this repository's config and public key.
    view = read_local(repo)
    assert_snapshot_is(view, two, src)
    _independent_write_only_key(LocalStore(repo), view.config.repo_id, view.keys.data)

    # A damaged files cache costs reading every file again, never a wrong backup.
    for f in (Path(os.environ["XDG_STATE_HOME"]) / "cas" / "files").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00damaged")
    (src / "a.txt").write_bytes(b"again\n")
    third = c.wo("--json", "backup", src)
    assert third.code == 0, third.err
    assert third.json()["summary"]["files_unchanged"] == 0
    assert third.json()["parent"] is None
    assert_snapshot_is(read_local(repo), third.json()["id"], src)


def _independent_write_only_key(store: Store, repo_id: bytes, data_key: bytes) -> None:
    keys, config = open_write_only_key(store, WRITE_ONLY.encode())
    assert config.repo_id == repo_id
    assert keys.public == x25519_keys(data_key)[1]


@pytest.mark.s3
def test_write_only_round_trip_on_s3(s3_any: S3Target, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env["CAS_CACHE_DIR"] = str(tmp_path / "cache")
    location = f"s3://{s3_any.bucket}/{s3_any.prefix}"
    c = Client(location, env, ("--s3-endpoint", s3_any.endpoint, "--s3-path-style"))
    _, two = _round_trip(c, src, tmp_path, _s3_listing(s3_any), _some_read_paths)
    view = read_s3(s3_any.endpoint, s3_any.bucket, s3_any.prefix)
    assert_snapshot_is(view, two, src)
    store = s3_store(s3_any.endpoint, s3_any.bucket, s3_any.prefix)
    _independent_write_only_key(store, view.config.repo_id, view.keys.data)


def test_a_write_only_backup_is_judged_against_its_own_history(tmp_path: Path) -> None:
    """Anomaly warnings with a write-only key: the parent's files and the history come
    from the files cache (docs/anomalies.md)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"doc{i}.txt").write_bytes(b"text %d\n" % i * 50)
    c = Client(str(tmp_path / "repo"), {"CAS_ANOMALY_THRESHOLDS": "min-files=5"})
    assert c.run("init").code == 0
    pw = tmp_path / "pw"
    pw.write_text(WRITE_ONLY)
    assert c.run("key", "add", "--write-only", "--new-password-file", pw).code == 0
    assert c.wo("backup", src).code == 0
    (src / "doc0.txt").write_bytes(b"edited\n")
    normal = c.wo("--json", "backup", src)
    assert normal.code == 0 and normal.json()["anomalies"] == [], normal.err
    for i in range(8):  # ransomware: rewritten with random bytes and renamed
        (src / f"doc{i}.txt").unlink()
        (src / f"doc{i}.txt.locked").write_bytes(os.urandom(600))
    flagged = c.wo("--json", "backup", src)
    assert flagged.code == 3, flagged.err
    kinds = {a["kind"] for a in flagged.json()["anomalies"]}
    assert {"removed", "renamed"} <= kinds, flagged.json()["anomalies"]
    check_lines("backup", _lines(flagged))


def test_a_write_only_key_opens_only_its_repository_and_adds_no_keys() -> None:
    kdf = crypto.KdfParams.for_tests(opslimit=1, memlimit=8 << 20)
    a, b = MemoryBackend(), MemoryBackend()
    full = init_repository(a, b"full", kdf=kdf)
    init_repository(b, b"other", kdf=kdf)
    kid = full.add_key(b"wo", kdf, write_only=True)
    wo = open_repository(a, b"wo")
    assert isinstance(wo.keys, crypto.WriteOnlyKey) and wo.config == full.config
    with pytest.raises(crypto.KeyIsWriteOnly):
        wo.add_key(b"more", kdf)
    with pytest.raises(crypto.KeyIsWriteOnly):
        wo.add_key(b"more", kdf, write_only=True)
    # Its key file copied to another repository opens nothing there (the config's hash).
    name = layout.key_name(kid)
    b.write(name, a.read(name))
    with pytest.raises((IntegrityError, WrongPassword)):
        open_repository(b, b"wo")
    # The config it carries is trusted only for the config it hashes.
    assert isinstance(wo.keys, crypto.WriteOnlyKey)
    with pytest.raises(IntegrityError, match="write-only key"):
        configfmt.decode_config_for_write_only(
            b.read(layout.CONFIG), wo.keys.config, wo.keys.config_sha256
        )
