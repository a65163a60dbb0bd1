"""Security properties of spec/format.md §15, tested on the real command.

- key files (and every other object) are created 0600 whatever the umask;
- secrets (the password, the master keys) never appear in the argv of a
  process cas starts, in its output (human or JSON), in its error messages,
  or in plaintext anywhere on disk (repository, cache);
- the password prompt does not echo (a real pseudo-terminal);
- a wrong password fails having read only ``config`` and ``keys/``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pty
import re
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cas.backend.base import Backend, ObjectInfo
from cas.backend.local import LocalBackend
from cas.chunking.worker import OFFLOAD_MIN
from cas.errors import WrongPassword
from cas.repo import layout, open_repository
from tests.support import sweep
from tests.support.cli import TEST_ENV, Result, end_pty_child, read_until, run_cas
from tests.support.s3server import logged_since
from tests.test_crash import parallel

SECRET = "Sekr1t-Pa55phrase-xyzzy-4711"
OTHER = "An0ther-Pa55phrase-plugh-0815"


@pytest.fixture(autouse=True)
def _sweep_passwords() -> None:
    """These tests run cas by hand, with their own passwords: the teardown sweep
    (tests/support/sweep.py) opens their repositories with them."""
    sweep.knows_password(SECRET)
    sweep.knows_password(OTHER)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    env.update(TEST_ENV)
    env["CAS_CACHE_DIR"] = str(tmp_path / "cache")
    env.update(extra)
    return env


def _secret_forms(tmp_path: Path, repo: Path) -> dict[str, bytes]:
    """The password and each master key, as bytes, hex and base64 (what a leak would look like)."""
    keys = open_repository(LocalBackend(repo), SECRET.encode()).keys
    forms = {"password": SECRET.encode()}
    for name in ("data_key", "index_key", "id_key", "chunker_key"):
        raw: bytes = getattr(keys, name)
        forms[name] = raw
        forms[name + " hex"] = raw.hex().encode()
        forms[name + " b64"] = base64.b64encode(raw).rstrip(b"=")
    return forms


def _leaks(data: bytes, forms: dict[str, bytes]) -> list[str]:
    return [name for name, form in forms.items() if form in data]


# -- file modes ---------------------------------------------------------------------------


def test_key_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    pw = tmp_path / "pw"
    pw.write_text(OTHER + "\n")
    env = _env(tmp_path, CAS_PASSWORD=SECRET)
    for args in (
        ("init",),
        ("key", "add", "--new-password-file", str(pw)),
        ("key", "passwd", "--new-password-file", str(pw)),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "cas", "-r", str(repo), *args],
            env=env,
            capture_output=True,
            umask=0,
        )
        assert proc.returncode == 0, (args, proc.stderr)
    keys = list((repo / "keys").iterdir())
    assert len(keys) == 2
    for path in [*keys, repo / "config"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for d in (repo, repo / "keys"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


# -- secrets in argv, output, messages and on disk ------------------------------------------

AUDIT = """
import json, sys
log = open(sys.argv[1], "a")
def hook(event, args):
    if event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system"):
        log.write(json.dumps([event, repr(args)]) + "\\n")
        log.flush()
sys.addaudithook(hook)
sys.argv = ["cas", *sys.argv[2:]]
from cas.cli.main import main
main()
"""


def _audited(log: Path, args: list[str], env: dict[str, str], cwd: Path) -> Result:
    """Run cas with an audit hook that records every process it starts."""
    proc = subprocess.run(
        [sys.executable, "-c", AUDIT, str(log), *args], env=env, capture_output=True, cwd=cwd
    )
    return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode())


@pytest.fixture
def session(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A repository made and used with SECRET, every run's output and every child's argv kept."""
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(50_000))
    (src / "note").write_text("not a secret\n")
    # large enough for the chunk helper process (cas/chunking/worker.py): its argv is audited too
    (src / "large").write_bytes(os.urandom(OFFLOAD_MIN + 1000))
    pwcmd = tmp_path / "pwcmd.py"
    pwcmd.write_text(f"print({SECRET!r})\n")
    pwfile = tmp_path / "pwfile"
    pwfile.write_text(SECRET + "\n")
    newpw = tmp_path / "newpw"
    newpw.write_text(OTHER + "\n")
    log = tmp_path / "children.log"
    outputs: list[bytes] = []

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        full = _env(tmp_path, **(env or {}))
        r = _audited(log, ["-r", str(repo), *args], full, tmp_path)
        outputs.append(r.out.encode() + r.err.encode())
        return r

    yield {
        "run": run,
        "repo": repo,
        "src": src,
        "pwcmd": f"{sys.executable} {pwcmd}",
        "pwfile": str(pwfile),
        "newpw": str(newpw),
        "log": log,
        "outputs": outputs,
    }


