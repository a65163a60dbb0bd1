"""The chunk helper process (cas/chunking/worker.py), for real: a spawned process and SCM_RIGHTS.

It must find exactly the chunks, blob IDs and whole-file digest the backup
process would, report read errors as OSError, and never be needed: when it
cannot start or dies, or the file changes between its read and the
archiver's, the file is chunked in the backup process instead.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from cas.chunking import worker as chunkworker
from cas.chunking.worker import ChunkWorker, WorkerGone
from cas.crypto import BlobType, IdKey, MasterKeys
from cas.repo import Repository
from tests.support.cli import run_cas
from tests.test_archiver import backend, backup, content, repo, walk, walk_source

# backend and repo: test_archiver's in-memory repository fixtures, used here too.
__all__ = ["backend", "repo"]

MiB = 1 << 20
HANG = 300.0  # seconds: only bounds a hang, never a timed assertion


@pytest.fixture
def helper(repo: Repository) -> Iterator[ChunkWorker]:
    chunker = repo.chunker()
    worker = ChunkWorker(repo.keys, chunker.params)
    yield worker
    worker.close()


def local_chunks(repo: Repository, data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0

    def read(n: int) -> bytes:
        nonlocal pos
        part = data[pos : pos + n]
        pos += len(part)
        return part

    for chunk in repo.chunker().iter_chunks(read):
        out.append((len(chunk), repo.blob_id(BlobType.DATA, chunk)))
    return out


def test_the_helper_gets_a_key_that_opens_nothing(repo: Repository) -> None:
    """What crosses the socket (the init message) is the ID key alone: the process that
    reads files holds no key that could open the repository's data or index."""
    worker = ChunkWorker(repo.keys, repo.chunker().params)
    sent = msgpack.packb(worker._init, use_bin_type=True)
    assert IdKey.decode(worker._init["key"]) == repo.keys.ids_only()
    assert isinstance(repo.keys, MasterKeys)
    assert repo.keys.data_key not in sent and repo.keys.index_key not in sent


def test_the_helper_finds_what_the_backup_process_would(
    repo: Repository, helper: ChunkWorker, tmp_path: Path
) -> None:
    rnd = random.Random(3)
    for size in (20 * MiB + 12345, 3 * MiB, 0):
        data = rnd.randbytes(size)
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            found = list(helper.chunks(fd, size))
        finally:
            os.close(fd)
        assert found == local_chunks(repo, data)
        digest = repo.file_digest()
        digest.update(data)
        assert (helper.digest, helper.bytes_read) == (digest.digest(), size)
    assert not helper.failed


def test_stopping_early_leaves_the_helper_ready_for_the_next_file(
    repo: Repository, helper: ChunkWorker, tmp_path: Path
) -> None:
    data = random.Random(4).randbytes(24 * MiB)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        stream = helper.chunks(fd, len(data))
        next(stream)
        stream.close()  # waits for the rest of this file's messages
        assert list(helper.chunks(fd, len(data))) == local_chunks(repo, data)
    finally:
        os.close(fd)
    assert not helper.failed


