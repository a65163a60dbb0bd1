"""One damaged snapshot file never stops the rest (issue 16, first part).

A byte flipped in one snapshot file, seen by a second machine (an empty cache, or none):
listings show the others and warn (exit 3), ``latest`` and backup's parent are the
newest readable snapshots, ``forget ID`` removes the damaged file (``--dry-run`` first),
prune refuses and names the way out, and after the forget everything is clean again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cas.crypto import BlobType
from cas.repo import RepoOptions, layout, open_repository, open_storage
from cas.walker import load_tree
from tests.support.cli import Result, run_cas

PASSWORD_BYTES = b"test-password"


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _snapshot_ids(repo: Path, *extra: str) -> list[str]:
    r = run_cas("-r", repo, "--json", *extra, "snapshots")
    assert r.code in (0, 3), r.err
    return [d["id"] for d in r.json()["snapshots"]]


@pytest.fixture(scope="module")
def three_snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A repository of three snapshots of ``src`` (tests use copies of it)."""
    root = tmp_path_factory.mktemp("three")
    src, repo = root / "src", root / "repo"
    src.mkdir()
    assert run_cas("-r", repo, "init").code == 0
    for i in range(3):
        (src / f"file{i}").write_bytes(os.urandom(5000 + i))
        r = run_cas("-r", repo, "backup", src)
        assert r.code == 0, r.err
    ids = _snapshot_ids(repo)
    assert len(ids) == 3
    return src, repo, ids


@pytest.fixture(params=["empty-cache", "no-cache"])
def damaged(
    request: pytest.FixtureRequest, tmp_path: Path, three_snapshots: tuple[Path, Path, list[str]]
) -> tuple[Path, Path, list[str], str]:
    """A copy of ``three_snapshots`` whose newest snapshot file is damaged (its ``src``
    is the one backed up: to be read, not changed)."""
    src, template, ids = three_snapshots
    repo = tmp_path / "repo"
    shutil.copytree(template, repo)
    _flip_last_byte(repo / "snapshots" / ids[-1])
    # The second-machine case: a cache that never saw the good copy (a warm cache keeps
    # serving the verified original, which is right), or no cache at all.
    if request.param == "no-cache":
        return src, repo, ids, "--no-cache"
    return src, repo, ids, f"--cache-dir {tmp_path / 'other-machine-cache'}"


def _cas(repo: Path, flags: str, *args: str | Path) -> Result:
    return run_cas("-r", repo, *(flags.split() if flags else ()), *args)


@pytest.mark.damaged_repo_ok("a snapshot file damaged on purpose (the damaged fixture)")
def test_listings_show_the_others_and_warn(damaged: tuple[Path, Path, list[str], str]) -> None:
    _, repo, ids, flags = damaged
    r = _cas(repo, flags, "--json", "snapshots")
    assert r.code == 3, r.err
    assert [d["id"] for d in r.json()["snapshots"]] == ids[:2]
    assert f"snapshot {ids[2][:8]} skipped" in r.err
    assert f"cas forget {ids[2][:8]}" in r.err
    assert "Traceback" not in r.err
    for args in (("stats",), ("--json", "stats"), ("tag", "--add", "t")):
        r = _cas(repo, flags, *args)
        assert r.code == 3, (args, r.err)
        assert f"snapshot {ids[2][:8]} skipped" in r.err


@pytest.mark.damaged_repo_ok("a snapshot file damaged on purpose (the damaged fixture)")
def test_latest_and_backup_parent_are_the_newest_readable(
    damaged: tuple[Path, Path, list[str], str], tmp_path: Path
) -> None:
    src, repo, ids, flags = damaged
    target = tmp_path / "restored"
    r = _cas(repo, flags, "restore", "latest", "--target", target)
    assert r.code == 3, r.err
    restored = target / src.relative_to("/")
    assert sorted(p.name for p in restored.iterdir()) == ["file0", "file1"]  # the second
    r = _cas(repo, flags, "--json", "backup", src)
    assert r.code == 3, r.err
    new = r.json()
    assert new["parent"] == ids[1]
    assert any(ids[2][:8] in w for w in new["warnings"])


