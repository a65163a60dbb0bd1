#!/usr/bin/env python3
"""Where a command's time goes, per process and thread: a py-spy profile, summed.

    python tools/profile.py [--rate 250] [--top 8] [--raw FILE] -- cas backup /src
    python tools/profile.py --from FILE            # summarise a saved raw profile

Runs ``py-spy record -t -r RATE -f raw --subprocesses`` on the command (py-spy is not
a dependency of cas: ``pip install py-spy``; it needs ptrace, i.e. root or
``kernel.yama.ptrace_scope=0``) and prints, for each thread of each process, how busy
it was (its samples against the command's wall time at RATE samples a second), the
functions it spent its samples in, inclusive (a function counted once per sample,
wherever it is on the stack), and the innermost functions, as a Markdown table.
docs/performance.md's profile figures ("chunker 80%", "sealing threads ~80% busy") are
this table's columns.

Exit codes: 0, 1 when the command or py-spy failed, 2 for bad usage (py-spy missing).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+?)(?::\d+)?\)$")
THREAD = re.compile(r"^thread \((?P<tid>\w+)\)(?::\s*(?P<name>.*))?$")
# Frames every thread has (start-up, thread bootstrap): not where time goes.
PLUMBING = ("threading.py", "<frozen ")


@dataclass
class Thread:
    """The samples of one thread."""

    samples: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)  # the innermost frame


def _frame_label(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']} ({Path(m['file']).name})"


def summarise(lines: list[str]) -> dict[tuple[str, str], Thread]:
    """Raw py-spy lines (``frame;frame;... count``) -> samples per (process, thread)."""
    threads: dict[tuple[str, str], Thread] = defaultdict(Thread)
    names: dict[str, str] = {}
    for line in lines:
        head = [f for f in line.split(";") if not f.startswith("process ")][:1]
        m = THREAD.match(head[0]) if head else None
        if m and m["name"]:
            names[m["tid"]] = m["name"]
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        process, thread = "", ""
        while frames and frames[0].startswith("process "):  # a child under its parent
            pid, _, cmd = frames.pop(0)[len("process ") :].partition(":")
            words = cmd.strip('"').split()
            process = " ".join([pid, *(w.rsplit("/", 1)[-1] for w in words[:1]), *words[1:]])
        if frames and (m := THREAD.match(frames[0])):
            frames.pop(0)
            thread = names.get(m["tid"], m["tid"])
        t = threads[(process, thread)]
        n = int(count)
        t.samples += n
        for label in {_frame_label(f) for f in frames if not any(p in f for p in PLUMBING)}:
            t.inclusive[label] += n
        if frames:
            t.own[_frame_label(frames[-1])] += n
    return threads


def table(threads: dict[tuple[str, str], Thread], seconds: float, rate: int, top: int) -> str:
    """The Markdown table of ``summarise``'s result."""
    out = [
        "| process | thread | busy | in (inclusive share of its samples) | itself (innermost) |",
        "|---|---|---:|---|---|",
    ]
    for (process, thread), t in sorted(threads.items(), key=lambda kv: -kv[1].samples):
        busy = f"{100 * t.samples / (seconds * rate):.0f}%" if seconds else f"{t.samples} samples"
        where, own = (
            ", ".join(f"{label} {100 * n / t.samples:.0f}%" for label, n in c.most_common(top))
            for c in (t.inclusive, t.own)
        )
        out.append(f"| {process[:60]} | {thread} | {busy} | {where} | {own} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=int, default=250, help="samples a second (default 250)")
    ap.add_argument("--top", type=int, default=8, help="functions shown per thread")
    ap.add_argument("--raw", type=Path, help="also keep py-spy's raw profile here")
    ap.add_argument("--from", dest="source", type=Path, help="summarise this raw profile")
    ap.add_argument("--seconds", type=float, default=0.0, help="wall time, with --from")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to profile")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.source:
        lines = args.source.read_text().splitlines()
        print(table(summarise(lines), args.seconds, args.rate, args.top))
        return 0
    if not command:
        ap.error("give the command to profile after --, or --from FILE")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw or Path(tmp) / "profile.txt"
        start = time.perf_counter()
        r = subprocess.run(
            [
                spy,
                "record",
                "-t",
                "-r",
                str(args.rate),
                "-f",
                "raw",
                "--subprocesses",
                "-o",
                str(raw),
                "--",
                *command,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seconds = time.perf_counter() - start
        if r.returncode != 0 or not raw.exists():
            why = r.stderr.strip()[-300:]
            print(f"profile: py-spy or the command failed: {why}", file=sys.stderr)
            return 1
        print(f"{' '.join(command)}: {seconds:.2f} s wall, {args.rate} samples/s\n")
        print(table(summarise(raw.read_text().splitlines()), seconds, args.rate, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
