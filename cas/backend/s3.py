"""A repository in an S3 bucket (AWS or any S3-compatible store), under a key prefix.

Object ``name`` is stored at key ``<prefix>/<name>``.  Credentials come from
boto3's standard chain (environment, profile, instance role); the endpoint
from the constructor or boto3's own ``AWS_ENDPOINT_URL``.

Write-once comes from a conditional PUT (``If-None-Match: *``): the store
itself refuses to replace an object, so two writers cannot race.  A 412 reply
is not necessarily a conflict: it is also what our own retried PUT gets when
the reply to the first attempt was lost, so the existing object is read back
and compared.  Stores without conditional writes use HEAD-then-PUT instead
(``conditional_writes=False``), which is racy only between writers of the same
content-addressed name, and so harmless.

Integrity in transit: every PUT carries Content-MD5, which every S3 store
checks, and with ``checksums="when_supported"`` (the default) also an
``x-amz-checksum-sha256`` header that cas computes itself, so the store
verifies the body against a second digest and keeps the SHA-256, which for
content-addressed names is the name itself.  The checksum goes in a plain
header, never in the aws-chunked trailer that botocore 1.36 started to send
by default over HTTPS and that broke several S3-compatible stores; for stores
that reject the header as well, ``checksums="when_required"`` sends
Content-MD5 only.  Downloads are verified by the repository (SHA-256 of
whole objects, AEAD of every blob), which also covers ranged reads that no
store checksums.

Storage classes: with ``storage_class`` set (say STANDARD_IA or GLACIER_IR),
writes flagged ``cold`` (data packs) carry ``StorageClass``; everything else
(config, keys, locks, index, snapshots, tree packs) stays in STANDARD, so
listing, browsing and incremental backups never read from a colder tier.

Leftovers: cas itself uploads every object with one PUT, but a multipart
upload that some tool started under the prefix and never completed keeps
its parts, billed, without appearing as an object; ``list_leftovers`` and
``abort_leftover`` find and remove them.

The client makes one attempt per request: retries belong to
:class:`cas.backend.retry.RetryBackend`, which retries exactly the errors
raised here as :class:`~cas.errors.TransientBackendError`.  A
:class:`~cas.backend.accounting.RequestMeter` given to the constructor
counts every HTTP request the client sends.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import boto3
import botocore.loaders
import botocore.session
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    ConnectionError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    SSLError,
)

from cas.backend.accounting import RequestMeter
from cas.backend.base import (
    ObjectInfo,
    UnfinishedUpload,
    check_name,
    check_prefix,
    scan_pieces,
)
from cas.errors import (
    AccessDenied,
    BackendError,
    ObjectExists,
    ObjectNotFound,
    TransientBackendError,
)

CHECKSUM_MODES = ("when_supported", "when_required")
DEFAULT_CHECKSUMS = "when_supported"
# AWS's storage classes; S3-compatible stores may accept others of this shape.
STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
)
_STORAGE_CLASS = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_BUCKET = frozenset({"NoSuchBucket"})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_WRITE_ATTEMPTS = 4
# Replies that another attempt of the same request may not get: server
# errors, throttling, timeouts, and bodies damaged or cut short in transit
# (the digest we sent did not match what the store received).
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "IncompleteBody",
        "BadDigest",
        "XAmzContentSHA256Mismatch",
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
# What botocore raises when the connection, not the store, failed: refused,
# reset, timed out, or a body that ended early or failed its checksum.  A bad
# TLS certificate (SSLError) will not get better by itself.
_TRANSIENT_BOTOCORE: tuple[type[Exception], ...] = (
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ChecksumError,
    FlexibleChecksumError,
)
# The request kind that S3 bills for each operation cas sends (AWS prices
# POST and COPY with PUT, and LIST separately).
_REQUEST_KINDS = {
    "GetObject": "GET",
    "HeadObject": "HEAD",
    "HeadBucket": "HEAD",
    "ListObjectsV2": "LIST",
    "ListObjects": "LIST",
    "ListMultipartUploads": "LIST",
    "ListParts": "LIST",
    "ListBuckets": "LIST",
    "DeleteObject": "DELETE",
    "DeleteBucket": "DELETE",
    "AbortMultipartUpload": "DELETE",
}
_DELETES = frozenset({"DeleteObject", "AbortMultipartUpload"})
_METHOD_KINDS = {"GET": "GET", "HEAD": "HEAD", "DELETE": "DELETE"}
_loader: Any = None
_loader_lock = threading.Lock()
# Enough pooled connections for a few concurrent uploads and downloads; with
# too few, urllib3 discards and reopens connections under load.
_MAX_CONNECTIONS = 32


class S3Backend:
    """Objects as keys ``prefix/name`` in ``bucket``.

    ``client`` lets a caller supply a configured boto3 S3 client (tests, or
    sharing one client); otherwise one is made from the other arguments and
    closed by ``close()``.  boto3 clients are thread-safe, so one backend may
    serve many threads.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        path_style: bool = False,
        client: Any = None,
        conditional_writes: bool = True,
        checksums: str = DEFAULT_CHECKSUMS,
        meter: RequestMeter | None = None,
        storage_class: str | None = None,
    ) -> None:
        if checksums not in CHECKSUM_MODES:
            raise BackendError(
                f"unknown S3 checksum mode {checksums!r}: use {' or '.join(CHECKSUM_MODES)}"
            )
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._storage_class = normalize_storage_class(storage_class)
        self._conditional_writes = conditional_writes
        self._sha256 = checksums == "when_supported"
        self._owns_client = client is None
        self._client = (
            client if client is not None else _make_client(endpoint_url, path_style, checksums)
        )
        self.meter = meter
        if meter is not None:
            self._client.meta.events.register("before-send.s3", self._count_request)

    @property
    def location(self) -> str:
        """``s3://bucket/prefix`` (the endpoint is not part of it)."""
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._bucket

    @property
    def storage_class(self) -> str | None:
        """The storage class of cold writes (data packs); None for the bucket's default."""
        return self._storage_class

    def create(self) -> None:
        """Check that the bucket exists and is reachable; the prefix needs no preparation."""
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except ClientError as err:
            if _code(err) in _NOT_FOUND | _NO_BUCKET:
                raise BackendError(
                    f"bucket {self._bucket!r} does not exist; create it first"
                ) from err
            raise self._error(err, "HeadBucket", "") from err
        except BotoCoreError as err:
            raise self._error(err, "HeadBucket", "") from err

    def create_bucket(self) -> None:
        """Create the bucket in the client's region; a bucket we already own is fine."""
        request: dict[str, Any] = {"Bucket": self._bucket}
        region = self._client.meta.region_name
        # us-east-1 is the one region that rejects an explicit location constraint.
        if region and region != "us-east-1":
            request["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**request)
        except ClientError as err:
            if _code(err) == "BucketAlreadyOwnedByYou":
                return
            raise self._error(err, "CreateBucket", "") from err
        except BotoCoreError as err:
            raise self._error(err, "CreateBucket", "") from err

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        """Store ``data`` as ``name``; never replace an object with different content.

        The Content-MD5 header (and x-amz-checksum-sha256 unless checksums
        is "when_required") makes the store reject a body damaged in transit.
        A ``cold`` object goes to the configured storage class, if any.
        """
        data = bytes(data)
        md5 = hashlib.md5(data, usedforsecurity=False)
        self._write(name, lambda: data, len(data), md5, hashlib.sha256(data), cold)

    def write_file(self, name: str, file: BinaryIO, size: int, *, cold: bool = False) -> None:
        """Like ``write``, with a body read from ``file`` as it is sent (rewound for each
        attempt), after one pass over it in pieces for the digests."""
        md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        for piece in scan_pieces(file, size):
            md5.update(piece)
            sha256.update(piece)
        self._write(name, lambda: _Body(file, size), size, md5, sha256, cold)

    def _write(
        self,
        name: str,
        body: Callable[[], bytes | _Body],
        size: int,
        md5: Any,
        sha256: Any,
        cold: bool,
    ) -> None:
        """One conditional PUT of ``body()`` (a new one each attempt), and what a 412 or
        a conflict calls for."""
        key = self._key(name)
        headers: dict[str, Any] = {"ContentMD5": _b64(md5.digest()), "ContentLength": size}
        if self._sha256:
            headers["ChecksumSHA256"] = _b64(sha256.digest())
        if cold and self._storage_class is not None:
            headers["StorageClass"] = self._storage_class
        digest = sha256.digest()
        for attempt in range(_WRITE_ATTEMPTS):
            if not self._conditional_writes:
                same = self._compare_existing(name, size, digest)
                if same is not None:
                    if same:
                        return
                    raise ObjectExists(name=name)
            try:
                self._put(key, body(), headers)
                return
            except ClientError as err:
                code = _code(err)
                if code == "PreconditionFailed" or _status(err) == 412:
                    same = self._compare_existing(name, size, digest)
                    if same is None:
                        continue  # deleted since the 412; the next PUT may succeed
                    if same:
                        return
                    raise ObjectExists(name=name) from None
                if code == "ConditionalRequestConflict":
                    # Another conditional PUT of this key is in flight; AWS asks
                    # the loser to retry, and that retry will see its result.
                    time.sleep(0.1 * 2**attempt)
                    continue
                if code == "NotImplemented" and self._conditional_writes:
                    raise BackendError(
                        f"S3 PutObject {self._url(key)} failed: the store does not support"
                        " conditional writes (If-None-Match); use conditional_writes=False"
                    ) from err
                raise self._error(err, "PutObject", key) from err
            except BotoCoreError as err:
                raise self._error(err, "PutObject", key) from err
        raise TransientBackendError(
            f"cannot write {self._url(key)}: concurrent writes kept conflicting"
        )

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes of ``name`` from ``offset`` (to the end if None)."""
        key = self._key(name)
        if offset < 0 or (length is not None and length < 0):
            raise BackendError(
                f"invalid range for {self._url(key)}: offset {offset}, length {length}"
            )
        if length == 0:
            # "bytes=a-(a-1)" is not a valid range, so only check that offset fits.
            size = self.stat(name).size
            if offset > size:
                raise self._short_read(key, offset, offset, size)
            return b""
        request: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
        if offset or length is not None:
            last = "" if length is None else str(offset + length - 1)
            request["Range"] = f"bytes={offset}-{last}"
        try:
            response = self._client.get_object(**request)
            with contextlib.closing(response["Body"]) as body:
                data = bytes(body.read())
            if self.meter is not None:
                self.meter.add_bytes(bytes_down=len(data))
        except ClientError as err:
            code = _code(err)
            if code in _NOT_FOUND:
                raise ObjectNotFound(name=name) from err
            if code == "InvalidRange":
                # S3 refuses any range starting at the end, even the empty tail
                # that read(name, size) should return.
                size = self.stat(name).size
                if length is None and offset == size:
                    return b""
                end = size if length is None else offset + length
                raise self._short_read(key, offset, end, size) from err
            raise self._error(err, "GetObject", key) from err
        except BotoCoreError as err:
            raise self._error(err, "GetObject", key) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            # botocore wraps what urllib3 raises while streaming a body, but
            # not on every path: a connection that breaks mid-body is transient.
            raise TransientBackendError(
                f"S3 GetObject {self._url(key)} failed: {_one_line(str(err))}"
            ) from err
        return self._check_range(key, response, data, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        """Return the size of ``name``."""
        key = self._key(name)
        try:
            response = self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as err:
            if _code(err) in _NOT_FOUND:
                raise ObjectNotFound(name=name) from err
            raise self._error(err, "HeadObject", key) from err
        except BotoCoreError as err:
            raise self._error(err, "HeadObject", key) from err
        return ObjectInfo(name=name, size=int(response["ContentLength"]))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield the objects under ``prefix`` + "/" (all objects if ``prefix`` is "").

        S3 lists keys in ascending UTF-8 order, so the names come in
        ascending order too; one request per 1,000 keys.
        """
        return self._list(prefix, None)

    def list_after(self, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """Like :meth:`list`, but only names after ``start_after`` (to resume a listing)."""
        return self._list(prefix, start_after)

    def _list(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        root = f"{self._prefix}/" if self._prefix else ""
        start = f"{root}{prefix}/" if prefix else root
        request: dict[str, Any] = {"Bucket": self._bucket, "Prefix": start}
        if start_after is not None:
            request["StartAfter"] = f"{root}{start_after}"
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(**request):
                for entry in page.get("Contents", ()):
                    name = str(entry["Key"])[len(root) :]
                    # Skip what is not an object name: "folder/" markers made by
                    # S3 consoles and foreign keys such as ".DS_Store".
                    if _is_name(name):
                        yield ObjectInfo(name=name, size=int(entry["Size"]))
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, "ListObjectsV2", start) from err

    def delete(self, name: str) -> None:
        """Remove ``name``; S3 itself treats removing a missing key as success."""
        key = self._key(name)
        try:
            self._client.delete_object(Bucket=self._bucket, Key=key)
        except ClientError as err:
            if _code(err) in _NOT_FOUND:
                return
            raise self._error(err, "DeleteObject", key) from err
        except BotoCoreError as err:
            raise self._error(err, "DeleteObject", key) from err

    def list_leftovers(self) -> Iterator[UnfinishedUpload]:
        """Yield the multipart uploads under the prefix that were never completed or aborted.

        One LIST per 1,000 uploads.  A store that cannot list multipart
        uploads (NotImplemented) has none to show.
        """
        root = f"{self._prefix}/" if self._prefix else ""
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self._bucket, Prefix=root):
                for upload in page.get("Uploads", ()):
                    started = upload.get("Initiated")
                    yield UnfinishedUpload(
                        name=str(upload["Key"])[len(root) :],
                        upload_id=str(upload["UploadId"]),
                        started=started.timestamp() if started is not None else None,
                    )
        except ClientError as err:
            if _code(err) == "NotImplemented":
                return
            raise self._error(err, "ListMultipartUploads", root) from err
        except BotoCoreError as err:
            raise self._error(err, "ListMultipartUploads", root) from err

    def abort_leftover(self, upload: UnfinishedUpload) -> None:
        """Abort a multipart upload, which deletes its parts; one already gone is fine."""
        key = f"{self._prefix}/{upload.name}" if self._prefix else upload.name
        try:
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=key, UploadId=upload.upload_id
            )
        except ClientError as err:
            if _code(err) in _NOT_FOUND | {"NoSuchUpload"}:
                return
            raise self._error(err, "AbortMultipartUpload", key) from err
        except BotoCoreError as err:
            raise self._error(err, "AbortMultipartUpload", key) from err

    def close(self) -> None:
        """Close the HTTP connections of a client this backend made."""
        if self._owns_client:
            self._client.close()

    # -- helpers ---------------------------------------------------------------

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self._prefix}/{name}" if self._prefix else name

    def _url(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    def _count_request(self, request: Any, event_name: str = "", **_: Any) -> None:
        """botocore ``before-send`` hook: count each HTTP request as it goes out.

        Returns None, so the request is sent; hooks registered later (fault
        injection in tests) still see it and a request they fail is counted,
        as the store would have billed it.
        """
        assert self.meter is not None
        operation = event_name.rsplit(".", 1)[-1]
        kind = _REQUEST_KINDS.get(operation) or _METHOD_KINDS.get(request.method, "PUT")
        try:
            sent = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            sent = 0
        self.meter.record(kind, bytes_up=sent)

    def _put(self, key: str, data: bytes | _Body, headers: dict[str, Any]) -> None:
        request: dict[str, Any] = {"Bucket": self._bucket, "Key": key, "Body": data, **headers}
        if self._conditional_writes:
            request["IfNoneMatch"] = "*"
        self._client.put_object(**request)

    def _compare_existing(self, name: str, size: int, sha256: bytes) -> bool | None:
        """Whether the stored ``name`` has ``size`` bytes with SHA-256 ``sha256``; None if
        there is no such object.  (Only after a refused or a HEAD-first write: it reads
        the stored object whole.)"""
        try:
            if self.stat(name).size != size:
                return False
            return hashlib.sha256(self.read(name)).digest() == sha256
        except ObjectNotFound:
            return None

    def _check_range(
        self, key: str, response: Any, data: bytes, offset: int, length: int | None
    ) -> bytes:
        """Verify that ``data`` is exactly the requested range, or raise a short read."""
        content_range = response.get("ContentRange")
        if content_range is None:
            # No range asked, or a store that ignores Range and sends it all.
            total = len(data)
            data = data[offset:] if length is None else data[offset : offset + length]
        else:
            match = _CONTENT_RANGE.fullmatch(str(content_range))
            if match is None or int(match.group(1)) != offset:
                raise BackendError(
                    f"S3 GetObject {self._url(key)}: asked for bytes from {offset},"
                    f" got Content-Range {content_range!r}"
                )
            total = int(match.group(3))
        end = total if length is None else offset + length
        if end > total:
            raise self._short_read(key, offset, end, total, got=len(data))
        if len(data) != end - offset:
            # The object is long enough but the body ended early: a broken
            # connection or proxy, which another attempt may not meet.
            raise TransientBackendError(
                f"truncated read of {self._url(key)}: wanted bytes {offset}..{end},"
                f" got {len(data)} bytes"
            )
        return data

    def _short_read(
        self, key: str, offset: int, end: int, size: int, got: int | None = None
    ) -> BackendError:
        received = "" if got is None else f", got {got}"
        return BackendError(
            f"short read of {self._url(key)}: wanted bytes {offset}..{end},"
            f" object has {size}{received}"
        )

    def _error(self, err: Exception, operation: str, key: str) -> BackendError:
        """One line: operation, where, and the S3 error code or connection problem.

        A TransientBackendError for what another attempt may not meet, a
        plain BackendError for everything else.
        """
        where = self._url(key) if key else f"s3://{self._bucket}"
        if isinstance(err, ClientError):
            code = _code(err) or str(_status(err))
            if code in _NO_BUCKET:
                return BackendError(f"S3 {operation} {where} failed: bucket does not exist")
            message = str(err.response.get("Error", {}).get("Message", "")).strip()
            detail = f"{code} {message}" if message and message != code else code
            status = _status(err)
            if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
                return TransientBackendError(
                    f"S3 {operation} {where} failed: {_one_line(detail)} (HTTP {status})",
                    reason=f"{status} {code}",
                )
            if code == "InvalidObjectState":
                detail = (
                    f"{detail} (the object is archived, e.g. in GLACIER or DEEP_ARCHIVE: "
                    "request a restore of the data packs and wait for it before reading them)"
                )
            elif code == "InvalidStorageClass":
                detail = f"{detail} (the store does not offer storage class {self._storage_class})"
            elif status == 403 or code == "AccessDenied":
                why = (
                    "these credentials may not delete: run prune, forget and repair with"
                    " credentials that may (docs/deploy.md)"
                    if operation in _DELETES
                    else "check the credentials and the bucket policy"
                )
                return AccessDenied(
                    f"S3 {operation} {where} failed: {_one_line(detail)} (HTTP 403: {why})"
                )
            return BackendError(f"S3 {operation} {where} failed: {_one_line(detail)}")
        if isinstance(err, _TRANSIENT_BOTOCORE) and not isinstance(err, SSLError):
            return TransientBackendError(f"S3 {operation} {where} failed: {_one_line(str(err))}")
        if isinstance(err, NoCredentialsError):
            return BackendError(
                f"S3 {operation} {where} failed: no credentials found (set AWS_ACCESS_KEY_ID"
                " and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            )
        return BackendError(f"S3 {operation} {where} failed: {_one_line(str(err))}")


class _Body:
    """The first ``size`` bytes of a file as a request body that botocore may read, seek
    and rewind (for its signature and for sending) but not close: the file stays the
    caller's.  Reads go straight to the file at their own offsets."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self._size = size
        self._pos = 0

    def __len__(self) -> int:
        return self._size

    def read(self, n: int | None = -1) -> bytes:
        want = self._size - self._pos if n is None or n < 0 else min(n, self._size - self._pos)
        if want <= 0:
            return b""
        self._file.seek(self._pos)
        data = self._file.read(want)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, self._size)[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True


def normalize_storage_class(value: str | None) -> str | None:
    """A storage class in canonical form: upper case; None for none or STANDARD.

    Raises BackendError for a value that cannot be a storage class name.
    AWS's classes are :data:`STORAGE_CLASSES`; other names of the same shape
    are passed on, for S3-compatible stores with classes of their own.
    """
    if value is None or not value.strip():
        return None
    canonical = value.strip().upper().replace("-", "_")
    if not _STORAGE_CLASS.fullmatch(canonical):
        raise BackendError(
            f"invalid S3 storage class {value!r} (examples: {', '.join(STORAGE_CLASSES[1:5])})"
        )
    return None if canonical == "STANDARD" else canonical


def _make_client(endpoint_url: str | None, path_style: bool, checksums: str) -> Any:
    config = Config(
        s3={"addressing_style": "path" if path_style else "auto"},
        # One attempt: RetryBackend is the single place that retries (see
        # cas.backend.retry for why).
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=_MAX_CONNECTIONS,
        # "when_supported" lets botocore validate whole-object downloads
        # against the stored checksum; uploads carry the SHA-256 we compute
        # ourselves (see write), so botocore never adds its own CRC32 trailer.
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
    )
    try:
        return new_session().client("s3", endpoint_url=endpoint_url, config=config)
    except (BotoCoreError, ValueError) as err:
        raise BackendError(f"cannot set up S3 client: {_one_line(str(err))}") from err


def new_session(**options: Any) -> boto3.session.Session:
    """A fresh boto3 session that shares botocore's parsed service models with all others.

    A session per client, because boto3's default session is not
    thread-safe; one shared loader, because parsing the S3 model and
    endpoint rules makes each new session's first client cost 0.2-0.5 s.
    ``options`` go to boto3's Session (credentials, region).
    """
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
        loader = _loader
    core = botocore.session.Session()
    core.register_component("data_loader", loader)
    return boto3.session.Session(botocore_session=core, **options)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _status(err: ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_name(name: str) -> bool:
    try:
        check_name(name)
    except BackendError:
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())