@pytest.mark.damaged_repo_ok("damages the config to see that the failure shows no secret")
def test_secrets_never_leak(tmp_path: Path, session: dict[str, Any]) -> None:
    """Human and JSON output, error messages, child processes, repository and cache."""
    run, src = session["run"], session["src"]
    by_cmd = {"CAS_PASSWORD_COMMAND": session["pwcmd"]}
    by_file = {"CAS_PASSWORD_FILE": session["pwfile"]}
    by_env = {"CAS_PASSWORD": SECRET}
    assert run("--json", "init", env=by_cmd).code == 0
    assert run("backup", str(src), env=by_cmd).code == 0
    (src / "new").write_bytes(os.urandom(1000))
    assert run("--json", "backup", str(src), "--workers", "2", env=by_env).code == 0
    # read-only commands, side by side
    reads = [
        partial(run, "snapshots", env=by_file),
        partial(run, "--json", "check", "--read-data", "--workers", "2", env=by_env),
        partial(run, "stats", env=by_env),
        partial(run, "--json", "key", "list", env=by_env),
        partial(run, "cat", "config", env=by_env),
        partial(
            run,
            "restore",
            "latest",
            "--target",
            str(tmp_path / "out"),
            "--workers",
            "2",
            env=by_env,
        ),
    ]
    results = parallel(*reads)
    assert all(r.code == 0 for r in results), [r.err for r in results]
    keys = json.loads(results[3].out)
    key_id = keys[0]["id"] if isinstance(keys, list) else keys["keys"][0]["id"]
    assert run("cat", "key", key_id, env=by_env).code == 0
    assert run("--json", "forget", "--keep-last", "1", "--prune", env=by_env).code == 0
    assert run("key", "add", "--new-password-file", session["newpw"], env=by_env).code == 0
    forms = _secret_forms(tmp_path, session["repo"])
    # Failures: their messages must not quote the secret they were given.
    assert run("snapshots", env={"CAS_PASSWORD": SECRET + "x"}).code == 12
    failing_command = f"{sys.executable} -c 'import sys; sys.exit(3)' {SECRET}"
    assert run("snapshots", env={"CAS_PASSWORD_COMMAND": failing_command}).code == 2
    assert run("snapshots", env={"CAS_PASSWORD_FILE": str(tmp_path / SECRET)}).code == 2
    assert run("--json", "restore", "nosuchsnapshot", "-t", str(tmp_path / "x"), env=by_env).code
    (session["repo"] / "config").write_bytes(b"CASREPO\x01" + b"\x00" * 60)
    # 12, not 1, with two key files: see docs/reliability.md (a damaged config reads as
    # a wrong password when another key file exists)
    assert run("--json", "check", env={**by_env, "CAS_DEBUG": "1"}).code in (1, 12)

    # The password appears only where the user put it: in the name of the password
    # file that could not be read (chosen here to be the secret).
    for out in session["outputs"]:
        out = out.replace(str(tmp_path / SECRET).encode(), b"")
        assert SECRET.encode() not in out, out.decode(errors="replace")
        assert OTHER.encode() not in out, out.decode(errors="replace")
        assert not _leaks(out, forms), out
    # Processes started: the password command of the runs that had one, the chunk
    # helper of the first backup, the second backup's two workers, restore's two
    # writers, check's two verifiers, and nothing else; no secret in their argv or
    # environment (except where the user's own command holds one).
    # (With CAS_TEST_WORKERS the first backup has two workers, which chunk the large
    # file, instead of the chunk helper.)
    everywhere = "CAS_WORKERS" in TEST_ENV
    children = [json.loads(line) for line in session["log"].read_text().splitlines()]
    assert len(children) == 10 + everywhere, children
    assert all(e == "subprocess.Popen" for e, _ in children), children
    helpers = [args for _, args in children if "cas.chunking.worker" in args]
    workers = ("cas.restore.worker", "cas.check.verifier", "cas.backup.worker")
    writers = [args for _, args in children if any(w in args for w in workers)]
    assert len(helpers) == 1 - everywhere and len(writers) == 6 + 2 * everywhere, children
    for _, args in children:
        if "sys.exit(3)" in args:
            continue  # the failing password command: the user put the secret in it
        assert not _leaks(args.encode(), forms), args
        if args in helpers or args in writers:
            assert SECRET not in args and "PASSWORD" not in args, args
        else:
            assert str(tmp_path / "pwcmd.py") in args, args
    assert all("CAS_" not in args for args in helpers)
    # Nothing in plaintext on disk, in the repository or in the cache.
    for root in (session["repo"], tmp_path / "cache"):
        for path in root.rglob("*"):
            if path.is_file():
                assert not _leaks(path.read_bytes(), forms), path


# -- the prompt -----------------------------------------------------------------------------


