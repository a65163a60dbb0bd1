"""Memory bounds of issue 17 (tracemalloc peaks, no timing): a small file does not touch
the chunker's 2 x max_size buffer, a long stream's mapping does not outlive it, and a
check of a local repository proves a pack in pieces in the main process too."""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from cas import crypto
from cas.backend.local import LocalBackend
from cas.chunking import chunker as chunker_mod
from cas.chunking.chunker import Chunker, ChunkerParams, StreamChunker, WindowChunker
from cas.crypto import BlobType
from tests.support.damaged import write_pack
from tests.support.repos import new_repo
from tests.test_chunker import ShortReads

MIB = 1 << 20


def _into(data: bytes) -> ShortReads:
    """``read(n)`` and ``readinto(view)`` over ``data`` in reads of up to 300,000 bytes (a
    file as the backup reads it: into the chunker's own buffer)."""
    return ShortReads(data, random.Random(0), 300_000, True)


def _traced(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_chunking_a_small_file_allocates_about_one_mib_not_the_whole_buffer() -> None:
    """Default sizes (2 x 8 MiB buffer): a 1 KiB file, read with readinto, costs the kept
    1 MiB buffer and its chunk; before, a fresh chunker allocated (and zeroed) 16 MiB."""
    chunker = WindowChunker(bytes(16), ChunkerParams())
    assert chunker.buffer_size == 16 * MIB
    data = os.urandom(1024)
    peak = _traced(lambda: list(chunker.iter_chunks(_into(data))))
    assert peak < 1.25 * MIB, peak


def _bytes_read(data: bytes) -> Callable[[int], bytes]:
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = data[pos : pos + n]
        pos += len(out)
        return out

    return read


def _check_long_stream(chunker: StreamChunker, data: bytes) -> None:
    into = list(chunker.iter_chunks(_into(data)))
    assert b"".join(into) == data
    # the same cuts as the bytes path (no readinto: no mapping, one growing buffer)
    assert [len(c) for c in into] == [len(c) for c in chunker.iter_chunks(_bytes_read(data))]
    # only the small buffer is kept: the stream's mapping was unmapped at its end
    assert [len(b) for b in chunker._buffers] == [min(chunker.buffer_size, MIB)]


def test_a_long_stream_continues_in_a_mapping_with_the_same_cuts() -> None:
    """Streams that outgrow the 1 MiB buffer (both algorithms, small chunk sizes in a
    4 MiB buffer, so the carried tail moves in the mapping too) cut where the bytes
    path cuts, and leave only the 1 MiB buffer behind."""
    rng = random.Random(7)
    data = rng.randbytes(9 * MIB + 12345)
    params = ChunkerParams(4096, 16384, 65536)
    perm = bytes(rng.sample(range(256), 256))
    for chunker in (
        WindowChunker(bytes(range(16)), params, buffer_size=4 * MIB),
        Chunker(perm, params, buffer_size=4 * MIB),
    ):
        _check_long_stream(chunker, data)
        _check_long_stream(chunker, data[: MIB + 1])  # just over the small buffer
        _check_long_stream(chunker, data[:MIB])  # exactly the small buffer


def test_a_stream_larger_than_max_chunks_in_default_sizes_like_its_whole() -> None:
    chunker = WindowChunker(bytes(range(16)), ChunkerParams())
    data = random.Random(3).randbytes(20 * MIB)
    _check_long_stream(chunker, data)
    assert chunker_mod.SMALL_BUFFER == MIB


def test_check_proves_a_local_pack_in_pieces_in_the_main_process(tmp_path: Path) -> None:
    """``Repository.verify_pack`` on a local repository (check --read-data without helper
    processes, its four threads at once) holds a few 1 MiB pieces and blobs (5 MiB
    measured), not the 16 MiB pack."""
    repo = new_repo(LocalBackend(tmp_path), pack_size=16 * MIB)
    blobs = [os.urandom(MIB) for _ in range(16)]
    pack_id = write_pack(repo, BlobType.DATA, blobs)
    entries: list[object] = []
    peak = _traced(lambda: entries.extend(repo.verify_pack(pack_id)))
    assert len(entries) == 16
    assert peak < 8 * MIB, peak
    assert crypto.BlobType.DATA in {e.type for e in repo.verify_pack(pack_id)}


def test_check_opens_a_large_blob_where_it_was_read(tmp_path: Path) -> None:
    """A large stored blob is opened in the piece read for it and its plaintext only
    hashed: the piece and the decrypted blob (12 MiB), not also a copy of the sealed
    bytes and one of the plaintext (24 MiB before)."""
    repo = new_repo(LocalBackend(tmp_path), pack_size=16 * MIB)
    pack_id = write_pack(repo, BlobType.DATA, [os.urandom(6 * MIB)])
    entries: list[object] = []
    peak = _traced(lambda: entries.extend(repo.verify_pack(pack_id)))
    assert len(entries) == 1
    assert peak < 14 * MIB, peak
