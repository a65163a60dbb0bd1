"""Backup's worker processes (cas/backup/pool.py, cas/backup/worker.py), through the CLI.

Each test backs up with ``--workers 2``, so even small trees go through the
worker processes.  What they store must be what one process stores (the
same trees, to the byte), every blob once however many workers meet it,
and a restore must equal the source (tests/support/trees.py, ``os`` and
``stat`` only).  A worker that dies or cannot store, a main process killed
with ``kill -9`` and files that vanish under a worker are covered here; the
crash suite (tests/test_crash.py) kills workers at its fail points, and the
whole suite can be run with workers everywhere (CAS_TEST_WORKERS=2).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cas.backup import pool as pool_mod
from cas.backup.pool import SaverPool, _Worker, cpu_seconds
from tests.support.cli import run_cas, start_cas
from tests.support.mounts import tmpfs
from tests.support.procs import kill_when_paused
from tests.support.trees import (
    build_deep_tree,
    build_full_tree,
    compare_trees,
    remove_tree,
    settled_symlink,
    unlock_tree,
)

IS_ROOT = os.geteuid() == 0


def _tree(root: Path, dirs: int = 10, files: int = 30) -> None:
    """Directories of small files (more than one batch in some, one with an xattr), a
    large file, shared content in several places and a file with three names in three
    directories."""
    root.mkdir()
    for i in range(dirs):
        d = root / f"dir{i:02d}"
        d.mkdir()
        for j in range(files * (1 + i % 3)):
            (d / f"f{j:03d}").write_bytes(os.urandom(50 + 97 * j))
        (d / "same").write_bytes(b"the same content in every directory\n" * 100)
        settled_symlink(d / "link", "same", i)
    with contextlib.suppress(OSError):  # a filesystem without user xattrs
        os.setxattr(root / "dir01" / "f001", b"user.note", b"read by a worker")
    (root / "big").write_bytes(os.urandom(3 << 20) * 2)  # two equal halves
    os.link(root / "dir00" / "f001", root / "hard")
    os.link(root / "dir00" / "f001", root / f"dir{dirs - 1:02d}" / "hard2")
    (root / "empty").write_bytes(b"")


def _init(repo: Path) -> None:
    assert run_cas("-r", repo, "init").code == 0


def _backup(repo: Path, src: Path, *args: str, code: int = 0, **kw: Any) -> dict[str, Any]:
    done = run_cas("-r", repo, "--json", "backup", src, *args, **kw)
    assert done.code == code, done.err
    doc: dict[str, Any] = done.json()
    return doc


def _restored_equal(tmp_path: Path, repo: Path, src: Path, snapshot: str = "latest") -> None:
    out = tmp_path / f"out-{snapshot}"
    done = run_cas("-r", repo, "restore", snapshot, "-t", out, "--workers", "0")
    assert done.code == 0, done.err
    assert compare_trees(src, out / src.relative_to("/")) == []


def _paused_backup(
    repo: Path, src: Path, gate: Path, batch: str, workers: str = "2", tmp: Path | None = None
) -> subprocess.Popen[bytes]:
    """``backup --json`` started in the background, its workers to pause before their
    ``batch``-th batch (``gate``/backup-worker-batch.paused appears; .go lets them on)."""
    return start_cas(
        *("-r", repo, "--json", "backup", src, "--workers", workers),
        env={
            "CAS_FAILPOINTS": f"backup-worker-batch@{batch}:pause",
            "CAS_FAILPOINTS_DIR": str(gate),
            **({"TMPDIR": str(tmp)} if tmp is not None else {}),
        },
    )


def _wait_paused(proc: subprocess.Popen[bytes], gate: Path) -> None:
    """Until a worker of ``_paused_backup`` waits at its fail point."""
    paused = gate / "backup-worker-batch.paused"
    deadline = time.monotonic() + 120  # a bound on a hang, not a timing assertion
    while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert paused.exists(), proc.communicate()


def _check(repo: Path) -> dict[str, Any]:
    done = run_cas("-r", repo, "--json", "check", "--read-data")
    assert done.code == 0, (done.out, done.err)
    doc: dict[str, Any] = done.json()
    assert doc["summary"]["errors"] == 0, doc["findings"]
    return doc


def test_workers_store_what_one_process_stores(tmp_path: Path) -> None:
    """One process, then --force through two workers: every tree is the same blob, no
    data blob is new; a fresh repository through workers checks and restores exactly."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    _tree(src)
    _init(repo)
    one = _backup(repo, src, "--workers", "0")
    assert one["summary"]["workers"] == 0
    # Listing a directory or reading a symlink the first time moves its atime
    # (relatime), which the trees record: the second run sees settled times.
    _backup(repo, src, "--force", "--workers", "0")
    two = _backup(repo, src, "--force", "--workers", "2")
    s = two["summary"]
    assert s["workers"] == 2
    # Every tree of the source is the same blob.  Only the trees of its ancestors may
    # be new: other processes change /tmp meanwhile (any change inside the source would
    # make its own tree new as well as every ancestor's: more than this).
    assert s["data_blobs_new"] == 0 and s["dirs_new"] == 0, s
    assert s["tree_blobs_new"] <= len(src.parents), s
    assert s["files_changed"] == one["summary"]["files_new"]
    assert s["bytes_total"] == one["summary"]["bytes_total"]

    fresh = tmp_path / "fresh"
    _init(fresh)
    doc = _backup(fresh, src, "--workers", "2")
    assert doc["summary"]["files_new"] == one["summary"]["files_new"]
    _check(fresh)
    _restored_equal(tmp_path, fresh, src)


