"""Run the real ``cas`` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import sweep

# Argon2id at its cheapest: tests create many key files (below the writers' minimum,
# so through the explicit test-only switch).  The local cache goes to a directory of
# this test session, never to the user's ~/.cache.
TEST_ENV = {
    "CAS_TEST_WEAK_KDF": "1",
    "CAS_KDF_OPSLIMIT": "1",
    "CAS_KDF_MEMLIMIT": str(8 << 20),
    "CAS_CACHE_DIR": tempfile.mkdtemp(prefix="cas-test-cache-"),
}
# CAS_TEST_WORKERS=N runs every command of the suite with --workers N (CAS_WORKERS):
# restores of any size then go through N writer processes.
if os.environ.get("CAS_TEST_WORKERS"):
    TEST_ENV["CAS_WORKERS"] = os.environ["CAS_TEST_WORKERS"]


@dataclass
class Result:
    """Exit code and output of one run."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


def cas_env(password: str | None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test's ``cas``: no CAS_/AWS_ variables of the caller, the
    test settings, the password, then ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    full_env.update(TEST_ENV)
    if password is not None:
        full_env["CAS_PASSWORD"] = password
    full_env.update(env or {})
    return full_env


def start_cas(
    *args: str | Path, password: str | None = "test-password", env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m cas ARGS`` in the background (stdout and stderr piped);
    ``finish`` collects it."""
    full_env = cas_env(password, env)
    sweep.note_cli([str(a) for a in args], full_env)
    return subprocess.Popen(
        [sys.executable, "-m", "cas", *map(str, args)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 600) -> Result:
    """Wait for a ``start_cas`` process (the deadline only bounds a hang)."""
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def run_cas(
    *args: str | bytes | Path,
    password: str | None = "test-password",
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    cwd: str | Path | None = None,
    nofile: int | None = None,
    prelude: str | None = None,
) -> Result:
    """Run ``python -m cas ARGS`` with a clean, test-friendly environment.

    ``nofile`` sets the open-file limit (soft and hard) of the process;
    ``prelude`` is Python code run in it before the command (to patch a
    call and make a race happen at a chosen step).
    """
    full_env = cas_env(password, env)
    sweep.note_cli([os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args], full_env)
    start = ["-m", "cas"]
    if prelude is not None:
        start = ["-c", f"{prelude}\nimport runpy\nrunpy.run_module('cas', run_name='__main__')"]

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.run(
        [
            sys.executable,
            *start,
            *[os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args],
        ],
        env=full_env,
        input=input,
        capture_output=True,
        cwd=cwd,
        timeout=600,
        preexec_fn=limit if nofile is not None else None,
    )
    return Result(
        proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )


def end_pty_child(pid: int, fd: int) -> None:
    """Kill and reap a ``pty.fork`` child if it still runs, and close its terminal."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    os.close(fd)


def read_until(fd: int, pattern: bytes, hang: float = 120) -> bytes:
    """Read a pseudo-terminal until ``pattern`` appears (``hang`` only bounds a hang)."""
    buf = b""
    deadline = time.monotonic() + hang
    while pattern not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf
