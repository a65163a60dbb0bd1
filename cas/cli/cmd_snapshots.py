"""``cas snapshots``: list snapshots."""

from __future__ import annotations

import time
from typing import Any

import click

from cas.cli.common import Globals, Output, fs_text, human_bytes, pass_globals
from cas.cli.options import snapshot_filter_options
from cas.selection import SnapshotFilter


def register(cli: click.Group) -> None:
    """Add the command."""
    cli.add_command(snapshots)


@click.command()
@snapshot_filter_options()
@pass_globals
def snapshots(g: Globals, selection: SnapshotFilter) -> None:
    """List snapshots, oldest first."""
    out = Output(g)
    repo = g.open()
    docs: list[dict[str, Any]] = []
    for sid, s in repo.iter_snapshots():
        if not selection.matches(s):
            continue
        docs.append(
            {
                "id": sid.hex(),
                "time": s.time_ns / 1e9,
                "time_iso": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.time_ns / 1e9)),
                "hostname": s.hostname,
                "username": s.username,
                "tags": s.tags,
                "paths": [fs_text(p) for p in s.paths],
                "parent": s.parent.hex() if s.parent else None,
                "program": s.program,
                "summary": s.summary,
            }
        )

    def human() -> None:
        out.line(f"{'ID':8}  {'time':19}  {'host':12}  {'size':>10}  paths")
        for d in docs:
            size = human_bytes(d["summary"].get("bytes_total", 0))
            tags = f"  [{', '.join(d['tags'])}]" if d["tags"] else ""
            out.line(
                f"{d['id'][:8]}  {d['time_iso']}  {d['hostname'][:12]:12}  {size:>10}  "
                f"{', '.join(d['paths'])}{tags}"
            )
        out.line(f"{len(docs)} snapshots")

    out.emit(docs, human)
