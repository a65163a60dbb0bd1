"""``cas ls``, ``find``, ``diff`` and ``dump`` for real: the cas command in a subprocess,
on the full-metadata tree, checked against the source with ``os.lstat``, GNU tar,
``zipfile`` and the comparison code of the restore tests (tests/support/trees.py)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Result, cas_env, run_cas
from tests.support.trees import (
    build_deep_tree,
    build_full_tree,
    compare_trees,
    remove_tree,
    unlock_tree,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the full tree needs root")


def json_lines(r: Result) -> list[dict[str, Any]]:
    """Every line of stdout as a JSON object (the output of ls, find and diff)."""
    assert r.code in (0, 3), r.err
    assert "Traceback" not in r.err
    return [json.loads(line) for line in r.out.splitlines()]


def listing(r: Result) -> list[dict[str, Any]]:
    """The lines of ``ls --json`` or ``find --json`` before their summary (the last line)."""
    *items, summary = json_lines(r)
    assert summary["message_type"] == "summary"
    return items


def raw_path(doc: dict[str, Any]) -> bytes:
    """The path of a JSON node object as bytes (``path_hex`` where it is not UTF-8)."""
    return bytes.fromhex(doc["path_hex"]) if "path_hex" in doc else doc["path"].encode()


def one_line_error(r: Result) -> str:
    """The only line of stderr, which must not hold a traceback."""
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    return lines[0]


def escaped(path: bytes) -> str:
    """How a path must show on one line: bytes that are not UTF-8 as \\xNN, control
    characters escaped, backslashes doubled (written here independently of cas)."""
    out = []
    text = path.decode("utf-8", "surrogateescape")
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            out.append("\\x%02x" % (ord(ch) - 0xDC00))
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode())
        else:
            out.append(ch)
    return "".join(out)


def _listdir(path: bytes) -> list[bytes]:
    """The names in a directory, read without changing its atime (the dump tests
    compare atimes with the snapshot's, and relatime would move these)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NOATIME)
    try:
        return [os.fsencode(n) for n in os.listdir(fd)]
    finally:
        os.close(fd)


def read_source(path: bytes) -> bytes:
    """A source file's content, read without changing its atime."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def source_entries(root: Path) -> dict[bytes, os.stat_result]:
    """Every entry below ``root`` by absolute path (bytes), from ``os.lstat``; no atime
    is changed."""
    found: dict[bytes, os.stat_result] = {}
    todo = [os.fsencode(root)]
    while todo:
        d = todo.pop()
        for name in _listdir(d):
            p = d + b"/" + name
            found[p] = st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                todo.append(p)
    return found


@dataclass
class Backed:
    """The full tree, backed up once for this module."""

    src: Path
    repo: Path
    base: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backed]:
    if os.geteuid() != 0:
        pytest.skip("the full tree needs root")
    base = tmp_path_factory.mktemp("browse")
    src = base / "src"
    try:
        build_full_tree(src)
    except OSError as e:
        unlock_tree(src)
        pytest.skip(f"the full-metadata tree cannot be built here: {e}")
    repo = base / "repo"
    env = {"CAS_REPOSITORY": str(repo)}
    try:
        assert run_cas("init", env=env).code == 0
        r = run_cas("backup", src, env=env)
        assert r.code == 0, r.err
        yield Backed(src, repo, base, env)
    finally:
        unlock_tree(base)


def cas(b: Backed, *args: str | bytes | Path) -> Result:
    return run_cas(*args, env=b.env)


# -- ls ------------------------------------------------------------------------------


def _name(by_id: Any, number: int) -> str:
    """The user or group name of an id, or the id where there is none."""
    try:
        return str(by_id(number)[0])
    except KeyError:
        return str(number)


@needs_root
def test_ls_long_matches_lstat(backed: Backed) -> None:
    src = backed.src
    entries = source_entries(src)
    r = cas(backed, "ls", "-l", f"latest:{src}")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    # The top directory itself, then every entry, each on one line (a name with a
    # newline included), in path order.
    assert len(lines) == len(entries) + 1
    expected = []
    for path, st in [(os.fsencode(src), os.lstat(src)), *entries.items()]:
        user, group = _name(pwd.getpwuid, st.st_uid), _name(grp.getgrgid, st.st_gid)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            size = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
        elif stat.S_ISDIR(st.st_mode):
            size = "0"
        else:
            size = str(st.st_size)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime_ns // 10**9))
        line = f"{stat.filemode(st.st_mode)} {user:>8} {group:>8} {size:>10} {when} {escaped(path)}"
        if stat.S_ISLNK(st.st_mode):
            line += f" -> {escaped(os.readlink(path))}"
        expected.append(line)
    assert sorted(lines) == sorted(expected)

    # --json: the snapshot first, then one object per entry, raw names kept.
    docs = listing(cas(backed, "--json", "ls", f"latest:{src}"))
    assert docs[0]["message_type"] == "snapshot"
    nodes = docs[1:]
    assert len(nodes) == len(entries) + 1
    # Depth first, names in byte order: a parent before its entries.
    paths = [raw_path(d) for d in nodes]
    assert paths == sorted(paths, key=lambda p: p.split(b"/"))
    for doc in nodes[1:]:
        st = entries[raw_path(doc)]
        assert doc["mode"] == st.st_mode
        assert (doc["uid"], doc["gid"], doc["mtime_ns"]) == (st.st_uid, st.st_gid, st.st_mtime_ns)
        if not stat.S_ISDIR(st.st_mode):
            assert doc["size"] == st.st_size

    # --no-recursive: the directory and its own entries only.
    r = cas(backed, "ls", "--no-recursive", f"latest:{src}", "names")
    assert r.code == 0, r.err
    names = sorted(_listdir(os.fsencode(src / "names")))
    assert r.out.splitlines() == [escaped(os.fsencode(src / "names"))] + [
        escaped(os.fsencode(src / "names") + b"/" + n) for n in names
    ]


# -- dump ------------------------------------------------------------------------------


@needs_root
def test_dump_every_file_is_byte_identical(backed: Backed) -> None:
    files = [p for p, st in source_entries(backed.src).items() if stat.S_ISREG(st.st_mode)]
    env = cas_env("test-password", backed.env)
    running: list[tuple[bytes, Path, subprocess.Popen[bytes]]] = []

    def finish_one() -> None:
        path, target, proc = running.pop(0)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert target.read_bytes() == read_source(path), path

    for i, path in enumerate(files):  # four at a time: a few seconds, little memory
        target = backed.base / f"file-{i}"
        cmd = [sys.executable, "-m", "cas", "dump", "latest", path, "--target", target]
        running.append((path, target, subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)))
        if len(running) == 4:
            finish_one()
    while running:
        finish_one()
    # A file to stdout, as it is.
    r = subprocess.run(
        [sys.executable, "-m", "cas", "dump", "latest", str(backed.src / "binary")],
        env=env,
        capture_output=True,
        check=False,
    )
    assert r.returncode == 0 and r.stdout == read_source(os.fsencode(backed.src / "binary"))


@needs_root
def test_dump_tar_extracts_like_restore(backed: Backed) -> None:
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("GNU tar is not installed")
    archive = backed.base / "dump.tar"
    r = cas(backed, "--json", "dump", f"latest:{backed.src}", "--target", archive)
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["sparse_files"] == 4 and doc["hardlinks"] >= 6
    assert [s["path"] for s in doc["skipped"]] == [str(backed.src / "special" / "socket")]
    out = backed.base / "untarred"
    out.mkdir()
    x = subprocess.run(
        [tar, "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-xpf", archive],
        cwd=out,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (x.returncode, x.stderr) == (0, "")
    diffs = compare_trees(backed.src, out / "src")
    # What tar cannot hold (docs: README, cas dump --help): inode flags, sockets;
    # and GNU tar sets atimes to the time of extraction.
    unexplained = [
        d
        for d in diffs
        if ": atime_ns " not in d
        and ": flags " not in d
        and d != f"'special/socket': only in {backed.src}"
    ]
    assert unexplained == []
    assert any(": flags " in d for d in diffs)  # the comparison did see them
    # With --incremental GNU tar takes atimes from the archive too (pax atime).
    again = backed.base / "untarred-G"
    again.mkdir()
    x = subprocess.run(
        [tar, "-G", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-xpf", archive],
        cwd=again,
        capture_output=True,
        check=False,
    )
    assert x.returncode == 0, x.stderr  # (it warns of the symlinks' atimes in the future)
    assert [d for d in compare_trees(backed.src, again / "src") if ": flags " not in d] == [
        f"'special/socket': only in {backed.src}"
    ]


@needs_root
def test_dump_zip_opens_with_zipfile(backed: Backed) -> None:
    archive = backed.base / "dump.zip"
    r = cas(backed, "dump", "--archive", "zip", f"latest:{backed.src}", "--target", archive)
    assert r.code == 0, r.err
    entries = source_entries(backed.src)
    with zipfile.ZipFile(archive) as zf:
        members = {i.filename: i for i in zf.infolist()}
        assert zf.testzip() is None
        seen = 0
        for path, st in entries.items():
            rel = os.path.relpath(path, os.fsencode(backed.src.parent))
            name = rel.decode("utf-8", "backslashreplace")
            if stat.S_ISREG(st.st_mode):
                assert zf.read(name) == read_source(path), name
                assert members[name].external_attr >> 16 == st.st_mode
                seen += 1
            elif stat.S_ISLNK(st.st_mode):
                assert zf.read(name) == os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                assert name + "/" in members
    assert seen > 30


# -- diff ------------------------------------------------------------------------------


def test_diff_lists_one_of_every_kind_of_change(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("same", "modified", "removed", "retyped", "chmodded", "touched"):
        (src / name).write_bytes(name.encode() * 1000)
    (src / "gone").mkdir()
    (src / "gone" / "inside").write_bytes(b"x")
    os.symlink("same", src / "link")
    env = {"CAS_REPOSITORY": str(tmp_path / "repo")}
    assert run_cas("init", env=env).code == 0
    assert run_cas("backup", src, env=env).code == 0
    dir_times = os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns

    (src / "modified").write_bytes(b"new content")
    (src / "removed").unlink()
    (src / "retyped").unlink()
    (src / "retyped").mkdir()
    (src / "retyped" / "child").write_bytes(b"child")
    os.chmod(src / "chmodded", 0o600)
    os.utime(src / "touched", ns=(1, 2_000_000_001))
    (src / "added").write_bytes(b"added" * 100)
    shutil.rmtree(src / "gone")
    os.unlink(src / "link")
    os.symlink("modified", src / "link")
    os.utime(src, ns=dir_times)  # the directory itself: unchanged
    assert run_cas("backup", src, env=env).code == 0

    snaps = run_cas("--json", "snapshots", env=env).json()["snapshots"]
    first, second = snaps[0]["id"][:8], snaps[1]["id"]
    docs = json_lines(run_cas("--json", "diff", "--metadata", first, second, env=env))
    p = str(src)
    changes = {
        (d["modifier"], d["path"])
        for d in docs
        if d["message_type"] == "change" and not p.startswith(d["path"] + "/")
    }  # (not the source's ancestors: other processes may move /tmp's times)
    assert changes == {
        ("M", f"{p}/modified"),
        ("-", f"{p}/removed"),
        ("T", f"{p}/retyped"),
        ("+", f"{p}/retyped/child"),
        ("U", f"{p}/chmodded"),
        ("U", f"{p}/touched"),
        ("+", f"{p}/added"),
        ("-", f"{p}/gone"),
        ("-", f"{p}/gone/inside"),
        ("M", f"{p}/link"),
    }
    stats = docs[-1]
    assert stats["message_type"] == "summary"
    # A type change counts the old entry removed and the new one added.
    assert stats["added"]["files"] == 2 and stats["removed"]["files"] == 3
    assert stats["added"]["dirs"] == 1 and stats["removed"]["dirs"] == 1
    assert stats["changed_files"] == 2 and stats["type_changed"] == 1
    assert stats["metadata_changed"] == 2
    assert stats["added"]["bytes"] == len(b"new content") + 500 + len(b"child")

    # Human output: restic's letters, U only with --metadata, then the summary.
    r = run_cas("diff", first, second, env=env)
    assert r.code == 0, r.err
    assert f"M    {p}/modified" in r.out.splitlines()
    assert f"-    {p}/gone/" in r.out.splitlines()
    assert "U    " not in r.out
    assert "Files:" in r.out and "Added:" in r.out
    # A subtree against itself: nothing.
    same = json_lines(run_cas("--json", "diff", f"{second}:{p}", f"{second}:{p}", env=env))
    assert [d["message_type"] for d in same] == ["summary"]


# -- find ------------------------------------------------------------------------------


@pytest.mark.damaged_repo_ok("damages a blob to see find --blob and dump name it")
def test_find_patterns_times_and_a_damaged_blob(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shared = os.urandom(200_000)
    (src / "a.TXT").write_bytes(shared)
    (src / "sub" / "b.txt").write_bytes(shared)
    (src / "other").write_bytes(b"other")
    os.utime(src / "other", ns=(0, 1_000_000_000 * 86_400 * 365 * 20))  # 1989
    env = {"CAS_REPOSITORY": str(tmp_path / "repo")}
    assert run_cas("init", env=env).code == 0
    assert run_cas("backup", "--tag", "one", src, env=env).code == 0
    (src / "new.txt").write_bytes(b"new")
    assert run_cas("backup", src, env=env).code == 0
    p = str(src)

    r = run_cas("find", "*.txt", env=env)
    assert r.code == 0, r.err
    assert r.out.count("Found matching entries in snapshot") == 2
    assert f"{p}/sub/b.txt" in r.out and f"{p}/a.TXT" not in r.out
    r = run_cas("find", "--ignore-case", "--tag", "one", "*.txt", env=env)
    assert r.out.count("Found matching entries") == 1 and f"{p}/a.TXT" in r.out
    r = run_cas("find", f"{p}/sub/*", env=env)  # a slash: the whole path
    assert r.out.count(f"{p}/sub/b.txt") == 2
    r = run_cas("find", "--newest", "1995-01-01", "*", env=env)
    assert r.out.count(f"{p}/other\n") == 2 and "a.TXT" not in r.out
    r = run_cas("find", "--oldest", "1995-01-01", "other", env=env)
    assert "other" not in r.out.replace("0 entries", "")
    groups = listing(run_cas("--json", "find", "-s", "latest", "new.txt", env=env))
    assert [[m["path"] for m in g["matches"]] for g in groups] == [[f"{p}/new.txt"]]

    # Damage the one data blob the two copies share: check names it, find traces it.
    (pack,) = [
        f
        for f in (tmp_path / "repo" / "data").rglob("*")
        if f.is_file() and f.stat().st_size > 150_000
    ]
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    check = run_cas("--json", "check", "--read-data", env=env)
    (finding,) = [f for f in check.json()["findings"] if f["kind"] == "blob_damaged"]
    blob = finding["object"].removeprefix("blob:")
    groups = listing(run_cas("--json", "find", "--blob", blob[:10], env=env))
    assert len(groups) == 2
    for g in groups:
        assert sorted(m["path"] for m in g["matches"]) == [f"{p}/a.TXT", f"{p}/sub/b.txt"]
        assert all(m["ids"] == [blob] for m in g["matches"])
    # check's own names of the objects are taken as they are.
    assert listing(run_cas("--json", "find", "--blob", finding["object"], env=env)) == groups
    r = run_cas("find", "--pack", f"data/{pack.parent.name}/{pack.name[:12]}", env=env)
    assert f"{p}/a.TXT" in r.out and f"{p}/sub/b.txt" in r.out
    # --tree names the directories with that tree (the same in both snapshots).
    (sub,) = [
        d for d in listing(run_cas("--json", "ls", "latest", env=env)) if d.get("name") == "sub"
    ]
    groups = listing(run_cas("--json", "find", "--tree", sub["subtree"][:8], env=env))
    assert [[m["path"] for m in g["matches"]] for g in groups] == [[f"{p}/sub"]] * 2

    # Dumping the damaged file: one line naming it, exit 1.
    r = run_cas("dump", "latest", f"{p}/a.TXT", env=env)
    assert r.code == 1
    assert one_line_error(r).startswith(f"cas: cannot dump {p}/a.TXT: integrity error in blob")
    r = run_cas("dump", f"latest:{p}", "--target", tmp_path / "x.tar", env=env)
    assert r.code == 1 and "cannot dump" in one_line_error(r)


# -- bad input, odd names, deep trees -----------------------------------------------------


def test_bad_input_is_one_line_with_its_exit_code(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    env = {"CAS_REPOSITORY": str(tmp_path / "repo")}
    assert run_cas("init", env=env).code == 0
    assert run_cas("backup", src, env=env).code == 0
    for args, code in [
        (("ls", "ffffffff"), 1),
        (("ls", "latest", "/not/there"), 1),
        (("ls", "latest:/nope"), 1),
        (("dump", "latest", "/nope"), 1),
        (("dump", "latest", f"{src}/f/.."), 1),
        (("diff", "latest", "ffffffff"), 1),
        (("diff", f"latest:{src}/f", "latest"), 1),
        (("find", "--blob", "xyz"), 1),
        (("find", "--blob", "ab" * 4), 1),
        (("find", "--newest", "yesterday", "x"), 2),
        (("find",), 2),
        (("--json", "dump", "latest", f"{src}/f"), 2),
    ]:
        r = run_cas(*args, env=env)
        assert r.code == code, (args, r.err)
        assert one_line_error(r).startswith("cas: "), args
    r = run_cas("ls", "latest", env={"CAS_REPOSITORY": str(tmp_path / "none")})
    assert r.code == 10


def test_odd_names_and_a_4000_deep_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    odd = [b"caf\xe9", b"new\nline", b"back\\slash", b"tab\there", b"\xff\xfe"]
    for name in odd:
        (src / os.fsdecode(name)).write_bytes(name)
    deep = tmp_path / "deep"
    deep.mkdir()
    middle, bottom = build_deep_tree(deep, 4000)
    env = {"CAS_REPOSITORY": str(tmp_path / "repo")}
    try:
        assert run_cas("init", env=env).code == 0
        assert run_cas("backup", src, deep, env=env).code == 0
        (src / "added").write_bytes(b"x")
        assert run_cas("backup", src, deep, env=env).code == 0
    finally:
        remove_tree(deep)
    s = str(src)

    r = run_cas("ls", f"latest:{s}", env=env)
    assert r.code == 0, r.err
    # One line per entry, in the order of the names' bytes.
    assert r.out.splitlines() == [s] + [f"{s}/{escaped(n)}" for n in sorted([*odd, b"added"])]
    docs = listing(run_cas("--json", "ls", f"latest:{s}", env=env))
    raw = {
        bytes.fromhex(d["path_hex"]) if "path_hex" in d else d["path"].encode() for d in docs[1:]
    }
    assert raw == {os.fsencode(src)} | {os.fsencode(src) + b"/" + n for n in [*odd, b"added"]}

    # The deep tree: ls, find, diff and dump walk it without recursion.
    deep_ls = listing(run_cas("--json", "ls", f"latest:{deep}", env=env))
    paths = [d["path"] for d in deep_ls[1:]]
    assert f"{deep}/{bottom.decode()}" in paths and f"{deep}/{middle.decode()}" in paths
    assert len(paths) == 1 + 4000 + 4  # deep, d..., middle, bottom, fifo, up
    found = listing(run_cas("--json", "find", "-s", "latest", "bottom", env=env))
    assert [m["path"] for m in found[0]["matches"]] == [f"{deep}/{bottom.decode()}"]
    snaps = run_cas("--json", "snapshots", env=env).json()["snapshots"]
    changes = json_lines(run_cas("--json", "diff", snaps[0]["id"], snaps[1]["id"], env=env))
    assert [(c.get("modifier"), c.get("path")) for c in changes[:-1]] == [("+", f"{s}/added")]
    one = tmp_path / "bottom"
    r = run_cas("dump", "latest", f"{deep}/{bottom.decode()}", "--target", one, env=env)
    assert r.code == 0, r.err
    assert one.stat().st_size == 100_000
    archive = tmp_path / "deep.tar"
    r = run_cas("dump", f"latest:{deep}", "--target", archive, env=env)
    assert r.code == 0, r.err
    with tarfile.open(archive) as tf:
        names = tf.getnames()
    assert len(names) == 1 + 4000 + 4 and names[0] == "deep"
    odd_tar = tmp_path / "odd.tar"
    assert run_cas("dump", f"latest:{s}", "--target", odd_tar, env=env).code == 0
    with tarfile.open(odd_tar, encoding="utf-8", errors="surrogateescape") as tf:
        got = {os.fsencode(n) for n in tf.getnames()}
    assert got == {b"src"} | {b"src/" + n for n in [*odd, b"added"]}


def test_dump_of_a_stdin_backup(tmp_path: Path) -> None:
    env = {"CAS_REPOSITORY": str(tmp_path / "repo")}
    assert run_cas("init", env=env).code == 0
    data = os.urandom(1 << 20) + bytes(1 << 20) + b"end"
    assert run_cas("backup", "--stdin", input=data, env=env).code == 0
    r = subprocess.run(
        [sys.executable, "-m", "cas", "dump", "latest", "/stdin"],
        env=cas_env("test-password", env),
        capture_output=True,
        check=False,
    )
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == data
    r2 = run_cas("ls", "-l", "latest", env=env)
    assert r2.code == 0 and r2.out.rstrip().endswith(" /stdin")
    # -q hides chatter, never a listing's answer (issue 15).
    assert run_cas("ls", "-q", "latest", env=env).out == "/stdin\n"
    found = run_cas("find", "-q", "stdin", env=env).out.splitlines()
    assert found[1:] == ["/stdin", ""] and "entries in" not in found[-1]
    snaps = run_cas("--json", "snapshots", env=env).json()["snapshots"]
    assert run_cas("backup", "--stdin", input=b"other", env=env).code == 0
    changed = run_cas("diff", "-q", snaps[0]["id"], "latest", env=env).out
    assert changed.startswith("M    /stdin\n") and "Added:" in changed
