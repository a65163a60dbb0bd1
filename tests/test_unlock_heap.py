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


# Run in a fresh interpreter: what `cas backup` has imported when it derives its key.
_IMPORTED_AT_DERIVATION = """
import json, sys
from cas.format import keyfile
derive = keyfile.crypto.derive_key
seen = []
def traced(*args, **kwargs):
    seen.append(sorted(sys.modules))
    return derive(*args, **kwargs)
keyfile.crypto.derive_key = traced
from cas.cli.main import main
try:
    main(sys.argv[2:])
except SystemExit as e:
    code = e.code
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "seen": seen}, f)
"""


def test_backup_derives_its_key_before_the_heavy_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Argon2id's 32 MiB come on top of what the process holds when it derives: the
    repository layer, the archiver, the chunker and OpenSSL (``hashlib``, ``hmac``) are
    imported after it (an unchanged re-backup peaks there)."""
    import json
    import os
    import subprocess
    import sys

    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 1000)
    monkeypatch.setenv("CAS_PASSWORD", "test-password")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert run_cas("-r", repo, "init").code == 0
    out = tmp_path / "seen.json"
    args = ["-q", "-r", str(repo), "backup", "--workers", "0", str(src)]
    env = {**os.environ, "CAS_PASSWORD": "test-password"}
    subprocess.run(
        [sys.executable, "-c", _IMPORTED_AT_DERIVATION, str(out), *args], env=env, check=True
    )
    result = json.loads(out.read_text())
    assert result["code"] == 0
    assert len(result["seen"]) == 1
    at_derivation = set(result["seen"][0])
    heavy = {
        "hashlib",
        "hmac",
        "cas.repo.repository",
        "cas.backup.archiver",
        "cas.chunking.chunker",
    }
    assert heavy.isdisjoint(at_derivation), sorted(heavy & at_derivation)
