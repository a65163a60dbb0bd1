"""Processes seen through /proc: a command's children, and whether one still runs.

A process is named by its PID and its start time, so a PID the kernel hands
to a new process after the first one ended is not mistaken for it.
"""

from __future__ import annotations

import os
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
