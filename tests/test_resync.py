"""Chunk resynchronisation with the parent file (cas/chunking/resync.py, spec §7.7).

Taking the parent's chunks where their bytes come back must give exactly the
chunks and blob IDs the plain chunker gives, for any edit and both
algorithms, and must skip the cut search over unchanged regions (counted in
calls of the search, not in time).  The backup paths that use it (the
archiver in the main process, the chunk helper, the worker processes) store
only the new chunks of an edited file, which restores bit-exactly.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.backend.local import LocalBackend
from cas.chunking.chunker import (
    PERMUTED,
    WINDOW_AES,
    Chunker,
    ChunkerParams,
    StreamChunker,
    WindowChunker,
)
from cas.chunking.resync import ParentChunks, Resync
from cas.chunking.worker import ChunkWorker
from cas.crypto import BlobType
from cas.crypto.primitives import blob_id
from cas.repo import Repository, open_repository
from tests.support.cli import run_cas
from tests.support.trees import compare_trees
from tests.test_archiver import backend, backup, repo, walk_source
from tests.test_chunkworker import small_threshold

# test_archiver's in-memory repository and test_chunkworker's threshold fixtures
__all__ = ["backend", "repo", "small_threshold"]

KEY = bytes(range(32))
ID = functools.partial(blob_id, KEY, BlobType.DATA)
PARAMS = [
    ChunkerParams(64, 256, 1024),
    ChunkerParams(64, 1024, 1024),  # mostly max_size chunks
    ChunkerParams(256, 512, 2048),
]


def make(algorithm: str, params: ChunkerParams, seed: int) -> StreamChunker:
    p = ChunkerParams(params.min_size, params.avg_size, params.max_size, algorithm)
    rng = random.Random(seed)
    if algorithm == PERMUTED:
        return Chunker(bytes(rng.sample(range(256), 256)), p)
    return WindowChunker(rng.randbytes(16), p)


def reader(data: bytes, rng: random.Random) -> Callable[[int], bytes]:
    """Reads of random lengths, as a file or pipe may give them."""
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = data[pos : pos + min(n, rng.choice([1, 97, 5000, 1 << 20]))]
        pos += len(out)
        return out

    return read


def plain(chunker: StreamChunker, data: bytes) -> list[tuple[bytes, bytes]]:
    return [(c, ID(c)) for c in chunker.iter_chunks(reader(data, random.Random(0)))]


def parent_of(chunks: list[tuple[bytes, bytes]]) -> ParentChunks:
    return ParentChunks([i for _, i in chunks], [len(c) for c, _ in chunks])


def edit(old: bytes, ops: list[tuple[str, float, int]], rng: random.Random) -> bytes:
    """``old`` after insertions, deletions, overwrites, appends, truncations, prepends."""
    new = bytearray(old)
    for op, where, n in ops:
        at = int(where * len(new))
        piece = rng.randbytes(n) if rng.random() < 0.8 else bytes(n)
        if op == "insert":
            new[at:at] = piece
        elif op == "delete":
            del new[at : at + n]
        elif op == "overwrite":
            new[at : at + n] = piece[: len(new) - at]
        elif op == "append":
            new += piece
        elif op == "truncate":
            del new[at:]
        elif op == "prepend":
            new[:0] = piece
    return bytes(new)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "overwrite", "append", "truncate", "prepend"]),
        st.floats(0, 1),
        st.integers(1, 3000),
    ),
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    algorithm=st.sampled_from([WINDOW_AES, PERMUTED]),
    params=st.sampled_from(PARAMS),
    size=st.integers(0, 24_000),
    zeros=st.floats(0, 1),
    ops=OPS,
    whole=st.integers(0, 40),
)
def test_resync_gives_exactly_the_plain_chunks(
    seed: int,
    algorithm: str,
    params: ChunkerParams,
    size: int,
    zeros: float,
    ops: list[tuple[str, float, int]],
    whole: int,
) -> None:
    rng = random.Random(seed)
    split = int(size * zeros)
    # Zeros: runs of max_size chunks (no cut in them), random data: cuts.
    old = rng.randbytes(size - split) + bytes(split)
    chunker = make(algorithm, params, seed)
    before = plain(chunker, old)
    if whole and before:
        # a file of exactly k of the parent's chunks, and then perhaps some edits
        old_k = before[: whole % (len(before) + 1)]
        new = edit(b"".join(c for c, _ in old_k), ops, rng)
    else:
        new = edit(old, ops, rng)
    resync = Resync(chunker, ID, parent_of(before))
    got = list(resync.chunks(reader(new, rng)))
    assert got == plain(chunker, new)
    assert b"".join(c for c, _ in got) == new
    assert resync.taken + resync.searched == len(got)


class CountedSearch:
    """Counts the calls of a chunker's cut search (``_cut``)."""

    def __init__(self, chunker: StreamChunker) -> None:
        self.calls = 0
        search = chunker._cut

        def counted(*args: Any) -> int:
            self.calls += 1
            return search(*args)

        chunker._cut = counted  # type: ignore[method-assign]