def test_password_prompt_does_not_echo(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = _env(tmp_path, CAS_PASSWORD=SECRET)
    assert run_cas("-r", repo, "init", password=SECRET, env=env).code == 0
    env = _env(tmp_path)  # no password source: cas must prompt on the terminal
    pid, fd = pty.fork()
    if pid == 0:  # the child: cas with the pseudo-terminal as its controlling terminal
        os.execve(sys.executable, [sys.executable, "-m", "cas", "-r", str(repo), "snapshots"], env)
    try:
        prompt = read_until(fd, b"password")
        assert b"password" in prompt, prompt
        # getpass switches echo off right after printing the prompt: wait for it (the
        # deadline only bounds a hang; echo that never goes off fails the test).
        deadline = time.monotonic() + 120
        while termios.tcgetattr(fd)[3] & termios.ECHO and time.monotonic() < deadline:
            time.sleep(0.01)
        attrs = termios.tcgetattr(fd)
        assert not attrs[3] & termios.ECHO, "echo is on while the password is typed"
        os.write(fd, SECRET.encode() + b"\n")
        rest = read_until(fd, b"snapshots\r\n")
        assert SECRET.encode() not in prompt + rest, rest
        assert b"0 snapshots" in rest, rest
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        end_pty_child(pid, fd)


# -- a wrong password touches nothing -----------------------------------------------------------


class Recording:
    """A backend that records the names of the objects each request touched."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.touched: list[tuple[str, str]] = []

    @property
    def location(self) -> str:
        return self.inner.location

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.touched.append((name, str(args[0]) if args else ""))
            return method(*args, **kwargs)

        return recorded

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self.touched.append(("list", prefix))
        return self.inner.list(prefix)


def test_wrong_password_reads_only_config_and_keys(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = _env(tmp_path)
    assert run_cas("-r", repo, "init", password=SECRET, env=env).code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(10_000))
    assert run_cas("-r", repo, "backup", src, password=SECRET, env=env).code == 0
    rec = Recording(LocalBackend(repo))
    with pytest.raises(WrongPassword):
        open_repository(rec, OTHER.encode())
    assert rec.touched
    for op, name in rec.touched:
        assert name == layout.CONFIG or name == layout.KEYS or name.startswith("keys/"), (op, name)


def test_key_list_shows_hostile_key_file_members_escaped(tmp_path: Path) -> None:
    """hostname and username of a version 1 key file are not authenticated, and any
    key file is listed before anything opens it (spec §4.1): whoever can write the
    repository can set them, and ``key list`` must not let them add lines or terminal
    escapes to its output.  (A version 2 file so edited no longer opens; the one that
    does is left as it was and listed beside it.)"""
    repo = tmp_path / "repo"
    env = _env(tmp_path)
    assert run_cas("-r", repo, "init", password=SECRET, env=env).code == 0
    (path,) = (repo / layout.KEYS).iterdir()
    doc = json.loads(path.read_bytes())
    doc["hostname"] = "evil\nfake line\x1b[2J"
    doc["username"] = "\x1b]0;title\x07root"
    doc["created"] = "2000-01-01T00:00:00Z"  # listed first (oldest)
    data = json.dumps(doc).encode()
    new = repo / layout.KEYS / hashlib.sha256(data).hexdigest()
    new.write_bytes(data)
    new.chmod(0o600)
    r = run_cas("-r", repo, "key", "list", password=SECRET, env=env)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 3, lines  # the heading and two keys
    assert "\x1b" not in r.out and "\x07" not in r.out
    assert "evil\\nfake line\\x1b[2J" in lines[1]
    js = run_cas("-r", repo, "--json", "key", "list", password=SECRET, env=env)
    assert json.loads(js.out)["keys"][0]["hostname"] == doc["hostname"]  # JSON escapes by itself


REQUEST = re.compile(rb'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) ([^ "]*) HTTP/1\.[01]')


@pytest.mark.s3
def test_wrong_password_on_s3_requests_only_config_and_keys(
    tmp_path: Path, s3_server: str, s3_bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Counted by the S3 server itself: nothing under data/, index/, snapshots/ or locks/."""
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env["CAS_CACHE_DIR"] = str(tmp_path / "cache")
    args = ["-r", f"s3://{s3_bucket}/r", "--s3-endpoint", s3_server, "--s3-path-style"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(10_000))
    assert run_cas(*args, "init", password=SECRET, env=env).code == 0
    assert run_cas(*args, "backup", src, password=SECRET, env=env).code == 0
    (log,) = sorted(tmp_path_factory.getbasetemp().glob("moto*/server.log"))[-1:]
    _, start = logged_since(log, s3_server)
    for command in (("snapshots",), ("restore", "latest", "-t", str(tmp_path / "o"))):
        r = run_cas(*args, *command, password=OTHER, env=env)
        assert r.code == 12, r.err
    requests = REQUEST.findall(logged_since(log, s3_server, start)[0])
    assert requests
    for method, path in requests:
        key = path.decode().split("?")[0].removeprefix(f"/{s3_bucket}").lstrip("/")
        if key:
            assert key == "r/config" or key.startswith("r/keys/"), (method, path)
        else:  # a bucket-level request: only the listing of keys/
            assert b"?" not in path or re.search(rb"prefix=r(%2F|/)keys", path), (method, path)
        assert method in (b"GET", b"HEAD"), (method, path)
    assert not (tmp_path / "o").exists()
