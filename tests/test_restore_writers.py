"""Restore's writer processes (cas/restore/pool.py, cas/restore/worker.py), through the CLI.

Each test restores with ``--workers 2``, so even small trees go through the
writer processes, and checks the result against the source with
tests/support/trees.py (``os`` and ``stat`` only).  Writers that die, a
main process killed with ``kill -9``, data the writers cannot read and
trees deeper than PATH_MAX are covered here; the whole suite can be run
with writers everywhere by setting CAS_TEST_WORKERS=2.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cas.repo import layout
from cas.repo.readerspec import LocatedReader, ReaderSpec
from tests.support.cli import run_cas, start_cas
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


def _many_dirs(root: Path, dirs: int = 12, files: int = 20) -> None:
    """``dirs`` directories of ``files`` small files, symlinks and a hardlink pair."""
    root.mkdir()
    for i in range(dirs):
        d = root / f"dir{i:02d}"
        d.mkdir()
        for j in range(files):
            (d / f"f{j:03d}").write_bytes(os.urandom(100 + 37 * j) * (1 + j % 3))
        settled_symlink(d / "link", f"f{i:03d}", i)
        os.utime(d, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    os.link(root / "dir00" / "f001", root / "dir05" / "hard")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "big").write_bytes(os.urandom(3 << 20))


def _backed_up(tmp_path: Path, build: object = _many_dirs) -> tuple[Path, Path]:
    src, repo = tmp_path / "src", tmp_path / "repo"
    assert callable(build)
    build(src)
    assert run_cas("-r", repo, "init").code == 0
    done = run_cas("-r", repo, "backup", src)
    assert done.code == 0, done.err
    return src, repo


def _set_flags(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, 0x40086602, struct.pack("l", flags))  # FS_IOC_SETFLAGS
    finally:
        os.close(fd)


def _restore(repo: Path, out: Path, *global_options: str) -> list[str | Path]:
    """``cas -r REPO [OPTIONS] restore latest -t OUT --workers 2``."""
    return ["-r", repo, *global_options, "restore", "latest", "-t", out, "--workers", "2"]


def _landed(out: Path, src: Path) -> Path:
    return out / src.relative_to("/")


def _leftovers(root: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if n.startswith(".cas-restore-")
    ]


def test_restore_through_writers_is_exact(tmp_path: Path) -> None:
    src, repo = _backed_up(tmp_path)
    out = tmp_path / "out"
    done = run_cas("-r", repo, "--json", "restore", "latest", "-t", out, "--workers", "2")
    assert done.code == 0, done.err
    doc = done.json()
    assert doc["summary"]["writers"] == 2
    assert doc["summary"]["files_restored"] == 12 * 20 + 1
    assert doc["summary"]["symlinks"] == 12 and doc["summary"]["hardlinks"] == 1
    assert compare_trees(src, _landed(out, src)) == []
    assert _leftovers(out) == []

    # Again over the restored tree: every file is compared, none rewritten.
    again = run_cas("-r", repo, "--json", "restore", "latest", "-t", out, "--workers", "2")
    assert again.code == 0, again.err
    assert again.json()["summary"]["files_restored"] == 0
    assert again.json()["summary"]["files_unchanged"] == 12 * 20 + 1
    assert compare_trees(src, _landed(out, src)) == []


def test_workers_zero_and_one(tmp_path: Path) -> None:
    src, repo = _backed_up(tmp_path)
    for n in ("0", "1"):
        out = tmp_path / f"out{n}"
        done = run_cas("-r", repo, "--json", "restore", "latest", "-t", out, "--workers", n)
        assert done.code == 0, done.err
        assert done.json()["summary"]["writers"] == int(n)
        assert compare_trees(src, _landed(out, src)) == []


def test_a_small_restore_starts_no_writers_by_default(tmp_path: Path) -> None:
    src, repo = _backed_up(tmp_path, lambda root: _many_dirs(root, dirs=6, files=8))
    out = tmp_path / "out"
    done = run_cas("-r", repo, "--json", "restore", "latest", "-t", out, env={"CAS_WORKERS": ""})
    assert done.code == 0, done.err
    assert done.json()["summary"]["writers"] == 0
    assert compare_trees(src, _landed(out, src)) == []


@pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, devices, flags)")
def test_full_tree_through_writers(tmp_path: Path) -> None:
    def build(src: Path) -> None:
        try:
            build_full_tree(src)
        except OSError as e:
            pytest.skip(f"cannot build the full test tree here: {e}")

    try:
        src, repo = _backed_up(tmp_path, build)
        out = tmp_path / "out"
        done = run_cas("-r", repo, "--json", "restore", "latest", "-t", out, "--workers", "2")
        assert done.code == 0, done.err
        assert done.json()["warnings"] == []
        assert compare_trees(src, _landed(out, src)) == []
    finally:
        unlock_tree(tmp_path)


def test_deeper_than_path_max_through_writers(tmp_path: Path) -> None:
    def build(src: Path) -> None:
        src.mkdir()
        build_deep_tree(src, 2100)

    try:
        src, repo = _backed_up(tmp_path, build)
        out = tmp_path / "out"
        done = run_cas("-r", repo, "--json", "restore", "latest", "-t", out, "--workers", "2")
        assert done.code == 0, done.err
        assert compare_trees(src, _landed(out, src)) == []
    finally:
        remove_tree(tmp_path)  # deeper than pytest's own clean-up can go


def test_a_writer_that_dies_is_reported_and_its_work_redone(tmp_path: Path) -> None:
    """Each writer kills itself (SIGKILL) after its 7th file: the main process restores
    their unfinished batches, removes their temporary files, and warns (exit 3)."""
    src, repo = _backed_up(tmp_path)
    out = tmp_path / "out"
    done = run_cas(*_restore(repo, out, "--json"), env={"CAS_FAILPOINTS": "restore-writer-file@7"})
    assert done.code == 3, done.err
    assert "Traceback" not in done.err
    assert "restore writer process" in done.err and "killed by signal 9" in done.err
    assert done.json()["summary"]["failed"] == []
    assert compare_trees(src, _landed(out, src)) == []
    assert _leftovers(out) == []


def test_kill_9_of_the_restore_leaves_no_writer_behind(tmp_path: Path) -> None:
    """The writers pause at their 3rd file; the main process is killed with SIGKILL; the
    writers die with it, and a second restore into the same target is exact."""
    src, repo = _backed_up(tmp_path)
    out, gate = tmp_path / "out", tmp_path / "gate"
    gate.mkdir()
    proc = start_cas(
        *_restore(repo, out),
        env={
            "CAS_FAILPOINTS": "restore-writer-file@3:pause",
            "CAS_FAILPOINTS_DIR": str(gate),
        },
    )
    kill_when_paused(proc, gate / "restore-writer-file.paused")
    done = run_cas("-r", repo, "restore", "latest", "-t", out, "--workers", "2")
    assert done.code == 0, done.err
    assert compare_trees(src, _landed(out, src)) == []
    assert _leftovers(out) == []


@pytest.mark.damaged_repo_ok("the first copy of a blob stored twice is damaged")
def test_data_a_writer_cannot_read_is_read_by_the_main_process(tmp_path: Path) -> None:
    """A blob stored twice, its first copy damaged: the writer fails on it, the main
    process reads the other copy (it has the whole index)."""
    from cas.backend.local import LocalBackend
    from tests.support.damaged import duplicates

    d = duplicates(LocalBackend(tmp_path / "repo"))
    first_blob = bytes.fromhex(d.names["first_blob"].split(":")[1])
    repo = d.open()
    loc = repo.locate(first_blob)
    repo.close()
    pack = tmp_path / "repo" / layout.pack_name(loc.pack_id)
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    target = tmp_path / "out"
    r = run_cas(
        "-r",
        tmp_path / "repo",
        "--json",
        "restore",
        d.snapshot.hex(),
        "--target",
        target,
        "--workers",
        "2",
    )
    assert r.code == 0, r.err
    assert r.json()["summary"]["writers"] == 2
    for name, content in d.files.items():
        assert (target / name.decode()).read_bytes() == content


@pytest.mark.damaged_repo_ok("a pack deleted")
def test_a_lost_pack_fails_the_same_files_with_and_without_writers(tmp_path: Path) -> None:
    _, repo = _backed_up(tmp_path)
    packs = [p for p in (repo / "data").rglob("*") if p.is_file()]
    max(packs, key=lambda p: p.stat().st_size).unlink()
    failed = {}
    for n in ("0", "2"):
        out = tmp_path / f"out{n}"
        done = run_cas(
            "-r", repo, "--no-cache", "--json", "restore", "latest", "-t", out, "--workers", n
        )
        assert done.code == 1, done.err
        assert "Traceback" not in done.err
        failed[n] = {os.path.relpath(f, out) for f in done.json()["summary"]["failed"]}
        assert failed[n]
        assert _leftovers(out) == []
    assert failed["0"] == failed["2"]


def test_reader_spec_never_shows_its_key_and_locations_are_counted() -> None:
    spec = ReaderSpec("/srv/repo", (), "full", b"\x01" * 100)
    assert "\\x01" not in repr(spec) and "01" * 4 not in repr(spec)
    assert ReaderSpec.decode(spec.encode()) == spec

    class _NoBackend:
        def close(self) -> None:
            pass

    reader = LocatedReader(_NoBackend(), None)  # type: ignore[arg-type]
    reader.add(b"b" * 32, b"p" * 32, 10, 20)
    reader.add(b"b" * 32, b"p" * 32, 10, 20)
    reader.forget([b"b" * 32])
    assert reader.locate(b"b" * 32).offset == 10
    reader.forget([b"b" * 32])
    with pytest.raises(Exception, match="not in the index"):
        reader.locate(b"b" * 32)


def test_a_writer_keeps_fewer_read_units_only_on_local_storage() -> None:
    """Writers on local storage keep LOCAL_UNITS_KEPT units (a re-read is a pread);
    over S3, where a re-read is a request, the one-process UNITS_KEPT."""
    from cas.repo.unitcache import UNITS_KEPT
    from cas.restore.pool import LOCAL_UNITS_KEPT, WriterPool

    spec = ReaderSpec("/srv/repo", (), "full", b"\x01" * 100)
    assert WriterPool(spec, 2, connections=0)._loading()["units"] == LOCAL_UNITS_KEPT
    assert "units" not in WriterPool(spec, 2, connections=4)._loading()
    assert LOCAL_UNITS_KEPT < UNITS_KEPT

    class _NoBackend:
        def close(self) -> None:
            pass

    reader = LocatedReader(_NoBackend(), None)  # type: ignore[arg-type]
    reader.read_unit = 16
    assert reader._units().kept == UNITS_KEPT
    reader = LocatedReader(_NoBackend(), None)  # type: ignore[arg-type]
    reader.units_kept = LOCAL_UNITS_KEPT
    assert reader._units().kept == LOCAL_UNITS_KEPT


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_target_that_passes_things_on_changes_nothing_restored(
    tmp_path: Path, workers: str
) -> None:
    """Into a target with a default ACL, or setgid to another group, or an inheritable
    inode flag, entries come out as recorded: the shortcut for entries created in a
    directory that passes nothing on (no chown, no xattr listing, no flags) is not taken."""
    from tests.support.trees import _DEFAULT_ACL

    src, repo = _backed_up(tmp_path, lambda root: _many_dirs(root, dirs=6, files=3))
    kinds: list[tuple[str, Any]] = [
        ("acl", lambda t: os.setxattr(t, "system.posix_acl_default", _DEFAULT_ACL)),
        ("setgid", lambda t: (os.chown(t, -1, 4242), os.chmod(t, 0o2775))),
    ]
    if IS_ROOT:
        kinds.append(("noatime", lambda t: _set_flags(t, 0x80)))  # chattr +A
    for kind, prepare in kinds:
        out = tmp_path / f"out-{kind}"
        out.mkdir()
        try:
            prepare(out)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.ENOTTY, errno.EPERM):
                continue  # this filesystem or user cannot: nothing to test here
            raise
        done = run_cas(*_restore(repo, out, "--json")[:-2], "--workers", workers)
        assert done.code == 0, (kind, done.err)
        assert compare_trees(src, _landed(out, src)) == [], kind


def test_writers_send_each_entrys_action_only_when_it_is_shown(tmp_path: Path) -> None:
    """The CLI shows no per-entry action on a real restore, so writers send none back
    (78,000 names the main process would only drop); a reporter that shows them
    still gets every entry a writer restored."""
    src, repo = _backed_up(tmp_path, lambda root: _many_dirs(root, dirs=6, files=4))
    seen = tmp_path / "seen"
    record_pool = (
        "import cas.restore.pool as p\n"
        "_start = p.WriterPool._start\n"
        "def _noted(self):\n"
        f"    open({str(seen)!r}, 'a').write(f'actions={{self.actions}}\\n')\n"
        "    return _start(self)\n"
        "p.WriterPool._start = _noted\n"
    )
    shown = record_pool + (
        "import cas.cli.cmd_restore as c\n"
        "c._Progress.wants_actions = lambda self: True\n"
        "c._Progress.action = lambda self, what, path: open("
        f"{str(seen)!r}, 'a').write(what + ' ' + path.decode() + '\\n')\n"
    )
    done = run_cas(*_restore(repo, tmp_path / "a"), prelude=record_pool)
    assert done.code == 0, done.err
    assert set(seen.read_text().splitlines()) == {"actions=False"}
    seen.unlink()
    done = run_cas(*_restore(repo, tmp_path / "b"), prelude=shown)
    assert done.code == 0, done.err
    lines = seen.read_text().splitlines()
    assert "actions=True" in lines
    files = {line.split(" ", 1)[1] for line in lines if line.startswith("file ")}
    landed = _landed(tmp_path / "b", src)
    assert compare_trees(src, landed) == []  # before listing it changes the access times
    assert files == {
        str(p) for p in landed.rglob("*") if p.is_file() and not p.is_symlink() and p.name != "hard"
    }


def _many_files(root: Path) -> None:
    """600 files of 12 KiB in 20 directories (7 MiB that does not compress: several
    2 MiB parts of packs)."""
    for i in range(20):
        d = root / f"d{i}"
        d.mkdir(parents=True)
        for j in range(30):
            (d / f"f{j:02d}").write_bytes(os.urandom(12 << 10))


# The main process takes every other part of a pack met (not by CPU time: a small tree
# would leave it all to one side) and notes each batch of its own files it writes.
_ALTERNATE = """
import cas.restore.restorer as r
_turn = [False]
def _take_here(self):
    _turn[0] = not _turn[0]
    return _turn[0]
