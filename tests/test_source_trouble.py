"""Source and target trouble (issue 8, item 4), on real files.

Trees deeper than PATH_MAX, files that vanish, grow, shrink or are replaced
between listing, ``lstat`` and ``open``, symlink loops, and symlinks planted
in a restore target.  Races are made deterministic by acting at the exact
call (tests/support/races.py), never by timing.  Trees are compared by
tests/support/trees.py, which walks them through directory descriptors and
does not use cas.
"""

from __future__ import annotations

import os
import random
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cas.repo import Repository
from tests.support import races
from tests.support.cli import run_cas
from tests.support.trees import build_deep_tree, compare_trees, open_deep, remove_tree
from tests.test_archiver import (
    backend,
    backup,
    content,
    make_files,
    repo,
    restore,
    walk,
    walk_source,
)
from tests.test_backup_restore import landed, one_line

# backend and repo: test_archiver's in-memory repository fixtures, used here too.
__all__ = ["backend", "repo"]

DEPTH = 4000


@pytest.fixture
def cli_repo(tmp_path: Path) -> str:
    return str(cas_json("-r", tmp_path / "repo", "--json", "init")["repository"])


@pytest.fixture
def removed_afterwards(tmp_path: Path) -> Iterator[None]:
    """Remove deep trees without recursion: pytest's clean-up of old runs cannot."""
    yield
    for child in tmp_path.iterdir():
        if child.is_dir() and not child.is_symlink():
            remove_tree(child)


def cas_json(*args: str | Path | bytes, code: int = 0, **kw: Any) -> Any:
    done = run_cas(*args, **kw)
    assert done.code == code, done.err
    assert "Traceback" not in done.err
    return done.json()


def b(p: Path) -> bytes:
    return os.fsencode(p)


