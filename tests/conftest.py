"""Shared fixtures; the reusable kit lives in tests/support/ and is loaded as plugins."""

import os
import tempfile
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.support.sweep",  # first: the S3 fixtures register their servers with it
    "tests.support.s3server",
    "tests.support.backends",
]

# The client state (spec §13.6) of every cas a test runs goes to a directory of this
# session, never to the user's ~/.local/state ...
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="cas-test-state-")

# The suite runs cas in thousands of subprocesses; under PYTHONDONTWRITEBYTECODE each
# would compile every module of cas again (about half its start-up).  Their bytecode
# goes to a directory of this session instead, never into the source tree.  (Set once,
# in the first process: the xdist workers inherit it.)
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    os.environ["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="cas-test-pycache-")


@pytest.fixture(autouse=True)
def client_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """... and each test is a client of its own: tests copy repositories from templates
    (to this client, a copy older than one it wrote to is a rollback).  A test that
    wants a second client gives its cas another XDG_STATE_HOME."""
    state = str(tmp_path_factory.mktemp("client-state"))
    monkeypatch.setenv("XDG_STATE_HOME", state)
    yield state