@pytest.mark.parametrize("algorithm", [WINDOW_AES, PERMUTED])
def test_resync_skips_the_search_where_the_parent_holds_the_chunks(algorithm: str) -> None:
    rng = random.Random(7)
    chunker = make(algorithm, ChunkerParams(64, 256, 1024), 7)
    old = rng.randbytes(200_000)
    before = plain(chunker, old)
    counted = CountedSearch(chunker)
    assert len(before) > 300

    same = Resync(chunker, ID, parent_of(before))
    assert list(same.chunks(reader(old, rng))) == before
    assert (counted.calls, same.searched, same.taken) == (0, 0, len(before))

    # 1000 bytes inserted, 100 overwritten, 500 appended: a few chunks around each
    # edit are searched for, the rest taken.
    new = bytearray(old)
    new[150_000:150_100] = rng.randbytes(100)
    new[50_000:50_000] = rng.randbytes(1000)
    new += rng.randbytes(500)
    edited = Resync(chunker, ID, parent_of(before))
    got = list(edited.chunks(reader(bytes(new), rng)))
    counted.calls = 0
    assert got == plain(chunker, bytes(new))
    assert counted.calls > 300  # the plain chunker searches for every chunk
    assert edited.searched <= 30 and edited.taken >= len(got) - 30


# -- the backup paths -----------------------------------------------------------------


def _edited(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    mid = len(data) // 2
    new = data[:mid] + rng.randbytes(40_000) + data[mid:]
    quarter = len(new) // 4
    return new[:quarter] + rng.randbytes(5000) + new[quarter + 5000 :]


def test_archiver_and_chunk_helper_resync_with_the_parent(
    repo: Repository, tmp_path: Path, small_threshold: None
) -> None:
    """In the main process (``save_content``: a file below the helper's 2 MiB
    threshold here) and in the chunk helper (``_save_offloaded``: 3 MiB): the edited
    files' chunks are the plain chunker's, only the new ones are stored, and the
    main process searches for cuts only near the edits."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(1)
    old = {"here": rng.randbytes(7 << 18), "helper": rng.randbytes(3 << 20)}  # 1.75, 3 MiB
    for name, data in old.items():
        (src / name).write_bytes(data)
    first = backup(repo, src)
    new = {name: _edited(data, 2) for name, data in old.items()}
    for name, data in new.items():
        (src / name).write_bytes(data)
    chunker = repo.chunker()
    counted = CountedSearch(chunker)
    helper = ChunkWorker(repo.keys, chunker.params)
    try:
        second = backup(repo, src, parent=first.tree, chunker=chunker, offload=helper)
    finally:
        helper.close()
    nodes = walk_source(repo, second.tree, src)
    stored = {i for data in old.values() for _, i in _chunks(repo, data)}
    added = 0
    for name, data in new.items():
        chunks = _chunks(repo, data)
        assert nodes[os.fsencode(src / name)].content == [i for _, i in chunks]
        added += sum(len(c) for c, i in chunks if i not in stored)
        stored |= {i for _, i in chunks}
    # The chunks around four edits (up to 256 KiB each), not the 4.8 MiB of the files.
    assert second.summary.data_added == added < sum(map(len, new.values())) // 2
    plain_calls = len(_chunks(repo, new["here"]))  # about 28 chunks of 64 KiB
    assert 0 < counted.calls <= 12 < plain_calls


def _chunks(repo: Repository, data: bytes) -> list[tuple[bytes, bytes]]:
    """The plain chunker's chunks of ``data`` with their IDs."""
    chunker = repo.chunker()
    return [
        (c, repo.blob_id(BlobType.DATA, c))
        for c in chunker.iter_chunks(reader(data, random.Random(0)))
    ]


def test_incremental_backup_of_an_edited_file_stores_only_new_chunks(tmp_path: Path) -> None:
    """Through the CLI: worker processes (``--workers 2``) and the main process
    (``--workers 0``) each back up an edited 1 MiB file; only its new chunks are
    added, the content list is the plain chunker's, and it restores bit-exactly."""
    repo_dir, src = tmp_path / "repo", tmp_path / "src"
    small = ["--chunk-min", "4096", "--chunk-avg", "16384", "--chunk-max", "65536"]
    assert run_cas("-r", repo_dir, "init", *small).code == 0
    src.mkdir()
    versions = [random.Random(5).randbytes(1 << 20)]
    (src / "big").write_bytes(versions[0])
    (src / "small").write_bytes(b"unchanged\n")
    assert run_cas("-r", repo_dir, "backup", src, "--workers", "0").code == 0
    added = []
    for seed, workers in ((6, "2"), (7, "0")):
        versions.append(_edited(versions[-1], seed))
        (src / "big").write_bytes(versions[-1])
        done = run_cas("-r", repo_dir, "--json", "backup", src, "--workers", workers)
        assert done.code == 0, done.err
        added.append(done.json()["summary"]["data_added"])
    out = tmp_path / "out"
    assert run_cas("-r", repo_dir, "restore", "latest", "-t", out).code == 0
    assert compare_trees(src, out / src.relative_to("/")) == []
    repo = open_repository(LocalBackend(repo_dir), b"test-password")
    try:
        snaps = sorted((s for _, s in repo.iter_snapshots()), key=lambda s: s.time_ns)
        stored = {i for _, i in _chunks(repo, versions[0])}
        for snap, data, got in zip(snaps[1:], versions[1:], added, strict=True):
            chunks = _chunks(repo, data)
            node = walk_source(repo, snap.tree, src)[os.fsencode(src / "big")]
            assert node.content == [i for _, i in chunks]
            # of 1 MiB: the chunks (up to 64 KiB) around two edits
            assert got == sum(len(c) for c, i in chunks if i not in stored) < len(data) // 3
            stored |= {i for _, i in chunks}
    finally:
        repo.close()