def test_forget_removes_the_damaged_file_and_all_is_clean_again(
    damaged: tuple[Path, Path, list[str], str], tmp_path: Path
) -> None:
    src, repo, ids, flags = damaged
    r = _cas(repo, flags, "prune")
    assert r.code != 0 and f"cas forget {ids[2][:8]}" in r.err, r.err
    dry = _cas(repo, flags, "--json", "forget", ids[2][:8], "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.json()["damaged"] == [ids[2]]
    assert (repo / "snapshots" / ids[2]).exists()
    human = _cas(repo, flags, "forget", ids[2][:8], "--dry-run")
    assert f"would remove damaged snapshot {ids[2][:8]}" in human.out
    real = _cas(repo, flags, "forget", ids[2])
    assert real.code == 0, real.err
    assert not (repo / "snapshots" / ids[2]).exists()
    r = _cas(repo, flags, "snapshots")
    assert r.code == 0 and "skipped" not in r.err, r.err
    assert _cas(repo, flags, "prune").code == 0
    r = _cas(repo, flags, "check", "--read-data")
    assert r.code == 0, r.out + r.err
    target = tmp_path / "again"
    assert _cas(repo, flags, "restore", ids[1][:8], "--target", target).code == 0
    restored = target / src.relative_to("/")
    assert sorted(p.name for p in restored.iterdir()) == ["file0", "file1"]
    for name in ("file0", "file1"):
        assert (restored / name).read_bytes() == (src / name).read_bytes()


@pytest.mark.parametrize("cache", ["empty-cache", "no-cache"])
@pytest.mark.damaged_repo_ok("a tree blob damaged on purpose")
def test_a_damaged_tree_loses_one_directory_not_its_pack(tmp_path: Path, cache: str) -> None:
    """Trees share packs; a flipped byte in one tree blob fails the whole pack's hash, but
    only that tree is lost: the others are read from their own ranges."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
        (src / d / "f").write_bytes(os.urandom(3000))
    assert run_cas("-r", repo, "init").code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    r = open_repository(open_storage(str(repo), RepoOptions(cache=False)), PASSWORD_BYTES)
    tree = r.load_snapshot(r.find_snapshot("latest")[0]).tree
    for part in src.parts[1:]:
        tree = next(n.subtree for n in load_tree(r, tree) if n.name == part.encode())
    b = next(n.subtree for n in load_tree(r, tree) if n.name == b"b")
    assert b is not None
    loc = r.locate(b)
    r.close()
    pack = repo / layout.pack_name(loc.pack_id)
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    flags = "--no-cache" if cache == "no-cache" else f"--cache-dir {tmp_path / 'fresh-cache'}"
    target = tmp_path / "out"
    res = _cas(repo, flags, "restore", "latest", "--target", target)
    assert res.code == 1 and "src/b: not restored" in res.err, res.err
    restored = target / src.relative_to("/")
    for d in ("a", "c"):
        assert (restored / d / "f").read_bytes() == (src / d / "f").read_bytes()
    assert not (restored / "b" / "f").exists()


def test_a_damaged_key_file_leaves_the_others_usable(tmp_path: Path) -> None:
    repo, other = tmp_path / "repo", tmp_path / "other-password"
    other.write_text("second password\n")
    assert run_cas("-r", repo, "init").code == 0
    assert run_cas("-r", repo, "key", "add", "--new-password-file", other).code == 0
    keys = run_cas("-r", repo, "--json", "key", "list").json()["keys"]
    damaged = next(k["id"] for k in keys if not k["current"])
    _flip_last_byte(repo / "keys" / damaged)
    r = run_cas("-r", repo, "--no-cache", "--json", "key", "list")  # a warm cache has it whole
    assert r.code == 3, r.err
    assert [k["id"] for k in r.json()["keys"]] == [k["id"] for k in keys if k["current"]]
    assert f"key file {damaged[:8]} skipped" in r.err and "cas key remove" in r.err
    assert run_cas("-r", repo, "--no-cache", "snapshots").code == 0  # the good key opens it
    assert run_cas("-r", repo, "--no-cache", "key", "remove", damaged[:8]).code == 0
    assert not (repo / "keys" / damaged).exists()
    assert run_cas("-r", repo, "--no-cache", "key", "list").code == 0


def test_repair_snapshots_removes_a_damaged_snapshot_file(
    damaged: tuple[Path, Path, list[str], str],
) -> None:
    _, repo, ids, flags = damaged
    packs_before = sorted(p.name for p in (repo / "data").rglob("*") if p.is_file())
    dry = _cas(repo, flags, "--json", "repair", "snapshots", "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.json()["removed_damaged"] == [ids[2]] and dry.json()["dry_run"]
    assert (repo / "snapshots" / ids[2]).exists()
    human = _cas(repo, flags, "repair", "snapshots", "-n")
    assert f"would remove damaged snapshot {ids[2][:8]}" in human.out, human.out
    real = _cas(repo, flags, "repair", "snapshots")
    assert real.code == 0, real.err
    assert f"removed damaged snapshot {ids[2][:8]}" in real.out
    assert not (repo / "snapshots" / ids[2]).exists()
    assert sorted(p.name for p in (repo / "data").rglob("*") if p.is_file()) == packs_before
    r = _cas(repo, flags, "--json", "snapshots")
    assert r.code == 0 and [d["id"] for d in r.json()["snapshots"]] == ids[:2], r.err


@pytest.mark.damaged_repo_ok(
    "a data pack deleted; repair snapshots without --forget keeps the damaged original"
)
def test_repair_snapshots_dry_run_writes_nothing(tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(300_000))
    assert run_cas("-r", repo, "init").code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    data_packs = [
        p for p in (repo / "data").rglob("*") if p.is_file() and p.stat().st_size > 250_000
    ]
    assert len(data_packs) == 1
    data_packs[0].unlink()  # the file's data is lost
    assert run_cas("-r", repo, "--no-cache", "repair", "index").code == 0
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    dry = run_cas("-r", repo, "--no-cache", "--json", "repair", "snapshots", "--dry-run")
    assert dry.code == 0, dry.err
    doc = dry.json()
    assert len(doc["snapshots_rewritten"]) == 1 and doc["damaged_paths"], doc
    after = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert after == before
    real = run_cas("-r", repo, "--no-cache", "--json", "repair", "snapshots")
    assert real.code == 0 and len(real.json()["snapshots_rewritten"]) == 1, real.err


def test_repair_packs_then_a_backup_heals_a_damaged_data_pack(tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    for i in range(4):
        (src / f"file{i}").write_bytes(os.urandom(400_000))
    assert run_cas("-r", repo, "init").code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    pack = max(
        (p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    check = run_cas("-r", repo, "--no-cache", "--json", "check", "--read-data")
    assert check.code == 1
    kinds = {f["kind"] for f in check.json()["findings"]}
    assert "pack_damaged" in kinds, kinds
    damaged = next(f for f in check.json()["findings"] if f["kind"] == "pack_damaged")
    assert damaged["next"].startswith(f"cas repair packs {pack.name[:8]}")
    human = run_cas("-r", repo, "--no-cache", "check", "--read-data")
    assert f"next: cas repair packs {pack.name[:8]}" in human.out

    dry_ids = run_cas("-r", repo, "repair", "packs", "zz")
    assert dry_ids.code == 2 and "matches 0 packs" in dry_ids.err
    r = run_cas("-r", repo, "--no-cache", "--json", "repair", "packs", pack.name[:12])
    assert r.code == 0, r.err
    doc = r.json()
    assert (
        doc["packs"] == [pack.name] and len(doc["blobs_lost"]) >= 1 and doc["blobs_salvaged"] >= 1
    )
    assert not pack.exists()
    assert run_cas("-r", repo, "--no-cache", "backup", src).code == 0  # stores the lost chunk again
    check = run_cas("-r", repo, "--no-cache", "check", "--read-data")
    assert check.code == 0, check.out + check.err
    for sid in [d["id"] for d in run_cas("-r", repo, "--json", "snapshots").json()["snapshots"]]:
        target = tmp_path / f"out-{sid[:8]}"
        assert run_cas("-r", repo, "--no-cache", "restore", sid, "--target", target).code == 0
        for i in range(4):
            restored = target / src.relative_to("/") / f"file{i}"
            assert restored.read_bytes() == (src / f"file{i}").read_bytes()


def test_every_finding_kind_names_the_next_command() -> None:
    """Each kind's hint exists, and every ``cas ...`` in it is a real command and
    subcommand; a damaged blob's hint names its pack, not the blob."""
    import re

    import click

    from cas.check.findings import KINDS, NEXT, Finding
    from cas.cli.main import cli

    assert set(NEXT) == set(KINDS)
    pack, blob = bytes.fromhex("cd" * 32), "ef" * 32
    for kind in KINDS:
        step = Finding(kind, f"blob:{blob}", "m", pack=pack).next_step
        assert step and "{" not in step, (kind, step)
        commands = re.findall(r"\bcas ((?:[a-z][a-z-]* ?)+)", step)
        if kind != "unexpected_object":
            assert commands, (kind, step)
        for words in commands:
            group: click.Command = cli
            for word in words.split():
                if not isinstance(group, click.Group):
                    break  # an argument of a command
                assert word in group.commands, (kind, step, word)
                group = group.commands[word]
        if "repair packs" in step:
            assert "repair packs cdcdcdcd" in step, (kind, step)
        if "docs/" in step:
            assert (Path(__file__).parent.parent / re.findall(r"docs/\S+\.md", step)[0]).exists()
        options = re.findall(r"cas [a-z ]+ (--[a-z-]+)", step)
        for option in options:
            name = re.findall(r"cas ([a-z ]+) --", step)[0].split()
            command: click.Command = cli
            for word in name:
                if isinstance(command, click.Group) and word in command.commands:
                    command = command.commands[word]
            assert any(option in p.opts for p in command.params), (kind, step, option)


def test_check_reports_a_damaged_copy_of_a_blob_stored_twice_as_a_warning(
    tmp_path: Path,
) -> None:
    """The first copy of a blob damaged, the second intact: nothing is lost, so check names
    the damaged copy as a warning (and its pack as damaged), never the files as lost."""
    from cas.backend.local import LocalBackend
    from tests.support.damaged import duplicates

    d = duplicates(LocalBackend(tmp_path / "repo"))
    first_blob = bytes.fromhex(d.names["first_blob"].split(":")[1])
    repo = d.open()
    loc = repo.locate(first_blob)
    repo.close()
    pack = tmp_path / "repo" / d.names["data_pack"]
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    r = run_cas("-r", tmp_path / "repo", "--no-cache", "--json", "check", "--read-data")
    findings = r.json()["findings"]
    kinds = {f["kind"]: f for f in findings}
    assert "blob_damaged" not in kinds and "blob_missing" not in kinds, findings
    copy = kinds["blob_copy_damaged"]
    assert copy["severity"] == "warning" and copy["affected"] == []
    assert copy["object"] == f"blob:{first_blob.hex()}"
    short_dup = d.names["dup_pack"].rsplit("/", 1)[1][:8]
    assert f"the copy in pack {short_dup} is intact" in copy["message"]
    assert copy["next"].startswith(f"cas repair packs {pack.name[:8]}")
    assert kinds["pack_damaged"]["object"] == d.names["data_pack"]
    assert "intact copies in other packs" in kinds["pack_damaged"]["message"]
    # repair packs drops the damaged copy and loses nothing
    r = run_cas("-r", tmp_path / "repo", "--no-cache", "--json", "repair", "packs", pack.name)
    assert r.code == 0, r.err
    assert r.json()["blobs_lost"] == [] and r.json()["blobs_elsewhere"] == [
        f"data:{first_blob.hex()}"
    ]
    r = run_cas("-r", tmp_path / "repo", "--no-cache", "--json", "check", "--read-data")
    assert {f["severity"] for f in r.json()["findings"]} <= {"warning"}, r.out
    target = tmp_path / "out"
    r = run_cas("-r", tmp_path / "repo", "--no-cache", "restore", "latest", "--target", target)
    assert r.code == 0, r.err
    for name, content in d.files.items():
        assert (target / name.decode()).read_bytes() == content


@pytest.mark.damaged_repo_ok("the first copy of a blob stored twice is damaged")
def test_a_blob_stored_twice_is_read_from_its_other_copy(tmp_path: Path) -> None:
    """The index keeps a blob's first location; when that copy is damaged, restore (CLI,
    ranged reads) and the library read the copy in the other pack."""
    from cas.backend.local import LocalBackend
    from tests.support.damaged import duplicates

    d = duplicates(LocalBackend(tmp_path / "repo"))
    first_blob = bytes.fromhex(d.names["first_blob"].split(":")[1])
    repo = d.open()
    loc = repo.locate(first_blob)
    assert layout.pack_name(loc.pack_id) == d.names["data_pack"]
    # Some file's chunk (blobs are placed in packs at random, so not always file0's first)
    plain = repo.load_blob(BlobType.DATA, first_blob)
    assert any(plain in content for content in d.files.values())
    pack = tmp_path / "repo" / d.names["data_pack"]
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    repo.close()
    fresh = d.open()
    assert fresh.load_blob(BlobType.DATA, first_blob) == plain
    fresh.close()
    target = tmp_path / "out"
    r = run_cas(
        "-r", tmp_path / "repo", "--no-cache", "restore", d.snapshot.hex(), "--target", target
    )
    assert r.code == 0, r.err
    for name, content in d.files.items():
        assert (target / name.decode()).read_bytes() == content
    # copy: the target gets the intact copy, and restores from it exact
    other, env = tmp_path / "other", {"CAS_OTHER_PASSWORD": "test-password"}
    assert run_cas("-r", other, "init", "--copy-keys-from", tmp_path / "repo", env=env).code == 0
    r = run_cas("-r", tmp_path / "repo", "--no-cache", "copy", "--to", other, env=env)
    assert r.code == 0, r.err
    copied = tmp_path / "copied"
    r = run_cas("-r", other, "--no-cache", "restore", "latest", "--target", copied)
    assert r.code == 0, r.err
    for name, content in d.files.items():
        assert (copied / name.decode()).read_bytes() == content
    # mount: the file reads back whole through FUSE
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError:
        return  # no FUSE here (tests/test_mount.py says why)
    from tests.test_mount import Mount

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(tmp_path / "repo", mnt, "--no-cache")
    try:
        (shown,) = os.listdir(mnt / "ids")
        for name, content in d.files.items():
            assert (mnt / "ids" / shown / name.decode()).read_bytes() == content
        assert m.stop() == 0, m.stderr()
    finally:
        m.close()


def _two_snapshots(tmp_path: Path) -> tuple[Path, Path]:
    """``src`` backed up twice (a second file added in between) into ``repo``."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(200_000))
    assert run_cas("-r", repo, "init").code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    (src / "b").write_bytes(os.urandom(200_000))
    assert run_cas("-r", repo, "backup", src).code == 0
    return src, repo


def _restores_exactly(repo: Path, src: Path, tmp_path: Path) -> None:
    for d in run_cas("-r", repo, "--no-cache", "--json", "snapshots").json()["snapshots"]:
        target = tmp_path / f"check-{d['id'][:8]}"
        assert run_cas("-r", repo, "--no-cache", "restore", d["id"], "--target", target).code == 0
        restored = target / src.relative_to("/")
        for f in restored.iterdir():
            assert f.read_bytes() == (src / f.name).read_bytes()


def test_a_lost_data_pack_recovered_as_check_says(tmp_path: Path) -> None:
    src, repo = _two_snapshots(tmp_path)
    packs = sorted((p for p in (repo / "data").rglob("*") if p.is_file()), key=os.path.getsize)
    packs[-1].unlink()  # the largest: a data pack
    check = run_cas("-r", repo, "--no-cache", "--json", "check")
    assert check.code == 1
    missing = next(f for f in check.json()["findings"] if f["kind"] == "pack_missing")
    assert missing["next"].startswith("cas repair index, back up the same paths again")
    assert run_cas("-r", repo, "--no-cache", "snapshots").code == 0  # listing unaffected
    assert run_cas("-r", repo, "--no-cache", "repair", "index").code == 0
    assert run_cas("-r", repo, "--no-cache", "backup", src).code == 0
    r = run_cas("-r", repo, "--no-cache", "check", "--read-data")
    assert r.code == 0, r.out + r.err
    _restores_exactly(repo, src, tmp_path)


def test_a_damaged_index_file_is_skipped_with_a_warning_then_replaced(tmp_path: Path) -> None:
    src, repo = _two_snapshots(tmp_path)
    index = sorted((repo / "index").iterdir())[0]
    _flip_last_byte(index)
    r = run_cas("-r", repo, "--no-cache", "--json", "backup", src)
    assert r.code == 3, r.err
    assert f"index file {index.name[:8]} skipped" in r.err and "cas repair index" in r.err
    check = run_cas("-r", repo, "--no-cache", "--json", "check")
    damaged = next(
        f for f in check.json()["findings"] if f["kind"] in ("index_damaged", "name_mismatch")
    )
    assert "cas repair index" in damaged["next"]
    prune = run_cas("-r", repo, "--no-cache", "prune")
    assert prune.code == 1 and f"index file {index.name[:8]} cannot be read" in prune.err
    assert "'cas repair index' replaces it" in prune.err and "Traceback" not in prune.err
    assert run_cas("-r", repo, "--no-cache", "repair", "index").code == 0
    r = run_cas("-r", repo, "--no-cache", "check", "--read-data")
    # the backup stored again what the damaged index hid: duplicates, which prune removes
    assert r.code == 0 and "no errors" in r.out, r.out
    assert run_cas("-r", repo, "--no-cache", "prune").code == 0
    r = run_cas("-r", repo, "--no-cache", "check", "--read-data")
    assert r.code == 0 and "no errors found" in r.out, r.out
    _restores_exactly(repo, src, tmp_path)
