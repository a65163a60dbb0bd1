"""Backups and restores over real S3 while the network misbehaves.

A botocore ``before-send`` hook on the backend's own client plays a bad
network and a struggling store: on one request in ten it answers 500
InternalError or 503 SlowDown without sending, resets the connection before
sending, sends a PUT and then loses the reply, or lets a GET through and
cuts its body in half.  Through the retrying backend a library-level backup
(Archiver) must complete and restore (Restorer) byte for byte.  A permanent
403 must instead stop the backup at once, with a clear error, no retries and
the repository as it was.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import ConnectionClosedError

from cas.backend import request_summary
from cas.backend.accounting import AccountingBackend, RequestMeter
from cas.backend.base import Backend
from cas.backend.retry import RetryBackend
from cas.backend.s3 import S3Backend
from cas.backup.archiver import Archiver
from cas.errors import BackendError, TransientBackendError
from cas.format.snapshot import Snapshot
from cas.repo import Repository, open_repository
from cas.restore.restorer import Restorer
from tests.support.backends import S3Target
from tests.support.repos import PASSWORD, new_repo

pytestmark = pytest.mark.s3

GET_FAULTS = ("truncate", "500", "503", "reset")
PUT_FAULTS = ("lost reply", "500", "503", "reset")
OTHER_FAULTS = ("500", "503", "reset")


class Raw:
    """Just enough of a urllib3 response for botocore: a body to stream or read."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body

    def read(self, amt: int | None = None) -> bytes:
        data, self._body = (self._body, b"") if amt is None else self._split(amt)
        return data

    def _split(self, amt: int) -> tuple[bytes, bytes]:
        return self._body[:amt], self._body[amt:]

    def close(self) -> None:
        self._body = b""


def s3_error(request: AWSPreparedRequest, status: int, code: str) -> AWSResponse:
    body = f"<Error><Code>{code}</Code><Message>injected {code}</Message></Error>".encode()
    return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, Raw(body))


# So that every kind of fault happens in every run, whatever the random
# draws: the first request of each of these (operation, key part) is failed
# so, on top of the random ones.
EVERY_KIND_ONCE = {
    ("PutObject", "/data/"): "lost reply",
    ("GetObject", "/data/"): "truncate",
    ("PutObject", "/index/"): "503",
    ("HeadObject", "/data/"): "500",
    ("ListObjectsV2", ""): "reset",
}


class BadNetwork:
    """A ``before-send`` hook failing ``rate`` of the requests, each in a way that fits it.

    Each operation cycles through the faults that fit it; with
    ``every_kind`` the first request of each entry of EVERY_KIND_ONCE fails
    as it says.  ``forbid`` answers 403 to every PUT of a key containing it
    (a permanent refusal).  Thread-safe: the repository uploads from worker
    threads.
    """

    def __init__(self, s3: S3Backend, rate: float, seed: int, every_kind: bool = True) -> None:
        self.rate = rate
        self.forbid: str | None = None
        self.injected: Counter[str] = Counter()
        self.puts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._turn: Counter[str] = Counter()
        self._scripted = dict(EVERY_KIND_ONCE) if every_kind else {}
        self._lock = threading.Lock()
        self._http = s3._client._endpoint.http_session
        s3._client.meta.events.register("before-send.s3", self)

    def _choose(self, operation: str, key: str) -> str | None:
        for (scripted_operation, part), fault in list(self._scripted.items()):
            if operation == scripted_operation and part in key:
                del self._scripted[(scripted_operation, part)]
                return fault
        if self._rng.random() >= self.rate:
            return None
        faults = (
            GET_FAULTS
            if operation == "GetObject"
            else PUT_FAULTS
            if operation == "PutObject"
            else OTHER_FAULTS
        )
        self._turn[operation] += 1
        return faults[(self._turn[operation] - 1) % len(faults)]

    def __call__(
        self, request: AWSPreparedRequest, event_name: str, **_: Any
    ) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        key = request.url.partition("?")[0]
        with self._lock:
            if operation == "PutObject":
                self.puts[key] += 1
                if self.forbid is not None and self.forbid in key:
                    self.injected["403"] += 1
                    return s3_error(request, 403, "AccessDenied")
            fault = self._choose(operation, key)
            if fault is None:
                return None
            self.injected[fault] += 1
        if fault == "500":
            return s3_error(request, 500, "InternalError")
        if fault == "503":
            return s3_error(request, 503, "SlowDown")
        if fault == "reset":
            raise ConnectionClosedError(endpoint_url=request.url)
        response = self._http.send(request)
        if fault == "lost reply":
            response.raw.read()
            raise ConnectionClosedError(endpoint_url=request.url)
        # truncate: keep the headers (Content-Length and all), send half the body.
        body = response.raw.read()
        if response.status_code < 300 and len(body) > 1:
            body = body[: len(body) // 2]
        return AWSResponse(request.url, response.status_code, response.headers, Raw(body))


class Clock:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


def s3_stack(target: S3Target, clock: Clock) -> tuple[Backend, S3Backend]:
    """What open_backend builds, with a clock that does not wait."""
    meter = RequestMeter()
    s3 = target.backend(meter=meter)
    retrying = RetryBackend(s3, sleep=clock.sleep)
    return AccountingBackend(retrying, meter=meter, count_operations=False), s3


def make_tree(root: Path, seed: int) -> None:
    """Files of many sizes (several packs' worth), a subdirectory, a symlink, an empty file."""
    rnd = random.Random(seed)
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(24):
        where = root if i % 3 else root / "sub"
        size = rnd.choice([0, 1, 100, 5000, 70_000, 200_000, 400_000])
        (where / f"file{i:02d}").write_bytes(rnd.randbytes(size))
    (root / "sub" / "deeper" / "same").write_bytes(b"dup" * 10_000)
    (root / "sub" / "same-again").write_bytes(b"dup" * 10_000)
    (root / "link").symlink_to("sub/file00")


def backup(repo: Repository, source: Path) -> bytes:
    repo.load_index()
    tree = Archiver(repo, repo.chunker()).backup([os.fsencode(source)], None)
    return repo.save_snapshot(
        Snapshot(time.time_ns(), tree, [os.fsencode(source)], "testhost", "tester")
    )


def restore(repo: Repository, snapshot_id: bytes, target: Path) -> None:
    repo.load_index()
    snapshot = repo.load_snapshot(snapshot_id)
    summary = Restorer(repo, repo.file_digest).restore(snapshot.tree, os.fsencode(target))
    assert not summary.failed


def tree_contents(root: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[name] = path.read_bytes()
        else:
            found[name] = "dir"
    return found


def test_backup_and_restore_through_ten_percent_faults(s3_any: S3Target, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source, seed=1)
    clock = Clock()
    backend, s3 = s3_stack(s3_any, clock)
    network = BadNetwork(s3, rate=0.1, seed=11)

    snapshot_id = backup(new_repo(backend), source)
    target = tmp_path / "restored"
    restore(open_repository(backend, PASSWORD), snapshot_id, target)

    assert tree_contents(target / source.relative_to("/")) == tree_contents(source)
    # Every kind of fault happened, and each was survived by a retry.
    assert set(network.injected) == {"500", "503", "reset", "lost reply", "truncate"}, (
        network.injected
    )
    summary = request_summary(backend)
    assert summary is not None
    assert summary["retries"] == network.injected.total() == len(clock.delays)
    requests = sum(summary[kind] for kind in ("PUT", "GET", "HEAD", "LIST", "DELETE"))
    random_faults = network.injected.total() - len(EVERY_KIND_ONCE)
    # Restore reads each pack's needed blobs in one ranged GET (cas/restore/blobstream.py),
    # so most of the traffic is the backup's; enough for 10% to inject several faults.
    assert requests > 45, requests
    assert 2 <= random_faults <= 0.25 * requests
    assert all(0 <= d <= 30 for d in clock.delays)
    # A clean backend agrees: the repository is whole.
    clean = open_repository(s3_any.backend(), PASSWORD)
    clean.load_index()
    assert clean.snapshot_ids() == [snapshot_id]


def test_a_permanent_403_stops_the_backup_cleanly(s3_any: S3Target, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source, seed=2)
    clock = Clock()
    backend, s3 = s3_stack(s3_any, clock)
    network = BadNetwork(s3, rate=0.0, seed=0, every_kind=False)
    first = backup(new_repo(backend), source)

    (source / "new-file").write_bytes(random.Random(3).randbytes(300_000))
    network.forbid = "/data/"
    network.puts.clear()
    repo = open_repository(backend, PASSWORD)
    with pytest.raises(BackendError) as caught:
        backup(repo, source)
    error = caught.value
    assert not isinstance(error, TransientBackendError)
    message = str(error)
    assert "AccessDenied" in message and "HTTP 403" in message and "PutObject" in message
    assert "\n" not in message
    # Refused at once: no PUT was sent twice, nothing waited.
    assert network.injected["403"] >= 1
    assert max(network.puts.values()) == 1
    assert clock.delays == []

    # The repository is as it was: the first snapshot only, and it restores.
    clean = open_repository(s3_any.backend(), PASSWORD)
    assert clean.snapshot_ids() == [first]
    restore(clean, first, tmp_path / "restored")
    restored = tree_contents(tmp_path / "restored" / source.relative_to("/"))
    assert "new-file" not in restored
    assert len(restored) == len(tree_contents(source)) - 1
