"""One conformance suite run over every backend, then what a single backend must get right.

The ``backend`` fixture (tests/support/backends.py) yields a fresh memory,
local, decorated (retry and accounting around memory) and S3 backend in
turn; the S3 ones talk HTTP to moto's server and to SeaweedFS on 127.0.0.1.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import os
import random
import re
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import ClientError, ConnectionClosedError

from cas.backend import (
    Backend,
    ObjectInfo,
    ReadBackend,
    S3Options,
    create_bucket,
    find_layer,
    open_backend,
)
from cas.backend.accounting import AccountingBackend
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.backend.retry import RetryBackend
from cas.backend.s3 import S3Backend
from cas.errors import (
    BackendError,
    ObjectExists,
    ObjectNotFound,
    TransientBackendError,
    UsageError,
)
from tests.support.backends import S3Target, s3_endpoint
from tests.support.seaweed import READER_KEY, READER_SECRET, SeaweedServer

NAME = "data/ab/ab0123456789"
DIGITS = b"0123456789"


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Reproducible incompressible data."""
    return random.Random(seed).randbytes(size)


def listed(backend: ReadBackend, prefix: str) -> dict[str, int]:
    """The listing as name -> size, so tests compare without caring about order."""
    found: dict[str, int] = {}
    for info in backend.list(prefix):
        assert isinstance(info, ObjectInfo)
        assert info.name not in found, f"{info.name} listed twice"
        found[info.name] = info.size
    return found


def run_in_threads(tasks: list[Callable[[], Any]], workers: int = 16) -> list[Any]:
    """Run ``tasks`` concurrently; return each one's result or the exception it raised."""

    def capture(task: Callable[[], Any]) -> Any:
        try:
            return task()
        except Exception as err:
            return err

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(capture, tasks))


# -- conformance: every backend -----------------------------------------------------------


def test_implements_the_protocol(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    assert isinstance(backend, ReadBackend)
    assert isinstance(backend.location, str) and backend.location


def test_create_twice_is_fine(backend: Backend) -> None:
    backend.write("config", b"c")
    backend.create()
    assert backend.read("config") == b"c"


def test_write_then_read_round_trip(backend: Backend) -> None:
    data = random_bytes(1000)
    backend.write(NAME, data)
    assert backend.read(NAME) == data
    assert backend.stat(NAME) == ObjectInfo(name=NAME, size=1000)


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, None), (0, 10), (3, 4), (3, None), (9, 1), (9, None), (10, None), (10, 0), (4, 0), (0, 0)],
)
def test_ranged_read(backend: Backend, offset: int, length: int | None) -> None:
    backend.write("config", DIGITS)
    end = None if length is None else offset + length
    assert backend.read("config", offset, length) == DIGITS[offset:end]


@pytest.mark.parametrize(("offset", "length"), [(0, 11), (5, 6), (10, 1), (11, None), (11, 0)])
def test_read_past_the_end_is_a_short_read(
    backend: Backend, offset: int, length: int | None
) -> None:
    backend.write("config", DIGITS)
    with pytest.raises(BackendError, match="short read") as caught:
        backend.read("config", offset, length)
    assert not isinstance(caught.value, ObjectNotFound)
    # Permanent: asking again cannot make the object longer.
    assert not isinstance(caught.value, TransientBackendError)


@pytest.mark.parametrize(("offset", "length"), [(-1, None), (0, -1)])
def test_negative_range_is_refused(backend: Backend, offset: int, length: int | None) -> None:
    backend.write("config", DIGITS)
    with pytest.raises(BackendError):
        backend.read("config", offset, length)


def test_missing_object_is_not_found(backend: Backend) -> None:
    for attempt in (
        lambda: backend.read(NAME),
        lambda: backend.read(NAME, 1, 2),
        lambda: backend.read(NAME, 0, 0),
        lambda: backend.stat(NAME),
    ):
        with pytest.raises(ObjectNotFound, match=NAME):
            attempt()


def test_write_once_refuses_different_content(backend: Backend) -> None:
    backend.write(NAME, b"first")
    for other in (b"other", b"longer content", b""):
        with pytest.raises(ObjectExists, match=NAME):
            backend.write(NAME, other)
    assert backend.read(NAME) == b"first"


def test_rewriting_identical_content_succeeds(backend: Backend) -> None:
    # What a retried write whose first reply was lost looks like.
    backend.write(NAME, b"same")
    backend.write(NAME, b"same")
    assert backend.read(NAME) == b"same"


