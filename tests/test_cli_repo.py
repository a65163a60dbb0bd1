"""Issue acceptance for the repository commands, driven through the real CLI.

The same sequence runs on a local directory and on S3 over HTTP (moto's server).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.cli import run_cas


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def repo_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """Global options naming a fresh repository location of each kind."""
    if request.param == "local":
        return ["-r", str(tmp_path / "repo")]
    endpoint = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return ["-r", f"s3://{bucket}/some/prefix", "--s3-endpoint", endpoint, "--s3-path-style"]


def _aws_env() -> dict[str, str]:
    return {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}


def test_init_key_and_password_errors(repo_args: list[str], tmp_path: Path) -> None:
    env = _aws_env()
    first = run_cas(*repo_args, "--json", "init", env=env)
    assert first.code == 0, first.err
    repo_id = first.json()["id"]

    again = run_cas(*repo_args, "init", env=env)
    assert again.code == 1
    assert again.err.strip().count("\n") == 0 and "already exists" in again.err

    pw2 = tmp_path / "pw2"
    pw2.write_text("second password\n")
    added = run_cas(*repo_args, "key", "add", "--new-password-file", str(pw2), env=env)
    assert added.code == 0, added.err

    listed = run_cas(*repo_args, "--json", "key", "list", password="second password", env=env)
    assert listed.code == 0, listed.err
    keys = listed.json()["keys"]
    assert len(keys) == 2 and sum(k["current"] for k in keys) == 1

    cfg = run_cas(*repo_args, "cat", "config", password="second password", env=env)
    assert cfg.code == 0 and repo_id in cfg.out

    wrong = run_cas(*repo_args, "key", "list", password="not it", env=env)
    assert wrong.code == 12
    assert wrong.err.strip() and "\n" not in wrong.err.strip()
    assert "Traceback" not in wrong.err

    # the password itself never shows up in output
    assert "second password" not in listed.out + listed.err


def test_missing_repository_exits_10(repo_args: list[str]) -> None:
    result = run_cas(*repo_args, "key", "list", env=_aws_env())
    assert result.code == 10
    assert "no repository" in result.err and "\n" not in result.err.strip()


def test_key_files_are_private(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init").code == 0
    keys = list((repo / "keys").iterdir())
    assert keys
    for path in [*keys, repo / "config"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((repo / "keys").stat().st_mode) == 0o700


def test_password_sources(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init", password="pw-one").code == 0
    pwfile = tmp_path / "pw"
    pwfile.write_text("pw-one\n")
    assert run_cas("-r", repo, "--password-file", pwfile, "key", "list", password=None).code == 0
    env = {"CAS_PASSWORD_FILE": str(pwfile)}
    assert run_cas("-r", repo, "key", "list", password=None, env=env).code == 0
    cmd = f"cat {pwfile}"
    assert run_cas("-r", repo, "--password-command", cmd, "key", "list", password=None).code == 0
    # no terminal and no source: a usage error, not a hang
    none = run_cas("-r", repo, "key", "list", password=None)
    assert none.code == 2 and "no password" in none.err


def test_passwd_and_remove(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init", password="old").code == 0
    new = tmp_path / "new"
    new.write_text("new")
    assert (
        run_cas("-r", repo, "key", "passwd", "--new-password-file", new, password="old").code == 0
    )
    assert run_cas("-r", repo, "key", "list", password="old").code == 12
    keys = run_cas("-r", repo, "--json", "key", "list", password="new").json()["keys"]
    assert len(keys) == 1
    other = tmp_path / "other"
    other.write_text("other")
    run_cas("-r", repo, "key", "add", "--new-password-file", other, password="new")
    current = run_cas("-r", repo, "--json", "key", "list", password="new").json()["keys"]
    in_use = next(k["id"] for k in current if k["current"])
    refused = run_cas("-r", repo, "key", "remove", in_use[:12], password="new")
    assert refused.code == 1 and "in use" in refused.err
    assert run_cas("-r", repo, "key", "remove", in_use[:12], password="other").code == 0
    assert run_cas("-r", repo, "key", "list", password="new").code == 12


@pytest.mark.damaged_repo_ok(
    "writes a config of format version 3, which readers of version 2 must refuse"
)
def test_newer_format_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init").code == 0
    config = repo / "config"
    data = bytearray(config.read_bytes())
    data[7] = 3
    config.chmod(0o600)
    config.write_bytes(bytes(data))
    result = run_cas("-r", repo, "key", "list")
    assert result.code == 1
    assert "format version 3" in result.err and "upgrade cas" in result.err


@pytest.mark.s3
def test_init_create_bucket_and_request_accounting(s3_server: str, tmp_path: Path) -> None:
    bucket = f"cas-new-{os.urandom(4).hex()}"
    args = ["-r", f"s3://{bucket}/r", "--s3-endpoint", s3_server, "--s3-path-style"]
    env = _aws_env()
    missing = run_cas(*args, "init", env=env)
    assert missing.code != 0 and "Traceback" not in missing.err
    made = run_cas(*args, "--json", "init", "--create-bucket", env=env)
    assert made.code == 0, made.err
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(50_000))
    first = run_cas(*args, "--json", "backup", src, env=env)
    assert first.code == 0, first.err
    req = first.json()["requests"]
    assert req["PUT"] >= 3 and req["estimated_cost_usd"] > 0
    human = run_cas(*args, "backup", src, env=env)
    assert "storage requests:" in human.out