def test_each_blob_is_stored_once_whichever_worker_meets_it(tmp_path: Path) -> None:
    """The same content in many directories (batches of both workers) and twice within
    one large file: stored once, and the index holds no blob twice."""
    src, repo, one_copy = tmp_path / "src", tmp_path / "repo", tmp_path / "one"
    _tree(src)
    _init(repo)
    shutil.copytree(repo, one_copy)  # the same keys: the same chunks
    doc = _backup(repo, src, "--workers", "2")
    # The copy is another client's repository (the same ID): its own client state
    alone = _backup(one_copy, src, "--workers", "0", env={"XDG_STATE_HOME": str(tmp_path / "st")})
    assert doc["summary"]["data_blobs_new"] == alone["summary"]["data_blobs_new"]
    assert doc["summary"]["data_added"] == alone["summary"]["data_added"]
    findings = _check(repo)["findings"]
    assert not [f for f in findings if "duplicate" in f["kind"]], findings


def test_unchanged_files_stay_in_the_main_process(tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    _tree(src)
    _init(repo)
    _backup(repo, src, "--workers", "2")
    (src / "dir03" / "f002").write_bytes(b"changed")
    again = _backup(repo, src, "--workers", "2")["summary"]
    assert again["files_changed"] == 1 and again["bytes_read"] == len(b"changed")
    _restored_equal(tmp_path, repo, src)


def test_a_small_backup_starts_no_workers_by_default(tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    _tree(src, dirs=2, files=5)
    _init(repo)
    assert _backup(repo, src, env={"CAS_WORKERS": ""})["summary"]["workers"] == 0


@pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, devices, flags)")
def test_full_tree_through_workers(tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    try:
        try:
            build_full_tree(src)
        except OSError as e:
            pytest.skip(f"cannot build the full test tree here: {e}")
        _init(repo)
        doc = _backup(repo, src, "--workers", "2")
        assert doc["warnings"] == []
        _restored_equal(tmp_path, repo, src)
    finally:
        unlock_tree(tmp_path)


def test_deeper_than_path_max_through_workers(tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    try:
        src.mkdir()
        build_deep_tree(src, 2100)
        _init(repo)
        _backup(repo, src, "--workers", "2")
        _check(repo)
        _restored_equal(tmp_path, repo, src)
    finally:
        remove_tree(tmp_path)  # deeper than pytest's own clean-up can go


def _f3_deleted_under_a_paused_worker(
    tmp_path: Path, *, hardlinked: bool
) -> tuple[int, dict[str, Any], bytes, list[str]]:
    """Files f0..f4 (and g3, another name of f3, if ``hardlinked``) backed up through one
    worker paused before its first batch; f3 is deleted, then the worker goes on.  The
    exit code, the JSON document, stderr, and the names restored (each compared with
    the source)."""
    src, repo, gate = tmp_path / "src", tmp_path / "repo", tmp_path / "gate"
    src.mkdir()
    gate.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(1000))
    if hardlinked:
        os.link(src / "f3", src / "g3")
    _init(repo)
    proc = _paused_backup(repo, src, gate, "1", workers="1")
    try:
        _wait_paused(proc, gate)
        (src / "f3").unlink()
        (gate / "backup-worker-batch.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"Traceback" not in err
    doc = json.loads(out) if proc.returncode in (0, 3) else {}
    out_dir = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "-t", out_dir).code == 0, err
    landed = out_dir / src.relative_to("/")
    assert sorted(os.listdir(landed)) == sorted(os.listdir(src))
    for name in os.listdir(src):  # the directory's mtime moved with the deletion
        assert (landed / name).read_bytes() == (src / name).read_bytes()
    return proc.returncode, doc, err, sorted(os.listdir(landed))


def test_a_file_gone_before_its_worker_opens_it_is_a_warning(tmp_path: Path) -> None:
    """The workers pause before their first batch; a file of it is deleted; the worker
    warns about it and the backup saves the rest (exit 3)."""
    code, doc, err, names = _f3_deleted_under_a_paused_worker(tmp_path, hardlinked=False)
    assert code == 3, err
    assert b"f3: No such file or directory; skipped" in err
    assert doc["summary"]["files_new"] == 4
    assert names == ["f0", "f1", "f2", "f4"]


def test_a_hardlinked_file_gone_before_its_worker_opens_it_is_read_by_its_other_name(
    tmp_path: Path,
) -> None:
    """As above, the deleted name being one of two of a file: its other name waited for
    the worker and is then read on its own; the directory is saved with it, once."""
    code, doc, err, names = _f3_deleted_under_a_paused_worker(tmp_path, hardlinked=True)
    assert code == 3, err
    assert b"f3: No such file or directory; skipped" in err
    assert doc["summary"]["files_new"] == 5
    assert names == ["f0", "f1", "f2", "f4", "g3"]


def _killed_at_third_batch_then_finished(
    tmp_path: Path, repo: Path, src: Path, workers: str
) -> None:
    """A backup whose workers kill themselves (SIGKILL) at their 3rd batch stops with
    one line and exit 1, writes no snapshot, leaves the repository sound, and the next
    backup finishes it exactly."""
    done = run_cas(
        "-r",
        repo,
        "backup",
        src,
        "--workers",
        workers,
        env={"CAS_FAILPOINTS": "backup-worker-batch@3"},
    )
    assert done.code == 1, done.err
    assert "Traceback" not in done.err
    assert "backup worker process" in done.err and "killed by signal 9" in done.err
    assert done.err.count("\n") == 1, done.err
    assert run_cas("-r", repo, "--json", "snapshots").json()["snapshots"] == []
    _check(repo)
    _backup(repo, src, "--workers", "2")
    _check(repo)
    _restored_equal(tmp_path, repo, src)


def test_a_worker_that_dies_stops_the_backup_cleanly(tmp_path: Path) -> None:
    """Each worker kills itself (SIGKILL) at its 3rd batch: the backup stops with one
    line and exit 1, writes no snapshot, leaves the repository sound, and the next
    backup finishes it."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    _tree(src)
    _init(repo)
    _killed_at_third_batch_then_finished(tmp_path, repo, src, "2")


def test_kill_9_of_the_backup_leaves_no_worker_behind(tmp_path: Path) -> None:
    src, repo, gate = tmp_path / "src", tmp_path / "repo", tmp_path / "gate"
    _tree(src)
    gate.mkdir()
    _init(repo)
    tmp = tmp_path / "tmp"  # where open packs wait (unnamed files: none left behind)
    tmp.mkdir()
    proc = _paused_backup(repo, src, gate, "4", tmp=tmp)
    kill_when_paused(proc, gate / "backup-worker-batch.paused")
    assert os.listdir(tmp) == []
    _check(repo)
    _backup(repo, src, "--workers", "2")
    _restored_equal(tmp_path, repo, src)


@pytest.mark.skipif(not IS_ROOT, reason="mounts a tmpfs")
def test_a_full_disk_under_a_worker_stops_the_backup_with_one_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))
    with tmpfs(tmp_path / "disk", "6m") as disk:
        repo = disk / "repo"
        _init(repo)
        done = run_cas("-r", repo, "backup", src, "--workers", "2")
        assert done.code == 1, done.err
        assert "No space left on device" in done.err, done.err
        assert done.err.count("\n") == 1 and "Traceback" not in done.err


@pytest.mark.skipif(not IS_ROOT, reason="mounts a tmpfs")
def test_a_full_temporary_directory_stops_the_backup_with_one_line(tmp_path: Path) -> None:
    """Open packs wait in unnamed files in $TMPDIR (cas/repo/packer.py): a full one stops
    the backup with one line naming it, no snapshot, and leaves nothing there."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))
    _init(repo)
    with tmpfs(tmp_path / "tmp", "1m") as tmp:
        done = run_cas("-r", repo, "backup", src, "--workers", "2", env={"TMPDIR": str(tmp)})
        assert done.code == 1, done.err
        assert f"cannot write a temporary pack file in {tmp}: No space left" in done.err
        assert done.err.count("\n") == 1 and "Traceback" not in done.err
        assert os.listdir(tmp) == []
    assert run_cas("-r", repo, "--json", "snapshots").json()["snapshots"] == []
    _check(repo)


def _stat(comm: bytes, utime: int, stime: int) -> bytes:
    """A /proc/PID/stat line (proc(5)) with these fields; the others made up."""
    rest = [b"S", *(b"%d" % i for i in range(1, 11)), b"%d" % utime, b"%d" % stime]
    return b"4242 (" + comm + b") " + b" ".join(rest) + b" 0 20 0 1\n"


def test_cpu_seconds_are_read_after_a_command_name_of_spaces_and_parentheses() -> None:
    tick = pool_mod._CLK_TCK
    assert cpu_seconds(_stat(b"python3", 3 * tick, tick)) == 4.0
    assert cpu_seconds(_stat(b"a) (b c)", tick, 2 * tick)) == 3.0
    with pytest.raises((IndexError, ValueError)):
        cpu_seconds(b"4242 (python3) S 1 2")


def test_worker_cpu_is_the_live_workers_cpu_time_on_average(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The live workers' CPU seconds from their /proc stat, averaged; None when none is
    alive or a stat cannot be read."""
    tick = pool_mod._CLK_TCK
    stats = {101: _stat(b"python3", 2 * tick, 0), 102: _stat(b"python3", 3 * tick, tick)}
    real_open = open

    def fake_open(path: Any, *args: Any, **kw: Any) -> Any:
        pid = int(str(path).split("/")[2]) if str(path).startswith("/proc/") else None
        if pid is None:
            return real_open(path, *args, **kw)
        if pid not in stats:
            raise FileNotFoundError(path)
        return io.BytesIO(stats[pid])

    monkeypatch.setattr(pool_mod, "open", fake_open, raising=False)
    pool = SaverPool.__new__(SaverPool)  # only the workers' list is looked at
    procs: list[Any] = [SimpleNamespace(pid=101), SimpleNamespace(pid=102)]
    pool._workers = [_Worker(p, socket.socket()) for p in procs]
    assert pool.worker_cpu() == 3.0  # (2 + 4) / 2
    pool._workers[0].alive = False
    assert pool.worker_cpu() == 4.0
    del stats[102]  # its stat gone (it ended): nothing to compare with
    assert pool.worker_cpu() is None
    pool._workers[1].alive = False
    assert pool.worker_cpu() is None
    for w in pool._workers:
        w.sock.close()


def test_a_workers_view_of_a_file_is_the_lstat_the_main_process_saw() -> None:
    """The per-file record a worker makes (a named tuple: one per file) carries what
    reading the file needs, by name; a path is decoded as warnings show it only when
    there is a warning to give."""
    from cas.backup import worker

    seen = worker.Seen(1, 2, 3, 4, 5, 6)
    assert (
        seen.st_size,
        seen.st_blocks,
        seen.st_dev,
        seen.st_ino,
        seen.st_mtime_ns,
        seen.st_ctime_ns,
    ) == (1, 2, 3, 4, 5, 6)
    assert worker._shown(b"dir/na\xffme") == "dir/na\\xffme"


# -- new directories handed out by name (the workers lstat, build and encode the nodes)


def test_new_directories_through_workers_make_the_trees_one_process_makes(
    tmp_path: Path,
) -> None:
    """Directories with no parent node go to the workers by name: they lstat the files
    and send their nodes encoded.  Every tree is the blob one process makes of the same
    files: a run under another host name (no parent) through two workers stores no new
    tree but its ancestors', and no data.  The tree has hardlinks within one handed-out
    directory and across two (handed back to the main process), symlinks, an xattr, an
    empty file, a large one and a directory of more than one batch of names."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    _tree(src, files=50)  # dir02 holds 150 files and more: two batches of names
    os.link(src / "dir03" / "f002", src / "dir03" / "g002")
    os.link(src / "dir03" / "f002", src / "dir05" / "g002")
    (src / "dir04" / "empty").write_bytes(b"")
    _init(repo)
    # Listing a directory or reading a symlink the first time moves its atime (relatime),
    # which the trees record: the runs compared see settled times.
    _backup(repo, src, "--workers", "0")
    one = _backup(repo, src, "--workers", "0", "--host", "one")["summary"]
    two = _backup(repo, src, "--workers", "2", "--host", "two")["summary"]
    assert two["workers"] == 2
    assert two["data_blobs_new"] == 0 and two["tree_blobs_new"] <= len(src.parents), two
    for key in ("files_new", "files_unchanged", "dirs_new", "bytes_total", "other_entries"):
        assert two[key] == one[key], key
    fresh = tmp_path / "fresh"
    _init(fresh)
    _backup(fresh, src, "--workers", "2")
    _check(fresh)
    _restored_equal(tmp_path, fresh, src)


def test_files_handed_out_by_name_count_as_one_process_counts_them(tmp_path: Path) -> None:
    """A first backup through workers (new directories: their files go out by name, and
    their results are counted a batch at a time) sums to the one-process summary."""
    src, repo, one_copy = tmp_path / "src", tmp_path / "repo", tmp_path / "one"
    _tree(src)
    _init(repo)
    shutil.copytree(repo, one_copy)  # the same keys: the same chunks
    counts = {"2": _backup(repo, src, "--workers", "2")["summary"]}
    # The copy is another client's repository (the same ID): its own client state
    env = {"XDG_STATE_HOME": str(tmp_path / "st")}
    counts["0"] = _backup(one_copy, src, "--workers", "0", env=env)["summary"]
    assert counts["2"]["workers"] == 2
    for key in ("files_new", "bytes_total", "bytes_read", "data_blobs_new", "data_added"):
        assert counts["2"][key] == counts["0"][key], key


def test_unreadable_files_in_a_handed_out_directory_are_warnings(tmp_path: Path) -> None:
    """A worker that cannot open a file of a directory it was handed by name warns
    about it (the main process reports it) and the rest of the directory is saved."""
    from tests.test_backup_restore import run_unprivileged

    src, repo = tmp_path / "src", tmp_path / "repo"
    _tree(src, dirs=3, files=20)
    secret = src / "dir01" / "secret"
    secret.write_bytes(b"not for you")
    secret.chmod(0)
    if IS_ROOT:
        os.chown(secret, 65534, 65534)
    _init(repo)
    done = run_unprivileged("-r", repo, "--json", "backup", src, "--workers", "2")
    assert done.code == 3, done.err
    assert "Traceback" not in done.err
    assert f"{secret}: Permission denied; skipped" in done.err, done.err
    out = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "-t", out).code == 0
    landed = out / src.relative_to("/") / "dir01"
    names = sorted(os.listdir(src / "dir01"))
    assert sorted(os.listdir(landed)) == [n for n in names if n != "secret"]
    for name in names:
        if name not in ("secret", "link"):
            assert (landed / name).read_bytes() == (src / "dir01" / name).read_bytes()


def _names_changed_under_a_paused_worker(
    tmp_path: Path, change: Callable[[Path], None]
) -> tuple[int, bytes, bytes, Path]:
    """A backup whose one worker pauses before its first batch (the names of src/sub,
    files f0 to f4); ``change(sub)`` runs while it waits.  The exit code, stdout,
    stderr and the repository."""
    src, repo, gate = tmp_path / "src", tmp_path / "repo", tmp_path / "gate"
    (src / "sub").mkdir(parents=True)
    gate.mkdir()
    (src / "first").write_bytes(b"read before the workers start")
    for i in range(5):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(1000))
    _init(repo)
    # The first batch is sub's names (the top directory's file goes when it is walked).
    proc = _paused_backup(repo, src, gate, "1", workers="1")
    try:
        _wait_paused(proc, gate)
        change(src / "sub")
        (gate / "backup-worker-batch.go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err, repo


def test_a_file_gone_before_a_worker_lstats_it_is_a_warning(tmp_path: Path) -> None:
    """A file of a handed-out directory deleted while the worker waits: a warning, the
    rest saved (exit 3)."""
    src = tmp_path / "src"
    code, out, err, repo = _names_changed_under_a_paused_worker(
        tmp_path, lambda sub: (sub / "f3").unlink()
    )
    assert code == 3, err
    assert b"Traceback" not in err
    assert b"f3: No such file or directory; skipped" in err
    assert json.loads(out)["summary"]["files_new"] == 5
    out_dir = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "-t", out_dir).code == 0
    landed = out_dir / src.relative_to("/") / "sub"
    assert sorted(os.listdir(landed)) == ["f0", "f1", "f2", "f4"]
    for name in os.listdir(landed):  # the directory's mtime moved with the deletion
        assert (landed / name).read_bytes() == (src / "sub" / name).read_bytes()


def test_a_name_that_became_a_directory_before_a_worker_lstats_it_is_walked_here(
    tmp_path: Path,
) -> None:
    """A file of a handed-out directory replaced by a directory while the worker waits:
    the worker hands the name back, the main process walks the directory, and the
    snapshot holds it with its contents (exit 0, nothing skipped)."""
    src = tmp_path / "src"

    def to_directory(sub: Path) -> None:
        (sub / "f3").unlink()
        (sub / "f3").mkdir()
        (sub / "f3" / "inner").write_bytes(b"inside what was a file")

    code, out, err, repo = _names_changed_under_a_paused_worker(tmp_path, to_directory)
    assert code == 0, err
    assert b"Traceback" not in err
    summary = json.loads(out)["summary"]
    assert summary["files_new"] == 6
    out_dir = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "-t", out_dir).code == 0
    landed = out_dir / src.relative_to("/") / "sub"
    assert sorted(os.listdir(landed)) == ["f0", "f1", "f2", "f3", "f4"]
    assert (landed / "f3" / "inner").read_bytes() == b"inside what was a file"
    for i in (0, 1, 2, 4):  # sub's own mtime moved with the change: compared by content
        assert (landed / f"f{i}").read_bytes() == (src / "sub" / f"f{i}").read_bytes()
    _check(repo)


def test_a_worker_killed_in_the_middle_of_a_directory_stops_the_backup_cleanly(
    tmp_path: Path,
) -> None:
    """One directory of many batches of names; the worker kills itself (SIGKILL) at its
    third: exit 1, one line, no snapshot, a sound repository; the next run finishes."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    (src / "many").mkdir(parents=True)
    (src / "first").write_bytes(b"x")
    for i in range(600):
        (src / "many" / f"f{i:04d}").write_bytes(os.urandom(200 + i))
    _init(repo)
    _killed_at_third_batch_then_finished(tmp_path, repo, src, "1")


@pytest.mark.parametrize("top", [1 << 20, 1 << 40])
def test_a_stored_pack_travels_as_columns(top: int) -> None:
    """A worker reports a stored pack as columns (worker.entry_columns), 4-byte numbers
    where they fit and 8-byte ones where not; the main process reads back each blob's
    ID, type, offset, length and raw length, and refuses columns that disagree."""
    import msgpack

    from cas.backup.worker import entry_columns
    from cas.crypto import BlobType
    from cas.format.pack import PackEntry

    entries = [
        PackEntry(os.urandom(32), BlobType.DATA, 0, 100, 90),
        PackEntry(os.urandom(32), BlobType.TREE, 100, 40, 300),
        PackEntry(os.urandom(32), BlobType.DATA, top, 7, top + 1),
    ]
    wire = msgpack.unpackb(msgpack.packb(entry_columns(entries), use_bin_type=True), raw=False)
    assert wire[2] == ("I" if top < 1 << 32 else "Q")
    ids, types, offsets, lengths, raws = pool_mod._columns(wire)
    got = [
        PackEntry(ids[32 * i : 32 * (i + 1)], BlobType(types[i]), offsets[i], lengths[i], raws[i])
        for i in range(len(types))
    ]
    assert got == entries
    with pytest.raises(pool_mod.WorkerFailed):
        pool_mod._columns([ids[:-1], types, wire[2], wire[3]])
    with pytest.raises(pool_mod.WorkerFailed):
        pool_mod._columns([ids, types, wire[2], wire[3][:-4]])
    with pytest.raises(pool_mod.WorkerFailed):
        pool_mod._columns([ids, types, "d", wire[3]])
