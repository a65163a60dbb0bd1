"""Habits of restic users and scripts (issue 15): passwords trimmed like restic's and never
empty, the password command named and heard, init asking twice on a terminal and refusing
other people's files, tags split at commas, ambiguous prefixes and near-miss locations."""

from __future__ import annotations

import os
import pty
import sys
from pathlib import Path

import pytest

from tests.support.cli import TEST_ENV, end_pty_child, read_until, run_cas

PASSWORD = "correct horse"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init", password=PASSWORD).code == 0
    return repo


@pytest.mark.parametrize(
    "content", [b"correct horse\r\n", b"correct horse  \n\n", b"correct horse"]
)
def test_password_files_lose_trailing_cr_lf_and_spaces(
    repo: Path, tmp_path: Path, content: bytes
) -> None:
    f = tmp_path / "pw"
    f.write_bytes(content)
    r = run_cas("-r", repo, "--password-file", f, "snapshots", password=None)
    assert r.code == 0, r.err


@pytest.mark.parametrize("content", [b"", b"\r\n", b"   \n"])
def test_an_empty_password_file_is_refused_as_such(
    repo: Path, tmp_path: Path, content: bytes
) -> None:
    f = tmp_path / "pw"
    f.write_bytes(content)
    r = run_cas("-r", repo, "--password-file", f, "snapshots", password=None)
    assert r.code == 2, r.err
    assert r.err == f"cas: an empty password is not a password: password file {f} holds none\n"


def test_an_empty_cas_password_is_refused_as_such(repo: Path) -> None:
    r = run_cas("-r", repo, "snapshots", password="")
    assert r.code == 2 and "an empty password is not a password: CAS_PASSWORD is empty" in r.err


def test_an_empty_other_password_is_refused_as_such(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run_cas("-r", other, "init", "--copy-keys-from", repo, password=PASSWORD).code == 2
    r = run_cas("-r", other, "init", "--copy-keys-from", repo, env={"CAS_OTHER_PASSWORD": ""})
    assert r.code == 2 and "CAS_OTHER_PASSWORD is empty" in r.err, r.err


def test_the_password_command_is_named_and_its_stderr_shown(repo: Path, tmp_path: Path) -> None:
    script = tmp_path / "vault"
    script.write_text("#!/bin/sh\necho 'vault sealed' >&2\nexit 4\n")
    script.chmod(0o755)
    r = run_cas("-r", repo, "--password-command", str(script), "snapshots", password=None)
    assert r.code == 2
    assert "vault sealed" in r.err
    assert f"password command '{script}' exited with status 4" in r.err
    r = run_cas("-r", repo, "--password-command", "no-such-tool --get", "snapshots", password=None)
    assert r.code == 2 and "cannot run password command 'no-such-tool'" in r.err, r.err
    good = tmp_path / "good"
    good.write_text(f"#!/bin/sh\nprintf '{PASSWORD}\\r\\n'\n")
    good.chmod(0o755)
    assert (
        run_cas("-r", repo, "--password-command", str(good), "snapshots", password=None).code == 0
    )


def test_no_password_says_which_and_how(repo: Path, tmp_path: Path) -> None:
    r = run_cas("-r", repo, "snapshots", password=None)
    assert r.code == 2
    assert "no password given (the repository password): set CAS_PASSWORD" in r.err
    other = tmp_path / "other"
    assert run_cas("-r", other, "init", password=PASSWORD).code == 0
    r = run_cas("-r", repo, "copy", "--to", other, password=PASSWORD)
    assert r.code == 2 and f"no password for {other}" in r.err, r.err


def test_init_on_a_terminal_warns_and_asks_twice(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    env.update(TEST_ENV)
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "cas", "-r", str(repo), "init"], env)
    try:
        first = read_until(fd, b"new password")
        assert b"cannot recover a lost password" in first, first
        os.write(fd, b"one\n")
        read_until(fd, b"confirmation")
        os.write(fd, b"two\n")  # a typo: asked again
        again = read_until(fd, b"new password")
        assert b"do not match" in again, again
        os.write(fd, b"right\n")
        read_until(fd, b"confirmation")
        os.write(fd, b"right\n")
        done = read_until(fd, b"created repository")
        assert b"created repository" in done, done
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        end_pty_child(pid, fd)
    assert run_cas("-r", repo, "snapshots", password="right").code == 0
    assert run_cas("-r", repo, "snapshots", password="two").code == 12


