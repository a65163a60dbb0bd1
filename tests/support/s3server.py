"""A real S3 server (moto's, as a subprocess on 127.0.0.1) for the whole test session.

Going through HTTP rather than moto's in-process mocks exercises what users
hit: botocore's signing, retries, ranged GETs and the headers we send.  An
autouse fixture swaps the AWS environment for fake credentials first, so no
test can reach real AWS with a developer's keys.

Fixtures: ``s3_server`` (endpoint URL), ``s3_bucket`` (a fresh bucket name),
``s3_client`` (a boto3 client for looking behind a backend's back).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from cas.backend.s3 import new_session
from tests.support import sweep

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    # No profile, instance-metadata or shared-file lookups: fast and hermetic.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_CLEARED_AWS_ENV = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_STARTUP_DEADLINE = 60.0  # seconds; a slow CI machine imports moto slowly
_START_ATTEMPTS = 3
_MOTO_ATOMIC = Path(__file__).with_name("moto_atomic.py")  # moto.server, writes atomic


@pytest.fixture(scope="session", autouse=True)
def fake_aws_environment() -> Iterator[None]:
    """Replace the AWS environment with fake credentials for the whole session."""
    with pytest.MonkeyPatch.context() as patch:
        for name in _CLEARED_AWS_ENV:
            patch.delenv(name, raising=False)
        for name, value in FAKE_AWS_ENV.items():
            patch.setenv(name, value)
        # A proxy from the environment must not carry requests meant for 127.0.0.1.
        for name in ("NO_PROXY", "no_proxy"):
            current = os.environ.get(name, "")
            patch.setenv(name, ",".join(filter(None, [current, "127.0.0.1", "localhost"])))
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start moto's S3 server on a free port of 127.0.0.1 and yield its endpoint URL."""
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    process, endpoint = start_moto_server(log_path)
    sweep.serve("moto", make_s3_client(endpoint))
    try:
        yield endpoint
    finally:
        sweep.unserve("moto")
        stop_process(process)


@pytest.fixture(scope="session")
def s3_client(s3_server: str) -> Any:
    """A boto3 client for the test server, to set up or inspect objects directly.

    Shared by the session because making a client costs a few hundred ms;
    tests must not register event hooks on it.
    """
    return make_s3_client(s3_server)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """Create a fresh, uniquely named bucket on the test server and return its name."""
    name = f"cas-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


def make_s3_client(endpoint: str, **config: Any) -> Any:
    """A boto3 S3 client for ``endpoint``; ``config`` goes to botocore's Config."""
    return new_session().client("s3", endpoint_url=endpoint, config=Config(**config))


def start_moto_server(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's server (``moto_atomic.py``: conditional writes atomic, as on AWS)
    and wait until it answers HTTP.

    Another process may take the free port between our probe and the
    server's bind, so a server that exits early is retried on a new port.
    Output goes to ``log_path``, not a pipe, whose buffer would fill up and
    block a server that logs every request.
    """
    for _ in range(_START_ATTEMPTS):
        port = _free_port()
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, str(_MOTO_ATOMIC), "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if _wait_until_serving(process, port):
            return process, f"http://127.0.0.1:{port}"
        stop_process(process)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"moto S3 server did not start; its log ends:\n{tail}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process``, killing it if it does not exit promptly."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + _STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        # http.client, unlike urllib, never goes through an environment proxy.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
        finally:
            connection.close()
    return False


_LOG_HANG = 60.0  # seconds; only bounds a hang, never a timed assertion


def logged_since(log: Path, endpoint: str, since: int = 0) -> tuple[bytes, int]:
    """What the moto server at ``endpoint`` wrote to ``log`` from byte ``since`` on,
    once it has logged every request answered before this call, and the offset just
    past that: a marker request goes last, and the log is read up to its line.  No
    sleep and hope that the server's log caught up."""
    marker = f"/cas-test-log-marker-{uuid.uuid4().hex}".encode()
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=_LOG_HANG)
    try:
        connection.request("HEAD", marker.decode())
        connection.getresponse().read()
    finally:
        connection.close()
    deadline = time.monotonic() + _LOG_HANG
    while True:
        data = log.read_bytes()
        at = data.find(marker, since)
        end = data.find(b"\n", at)
        if at >= 0 and end >= 0:
            return data[since : data.rfind(b"\n", since, at) + 1], end + 1
        assert time.monotonic() < deadline, f"the server never logged {marker!r}"
        time.sleep(0.05)


def enforce_iam(endpoint: str, policies: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Make IAM users with these inline policies on the moto server at ``endpoint``, then
    turn on moto's IAM enforcement (its ``reset-auth`` API with a count of 0): from then
    on it answers every request as AWS would for the user that signed it.

    Returns each user's (access key, secret).  Only for a server of its own: the session
    server's fake credentials name no IAM user, so enforcement would lock them out.
    """
    session = new_session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    iam = session.client("iam", endpoint_url=endpoint)
    keys: dict[str, tuple[str, str]] = {}
    for user, policy in policies.items():
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="cas", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
    port = int(endpoint.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/moto-api/reset-auth", body=b"0")
        reply = connection.getresponse()
        reply.read()
        assert reply.status == 200, reply.status
    finally:
        connection.close()
    return keys
