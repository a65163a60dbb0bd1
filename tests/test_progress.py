"""Progress on a real terminal, and none anywhere else (issue 15 item 7).

The terminal is a pseudo-terminal (python's ``pty``): ``cas`` sees a tty on
stdin, stdout and stderr, as a user's shell gives it.  On it, backup shows
its scan's totals, the percentage and the time left, restore the same from
the snapshot's size; with ``--json``, or off a terminal, nothing but the
answer is printed.  Storage retries are shown as they happen (a reverse proxy
plays a store answering ``503 SlowDown``), and a run that never gets through
ends with one line saying how long it tried.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import sys
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cas.backend.local import LocalBackend
from cas.cli.common import clock_text, completion
from cas.repo import open_repository
from tests.support.backends import S3Target
from tests.support.cli import TEST_ENV, Result, end_pty_child, run_cas
from tests.support.s3proxy import CountingProxy
from tests.test_cli_json import check_lines, check_message

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "test-password"
WORKERS = [pytest.param("0", id="one-process"), pytest.param("2", id="two-workers")]

# The scan counts the source before the walk starts (it would race the walk of a
# tree this small): then the status line has its totals from the first file on.
SCAN_FIRST = (
    "import cas.backup.scanner as scanner\n"
    "_start = scanner.SourceScan.start\n"
    "def start(self):\n"
    "    _start(self)\n"
    "    self.wait()\n"
    "scanner.SourceScan.start = start\n"
)


def _tree(root: Path, files: int = 24) -> None:
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        where = root if i % 2 else root / "sub"
        (where / f"f{i:02d}").write_bytes(os.urandom(40_000 + 1000 * i))


def on_terminal(args: list[str], env: dict[str, str], prelude: str = "") -> tuple[int, str]:
    """Run ``cas ARGS`` on a pseudo-terminal of 200 columns; its exit code and all it
    wrote there (stdout and stderr, as a terminal shows them)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    full.update(TEST_ENV, CAS_PASSWORD=PASSWORD, **env)
    code = f"{prelude}import runpy\nrunpy.run_module('cas', run_name='__main__')"
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal gets a size, as a real one has
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        os.execve(sys.executable, [sys.executable, "-c", code, *args], full)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        end_pty_child(pid, fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def _status_lines(text: str) -> list[str]:
    """The status lines drawn (each starts by erasing the line)."""
    return [part.split("\r")[0] for part in text.split("\x1b[K")[1:] if part.strip()]


def test_the_time_left_is_told_at_the_pace_so_far() -> None:
    assert completion(0, 100, 5.0) == "0.0% ETA --:--"  # nothing done: no pace yet
    assert completion(25, 100, 10.0) == "25.0% ETA 0:30"
    assert completion(100, 100, 10.0) == "100.0% ETA 0:00"
    assert completion(120, 100, 10.0) == "100.0% ETA 0:00"  # a file grew since the scan
    assert completion(1, 4000, 1.0) == "0.0% ETA 1:06:39"
    assert clock_text(59.9) == "0:59" and clock_text(3600) == "1:00:00"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init").code == 0
    return repo


@pytest.mark.parametrize("workers", WORKERS)
def test_backup_and_restore_show_totals_percentage_and_eta(
    tmp_path: Path, repo: Path, workers: str
) -> None:
    src = tmp_path / "src"
    _tree(src)
    env = {"CAS_REPOSITORY": str(repo), "CAS_WORKERS": workers}
    code, text = on_terminal(["backup", str(src)], env, prelude=SCAN_FIRST)
    assert code == 0, text
    lines = _status_lines(text)
    # Every line of the backup knows the totals: 24 files, and their bytes.
    drawn = [line for line in lines if "/24 files" in line]
    assert drawn, text
    assert all(re.search(r"\d+\.\d% ETA (--:--|\d+:\d\d)", line) for line in drawn), drawn
    assert any("100.0% ETA 0:00  24/24 files" in line for line in drawn), drawn
    assert "snapshot" in text and "saved" in text

    code, text = on_terminal(["restore", "latest", "--target", str(tmp_path / "out")], env)
    assert code == 0, text
    drawn = [line for line in _status_lines(text) if "restored" in line and "ETA" in line]
    assert any(re.search(r"100\.0% ETA 0:00  \S+ \S+/\S+ \S+ restored", d) for d in drawn), text


def test_no_scan_shows_what_is_done_without_totals(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    env = {"CAS_REPOSITORY": str(repo)}
    code, text = on_terminal(["backup", "--no-scan", str(src)], env)
    assert code == 0, text
    lines = _status_lines(text)
    assert any("24 files" in line for line in lines), text
    assert not any("ETA" in line or "%" in line for line in lines), lines


def test_json_and_other_outputs_stay_clean(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    env = {"CAS_REPOSITORY": str(repo)}
    # --json on a terminal: the summary line and nothing else (the terminal turns
    # its newline into CR LF).
    code, text = on_terminal(["backup", "--json", str(src)], env, prelude=SCAN_FIRST)
    assert code == 0, text
    assert "\x1b" not in text and text.endswith("}\r\n") and text.count("\n") == 1, text
    check_lines("backup", [json.loads(text)])
    code, text = on_terminal(["restore", "latest", "--json", "--target", str(tmp_path / "a")], env)
    assert code == 0 and "\x1b" not in text and text.count("\n") == 1, text
    # -q on a terminal: no status line either.
    code, text = on_terminal(["-q", "backup", str(src)], env)
    assert code == 0 and "\x1b" not in text, text
    # Off a terminal (pipes): no status line, nothing on stderr.
    for args in (["backup", src], ["restore", "latest", "--target", tmp_path / "b"]):
        r = run_cas("-r", repo, *args)
        assert r.code == 0 and r.err == "", r.err
        assert "\x1b" not in r.out and "\r" not in r.out and "ETA" not in r.out


# -- retries -------------------------------------------------------------------------

# Retries sooner than cas's own (0.5 s, doubling): what is tested is what is told.
QUICK_RETRIES = (
    "from cas.backend.retry import RetryBackend\n"
    "RetryBackend.__init__.__kwdefaults__['base_delay'] = 0.01\n"
)


class SlowDown:
    """Answer ``503 SlowDown`` to the first ``times`` PUTs of data packs (None: all)."""

    def __init__(self, times: int | None) -> None:
        self.times = times
        self.refused: list[str] = []

    def __call__(self, method: str, path: str) -> tuple[int, str] | None:
        if method != "PUT" or "/data/" not in path:
            return None
        if self.times is not None and len(self.refused) >= self.times:
            return None
        self.refused.append(path)
        return 503, "SlowDown"


def _through(
    s3_any: S3Target, tmp_path: Path, fault: Callable[[str, str], Any]
) -> tuple[Callable[..., Result], CountingProxy]:
    """``cas`` on the S3 target through a proxy that answers as ``fault`` says."""
    proxy = CountingProxy(s3_any.endpoint, fault)

    def cas(*args: str | Path) -> Result:
        env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        env["CAS_CACHE_DIR"] = str(tmp_path / "cache")
        location = f"s3://{s3_any.bucket}/{s3_any.prefix}"
        r = run_cas(
            "-r", location, "--s3-endpoint", proxy.endpoint, "--s3-path-style", *args,
            env=env, prelude=QUICK_RETRIES,
        )  # fmt: skip
        assert "Traceback" not in r.err, r.err
        return r

    return cas, proxy


@pytest.mark.s3
def test_retries_are_shown_as_they_happen(s3_any: S3Target, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, files=4)
    slow = SlowDown(times=2)
    cas, proxy = _through(s3_any, tmp_path, slow)
    try:
        assert cas("init").code == 0
        done = cas("-v", "backup", src)
        assert done.code == 0, done.err
        told = re.findall(
            r"^retrying PUT data/[0-9a-f]{2}/[0-9a-f]{64} in \d+\.\d s: 503 SlowDown "
            r"\(attempt (\d) of 8\)$",
            done.err,
            flags=re.M,
        )
        assert sorted(told) == ["2", "3"], done.err  # the same pack, twice refused
        # --json -v: the retries as retry lines before the summary, all valid.
        slow.times, slow.refused = 1, []
        (src / "new").write_bytes(os.urandom(5000))
        done = cas("--json", "-v", "backup", src)
        assert done.code == 0, done.err
        lines = [json.loads(line) for line in done.out.splitlines()]
        check_lines("backup", lines)
        (retry,) = [line for line in lines if line["message_type"] == "retry"]
        assert (retry["attempt"], retry["attempts"], retry["error"]) == (2, 8, "503 SlowDown")
        assert lines[-1]["requests"]["retries"] == 1
        # --json alone: one line, the summary, and nothing on stderr.
        slow.times, slow.refused = 1, []
        (src / "newer").write_bytes(os.urandom(5000))
        done = cas("--json", "backup", src)
        assert done.code == 0 and done.err == "" and done.out.count("\n") == 1, done.err
        assert done.json()["requests"]["retries"] == 1
    finally:
        proxy.close()


@pytest.mark.s3
def test_a_run_that_never_gets_through_says_how_long_it_tried(
    s3_any: S3Target, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _tree(src, files=2)
    cas, proxy = _through(s3_any, tmp_path, SlowDown(times=None))
    try:
        assert cas("init").code == 0
        failed = cas("backup", src)
        assert failed.code == 1
        last = failed.err.strip().splitlines()[-1]
        assert re.search(r"SlowDown .*\(gave up after 8 attempts in \d+\.\d s\)$", last), last
    finally:
        proxy.close()


def test_a_wait_for_a_lock_is_shown_as_it_happens(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    _tree(src, files=2)
    holder = open_repository(LocalBackend(repo), PASSWORD.encode())
    try:
        with holder.lock(exclusive=True, command="prune"):
            waited = run_cas("-r", repo, "-v", "--retry-lock", "1", "backup", src)
            as_json = run_cas("-r", repo, "--json", "-v", "--retry-lock", "1", "backup", src)
    finally:
        holder.close()
    assert waited.code == 11, waited.err
    told = re.findall(r"^waiting for a lock \(\d+\.\d of 1 s\): (.*)$", waited.err, flags=re.M)
    assert told and all("prune" in t for t in told), waited.err
    assert as_json.code == 11 and as_json.out, as_json.err
    for line in as_json.out.splitlines():  # no summary: the backup never ran
        doc = json.loads(line)
        assert doc["message_type"] == "lock_wait" and doc["wait"] == 1, doc
        check_message("lock_wait", doc)