def test_a_read_error_in_the_helper_is_an_oserror(helper: ChunkWorker, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: pread fails with EISDIR
    try:
        with pytest.raises(IsADirectoryError):
            list(helper.chunks(fd, 1))
    finally:
        os.close(fd)
    assert not helper.failed


def test_a_helper_that_dies_is_not_used_again(helper: ChunkWorker, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(MiB))
    fd = os.open(path, os.O_RDONLY)
    try:
        list(helper.chunks(fd, MiB))
        assert helper._proc is not None
        os.kill(helper._proc.pid, signal.SIGKILL)
        helper._proc.wait()
        with pytest.raises(WorkerGone):
            list(helper.chunks(fd, MiB))
        assert helper.failed
        with pytest.raises(WorkerGone):
            list(helper.chunks(fd, MiB))
    finally:
        os.close(fd)


# -- in the archiver ---------------------------------------------------------------


@pytest.fixture
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cas.backup.archiver.OFFLOAD_MIN", 2 * MiB)


def files(root: Path) -> dict[str, bytes]:
    rnd = random.Random(9)
    shared = rnd.randbytes(5 * MiB)
    made = {
        "big": rnd.randbytes(6 * MiB) + shared,
        "copy": shared + rnd.randbytes(3 * MiB),  # half of it deduplicates
        "small": rnd.randbytes(100_000),
    }
    root.mkdir()
    for name, data in made.items():
        (root / name).write_bytes(data)
    return made


def assert_content(
    repo: Repository, nodes: dict[bytes, Any], root: Path, made: dict[str, bytes]
) -> None:
    """Every file of ``made`` reads back from the snapshot's nodes exactly."""
    for name, data in made.items():
        assert content(repo, nodes[os.fsencode(root / name)]) == data


def test_backup_through_the_helper_is_the_same_snapshot(
    repo: Repository, helper: ChunkWorker, tmp_path: Path, small_threshold: None
) -> None:
    made = files(tmp_path / "src")
    via = backup(repo, tmp_path / "src", offload=helper)
    assert helper._proc is not None and not helper.failed  # it was used
    assert via.warnings == []
    nodes = walk(repo, via.tree)
    assert_content(repo, nodes, tmp_path / "src", made)
    # the same content lists, digests and counts as chunking in the backup process
    plain = backup(repo, tmp_path / "src", force=True)
    assert walk_source(repo, plain.tree, tmp_path / "src") == walk_source(
        repo, via.tree, tmp_path / "src"
    )
    s = via.summary
    assert s.bytes_read == sum(map(len, made.values()))
    assert s.data_added < s.bytes_read  # the shared 5 MiB were stored once
    stored = {
        blob: size
        for node in nodes.values()
        if node.type == "file"
        for blob, size in zip(node.content, node.sizes, strict=True)
    }
    assert (s.data_added, s.data_blobs_new) == (sum(stored.values()), len(stored))


def test_a_sparse_file_is_chunked_here_where_its_holes_are_not_read(
    repo: Repository, helper: ChunkWorker, tmp_path: Path, small_threshold: None
) -> None:
    """The helper reads holes as zeros: a sparse file above the threshold stays in the
    backup process, which skips them."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"d" * 5000)
        f.truncate(4 * MiB)
    if os.stat(src / "sparse").st_blocks * 512 >= 4 * MiB:
        pytest.skip("this filesystem does not keep holes")
    done = backup(repo, src, offload=helper)
    assert helper._proc is None  # never started
    assert done.summary.bytes_read < MiB
    assert content(repo, walk(repo, done.tree)[os.fsencode(src / "sparse")]) == (
        b"d" * 5000 + bytes(4 * MiB - 5000)
    )


def test_a_file_changing_between_the_two_reads_is_read_again(
    repo: Repository,
    helper: ChunkWorker,
    tmp_path: Path,
    small_threshold: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = files(tmp_path / "src")
    real = os.pread
    changed: list[int] = []

    def pread_after_a_change(fd: int, n: int, offset: int) -> bytes:
        data = real(fd, n, offset)
        if not changed:  # the archiver's first read: of the first chunk of "big" to store
            changed.append(offset)
            return bytes(len(data))  # as if the file now held zeros there
        return data

    monkeypatch.setattr(os, "pread", pread_after_a_change)
    done = backup(repo, tmp_path / "src", offload=helper)
    assert changed  # the helper's chunk did not match: read again the normal way
    nodes = walk(repo, done.tree)
    assert_content(repo, nodes, tmp_path / "src", made)


def test_a_helper_that_cannot_start_changes_nothing(
    repo: Repository, tmp_path: Path, small_threshold: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = files(tmp_path / "src")
    chunker = repo.chunker()
    worker = ChunkWorker(repo.keys, chunker.params)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    try:
        done = backup(repo, tmp_path / "src", offload=worker)
    finally:
        worker.close()
    assert worker.failed and done.warnings == []
    nodes = walk(repo, done.tree)
    assert_content(repo, nodes, tmp_path / "src", made)


def test_helper_gets_no_secrets_in_its_environment(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real = chunkworker.subprocess.Popen

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        seen["argv"] = args[0]
        return real(*args, **kwargs)

    monkeypatch.setenv("CAS_PASSWORD", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setattr(chunkworker.subprocess, "Popen", recording)
    chunker = repo.chunker()
    worker = ChunkWorker(repo.keys, chunker.params)
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert len(list(worker.chunks(fd, 1000))) == 1
    finally:
        os.close(fd)
        worker.close()
    assert not any(k.startswith(("CAS_", "AWS_")) for k in seen["env"])
    # python -m cas.chunking.worker SOCKET_FD PARENT_PID: nothing else on the command line
    assert seen["argv"][1:3] == ["-m", "cas.chunking.worker"] and len(seen["argv"]) == 5
    assert seen["argv"][4] == str(os.getpid())


# -- the real command, killed --------------------------------------------------------


def _helpers_in(cwd: Path) -> list[int]:
    """Chunk helpers whose working directory is ``cwd`` (so only this test's)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"cas.chunking.worker" in cmdline and os.readlink(f"/proc/{entry}/cwd") == str(
                    cwd
                ):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_a_killed_backup_leaves_no_helper_and_the_next_one_completes(tmp_path: Path) -> None:
    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    data = random.Random(12).randbytes(40 * MiB)
    (src / "large").write_bytes(data)
    assert run_cas("-r", repo, "init", cwd=tmp_path).code == 0
    killed = run_cas(
        "-r", repo, "backup", src, env={"CAS_FAILPOINTS": "pack-stored@1"}, cwd=tmp_path
    )
    assert killed.code == -signal.SIGKILL, killed.err
    # The helper sees its socket close and ends: wait for each one's exit (the
    # bound only stops a hang from stalling the suite; it is not a measured time).
    for pid in _helpers_in(tmp_path):
        try:
            exited = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone
        try:
            assert select.select([exited], [], [], HANG)[0], f"chunk helper {pid} never ended"
        finally:
            os.close(exited)
    assert _helpers_in(tmp_path) == []
    check = run_cas("-r", repo, "check", "--read-data", cwd=tmp_path)
    assert check.code == 0, check.err + check.out
    again = run_cas("-r", repo, "--json", "backup", src, cwd=tmp_path)
    assert again.code == 0, again.err
    # (the pack stored before the kill is in no index: sent again, spec §14.3)
    assert again.json()["summary"]["data_added"] == len(data)
    out = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "--target", out, cwd=tmp_path).code == 0
    assert (out / str(src).lstrip("/") / "large").read_bytes() == data
    assert _helpers_in(tmp_path) == []