def test_stat_reports_sizes(backend: Backend) -> None:
    sizes = [0, 1, 1000, 65537]
    for i, size in enumerate(sizes):
        backend.write(f"index/{i}", random_bytes(size, seed=i))
    assert [backend.stat(f"index/{i}").size for i in range(len(sizes))] == sizes


def test_list_by_prefix_is_recursive_and_exact(backend: Backend) -> None:
    objects = {
        "config": 6,
        "data/ab/ab01": 1,
        "data/ab/ab02": 2,
        "data/cd/cd03": 3,
        "datax/ab/ab04": 4,
        "index/ab05": 5,
        "keys/ab06": 0,
    }
    for name, size in objects.items():
        backend.write(name, b"x" * size)
    assert listed(backend, "data") == {n: s for n, s in objects.items() if n.startswith("data/")}
    assert listed(backend, "data/ab") == {"data/ab/ab01": 1, "data/ab/ab02": 2}
    assert listed(backend, "keys") == {"keys/ab06": 0}
    assert listed(backend, "") == objects
    assert listed(backend, "snapshots") == {}
    assert listed(backend, "dat") == {}
    assert listed(backend, "config") == {}


def test_list_during_writes_is_safe(backend: Backend) -> None:
    for i in range(5):
        backend.write(f"data/ab/{i}", b"x")
    for info in backend.list("data"):
        backend.write(f"{info.name}x", b"y")
    assert len(listed(backend, "data")) == 10


def test_delete_is_idempotent(backend: Backend) -> None:
    backend.write(NAME, b"doomed")
    backend.delete(NAME)
    with pytest.raises(ObjectNotFound):
        backend.stat(NAME)
    backend.delete(NAME)
    backend.delete("data/zz/never-written")
    assert listed(backend, "data") == {}
    # The name is free again after a delete.
    backend.write(NAME, b"reborn")
    assert backend.read(NAME) == b"reborn"


def test_empty_object(backend: Backend) -> None:
    backend.write("locks/empty", b"")
    assert backend.read("locks/empty") == b""
    assert backend.read("locks/empty", 0, 0) == b""
    assert backend.read("locks/empty", 0, None) == b""
    assert backend.stat("locks/empty").size == 0
    assert listed(backend, "locks") == {"locks/empty": 0}
    backend.write("locks/empty", b"")
    with pytest.raises(ObjectExists):
        backend.write("locks/empty", b"x")
    with pytest.raises(BackendError, match="short read"):
        backend.read("locks/empty", 0, 1)


def test_large_object(backend: Backend) -> None:
    size = 5 * 1024 * 1024 + 1
    data = random_bytes(size, seed=5)
    backend.write(NAME, data)
    assert backend.stat(NAME).size == size
    assert backend.read(NAME) == data
    assert backend.read(NAME, size - 100) == data[-100:]
    assert backend.read(NAME, 1 << 20, 1 << 21) == data[1 << 20 : 3 << 20]
    backend.write(NAME, data)
    with pytest.raises(ObjectExists):
        backend.write(NAME, bytes([data[0] ^ 1]) + data[1:])


def test_concurrent_writes_of_distinct_objects(backend: Backend) -> None:
    blobs = {f"data/{i % 4:02x}/{i:04x}": random_bytes(1000 + i, seed=i) for i in range(64)}
    results = run_in_threads([partial(backend.write, n, d) for n, d in blobs.items()])
    assert results == [None] * len(blobs)
    assert listed(backend, "data") == {n: len(d) for n, d in blobs.items()}
    for name, data in blobs.items():
        assert backend.read(name) == data


def test_concurrent_writes_of_the_same_object_all_succeed(backend: Backend) -> None:
    data = random_bytes(200_000, seed=7)
    results = run_in_threads([lambda: backend.write(NAME, data)] * 16)
    assert results == [None] * 16
    assert backend.read(NAME) == data
    assert listed(backend, "data") == {NAME: len(data)}


def test_concurrent_conflicting_writes_keep_exactly_one(backend: Backend) -> None:
    # On S3 this leans on the server: AWS makes If-None-Match atomic, while
    # moto checks and then stores without a lock; the tests' moto server
    # (tests/support/moto_atomic.py) serializes those writes, as AWS would.
    contents = [bytes([i]) * 50_000 for i in range(16)]
    results = run_in_threads([partial(backend.write, NAME, c) for c in contents])
    winners = [c for c, r in zip(contents, results, strict=True) if r is None]
    losers = [r for r in results if r is not None]
    assert len(winners) == 1, results
    assert all(isinstance(r, ObjectExists) for r in losers), losers
    assert backend.read(NAME) == winners[0]


