"""Small repositories built through the library, for format and damage tests."""

from __future__ import annotations

import os
import random
import time

from cas import crypto
from cas.backend.base import Backend
from cas.chunking.chunker import ChunkerParams
from cas.crypto import BlobType
from cas.format.snapshot import Snapshot
from cas.format.tree import Node, encode_tree
from cas.repo import Repository, init_repository

PASSWORD = b"test-password"
CHEAP_KDF = dict(opslimit=1, memlimit=8 << 20)
SMALL_CHUNKS = ChunkerParams(16 << 10, 64 << 10, 256 << 10)


def cheap_kdf() -> crypto.KdfParams:
    """Argon2id at its cheapest, with a fresh salt (below the writers' minimum: test-only)."""
    return crypto.KdfParams.for_tests(**CHEAP_KDF)


def new_repo(backend: Backend, pack_size: int = 1 << 20) -> Repository:
    """An empty repository with cheap KDF, small chunks and 1 MiB packs."""
    return init_repository(
        backend, PASSWORD, chunker=SMALL_CHUNKS, pack_size=pack_size, kdf=cheap_kdf()
    )


def populate(repo: Repository, n_files: int = 5, seed: int = 1) -> tuple[bytes, dict[bytes, bytes]]:
    """Store ``n_files`` pseudo-random files as one snapshot; returns (snapshot id, name->data)."""
    rnd = random.Random(seed)
    chunker = repo.chunker()
    files: dict[bytes, bytes] = {}
    nodes = []
    for i in range(n_files):
        data = rnd.randbytes(rnd.randrange(1000, 300_000))
        name = b"file%d" % i
        files[name] = data
        node = Node(name=name, type="file", mode=0o644, size=len(data))
        pos = 0
        for end in chunker.cut_points(data):
            chunk = data[pos:end]
            bid, _ = repo.save_blob(BlobType.DATA, chunk)
            node.content.append(bid)
            node.sizes.append(len(chunk))
            pos = end
        h = repo.file_digest()
        h.update(data)
        node.digest = h.digest()
        nodes.append(node)
    tree, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    sid = repo.save_snapshot(
        Snapshot(time.time_ns(), tree, [b"/data"], "testhost", "tester", program="test")
    )
    return sid, files


def flip_byte(backend: Backend, name: str, pos: int) -> bytes:
    """Rewrite ``name`` with byte ``pos`` inverted (delete, then write: objects are write-once)."""
    data = bytearray(backend.read(name))
    data[pos] ^= 0xFF
    backend.delete(name)
    backend.write(name, bytes(data))
    return bytes(data)


def sample_positions(size: int, count: int = 40, seed: int = 0) -> list[int]:
    """First, last, the trailer area and random positions of a ``size``-byte object."""
    rnd = random.Random(seed)
    picks = {0, size - 1, *range(max(0, size - 12), size)}
    picks.update(rnd.randrange(size) for _ in range(count))
    return sorted(picks)


def urandom_name() -> str:
    """A short random name."""
    return os.urandom(4).hex()


def snapshots_sharing_packs(repo: Repository, sets: list[list[bytes]]) -> list[bytes]:
    """One snapshot per set of file contents (/a, /b, ...), every blob saved before the
    first snapshot flushes, so that the snapshots share packs; returns their IDs."""
    trees = []
    for files in sets:
        nodes = []
        for i, data in enumerate(files):
            bid, _ = repo.save_blob(BlobType.DATA, data)
            nodes.append(
                Node(name=b"f%d" % i, type="file", size=len(data), content=[bid], sizes=[len(data)])
            )
        trees.append(repo.save_blob(BlobType.TREE, encode_tree(nodes))[0])
    return [
        repo.save_snapshot(Snapshot(n + 1, tree, [b"/" + bytes([97 + n])], "h", "u"))
        for n, tree in enumerate(trees)
    ]
