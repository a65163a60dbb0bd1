"""Global options before the command name, after it, or from the environment: one result.

restic takes its global flags anywhere (``restic snapshots --json -r REPO``);
scripts written for it, and the README's own examples, put them after the
command.  Each global option is run here in its three forms on commands of
every kind, and the exit code and output must be the same.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import click
import pytest

from cas.cli.main import cli
from tests.support.cli import Result, run_cas

PASSWORD = "test-password"

# command -> its arguments (read-only, so the forms can run in any order)
COMMANDS: dict[str, list[str]] = {
    "snapshots": ["snapshots"],
    "stats": ["stats"],
    "key list": ["key", "list"],
    "cat config": ["cat", "config"],
    "check": ["check"],
    "forget --dry-run": ["forget", "--keep-last", "5", "--dry-run"],
    "restore --dry-run": ["restore", "latest", "--dry-run", "--target", "{tmp}/out"],
    "backup --dry-run": ["backup", "--dry-run", "{src}"],
}


def _options(repo: Path, tmp: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """option -> (its words on the command line, its environment equivalent)."""
    pwfile = tmp / "pw"
    return {
        "--json": (["--json"], {"CAS_JSON": "1"}),
        "-q": (["-q"], {"CAS_QUIET": "1"}),
        "--no-cache": (["--no-cache"], {"CAS_NO_CACHE": "1"}),
        "--no-lock": (["--no-lock"], {"CAS_NO_LOCK": "1"}),
        "--retry-lock": (["--retry-lock", "2"], {"CAS_RETRY_LOCK": "2"}),
        "--connections": (["--connections", "2"], {"CAS_CONNECTIONS": "2"}),
        "--cache-dir": (["--cache-dir", str(tmp / "c2")], {"CAS_CACHE_DIR": str(tmp / "c2")}),
        "--password-file": (["--password-file", str(pwfile)], {"CAS_PASSWORD_FILE": str(pwfile)}),
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("globals")
    src, repo = tmp / "src", tmp / "repo"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"content")
    (tmp / "pw").write_text(PASSWORD + "\n")
    assert run_cas("-r", repo, "init").code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    return tmp, src, repo


_VOLATILE = re.compile(r'"(duration|time|time_iso|time_ns)": [^,}]+')


def _same(r: Result) -> tuple[int, str]:
    """What must agree between the forms (times of the run itself masked)."""
    out = re.sub(r"in \d+\.\d+s", "in Xs", _VOLATILE.sub(r'"\1": X', r.out))
    return r.code, out


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("option", ["--json", "-q", "--no-cache", "--password-file"])
def test_each_global_option_works_before_after_and_from_the_environment(
    repo: tuple[Path, Path, Path], command: str, option: str
) -> None:
    _check_forms(repo, command, option)


@pytest.mark.parametrize("option", ["--no-lock", "--retry-lock", "--connections", "--cache-dir"])
def test_the_other_global_options_too(repo: tuple[Path, Path, Path], option: str) -> None:
    _check_forms(repo, "snapshots", option)
    _check_forms(repo, "restore --dry-run", option)


def _first_contact(location: Path) -> None:
    """This test's client (its own XDG_STATE_HOME) meets the repository once, so that
    each form compared runs with the same client state (the first contact reads the
    latest generation record: one more request than the runs after it)."""
    assert run_cas("-r", location, "snapshots").code == 0


def _ancestor_times(src: Path) -> list[tuple[int, int]]:
    return [(os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns) for p in src.parents]


def _check_forms(repo: tuple[Path, Path, Path], command: str, option: str) -> None:
    tmp, src, location = repo
    args = [a.format(tmp=tmp, src=src) for a in COMMANDS[command]]
    words, env = _options(location, tmp)[option]
    # the password comes from the file where that is the option under test
    password = None if option == "--password-file" else PASSWORD
    _first_contact(location)
    for _ in range(3):
        # A backup records the source's ancestors (/tmp ...), whose times other
        # processes may move: the forms are compared over a stretch where they did not.
        ancestors = _ancestor_times(src)
        before = run_cas("-r", location, *words, *args, password=password)
        after = run_cas(*args, "-r", location, *words, password=password)
        from_env = run_cas("-r", location, *args, password=password, env=env)
        if _ancestor_times(src) == ancestors:
            break
    assert before.code in (0, 3), (command, option, before.err)
    assert _same(before) == _same(after) == _same(from_env), (command, option)
    assert "Traceback" not in before.err + after.err + from_env.err
    if option == "--json":
        json.loads(after.out)


def test_the_repository_option_after_the_command_and_in_the_environment(
    repo: tuple[Path, Path, Path],
) -> None:
    _, _, location = repo
    _first_contact(location)
    before = run_cas("--json", "-r", location, "snapshots")
    after = run_cas("snapshots", "--json", "-r", location)
    from_env = run_cas("--json", "snapshots", env={"CAS_REPOSITORY": str(location)})
    assert before.code == after.code == from_env.code == 0
    assert before.json() == after.json() == from_env.json()
    # After the command name, an option overrides the one before it and the environment.
    other = run_cas(
        "-r", "/nonexistent", "snapshots", "-r", location, env={"CAS_REPOSITORY": "/nope"}
    )
    assert other.code == 0, other.err


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            found += _leaves(cmd, (*path, name))
        else:
            found.append(((*path, name), cmd))
    return found


def test_every_command_takes_every_global_option() -> None:
    """One definition (cas/cli/options.py): each command has each global option, except a
    name the command uses itself (check's old --cache-dir)."""
    group_flags = {o for p in cli.params for o in p.opts if o.startswith("-")}
    group_flags -= {"--version", "--help", "-h"}
    for path, cmd in _leaves(cli):
        flags = {o for p in cmd.params for o in p.opts}
        missing = group_flags - flags
        assert not missing or (path == ("check",) and missing <= {"--cache-dir"}), (path, missing)


@pytest.mark.s3
def test_the_s3_options_before_after_and_from_the_environment(
    s3_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    """--s3-endpoint, --s3-path-style and --storage-class on moto's server, over HTTP."""
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env.pop("AWS_ENDPOINT_URL", None)
    env["CAS_CACHE_DIR"] = str(tmp_path / "cache")
    loc = f"s3://{s3_bucket}/globals"
    s3 = ["--s3-endpoint", s3_server, "--s3-path-style"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f" * 1000)
    assert run_cas("-r", loc, *s3, "init", env=env).code == 0
    backup = run_cas("backup", src, "-r", loc, *s3, "--storage-class", "STANDARD_IA", env=env)
    assert backup.code == 0, backup.err
    before = run_cas("--json", "-r", loc, *s3, "snapshots", env=env)
    after = run_cas("snapshots", "--json", "-r", loc, *s3, env=env)
    from_env = run_cas(
        "snapshots",
        env={
            **env,
            "CAS_JSON": "1",
            "CAS_REPOSITORY": loc,
            "CAS_S3_ENDPOINT": s3_server,
            "CAS_S3_PATH_STYLE": "1",
        },
    )
    assert before.code == after.code == from_env.code == 0, (after.err, from_env.err)
    assert before.json() == after.json() == from_env.json()
    assert len(before.json()["snapshots"]) == 1