@pytest.mark.parametrize(
    "name",
    ["", "/config", "a//b", "data/", "../x", "data/../../x", ".hidden", "data/ab/.tmp-x", "a\\b"],
)
def test_invalid_names_are_refused(backend: Backend, name: str) -> None:
    for attempt in (
        lambda: backend.write(name, b"x"),
        lambda: backend.read(name),
        lambda: backend.stat(name),
        lambda: backend.delete(name),
    ):
        with pytest.raises(BackendError, match="invalid object name"):
            attempt()
    if name:
        with pytest.raises(BackendError, match="invalid object name"):
            list(backend.list(name))


def test_uncreated_location_refuses_writes(uncreated_backend: Backend) -> None:
    # Writing must not quietly create the directory, store or bucket.
    with pytest.raises(BackendError) as caught:
        uncreated_backend.write("config", b"c")
    assert not isinstance(caught.value, ObjectExists)
    with pytest.raises(BackendError):
        uncreated_backend.read("config")


# -- local ---------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalBackend:
    backend = LocalBackend(tmp_path / "repo")
    backend.create()
    return backend


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def no_umask() -> Iterator[None]:
    # Modes must not depend on a restrictive umask being in force.
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_local_modes_are_private(tmp_path: Path, no_umask: None) -> None:
    local = LocalBackend(tmp_path / "repo")
    local.create()
    local.write(NAME, b"secret")
    local.write("keys/k1", b"key")
    root = tmp_path / "repo"
    for path in (root / NAME, root / "keys/k1"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (root, root / "data", root / "data/ab", root / "keys"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_local_layout_and_location(local: LocalBackend, tmp_path: Path) -> None:
    local.write(NAME, b"x")
    assert (tmp_path / "repo" / NAME).read_bytes() == b"x"
    assert local.location == str(tmp_path / "repo")


def test_local_write_leaves_no_temporary_files(local: LocalBackend, tmp_path: Path) -> None:
    local.write(NAME, b"one")
    local.write(NAME, b"one")
    with pytest.raises(ObjectExists):
        local.write(NAME, b"two")
    local.write("config", b"c")
    assert all_files(tmp_path / "repo") == ["config", NAME]


def test_local_list_skips_leftover_temporary_files(local: LocalBackend, tmp_path: Path) -> None:
    local.write(NAME, b"x")
    # What a crash between mkstemp and link leaves behind.
    (tmp_path / "repo/data/ab/.tmp-crashed").write_bytes(b"partial")
    assert listed(local, "data") == {NAME: 1}


def test_local_missing_root(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "absent")
    with pytest.raises(ObjectNotFound):
        local.read("config")
    with pytest.raises(ObjectNotFound):
        local.stat("config")
    assert listed(local, "data") == {}
    assert listed(local, "") == {}
    local.delete("config")
    with pytest.raises(BackendError, match="does not exist"):
        local.write("config", b"c")
    assert not (tmp_path / "absent").exists()


def test_local_disk_full_is_a_backend_error(
    local: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(BackendError) as caught:
        local.write(NAME, b"x" * 1000)
    message = str(caught.value)
    assert "No space left on device" in message
    assert str(tmp_path / "repo" / NAME) in message
    assert "\n" not in message
    monkeypatch.undo()
    assert all_files(tmp_path / "repo") == []
    with pytest.raises(ObjectNotFound):
        local.stat(NAME)


def test_local_permission_denied_is_a_backend_error(
    local: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores permission bits, so the refusal is simulated.
    def denied(source: Any, target: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "link", denied)
    with pytest.raises(BackendError, match="Permission denied") as caught:
        local.write(NAME, b"x")
    assert str(tmp_path / "repo" / NAME) in str(caught.value)
    assert all_files(tmp_path / "repo") == []


def test_local_file_in_the_way(local: LocalBackend, tmp_path: Path) -> None:
    (tmp_path / "repo/data").write_bytes(b"not a directory")
    with pytest.raises(BackendError, match="in the way"):
        local.write(NAME, b"x")
    with pytest.raises(ObjectNotFound):
        local.read(NAME)
    with pytest.raises(ObjectNotFound):
        local.stat(NAME)
    assert listed(local, "data") == {}


def test_local_create_over_a_file(tmp_path: Path) -> None:
    (tmp_path / "repo").write_bytes(b"")
    with pytest.raises(BackendError, match=str(tmp_path / "repo")):
        LocalBackend(tmp_path / "repo").create()


def test_local_directory_is_not_an_object(local: LocalBackend) -> None:
    local.write(NAME, b"x")
    with pytest.raises(ObjectNotFound):
        local.stat("data/ab")
    with pytest.raises(ObjectNotFound):
        local.read("data/ab")


def test_local_without_hard_links_falls_back_to_rename(
    local: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(source: Any, target: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", unsupported)
    local.write(NAME, b"one")
    local.write(NAME, b"one")
    with pytest.raises(ObjectExists):
        local.write(NAME, b"two")
    assert local.read(NAME) == b"one"
    assert all_files(tmp_path / "repo") == [NAME]


# -- memory --------------------------------------------------------------------------------


def test_memory_backends_with_one_name_share_a_store() -> None:
    first, second = MemoryBackend("shared-test"), MemoryBackend("shared-test")
    try:
        first.create()
        first.write("config", b"c")
        assert second.read("config") == b"c"
        assert second.location == "memory://shared-test"
        other = MemoryBackend("other-test")
        with pytest.raises(ObjectNotFound):
            other.read("config")
    finally:
        MemoryBackend.forget("shared-test")
        MemoryBackend.forget("other-test")
    with pytest.raises(ObjectNotFound):
        MemoryBackend("shared-test").read("config")
    MemoryBackend.forget("shared-test")


def test_anonymous_memory_backends_are_separate() -> None:
    first, second = MemoryBackend(), MemoryBackend()
    first.create()
    first.write("config", b"c")
    with pytest.raises(ObjectNotFound):
        second.read("config")
    assert first.location != second.location


# -- open_backend ----------------------------------------------------------------------------


def test_open_backend_chooses_by_location(tmp_path: Path) -> None:
    local = open_backend(str(tmp_path))
    assert isinstance(local, AccountingBackend)
    assert isinstance(local.inner, LocalBackend)
    from_url = open_backend(f"file://{tmp_path}/repo")
    assert isinstance(find_layer(from_url, LocalBackend), LocalBackend)
    assert from_url.location == f"{tmp_path}/repo"
    s3 = open_backend("s3://bucket/some/prefix", [S3Options(endpoint="http://127.0.0.1:9")])
    assert isinstance(s3, AccountingBackend)
    assert isinstance(s3.inner, RetryBackend)
    assert isinstance(s3.inner.inner, S3Backend)
    assert s3.location == "s3://bucket/some/prefix"
    assert open_backend("s3://bucket").location == "s3://bucket"
    try:
        first, second = open_backend("memory://open-test"), open_backend("memory://open-test")
        assert isinstance(find_layer(first, MemoryBackend), MemoryBackend)
        first.create()
        first.write("config", b"c")
        assert second.read("config") == b"c"
    finally:
        MemoryBackend.forget("open-test")


@pytest.mark.parametrize("location", ["s3://", "s3:///prefix", "file://", "sftp://host/repo"])
def test_open_backend_refuses_bad_locations(location: str) -> None:
    with pytest.raises(UsageError):
        open_backend(location)


def test_open_backend_checksum_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    def mode(backend: Backend) -> bool:
        s3 = find_layer(backend, S3Backend)
        assert isinstance(s3, S3Backend)
        return s3._sha256

    location, endpoint = "s3://bucket/p", "http://127.0.0.1:9"
    assert mode(open_backend(location, [S3Options(endpoint=endpoint)]))
    assert not mode(
        open_backend(location, [S3Options(endpoint=endpoint, checksums="when_required")])
    )
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    assert not mode(open_backend(location, [S3Options(endpoint=endpoint)]))
    monkeypatch.setenv("CAS_S3_CHECKSUMS", "when_supported")
    assert mode(open_backend(location, [S3Options(endpoint=endpoint)]))
    monkeypatch.setenv("CAS_S3_CHECKSUMS", "sometimes")
    with pytest.raises(UsageError, match="CAS_S3_CHECKSUMS"):
        open_backend(location, [S3Options(endpoint=endpoint)])
    with pytest.raises(UsageError, match="when_supported or when_required"):
        open_backend(location, [S3Options(endpoint=endpoint, checksums="crc32")])


def test_create_bucket_needs_s3(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="s3://"):
        create_bucket(open_backend(str(tmp_path)))


# -- S3 on both servers ------------------------------------------------------------------


def capture_requests(backend: S3Backend, operation: str = "*") -> list[AWSPreparedRequest]:
    """Record every HTTP request the backend's client sends (white-box: uses its client)."""
    sent: list[AWSPreparedRequest] = []
    backend._client.meta.events.register(
        f"before-send.s3.{operation}", lambda request, **_: sent.append(request)
    )
    return sent


def header(request: AWSPreparedRequest, name: str) -> str | None:
    value = request.headers.get(name)
    return value.decode() if isinstance(value, bytes) else value


def checksum_headers(request: AWSPreparedRequest) -> dict[str, str | None]:
    names = [str(k) for k in request.headers if str(k).lower().startswith("x-amz-checksum-")]
    return {n.lower(): header(request, n) for n in names}


def no_sleep(seconds: float) -> None:
    pass


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.fixture
def s3_backend(s3_any: S3Target) -> Iterator[S3Backend]:
    backend = s3_any.backend()
    backend.create()
    yield backend
    backend.close()


@pytest.mark.s3
def test_s3_put_sends_content_md5_sha256_and_if_none_match(s3_backend: S3Backend) -> None:
    sent = capture_requests(s3_backend, "PutObject")
    data = random_bytes(1234)
    s3_backend.write(NAME, data)
    (request,) = sent
    assert header(request, "Content-MD5") == b64(hashlib.md5(data).digest())
    assert checksum_headers(request) == {
        "x-amz-checksum-sha256": b64(hashlib.sha256(data).digest())
    }
    assert header(request, "If-None-Match") == "*"
    # A plain header, not botocore's aws-chunked trailer that some stores refuse.
    assert header(request, "Content-Encoding") is None
    assert header(request, "x-amz-trailer") is None


@pytest.mark.s3
def test_s3_when_required_sends_content_md5_only(s3_any: S3Target) -> None:
    backend = s3_any.backend(checksums="when_required")
    sent = capture_requests(backend)
    data = random_bytes(999)
    backend.write(NAME, data)
    assert backend.read(NAME) == data
    assert backend.read(NAME, 5, 10) == data[5:15]
    put = next(r for r in sent if r.method == "PUT")
    assert header(put, "Content-MD5") == b64(hashlib.md5(data).digest())
    assert all(not checksum_headers(r) for r in sent)
    assert all(header(r, "x-amz-checksum-mode") is None for r in sent)
    assert all(header(r, "x-amz-sdk-checksum-algorithm") is None for r in sent)


def test_s3_refuses_an_unknown_checksum_mode() -> None:
    with pytest.raises(BackendError, match="checksum mode"):
        S3Backend("bucket", client=object(), checksums="always")


@pytest.mark.s3
def test_s3_server_enforces_if_none_match(s3_any: S3Target) -> None:
    # The write-once tests rely on the server refusing a second conditional
    # PUT; without that they would pass only by luck.
    client, key = s3_any.client(), s3_any.key("k")
    client.put_object(Bucket=s3_any.bucket, Key=key, Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=s3_any.bucket, Key=key, Body=b"two", IfNoneMatch="*")
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=s3_any.bucket, Key=key)["Body"].read() == b"one"


@pytest.mark.s3
def test_s3_retried_put_after_a_lost_reply(s3_any: S3Target) -> None:
    # The first PUT reaches the store but its reply is lost; the retry gets
    # 412, and the backend must see that the object is ours.
    s3 = s3_any.backend()
    backend = RetryBackend(s3, sleep=no_sleep)
    bystander = s3_any.client()
    data = random_bytes(5000)
    lost: list[str] = []

    def lose_first_reply(request: AWSPreparedRequest, **_: Any) -> None:
        if not lost:
            lost.append(request.url)
            bystander.put_object(Bucket=s3_any.bucket, Key=s3_any.key(NAME), Body=data)
            raise ConnectionClosedError(endpoint_url=request.url)

    statuses: list[int] = []
    s3._client.meta.events.register("before-send.s3.PutObject", lose_first_reply)
    s3._client.meta.events.register(
        "after-call.s3.PutObject",
        lambda http_response, **_: statuses.append(http_response.status_code),
    )
    backend.write(NAME, data)
    assert lost
    assert statuses == [412]
    assert backend.retries == 1
    assert backend.read(NAME) == data


@pytest.mark.s3
def test_s3_identical_object_already_there(s3_any: S3Target, s3_backend: S3Backend) -> None:
    s3_any.client().put_object(Bucket=s3_any.bucket, Key=s3_any.key(NAME), Body=b"same")
    s3_backend.write(NAME, b"same")
    with pytest.raises(ObjectExists):
        s3_backend.write(NAME, b"different")


@pytest.mark.s3
def test_s3_without_conditional_writes(s3_any: S3Target) -> None:
    backend = s3_any.backend(conditional_writes=False)
    sent = capture_requests(backend)
    backend.write(NAME, b"one")
    backend.write(NAME, b"one")
    with pytest.raises(ObjectExists):
        backend.write(NAME, b"two")
    assert backend.read(NAME) == b"one"
    puts = [r for r in sent if r.method == "PUT"]
    assert len(puts) == 1
    assert header(puts[0], "If-None-Match") is None
    assert header(puts[0], "Content-MD5") is not None


@pytest.mark.s3
@pytest.mark.parametrize("server", ["moto", "seaweed"])
def test_s3_missing_bucket(server: str, request: pytest.FixtureRequest) -> None:
    endpoint = s3_endpoint(server, request)
    bucket = f"cas-test-new-{uuid.uuid4().hex[:12]}"
    backend = S3Backend(bucket, "repo", endpoint_url=endpoint, path_style=True)
    with pytest.raises(BackendError, match=f"bucket '{bucket}' does not exist"):
        backend.create()
    with pytest.raises(BackendError, match="bucket does not exist") as caught:
        backend.write("config", b"c")
    assert not isinstance(caught.value, TransientBackendError)
    with pytest.raises(BackendError, match="bucket does not exist"):
        list(backend.list("data"))
    backend.create_bucket()
    backend.create_bucket()  # ours already: fine
    backend.create()
    backend.write("config", b"c")
    assert backend.read("config") == b"c"


@pytest.mark.s3
def test_s3_lists_in_order_and_resumes(s3_backend: S3Backend) -> None:
    names = [f"data/{i % 3:02x}/{i:04x}" for i in range(12)]
    for name in names:
        s3_backend.write(name, b"x")
    assert [o.name for o in s3_backend.list("data")] == sorted(names)
    after = sorted(names)[4]
    assert [o.name for o in s3_backend.list_after("data", after)] == sorted(names)[5:]
    assert list(s3_backend.list_after("data", sorted(names)[-1])) == []


@pytest.mark.s3
def test_s3_truncated_body_is_transient(s3_backend: S3Backend) -> None:
    # The store promised the whole range but the body ended early.
    with pytest.raises(TransientBackendError, match="truncated read"):
        s3_backend._check_range("k", {"ContentRange": "bytes 3-6/10"}, b"34", 3, 4)


@pytest.mark.s3
@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "InternalError"), (503, "SlowDown"), (503, "ServiceUnavailable"), (400, "BadDigest")],
)
def test_s3_server_errors_are_transient(s3_backend: S3Backend, status: int, code: str) -> None:
    fail_with = error_response(status, code)
    s3_backend._client.meta.events.register("before-send.s3", lambda **_: fail_with())
    for attempt in (
        lambda: s3_backend.write(NAME, b"x"),
        lambda: s3_backend.read(NAME),
        lambda: s3_backend.stat(NAME),
        lambda: list(s3_backend.list("data")),
        lambda: s3_backend.delete(NAME),
    ):
        with pytest.raises(TransientBackendError, match=code):
            attempt()


@pytest.mark.s3
@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (400, "InvalidArgument")])
def test_s3_client_errors_are_permanent(s3_backend: S3Backend, status: int, code: str) -> None:
    fail_with = error_response(status, code)
    s3_backend._client.meta.events.register("before-send.s3", lambda **_: fail_with())
    with pytest.raises(BackendError, match=code) as caught:
        s3_backend.write(NAME, b"x")
    assert not isinstance(caught.value, TransientBackendError)


def error_response(status: int, code: str) -> Callable[[], Any]:
    """A botocore before-send handler result: an S3 error reply that never hit the server."""
    from botocore.awsrequest import AWSResponse

    body = (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        f"<Message>injected {code}</Message></Error>"
    ).encode()

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield body

    return lambda: AWSResponse(
        "http://injected", status, {"Content-Type": "application/xml"}, Raw()
    )


def test_s3_unreachable_endpoint_is_one_line_and_transient() -> None:
    # A bound socket that does not listen refuses connections, and holding it
    # keeps anyone else off the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        backend = S3Backend("bucket", "repo", endpoint_url=endpoint)
        for attempt in (lambda: backend.stat("config"), lambda: backend.write("config", b"c")):
            with pytest.raises(TransientBackendError, match=re.escape(endpoint)) as caught:
                attempt()
            assert "\n" not in str(caught.value)


# -- what SeaweedFS checks and moto does not -----------------------------------------------


@pytest.mark.s3
@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_seaweed_refuses_a_body_damaged_in_transit(
    seaweed_server: SeaweedServer, checksums: str
) -> None:
    # Flip a byte of the body after botocore computed the digests: what a bad
    # link or proxy does.  The store refuses the PUT, the refusal is
    # transient, and the retry (with the intact body) lands.
    target = S3Target("seaweed", seaweed_server.endpoint, seaweed_server.bucket, urandom_prefix())
    s3 = target.backend(checksums=checksums)
    errors: list[str] = []
    damaged: list[int] = []

    def damage_first(request: AWSPreparedRequest, **_: Any) -> None:
        if not damaged:
            damaged.append(1)
            body = request.body.read()
            request.body = io.BytesIO(body[:-1] + bytes([body[-1] ^ 1]))

    s3._client.meta.events.register("before-send.s3.PutObject", damage_first)
    backend = RetryBackend(
        s3, sleep=no_sleep, on_retry=lambda op, n, delay, err: errors.append(str(err))
    )
    data = random_bytes(4096)
    backend.write(NAME, data)
    assert damaged and len(errors) == 1, errors
    assert re.search(r"BadDigest|XAmzContentSHA256Mismatch|SignatureDoesNotMatch", errors[0])
    assert backend.read(NAME) == data