def enough_descriptors(need: int) -> None:
    """Raise this process's soft open-file limit to ``need`` or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard open-file limit {hard} is below {need}")
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


# -- 1. trees 4,000 levels deep ------------------------------------------------


def test_tree_4000_levels_deep(cli_repo: str, tmp_path: Path, removed_afterwards: None) -> None:
    enough_descriptors(2 * DEPTH + 200)  # the comparison holds both trees open
    src = tmp_path / "src"
    src.mkdir()
    _, bottom = build_deep_tree(src, DEPTH)
    deepest = b(src) + b"/" + bottom
    assert len(deepest) > 8000 > 4096 == os.pathconf("/", "PC_PATH_MAX")
    with pytest.raises(OSError, match="too long"):
        os.lstat(deepest)  # beyond PATH_MAX indeed

    dirs = DEPTH + len(src.parts) - 1  # and src and the directories above it
    first = cas_json("-r", cli_repo, "--json", "backup", src)
    assert first["warnings"] == []
    s = first["summary"]
    assert (s["files_new"], s["dirs_new"], s["other_entries"]) == (2, dirs, 2)
    assert s["bytes_read"] == 100_000 + len(b"halfway down\n")

    again = cas_json("-r", cli_repo, "--json", "backup", src)
    s = again["summary"]
    assert again["warnings"] == [] and s["bytes_read"] == 0 and s["files_unchanged"] == 2
    # every directory of the source unchanged; its ancestors (/tmp ...) are only stat'ed
    # and other processes may move their times between the two backups
    assert s["dirs_unchanged"] + s["dirs_changed"] == dirs and s["dirs_new"] == 0
    assert s["dirs_unchanged"] >= DEPTH + 1

    check = run_cas("-r", cli_repo, "check", "--read-data")
    assert check.code == 0, check.err + check.out
    same = cas_json("-r", cli_repo, "--json", "check", "--against", src)
    assert same["differences"] == [] and same["summary"]["entries"] == DEPTH + 5

    out = tmp_path / "out"
    restored = cas_json("-r", cli_repo, "--json", "restore", "latest", "--target", out)
    assert restored["warnings"] == [] and restored["summary"]["failed"] == []
    assert compare_trees(src, landed(out, src)) == []

    # One file selected 4,000 levels down: its directories are made on the way.
    one = tmp_path / "one"
    picked = cas_json(
        "-r", cli_repo, "--json", "restore", "latest", "--target", one, "--include", "bottom"
    )
    assert picked["summary"]["failed"] == [] and picked["summary"]["files_restored"] == 1
    middle = bottom.rsplit(b"/", 1)[0].split(b"/")[: DEPTH // 2]
    with pytest.raises(FileNotFoundError):
        open_deep(landed(one, src), b"/".join(middle) + b"/middle")
    fds = [open_deep(root, bottom) for root in (src, landed(one, src))]
    try:
        assert os.pread(fds[0], 200_000, 0) == os.pread(fds[1], 200_000, 0)
    finally:
        for fd in fds:
            os.close(fd)

    # A change at the bottom is found, and named by its full path.
    fd = open_deep(src, bottom, os.O_WRONLY)
    try:
        os.pwrite(fd, b"CHANGED", 50_000)
    finally:
        os.close(fd)
    found = cas_json("-r", cli_repo, "--json", "check", "--against", src, code=1)
    changed = {(d["path"], d["field"]) for d in found["differences"]}
    assert (os.fsdecode(deepest), "content") in changed
    assert all(d["path"] == os.fsdecode(deepest) for d in found["differences"])


def test_restore_delete_removes_a_deep_tree_in_the_way(
    repo: Repository, tmp_path: Path, removed_afterwards: None
) -> None:
    src = tmp_path / "src"
    make_files(src, {"top": b"a file here", "keep": b"k"})
    done = backup(repo, src)
    out = tmp_path / "out"
    landing = landed(out, src)
    (landing / "top").mkdir(parents=True)
    build_deep_tree(landing / "top", 1500)  # deeper than Python's recursion limit
    summary, actions = restore(repo, done.tree, out, delete=True)
    assert actions.warnings == [] and summary.failed == []
    assert compare_trees(src, landing) == []  # content, metadata: "top" is the file again


def test_nesting_beyond_the_open_file_limit_is_one_clear_line(
    cli_repo: str, tmp_path: Path, removed_afterwards: None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_deep_tree(src, 600)
    whole = cas_json("-r", cli_repo, "--json", "backup", src)["id"]

    # 300 descriptors: cas keeps 128 for itself, so about 170 levels fit.
    limited = run_cas("-r", cli_repo, "--json", "backup", src, nofile=300)
    assert limited.code == 3, limited.err
    line = one_line(limited.err)
    assert line.startswith("warning: ") and "Too many open files" in line
    assert "ulimit -n" in line and "saved empty" in line
    assert limited.json()["id"]

    out = tmp_path / "out"
    cut = run_cas("-r", cli_repo, "--json", "restore", whole, "--target", out, nofile=300)
    assert cut.code == 1, cut.err
    line = one_line(cut.err)
    assert "not restored: Too many open files" in line and "ulimit -n" in line
    assert len(cut.json()["summary"]["failed"]) == 1


# -- 2. files that vanish, grow, shrink or are replaced -------------------------


@pytest.mark.parametrize(
    ("call", "change", "expected"),
    [
        ("lstat", "vanish", "No such file or directory; skipped"),  # after listing
        ("open", "vanish", "No such file or directory; skipped"),  # after lstat
        ("open", "replace", "replaced while it was backed up; skipped"),
        ("open", "grow", "file changed while it was read; saved as read"),
        ("open", "shrink", "file changed while it was read; saved as read"),
    ],
)
def test_file_changing_between_listing_lstat_and_open(
    repo: Repository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    change: str,
    expected: str,
) -> None:
    src = tmp_path / "src"
    victim = src / "victim"
    make_files(src, {"victim": bytes(range(256)) * 400, "other": b"stays"})
    with monkeypatch.context() as m:
        m.setattr(os, call, races.hooked(call, b"victim", change))
        done = backup(repo, src)
    assert done.warnings == [f"{victim}: {expected}"]
    assert done.summary.warnings == 1
    nodes = walk(repo, done.tree)
    assert content(repo, nodes[b(src / "other")]) == b"stays"
    for node in nodes.values():  # never a size its content list disagrees with
        if node.type == "file":
            assert node.size == sum(node.sizes) == len(content(repo, node))
    if "skipped" in expected:
        assert b(victim) not in nodes
        if not victim.exists():
            victim.write_bytes(b"back again")
    else:
        assert content(repo, nodes[b(victim)]) == victim.read_bytes()  # as read: all of it
    # The next backup reads it again (and nothing else), without a warning.
    again = backup(repo, src, parent=done.tree)
    assert again.warnings == []
    assert again.summary.files_new + again.summary.files_changed == 1
    assert again.summary.bytes_read == victim.stat().st_size
    assert content(repo, walk(repo, again.tree)[b(victim)]) == victim.read_bytes()


@pytest.mark.parametrize("call", ["lstat", "open"])
def test_directory_vanishing_is_skipped(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    src = tmp_path / "src"
    make_files(src, {"gone/a": b"a", "gone/deeper/b": b"b", "kept/c": b"c"})
    with monkeypatch.context() as m:
        m.setattr(os, call, races.hooked(call, b"gone", "vanish"))
        done = backup(repo, src)
    assert done.warnings == [f"{src / 'gone'}: No such file or directory; skipped"]
    assert {p for p in walk(repo, done.tree) if p.startswith(b(src) + b"/")} == {
        b(src / "kept"),
        b(src / "kept/c"),
    }


def test_symlink_vanishing_after_lstat_is_skipped(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    make_files(src, {"f": b"f"})
    os.symlink("f", src / "link")
    with monkeypatch.context() as m:
        m.setattr(os, "readlink", races.hooked("readlink", b"link", "vanish"))
        done = backup(repo, src)
    assert done.warnings == [f"{src / 'link'}: No such file or directory; skipped"]
    assert b(src / "link") not in walk(repo, done.tree)


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize(("call", "change"), [("open", "vanish"), ("open", "shrink")])
def test_cli_file_changing_before_it_is_read(
    cli_repo: str, tmp_path: Path, call: str, change: str, workers: str
) -> None:
    """In the backup process, or in its worker processes (the hook is installed in every
    process of the run)."""
    src = tmp_path / "src"
    victim = src / "victim"
    make_files(src, {"victim": b"v" * 100_000, "other": b"o" * 1000})
    hook = races.everywhere(tmp_path / "site", call, b"victim", change)
    done = run_cas("-r", cli_repo, "--json", "backup", src, "--workers", workers, env=hook)
    assert done.code == 3, done.err
    line = one_line(done.err)
    assert line.startswith(f"warning: {victim}: ")
    assert done.json()["warnings"] == [line.removeprefix("warning: ")]

    out = tmp_path / "out"
    restored = cas_json("-r", cli_repo, "--json", "restore", "latest", "--target", out)
    assert restored["summary"]["failed"] == []
    if change == "vanish":
        assert sorted(os.listdir(landed(out, src))) == ["other"]
        victim.write_bytes(b"back")
    else:
        assert (landed(out, src) / "victim").read_bytes() == b"v" * 50_000  # as read
    after = cas_json("-r", cli_repo, "--json", "backup", src)
    assert after["warnings"] == [] and after["summary"]["bytes_read"] == victim.stat().st_size


def _opened_names(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record the names ``os.open`` is given relative to a directory from now on."""
    opened: list[bytes] = []
    real = os.open

    def recording(path: Any, *args: Any, **kwargs: Any) -> int:
        if kwargs.get("dir_fd") is not None:
            opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording)
    return opened


