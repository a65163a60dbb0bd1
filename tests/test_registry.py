"""Backends by registry (cas/backend/registry.py) and the stack cas.repo.open builds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cas import repo as repo_pkg
from cas.backend import BackendFactory, S3Options, find_layer, open_backend, register
from cas.backend.accounting import AccountingBackend
from cas.backend.base import Backend
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.backend.registry import split_location
from cas.errors import RepositoryNotFound, UsageError
from cas.repo import RepoOptions
from cas.repo.caching import CachingBackend
from tests.support.repos import PASSWORD, new_repo, populate


@dataclass(frozen=True)
class EchoOptions:
    tag: str = "default"


def test_a_new_backend_is_one_factory_and_one_registration() -> None:
    seen: list[tuple[str, str, EchoOptions]] = []

    def open_echo(location: str, rest: str, options: EchoOptions) -> Backend:
        seen.append((location, rest, options))
        return MemoryBackend(f"echo-{rest}")

    register(BackendFactory(("echo",), EchoOptions, open_echo, "echo://"))
    try:
        open_backend("echo://a/b")
        open_backend("ECHO://c", [S3Options(endpoint="http://127.0.0.1:9"), EchoOptions("mine")])
        assert seen == [
            ("echo://a/b", "a/b", EchoOptions()),
            ("ECHO://c", "c", EchoOptions("mine")),
        ]
        with pytest.raises(UsageError, match="echo://"):
            open_backend("nope://x")
    finally:
        MemoryBackend.forget("echo-a/b")
        MemoryBackend.forget("echo-c")


def test_locations_split_into_scheme_and_rest() -> None:
    assert split_location("s3://bucket/p") == ("s3", "bucket/p")
    assert split_location("/srv/repo") == ("", "/srv/repo")
    assert split_location("File:///srv") == ("file", "/srv")
    assert split_location("relative/s3://x") == ("", "relative/s3://x")


def test_open_builds_the_whole_stack(tmp_path: Path) -> None:
    location = str(tmp_path / "repo")
    new_repo(repo_pkg.open_storage(location, RepoOptions(cache=False)))
    asked: list[int] = []

    def password() -> bytes:
        asked.append(1)
        return PASSWORD

    cached = repo_pkg.open(location, password, RepoOptions(cache_dir=str(tmp_path / "c")))
    assert isinstance(cached.backend, CachingBackend) and cached.cache is not None
    assert isinstance(find_layer(cached.backend, AccountingBackend), AccountingBackend)
    assert isinstance(find_layer(cached.backend, LocalBackend), LocalBackend)
    sid, _ = populate(cached)
    assert (tmp_path / "c").is_dir()
    assert cached.requests() is not None and cached.storage_class() is None
    cached.close()
    plain = repo_pkg.open(location, password, RepoOptions(cache=False, connections=3))
    assert plain.cache is None and find_layer(plain.backend, CachingBackend) is None
    assert plain.saver.connections == 3
    assert plain.find_snapshot(sid.hex())[0] == sid
    plain.close()
    assert len(asked) == 2


def test_a_missing_repository_is_refused_before_the_password(tmp_path: Path) -> None:
    def password() -> bytes:
        raise AssertionError("asked for a password")

    with pytest.raises(RepositoryNotFound):
        repo_pkg.open(str(tmp_path / "none"), password, RepoOptions(cache=False))