@pytest.mark.s3
def test_seaweed_whole_downloads_are_checked_against_the_stored_sha256(
    seaweed_server: SeaweedServer,
) -> None:
    # With "when_supported" botocore asks for the stored checksum and checks
    # whole-object bodies against it: a byte flipped on the way back is a
    # transient error, and the retry reads it intact.  (Ranged reads get no
    # checksum from any store; the repository's AEAD covers those.)
    target = S3Target("seaweed", seaweed_server.endpoint, seaweed_server.bucket, urandom_prefix())
    s3 = target.backend()
    data = random_bytes(10_000)
    s3.write(NAME, data)
    http = s3._client._endpoint.http_session
    damaged: list[int] = []

    def damage_first_body(request: AWSPreparedRequest, **_: Any) -> Any:
        if damaged:
            return None
        damaged.append(1)
        response = http.send(request)
        body = bytearray(response.raw.read())
        body[-1] ^= 1
        return AWSResponse(request.url, response.status_code, response.headers, Body(bytes(body)))

    s3._client.meta.events.register("before-send.s3.GetObject", damage_first_body)
    errors: list[str] = []
    backend = RetryBackend(s3, sleep=no_sleep, on_retry=lambda *a: errors.append(str(a[3])))
    assert backend.read(NAME) == data
    assert damaged and len(errors) == 1
    assert "checksum" in errors[0].lower()


