"""The CLI gives the heap's free pages back right before it derives a key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cas import crypto
from cas.cli import common
from cas.cli.common import Globals
from cas.format import keyfile
from tests.support.cli import run_cas


def _globals(repo: Path, cache: Path) -> Globals:
    return Globals(
        repo=str(repo),
        password_file=None,
        password_command=None,
        json=False,
        quiet=True,
        s3_endpoint=None,
        s3_path_style=False,
        no_lock=False,
        lock_wait=0.0,
        cache_dir=str(cache),
    )


def test_the_heap_is_trimmed_right_before_the_key_derivation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init").code == 0
    events: list[str] = []
    trim = common.release_free_heap
    derive = crypto.derive_key

    def traced_trim() -> None:
        events.append("trim")
        trim()

    def traced_derive(*args: Any, **kwargs: Any) -> bytes:
        events.append("derive")
        return derive(*args, **kwargs)

    monkeypatch.setattr(common, "release_free_heap", traced_trim)
    monkeypatch.setattr(keyfile.crypto, "derive_key", traced_derive)
    monkeypatch.setenv("CAS_PASSWORD", "test-password")
    g = _globals(repo, tmp_path / "cache")
    try:
        g.open()
    finally:
        for cleanup in reversed(g.cleanups):
            cleanup()
    assert events[:2] == ["trim", "derive"]


def test_release_free_heap_is_harmless_when_called_again() -> None:
    common.release_free_heap()
    common.release_free_heap()