def _set_note(path: Path, value: bytes) -> None:
    try:
        os.setxattr(path, b"user.note", value)
    except OSError as e:
        pytest.skip(f"no user xattrs here: {e}")


def test_unchanged_files_are_not_opened_and_metadata_changes_are_seen(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    make_files(src, {"a": b"a" * 3000, "b": b"b" * 3000, "c": b"c" * 3000})
    _set_note(src / "a", b"first")
    first = backup(repo, src)
    with monkeypatch.context() as m:
        opened = _opened_names(m)
        second = backup(repo, src, parent=first.tree)
    assert not {b"a", b"b", b"c"} & set(opened)  # the directory is listed, no file opened
    assert second.summary.files_unchanged == 3 and second.summary.bytes_read == 0
    assert walk_source(repo, second.tree, src) == walk_source(repo, first.tree, src)

    # New xattrs, mode or flags with the same content and mtime: the ctime moved.
    _set_note(src / "a", b"second")
    os.chmod(src / "b", 0o600)
    with monkeypatch.context() as m:
        opened = _opened_names(m)
        third = backup(repo, src, parent=second.tree)
    assert sorted(set(opened) & {b"a", b"b", b"c"}) == [b"a", b"b"]
    assert third.warnings == [] and third.summary.files_unchanged == 1
    nodes = walk(repo, third.tree)
    assert nodes[b(src / "a")].xattrs == [(b"user.note", b"second")]
    assert nodes[b(src / "b")].mode == 0o600
    assert third.summary.data_blobs_new == 0  # read again, nothing new stored


class CountingChunker:
    """The repository's chunker, counting the files it is asked to chunk."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.files = inner, 0

    def iter_chunks(self, read: Any, guess: Any = None) -> Any:
        self.files += 1
        return self.inner.iter_chunks(read, guess)


def test_metadata_change_is_hashed_not_chunked_and_same_mtime_edits_are_caught(
    repo: Repository, tmp_path: Path
) -> None:
    """A file whose size and mtime are the parent's but whose ctime or inode moved is
    read once to compare its whole-file digest: the same content takes the parent's
    blobs without chunking; other content (an edit that kept the mtime) is stored."""
    src = tmp_path / "src"
    rnd = random.Random(5)
    files = {n: rnd.randbytes(size) for n, size in (("a", 3_000_000), ("b", 70_000), ("c", 1))}
    make_files(src, files)
    first = backup(repo, src)
    before = walk(repo, first.tree)
    # a: chmod (ctime moves); b: copied over itself as cp -a does (new inode, same mtime);
    # c: untouched.
    os.chmod(src / "a", 0o640)
    mtime = (src / "b").stat().st_mtime_ns
    (src / "b").unlink()
    (src / "b").write_bytes(files["b"])
    os.utime(src / "b", ns=(mtime, mtime))
    counting = CountingChunker(repo.chunker())
    second = backup(repo, src, parent=first.tree, chunker=counting)
    assert counting.files == 0
    s = second.summary
    assert (s.files_changed, s.files_unchanged, s.data_blobs_new) == (2, 1, 0)
    assert s.bytes_read == 3_070_000
    after = walk(repo, second.tree)
    for name in ("a", "b"):
        node, old = after[b(src / name)], before[b(src / name)]
        assert (node.content, node.digest) == (old.content, old.digest)
        assert content(repo, node) == files[name]
    assert after[b(src / "a")].mode == 0o640
    # Same size, same mtime, other bytes: the digest differs, the file is chunked and stored.
    edited = bytearray(files["a"])
    edited[1_500_000:1_500_010] = b"0123456789"
    mtime = (src / "a").stat().st_mtime_ns
    (src / "a").write_bytes(bytes(edited))
    os.utime(src / "a", ns=(mtime, mtime))
    counting = CountingChunker(repo.chunker())
    third = backup(repo, src, parent=second.tree, chunker=counting)
    assert counting.files == 1 and third.summary.data_blobs_new >= 1
    node = walk(repo, third.tree)[b(src / "a")]
    assert content(repo, node) == bytes(edited) and node.digest != before[b(src / "a")].digest
    # --force reads and chunks everything, whatever the digest says.
    counting = CountingChunker(repo.chunker())
    backup(repo, src, parent=third.tree, chunker=counting, force=True)
    assert counting.files == 3


def test_unreadable_metadata_makes_the_next_backup_read_the_file_again(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    victim = src / "victim"
    make_files(src, {"victim": b"v" * 5000, "other": b"o"})
    _set_note(victim, b"kept")
    real = os.listxattr
    inode = victim.stat().st_ino

    def refusing(where: Any, *args: Any, **kwargs: Any) -> list[str]:
        if isinstance(where, int) and os.fstat(where).st_ino == inode:
            raise PermissionError(13, "Permission denied")
        return real(where, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "listxattr", refusing)
        done = backup(repo, src)
    assert done.warnings == [f"could not list extended attributes of {victim}: Permission denied"]
    node = walk(repo, done.tree)[b(victim)]
    assert node.xattrs == [] and node.ctime_ns == 0  # no ctime matches: not reused
    again = backup(repo, src, parent=done.tree)
    assert again.warnings == [] and again.summary.bytes_read == 5000
    assert walk(repo, again.tree)[b(victim)].xattrs == [(b"user.note", b"kept")]


def test_check_against_names_a_file_it_cannot_open_and_still_compares_its_xattrs(
    cli_repo: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_files(src, {"secret": b"s" * 100, "plain": b"p"})
    _set_note(src / "secret", b"note")
    cas_json("-r", cli_repo, "--json", "backup", src)
    hook = races.prelude("open", b"secret", "refuse")
    found = cas_json("-r", cli_repo, "--json", "check", "--against", src, code=1, prelude=hook)
    assert found["differences"] == [
        {
            "path": str(src / "secret"),
            "kind": "unreadable",
            "field": None,
            "snapshot": "cannot read: Permission denied",
            "source": None,
        }
    ]
    _set_note(src / "secret", b"changed")  # and the xattrs were compared all the same
    found = cas_json("-r", cli_repo, "--json", "check", "--against", src, code=1, prelude=hook)
    assert [d["field"] for d in found["differences"]] == ["xattr:user.note", None]


# -- 3. symlink loops ------------------------------------------------------------


def _loops(src: Path) -> None:
    """a -> b -> a, self -> self, dot -> ., up -> .., sub/ancestor -> ../.. (above src)."""
    make_files(src, {"sub/f": b"inside"})
    links = {"a": "b", "b": "a", "self": "self", "dot": ".", "up": "..", "sub/ancestor": "../.."}
    # Backup and the comparison read the links; relatime leaves a future atime alone.
    future = (time.time_ns() // 10**9 + 3600) * 10**9
    for name, target in links.items():
        os.symlink(target, src / name)
        os.utime(src / name, ns=(future, 1_000_000_007), follow_symlinks=False)


def test_symlink_loops_are_saved_as_links(cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _loops(src)
    first = cas_json("-r", cli_repo, "--json", "backup", src)
    assert first["warnings"] == []
    assert first["summary"]["other_entries"] == 6 and first["summary"]["files_new"] == 1
    same = cas_json("-r", cli_repo, "--json", "check", "--against", src)
    assert same["differences"] == []
    out = tmp_path / "out"
    cas_json("-r", cli_repo, "--json", "restore", "latest", "--target", out)
    assert compare_trees(src, landed(out, src)) == []


@pytest.mark.parametrize(("name", "target"), [("a", "b"), ("self", "self"), ("dot", ".")])
def test_symlink_loop_given_as_the_path_is_saved_itself(
    cli_repo: str, tmp_path: Path, name: str, target: str
) -> None:
    src = tmp_path / "src"
    _loops(src)
    done = cas_json("-r", cli_repo, "--json", "backup", src / name)
    assert done["warnings"] == []
    s = done["summary"]
    assert (s["other_entries"], s["files_new"], s["bytes_total"]) == (1, 0, 0)
    out = tmp_path / "out"
    cas_json("-r", cli_repo, "--json", "restore", "latest", "--target", out)
    assert os.listdir(landed(out, src)) == [name]
    assert os.readlink(landed(out, src) / name) == target


# -- 4. symlinks planted in the restore target ------------------------------------


def _outside(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    outside = tmp_path / "outside"
    make_files(outside, {"keep": b"precious"})
    return outside, {p.name: p.read_bytes() for p in outside.iterdir()}


def _listing(outside: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() if p.is_file() else b"" for p in outside.iterdir()}


def test_restore_replaces_planted_symlinks_and_never_writes_outside(
    cli_repo: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_files(src, {"d/f": b"file", "d/e/g": b"deeper", "top": b"top"})
    cas_json("-r", cli_repo, "--json", "backup", src)
    outside, before = _outside(tmp_path)

    # The first component of where the snapshot lands is a symlink out.
    out = tmp_path / "out1"
    out.mkdir()
    first = src.relative_to("/").parts[0]
    (out / first).symlink_to(outside)
    cas_json("-r", cli_repo, "--json", "restore", "latest", "--target", out)
    assert _listing(outside) == before
    assert not (out / first).is_symlink()
    assert compare_trees(src, landed(out, src)) == []

    # Deeper: a directory and a file of the snapshot are symlinks out.
    out = tmp_path / "out2"
    landing = landed(out, src)
    landing.mkdir(parents=True)
    (landing / "d").symlink_to(outside)
    (landing / "top").symlink_to(outside / "keep")
    cas_json("-r", cli_repo, "--json", "restore", "latest", "--target", out)
    assert _listing(outside) == before
    assert compare_trees(src, landing) == []


def test_restore_does_not_follow_a_symlink_swapped_in_while_it_runs(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    make_files(src, {"d/f": b"file", "d/e/g": b"deeper", "top": b"top"})
    done = backup(repo, src)
    outside, before = _outside(tmp_path)
    real_mkdir = os.mkdir

    def mkdir_then_swap(path: Any, *args: Any, **kwargs: Any) -> None:
        real_mkdir(path, *args, **kwargs)
        dir_fd = kwargs.get("dir_fd")
        if path == b"d" and dir_fd is not None:  # the attacker wins the race
            os.rename(b"d", b"d-moved", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.symlink(os.fsencode(outside), b"d", dir_fd=dir_fd)

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(os, "mkdir", mkdir_then_swap)
        summary, actions = restore(repo, done.tree, out)
    assert _listing(outside) == before
    assert summary.failed == [os.fsdecode(b(landed(out, src) / "d"))]
    assert (landed(out, src) / "top").read_bytes() == b"top"
    assert os.listdir(landed(out, src) / "d-moved") == []
    assert actions.warnings and "not restored" in actions.warnings[0]
