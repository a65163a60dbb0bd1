"""A finished pack is stored from its temporary file in pieces (issue 17): no process
holds a whole pack, on disk or on S3, and a retried upload sends the file again."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from cas import crypto
from cas.backend.base import Backend, write_file
from cas.backend.faulty import Fault, FaultyBackend
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.backend.retry import RetryBackend
from cas.backend.s3 import S3Backend
from cas.crypto import BlobType
from cas.errors import BackendError, ObjectExists, TransientBackendError
from cas.format import pack as packfmt
from cas.repo import layout
from cas.repo.packer import FinishedPack, Packer
from cas.repo.packwriter import PackWriter
from tests.support.s3proxy import CountingProxy

KEYS = crypto.MasterKeys.generate()
MIB = 1 << 20


@pytest.fixture(scope="module")
def big_blobs() -> list[tuple[bytes, bytes, int]]:
    """16 sealed blobs of 1 MiB of random bytes: a full 16 MiB pack."""
    out = []
    for _ in range(16):
        data = os.urandom(MIB)
        bid = KEYS.blob_id(BlobType.DATA, data)
        out.append((bid, packfmt.seal_blob(KEYS, BlobType.DATA, bid, data, None), len(data)))
    return out


def _spooled_pack(blobs: list[tuple[bytes, bytes, int]]) -> FinishedPack:
    packer = Packer(KEYS, BlobType.DATA, spool=True)
    for bid, sealed, raw in blobs:
        packer.add(bid, sealed, raw)
    pack = packer.finish()
    assert pack.in_memory is None and pack.size > 16 * MIB
    return pack


def _store_traced(backend: Backend, pack: FinishedPack) -> int:
    """Store ``pack`` with a PackWriter; the peak of traced memory meanwhile, in bytes."""
    writer = PackWriter(backend, KEYS, 16 * MIB, None, lambda _: None)
    tracemalloc.start()
    try:
        writer.store(pack)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _stored_digest(backend: Backend, name: str) -> bytes:
    return hashlib.sha256(backend.read(name)).digest()


def test_a_spooled_pack_is_stored_to_disk_without_being_held_whole(
    tmp_path: Path, big_blobs: list[tuple[bytes, bytes, int]]
) -> None:
    pack = _spooled_pack(big_blobs)
    backend = RetryBackend(LocalBackend(tmp_path))
    peak = _store_traced(backend, pack)
    assert peak < 4 * MIB, f"storing a {pack.size} byte pack traced {peak} bytes"
    name = layout.pack_name(pack.pack_id)
    assert _stored_digest(backend, name) == pack.pack_id
    assert packfmt.parse_pack(KEYS, backend.read(name)) == pack.entries
    assert [f for f in os.listdir(tmp_path / os.path.dirname(name)) if f.startswith(".")] == []


def test_a_spooled_pack_is_stored_to_s3_without_being_held_whole(
    s3_server: str, s3_bucket: str, big_blobs: list[tuple[bytes, bytes, int]]
) -> None:
    pack = _spooled_pack(big_blobs)
    backend = S3Backend(s3_bucket, "repo", endpoint_url=s3_server, path_style=True)
    try:
        backend.write("warm", b"x")  # the client's first request loads its models
        peak = _store_traced(backend, pack)
        assert peak < 4 * MIB, f"storing a {pack.size} byte pack traced {peak} bytes"
        assert _stored_digest(backend, layout.pack_name(pack.pack_id)) == pack.pack_id
    finally:
        backend.close()


@pytest.fixture
def content() -> Iterator[tuple[BinaryIO, bytes]]:
    data = os.urandom(3 * MIB + 17)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(123)  # write_file rewinds
        yield f, data


def test_a_retried_s3_upload_from_a_file_sends_the_whole_file_again(
    s3_server: str, s3_bucket: str, content: tuple[BinaryIO, bytes]
) -> None:
    failed: list[str] = []

    def fail_first_put(method: str, path: str) -> tuple[int, str] | None:
        if method == "PUT" and not failed:
            failed.append(path)
            return 503, "SlowDown"
        return None

    proxy = CountingProxy(s3_server, fail_first_put)
    retries: list[str] = []
    s3 = S3Backend(s3_bucket, "repo", endpoint_url=proxy.endpoint, path_style=True)
    backend = RetryBackend(s3, sleep=lambda _: None, on_retry=lambda op, *_: retries.append(op))
    try:
        file, data = content
        backend.write_file("data/ab/obj", file, len(data), cold=True)
        counts, up = proxy.take()
        assert failed and retries == ["PUT data/ab/obj"]
        assert counts["PUT"] == 2 and up == 2 * len(data)
        assert backend.read("data/ab/obj") == data
        # the same bytes again: the conditional PUT's 412 is compared, and succeeds
        backend.write_file("data/ab/obj", file, len(data))
        with pytest.raises(ObjectExists):
            backend.write("data/ab/obj", data[:-1] + bytes([data[-1] ^ 1]))
    finally:
        backend.close()
        proxy.close()


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_write_file_is_write_once_like_write(
    kind: str, tmp_path: Path, content: tuple[BinaryIO, bytes]
) -> None:
    backend: Any = LocalBackend(tmp_path) if kind == "local" else MemoryBackend()
    backend.create()
    file, data = content
    write_file(backend, "data/ab/obj", file, len(data))
    assert backend.read("data/ab/obj") == data
    write_file(backend, "data/ab/obj", file, len(data))  # identical again: fine
    with tempfile.TemporaryFile() as other:
        other.write(data[:-1] + bytes([data[-1] ^ 1]))  # differs whatever the last byte
        with pytest.raises(ObjectExists):
            write_file(backend, "data/ab/obj", other, len(data))
    assert backend.read("data/ab/obj") == data


def test_write_faults_strike_writes_from_files(content: tuple[BinaryIO, bytes]) -> None:
    inner = MemoryBackend()
    inner.create()
    faulty = FaultyBackend(inner)
    faulty.add("write", Fault(times=1))
    faulty.add("write", Fault(after=1, times=1, lost_reply=True))
    file, data = content
    with pytest.raises(TransientBackendError):
        faulty.write_file("a", file, len(data))
    with pytest.raises(TransientBackendError):
        faulty.write_file("a", file, len(data))  # landed, reply lost
    assert inner.read("a") == data
    assert [i.what for i in faulty.injected] == ["error", "lost reply"]


def test_a_full_disk_under_write_file_is_one_line(
    tmp_path: Path, content: tuple[BinaryIO, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", full)
    backend = LocalBackend(tmp_path)
    file, data = content
    with pytest.raises(BackendError) as caught:
        backend.write_file("data/ab/obj", file, len(data))
    message = str(caught.value)
    assert "No space left on device" in message and "\n" not in message
    assert str(tmp_path / "data" / "ab" / "obj") in message
    assert os.listdir(tmp_path / "data" / "ab") == []  # its temporary file is gone
