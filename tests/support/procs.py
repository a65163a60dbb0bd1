"""Processes seen through /proc: a command's children, and whether one still runs.

A process is named by its PID and its start time, so a PID the kernel hands
to a new process after the first one ended is not mistaken for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

Proc = tuple[int, int]  # (PID, start time in clock ticks since boot)


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def children(pid: int) -> list[Proc]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
            if int(fields[1]) == pid:
                found.append((int(entry), int(fields[19])))
        except (OSError, IndexError, ValueError):
            continue
    return found


def alive(proc: Proc) -> bool:
    """Whether the process still runs (a zombie does not, nor a new one with its PID)."""
    try:
        fields = _stat_fields(proc[0])
        return int(fields[19]) == proc[1] and fields[0] != "Z"
    except (OSError, IndexError, ValueError):
        return False


def describe(proc: Proc) -> str:
    """State and command line, for a failure message."""
    try:
        state = _stat_fields(proc[0])[0]
        cmd = Path(f"/proc/{proc[0]}/cmdline").read_bytes().replace(b"\0", b" ")
        return f"{proc[0]} ({state}): {cmd.decode(errors='replace')}"
    except (OSError, IndexError):
        return f"{proc[0]} (gone)"


def kill_when_paused(proc: subprocess.Popen[bytes], paused: Path) -> list[Proc]:
    """Wait until a helper of ``proc`` creates ``paused`` (a ``name@N:pause`` fail point),
    kill ``proc`` with SIGKILL, and return its helpers once every one of them has ended
    too; fails if that does not happen within two minutes (a bound on a hang, not a
    timing assertion)."""
    deadline = time.monotonic() + 120
    try:
        while not paused.exists():
            assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
            assert time.monotonic() < deadline, f"nothing reached {paused.name}"
            time.sleep(0.02)
        helpers = children(proc.pid)
        assert helpers, "no helper process"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        while any(alive(h) for h in helpers):
            assert time.monotonic() < deadline, "helpers outlived their parent: " + ", ".join(
                describe(h) for h in helpers
            )
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return helpers