r.Restorer._take_here = _take_here
_write_here = r.Restorer._write_here
def _counted(self):
    open({seen!r}, "a").write("x")
    return _write_here(self)
r.Restorer._write_here = _counted
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
@pytest.mark.parametrize("failpoint", ["", "restore-writer-file@7"])
def test_with_fewer_writers_than_cores_the_main_process_writes_a_share(
    tmp_path: Path, failpoint: str
) -> None:
    """``--workers`` below the usable cores: the main process writes the files of the
    parts of packs it takes besides handing out the writer's.  The restore is exact, and
    so it is when the writer dies (its unfinished batches are restored by the main
    process, exit 3)."""
    src, repo = _backed_up(tmp_path, _many_files)
    seen, out = tmp_path / "seen", tmp_path / "out"
    env = {"CAS_FAILPOINTS": failpoint} if failpoint else {}
    done = run_cas(
        "-r", repo, "--json", "restore", "latest", "-t", out, "--workers", "1",
        env=env, prelude=_ALTERNATE.format(seen=str(seen)),
    )  # fmt: skip
    assert done.code == (3 if failpoint else 0), done.err
    assert "Traceback" not in done.err
    assert done.json()["summary"]["writers"] == 1
    assert done.json()["summary"]["failed"] == []
    assert seen.exists()  # the main process wrote batches of its own files
    assert compare_trees(src, _landed(out, src)) == []
    assert _leftovers(out) == []


def test_a_writer_imports_only_what_it_reads_and_writes_with() -> None:
    """Memory: a writer process is an interpreter of its own, and what it imports stays in
    its memory for the whole restore.  Importing its module pulls in neither the rest of
    the repository layer (``cas.repo``'s names are looked up when first used), nor the
    chunker (and fastcdc, which brings click), nor the CLI."""
    code = (
        "import sys, cas.restore.worker; "
        "print(' '.join(m for m in sys.modules if m.startswith(('cas', 'click', 'fastcdc'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True
    )
    loaded = set(done.stdout.split())
    assert "cas.repo.readerspec" in loaded
    unwanted = {
        "click",
        "fastcdc",
        "cas.chunking.chunker",
        "cas.repo.connect",
        "cas.repo.repository",
        "cas.repo.packwriter",
        "cas.cli",
    }
    assert not loaded & unwanted


def test_a_writer_does_not_load_openssl() -> None:
    """Memory: ``hashlib`` maps OpenSSL's libcrypto (3.5 MiB resident per process); a
    writer reads blobs (BLAKE3 names, never a whole stored file's SHA-256), so importing
    its module loads neither, while SHA-256 names are still computed on first use."""
    code = (
        "import sys, cas.restore.worker; "
        "print('hashlib' in sys.modules, '_hashlib' in sys.modules); "
        "from cas.ids import storage_id; "
        "print(storage_id(b'').hex())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True
    )
    assert done.stdout.split() == [
        "False",
        "False",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ]


