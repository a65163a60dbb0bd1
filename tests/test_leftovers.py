"""Leftovers of interrupted uploads: found by the backends, reported by check, removed by prune.

S3 multipart uploads that were started and never completed are invisible to
object listings but billed; local temporary files of writes that died are
hidden from ``list``.  Backends list and abort their own
(:class:`cas.backend.base.LeftoverUploads`), every decorator passes the calls
on, and prune aborts those older than an hour.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cas.backend import request_summary
from cas.backend.accounting import AccountingBackend, RequestMeter
from cas.backend.base import LeftoverUploads, UnfinishedUpload
from cas.backend.faulty import FaultyBackend
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.backend.retry import RetryBackend
from cas.errors import BackendError, TransientBackendError
from cas.repo.cache import LocalCache
from cas.repo.caching import CachingBackend
from cas.repo.leftovers import MIN_AGE, find_leftovers, remove_leftovers
from cas.repo.prune import PruneOptions, execute_prune, plan_prune
from tests.support.backends import S3Target
from tests.support.cli import Result, run_cas
from tests.support.repos import new_repo, populate

PACK_NAME = "data/ab/" + "a" * 64


def _no_sleep(seconds: float) -> None:
    pass


# -- local temporary files ---------------------------------------------------------------


def _temp_file(root: Path, name: str, mtime: float | None = None) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_local_backend_lists_and_aborts_its_temporary_files(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "r")
    backend.create()
    backend.write(PACK_NAME, b"a real object")
    old = _temp_file(tmp_path / "r", "data/ab/.tmp-old", mtime=1)
    _temp_file(tmp_path / "r", "index/.tmp-fresh")
    _temp_file(tmp_path / "r", ".DS_Store")  # foreign clutter is not ours
    found = {u.name: u for u in backend.list_leftovers()}
    assert set(found) == {"data/ab/.tmp-old", "index/.tmp-fresh"}
    assert found["data/ab/.tmp-old"].size == 7 and found["data/ab/.tmp-old"].started == 1

    assert remove_leftovers(backend) == 1  # the fresh one may be a write in progress
    assert not old.exists()
    assert [lo.name for lo in find_leftovers(backend)] == ["index/.tmp-fresh"]
    backend.abort_leftover(found["data/ab/.tmp-old"])  # already gone: fine
    assert backend.read(PACK_NAME) == b"a real object"


@pytest.mark.parametrize("name", [PACK_NAME, "../.tmp-x", "data/../../.tmp-x", ".tmp-x/../config"])
def test_local_abort_removes_nothing_but_temporary_files(tmp_path: Path, name: str) -> None:
    backend = LocalBackend(tmp_path / "r")
    backend.create()
    backend.write(PACK_NAME, b"keep me")
    with pytest.raises(BackendError, match="not a temporary file"):
        backend.abort_leftover(UnfinishedUpload(name))
    assert backend.read(PACK_NAME) == b"keep me"


def test_prune_removes_old_leftovers_and_reports_them(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "r")
    backend.create()
    repo = new_repo(backend)
    populate(repo, n_files=2)
    old = _temp_file(tmp_path / "r", "data/cd/.tmp-dead", mtime=time.time() - 2 * MIN_AGE)
    fresh = _temp_file(tmp_path / "r", "data/cd/.tmp-busy")
    result = execute_prune(repo, plan_prune(repo, PruneOptions()))
    assert result.leftovers_aborted == 1
    assert not old.exists() and fresh.exists()


# -- through the decorators ------------------------------------------------------------------


def test_backends_without_leftovers_have_none(tmp_path: Path) -> None:
    memory = MemoryBackend()
    memory.create()
    assert not isinstance(memory, LeftoverUploads)
    stack = AccountingBackend(
        RetryBackend(CachingBackend(FaultyBackend(memory), LocalCache(tmp_path / "c")))
    )
    assert find_leftovers(stack) == []
    assert remove_leftovers(stack, min_age=0) == 0


def test_decorators_pass_leftovers_through_and_count_them(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "r")
    local.create()
    _temp_file(tmp_path / "r", "keys/.tmp-a", mtime=1)
    stack = AccountingBackend(
        RetryBackend(CachingBackend(FaultyBackend(local), LocalCache(tmp_path / "c")))
    )
    assert [lo.name for lo in find_leftovers(stack)] == ["keys/.tmp-a"]
    assert remove_leftovers(stack) == 1
    assert find_leftovers(local) == []
    counts = stack.summary()
    assert (counts["LIST"], counts["DELETE"]) == (2, 1)


class FlakyLeftovers(MemoryBackend):
    """Fails the first listing of leftovers and the first abort with a transient error."""

    def __init__(self) -> None:
        super().__init__()
        self.uploads = [UnfinishedUpload("data/x", "id-1", started=1.0)]
        self.failures = {"list": 1, "abort": 1}

    def _maybe_fail(self, what: str) -> None:
        if self.failures[what]:
            self.failures[what] -= 1
            raise TransientBackendError(f"injected: {what}")

    def list_leftovers(self) -> Iterator[UnfinishedUpload]:
        self._maybe_fail("list")
        return iter(list(self.uploads))

    def abort_leftover(self, upload: UnfinishedUpload) -> None:
        self._maybe_fail("abort")
        self.uploads.remove(upload)


def test_retry_backend_retries_leftover_calls() -> None:
    inner = FlakyLeftovers()
    retrying = RetryBackend(inner, sleep=_no_sleep)
    assert remove_leftovers(retrying) == 1
    assert inner.uploads == [] and retrying.retries == 2


# -- S3 multipart uploads, on both servers --------------------------------------------------


def _start_upload(target: S3Target, name: str, *, parts: int = 1) -> tuple[Any, str]:
    client = target.client()
    key = target.key(name)
    upload_id = str(client.create_multipart_upload(Bucket=target.bucket, Key=key)["UploadId"])
    for number in range(1, parts + 1):
        client.upload_part(
            Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=b"p" * 1000
        )
    return client, upload_id


def _uploads(client: Any, bucket: str) -> set[str]:
    return {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", ())}


@pytest.mark.s3
def test_s3_lists_and_aborts_multipart_uploads(s3_any: S3Target) -> None:
    meter = RequestMeter()
    s3 = s3_any.backend(meter=meter)
    s3.create()
    backend = AccountingBackend(
        RetryBackend(s3, sleep=_no_sleep), meter=meter, count_operations=False
    )
    client, ours = _start_upload(s3_any, PACK_NAME)
    # A sibling prefix ("repo-other/" beside "repo/") is another repository's business.
    sibling = S3Target(s3_any.server, s3_any.endpoint, s3_any.bucket, s3_any.prefix + "-other")
    _, foreign = _start_upload(sibling, PACK_NAME)

    (found,) = find_leftovers(backend)
    assert found.name == f"{PACK_NAME} (multipart upload {ours})"
    assert found.upload == UnfinishedUpload(PACK_NAME, ours, None, found.upload.started)
    started = found.upload.started
    assert started is not None
    # An upload younger than an hour may still be running; an older one is aborted.
    assert remove_leftovers(backend, now=started + MIN_AGE / 2) == 0
    assert remove_leftovers(backend, now=started + 2 * MIN_AGE) == 1
    assert find_leftovers(backend) == []
    assert ours not in _uploads(client, s3_any.bucket) and foreign in _uploads(
        client, s3_any.bucket
    )
    s3.abort_leftover(found.upload)  # already aborted: not an error
    summary = request_summary(backend)
    assert summary is not None and summary["LIST"] >= 4 and summary["DELETE"] >= 1


def _cli(target: S3Target, *args: str) -> Result:
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    location = f"s3://{target.bucket}/{target.prefix}"
    result = run_cas(
        "-r",
        location,
        "--s3-endpoint",
        target.endpoint,
        "--s3-path-style",
        "--json",
        *args,
        env=env,
    )
    assert "Traceback" not in result.err, result.err
    return result


@pytest.mark.s3
def test_check_reports_and_prune_aborts_old_multipart_uploads(s3_any: S3Target) -> None:
    assert _cli(s3_any, "init").code == 0  # an empty repository: check and prune still run
    client, upload_id = _start_upload(s3_any, PACK_NAME, parts=2)
    (upload,) = [
        u
        for u in client.list_multipart_uploads(Bucket=s3_any.bucket)["Uploads"]
        if u["UploadId"] == upload_id
    ]
    # moto reports every upload as started in 2010; SeaweedFS tells the truth.
    old = time.time() - upload["Initiated"].timestamp() >= MIN_AGE

    check = _cli(s3_any, "check")
    assert check.code == 0, check.err  # a leftover is a warning
    findings = [(f["kind"], f["object"]) for f in check.json()["findings"]]
    wanted = [("leftover_upload", f"{PACK_NAME} (multipart upload {upload_id})")]
    assert findings == (wanted if old else [])

    prune = _cli(s3_any, "prune")
    assert prune.code == 0, prune.err
    assert prune.json()["result"]["leftovers_aborted"] == (1 if old else 0)
    assert (upload_id in _uploads(client, s3_any.bucket)) == (not old)
    assert _cli(s3_any, "check").json()["findings"] == []