class Body:
    """Enough of a urllib3 response for botocore to stream a canned body."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, amt: int | None = None) -> bytes:
        return self._data.read(amt)

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data.read()

    def close(self) -> None:
        pass


@pytest.mark.s3
def test_seaweed_refuses_a_wrong_sha256(seaweed_server: SeaweedServer) -> None:
    client = seaweed_server.client()
    right = b64(hashlib.sha256(b"hello").digest())
    wrong = b64(hashlib.sha256(b"hellp").digest())
    key = f"{urandom_prefix()}/x"
    with pytest.raises(ClientError) as caught:
        client.put_object(
            Bucket=seaweed_server.bucket, Key=key, Body=b"hello", ChecksumSHA256=wrong
        )
    assert caught.value.response["Error"]["Code"] == "BadDigest"
    client.put_object(Bucket=seaweed_server.bucket, Key=key, Body=b"hello", ChecksumSHA256=right)
    # The store keeps the SHA-256: for content-addressed names, the name.
    head = client.head_object(Bucket=seaweed_server.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == right


@pytest.mark.s3
def test_seaweed_checks_signatures(seaweed_server: SeaweedServer) -> None:
    forged = seaweed_server.client(secret="not-the-secret", retries={"total_max_attempts": 1})
    backend = S3Backend(seaweed_server.bucket, urandom_prefix(), client=forged)
    with pytest.raises(BackendError, match="SignatureDoesNotMatch") as caught:
        backend.read("config")
    assert not isinstance(caught.value, TransientBackendError)
    # A HEAD reply has no body to name the error: the status must do.
    with pytest.raises(BackendError, match="403") as caught:
        backend.stat("config")
    assert not isinstance(caught.value, TransientBackendError)


@pytest.mark.s3
def test_seaweed_read_only_identity_gets_403(seaweed_server: SeaweedServer) -> None:
    prefix = urandom_prefix()
    S3Backend(seaweed_server.bucket, prefix, client=seaweed_server.client()).write("config", b"c")
    reader = seaweed_server.client(READER_KEY, READER_SECRET, retries={"total_max_attempts": 1})
    backend = S3Backend(seaweed_server.bucket, prefix, client=reader)
    assert backend.read("config") == b"c"
    with pytest.raises(BackendError, match=r"AccessDenied.*403") as caught:
        backend.write("data/ab/x", b"x")
    assert not isinstance(caught.value, TransientBackendError)


def urandom_prefix() -> str:
    return f"t-{os.urandom(8).hex()}/repo"


# -- S3 details that do not depend on the server (moto) ------------------------------------


@pytest.mark.s3
def test_s3_keys_live_under_the_prefix(s3_server: str, s3_bucket: str, s3_client: Any) -> None:
    backend = S3Backend(s3_bucket, "/team/repo/", endpoint_url=s3_server)
    assert backend.location == f"s3://{s3_bucket}/team/repo"
    backend.write("config", b"c")
    backend.write(NAME, b"d")
    for foreign in ("team/repo-old/config", "team/repox/data/ab/x", "config", "team/repo/data/"):
        s3_client.put_object(Bucket=s3_bucket, Key=foreign, Body=b"foreign")
    s3_client.put_object(Bucket=s3_bucket, Key="team/repo/data/ab/.DS_Store", Body=b"")
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert {"team/repo/config", f"team/repo/{NAME}"} <= keys
    assert listed(backend, "") == {"config": 1, NAME: 1}
    assert listed(backend, "data") == {NAME: 1}


@pytest.mark.s3
def test_s3_without_prefix(s3_server: str, s3_bucket: str, s3_client: Any) -> None:
    backend = S3Backend(s3_bucket, endpoint_url=s3_server)
    assert backend.location == f"s3://{s3_bucket}"
    backend.write(NAME, b"d")
    assert s3_client.get_object(Bucket=s3_bucket, Key=NAME)["Body"].read() == b"d"


@pytest.mark.s3
def test_s3_path_style_addressing(s3_server: str, s3_bucket: str) -> None:
    # "localhost" rather than an IP, where botocore would fall back to path
    # style anyway, so that the option is what decides.
    endpoint = s3_server.replace("127.0.0.1", "localhost")
    backend = S3Backend(s3_bucket, "repo", endpoint_url=endpoint, path_style=True)
    sent = capture_requests(backend)
    backend.write("config", b"c")
    assert backend.read("config") == b"c"
    assert sent
    assert all(r.url.startswith(f"{endpoint}/{s3_bucket}/repo/config") for r in sent)


@pytest.mark.s3
def test_s3_endpoint_from_environment(
    s3_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    backend = S3Backend(s3_bucket, "repo")
    backend.create()
    backend.write("config", b"c")
    assert backend.read("config") == b"c"


@pytest.mark.s3
def test_open_backend_s3(s3_server: str, s3_bucket: str, s3_client: Any) -> None:
    backend = open_backend(
        f"s3://{s3_bucket}/p/q", [S3Options(endpoint=s3_server, path_style=True)]
    )
    backend.create()
    backend.write("config", b"c")
    assert s3_client.get_object(Bucket=s3_bucket, Key="p/q/config")["Body"].read() == b"c"
    backend.close()


@pytest.mark.s3
def test_open_backend_create_bucket(s3_server: str) -> None:
    bucket = f"cas-test-new-{uuid.uuid4().hex[:12]}"
    backend = open_backend(f"s3://{bucket}/p", [S3Options(endpoint=s3_server, path_style=True)])
    create_bucket(backend)
    backend.create()
    backend.write("config", b"c")
    assert backend.read("config") == b"c"


@pytest.mark.parametrize(
    ("response", "data", "offset", "length", "expected"),
    [
        ({}, DIGITS, 3, 4, b"3456"),  # a store that ignored Range
        ({}, DIGITS, 3, None, b"3456789"),
        ({"ContentRange": "bytes 3-6/10"}, b"3456", 3, 4, b"3456"),
        ({"ContentRange": "bytes 3-9/10"}, b"3456789", 3, None, b"3456789"),
    ],
)
def test_s3_range_check_accepts(
    response: dict[str, str], data: bytes, offset: int, length: int | None, expected: bytes
) -> None:
    backend = S3Backend("bucket", client=object())
    assert backend._check_range("k", response, data, offset, length) == expected


@pytest.mark.parametrize(
    ("response", "data", "offset", "length"),
    [
        ({}, DIGITS, 8, 4),
        ({}, DIGITS, 11, None),
        ({"ContentRange": "bytes 3-5/6"}, b"345", 3, 4),
        ({"ContentRange": "bytes 3-6/10"}, b"345", 3, 4),
        ({"ContentRange": "bytes 0-9/10"}, DIGITS, 3, 4),
    ],
)
def test_s3_range_check_refuses(
    response: dict[str, str], data: bytes, offset: int, length: int | None
) -> None:
    backend = S3Backend("bucket", client=object())
    with pytest.raises(BackendError):
        backend._check_range("k", response, data, offset, length)