def test_init_refuses_a_directory_of_other_files_unless_forced(tmp_path: Path) -> None:
    """Issue 15, item 9: no config and keys/ among the user's files by mistake (borg refuses)."""
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "letter.txt").write_text("hello")
    r = run_cas("-r", src, "init")
    assert r.code == 2 and "already holds files that are not a cas repository" in r.err, r.err
    assert "--force" in r.err and not (src / "config").exists()
    assert sorted(p.name for p in src.iterdir()) == ["docs"]
    assert run_cas("-r", src, "init", "--force").code == 0
    assert (src / "docs" / "letter.txt").read_text() == "hello"
    assert run_cas("-r", src, "snapshots").code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cas("-r", empty, "init").code == 0  # an empty directory is fine
    half = tmp_path / "half"  # what an init killed before its config leaves: accepted
    (half / "keys").mkdir(parents=True)
    (half / "keys" / ("ab" * 32)).write_bytes(b"{}")
    assert run_cas("-r", half, "init").code == 0


def test_a_comma_separates_tags_as_in_restic(tmp_path: Path) -> None:
    """Issue 15, item 3: ``--tag a,b`` is two tags when set, and "both" when selecting."""
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "f").write_text("x")
    assert run_cas("-r", repo, "init").code == 0
    assert run_cas("-r", repo, "backup", src, "--tag", "home,daily").code == 0
    assert run_cas("-r", repo, "backup", src, "--tag", "home").code == 0
    snaps = run_cas("-r", repo, "--json", "snapshots").json()["snapshots"]
    assert [s["tags"] for s in snaps] == [["daily", "home"], ["home"]]

    def count(*tags: str) -> int:
        args = [a for t in tags for a in ("--tag", t)]
        return len(run_cas("-r", repo, "--json", "snapshots", *args).json()["snapshots"])

    assert count("home,daily") == 1  # both
    assert count("home") == 2
    assert count("daily", "nope") == 1  # either
    assert run_cas("-r", repo, "tag", "--add", "a,b", snaps[1]["id"][:8]).code == 0
    tags = {
        tuple(s["tags"]) for s in run_cas("-r", repo, "--json", "snapshots").json()["snapshots"]
    }
    assert ("a", "b", "home") in tags


def test_an_ambiguous_prefix_lists_the_candidates(tmp_path: Path) -> None:
    """Issue 15, item 3: 17 snapshots, so two share a first hex digit (pigeonhole)."""
    import dataclasses

    from cas.backend.local import LocalBackend
    from tests.support.repos import PASSWORD as TEST_PASSWORD
    from tests.support.repos import new_repo, populate

    r = new_repo(LocalBackend(tmp_path / "repo"))
    sid, _ = populate(r, n_files=1)
    snap = r.load_snapshot(sid)
    ids = [sid] + [
        r.save_snapshot(dataclasses.replace(snap, time_ns=snap.time_ns + i)) for i in range(16)
    ]
    r.close()
    digit = next(d for d in "0123456789abcdef" if sum(i.hex().startswith(d) for i in ids) > 1)
    res = run_cas(
        "-r",
        tmp_path / "repo",
        "restore",
        digit,
        "--target",
        tmp_path / "t",
        password=TEST_PASSWORD.decode(),
    )
    assert res.code != 0 and "prefix is ambiguous" in res.err, res.err
    for i in ids:
        if i.hex().startswith(digit):
            assert i.hex()[:5] in res.err


def test_a_near_miss_of_a_url_scheme_gets_a_hint(tmp_path: Path) -> None:
    for typed, meant in (("s3:/bucket/p", "s3://bucket/p"), ("sftp:host:/srv", "sftp://host:/srv")):
        r = run_cas("-r", typed, "snapshots", cwd=tmp_path)
        assert r.code == 2 and f"did you mean {meant}?" in r.err, r.err
        assert not any(tmp_path.iterdir())  # no directory named "s3:" made
    (tmp_path / "s3:odd").mkdir()  # a real directory of that name is still a path
    r = run_cas("-r", "s3:odd", "snapshots", cwd=tmp_path)
    assert r.code == 10, r.err