def test_the_repository_package_still_offers_its_names() -> None:
    """``cas.repo``'s names, looked up on first use, are the modules' own."""
    import cas.repo
    from cas.repo import connect, keyring, repository, verified

    assert cas.repo.open is connect.open
    assert cas.repo.Repository is repository.Repository
    assert cas.repo.KeyInfo is keyring.KeyInfo
    assert cas.repo.read_verified is verified.read_verified
    assert set(cas.repo.__all__) <= set(dir(cas.repo)) | set(cas.repo._WHERE)
    with pytest.raises(AttributeError):
        cas.repo.no_such_name  # noqa: B018


def test_a_whole_restore_of_a_large_snapshot_starts_its_writers_before_the_index_load(
    tmp_path: Path,
) -> None:
    """When the snapshot's summary counts at least 256 files and the whole snapshot is
    restored, the writers start before the index is loaded (their start-up runs beside
    it) and take every file; restoring part of it starts them with the first batch."""

    def build(root: Path) -> None:
        for i in range(3):
            (root / f"d{i}").mkdir(parents=True)
            for j in range(100):
                (root / f"d{i}" / f"f{j:03d}").write_bytes(b"%d-%d " % (i, j) * (1 + j))

    src, repo = _backed_up(tmp_path, build)
    seen = tmp_path / "seen"
    record = (
        "import cas.restore.pool as p, cas.repo.repository as r\n"
        "_start, _load = p.WriterPool._start, r.Repository.load_index\n"
        "def _started(self):\n"
        f"    if self._writers is None: open({str(seen)!r}, 'a').write('start\\n')\n"
        "    return _start(self)\n"
        "def _loaded(self, *a, **k):\n"
        f"    open({str(seen)!r}, 'a').write('index\\n')\n"
        "    return _load(self, *a, **k)\n"
        "p.WriterPool._start = _started\n"
        "r.Repository.load_index = _loaded\n"
    )
    out = tmp_path / "out"
    args = ["-r", repo, "--json", "restore", "latest", "-t", out]
    done = run_cas(*args, env={"CAS_WORKERS": "2"}, prelude=record)
    assert done.code == 0, done.err
    assert seen.read_text().split()[:2] == ["start", "index"]
    assert done.json()["summary"]["writers"] == 2
    assert compare_trees(src, _landed(out, src)) == []
    seen.unlink()
    part = tmp_path / "part"
    args = ["-r", repo, "restore", f"latest:{src}/d1", "-t", part, "--workers", "2"]
    done = run_cas(*args, prelude=record)
    assert done.code == 0, done.err
    assert seen.read_text().split()[:2] == ["index", "start"]
    assert sorted(os.listdir(part)) == [f"f{j:03d}" for j in range(100)]
