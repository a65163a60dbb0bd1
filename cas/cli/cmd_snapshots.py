"""``cas snapshots``: list snapshots."""

from __future__ import annotations

from typing import Any

import click

from cas.cli.common import Globals, Output, human_bytes, one_line, pass_globals
from cas.cli.nodeview import local_time, snapshot_doc
from cas.cli.options import snapshot_filter_options
from cas.crypto.keys import KeyIsWriteOnly
from cas.errors import UsageError
from cas.selection import EVERY_SNAPSHOT, SnapshotFilter

GROUP_FIELDS = {"host": "hostname", "paths": "paths", "tags": "tags"}


@click.command()
@snapshot_filter_options()
@click.option(
    "--latest",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Only the last N snapshots of each host and path set (of each group with --group-by).",
)
@click.option(
    "--group-by",
    default="",
    metavar="FIELDS",
    help="Group the snapshots by host, paths and/or tags (comma-separated, e.g. host,paths).",
)
@click.option("-c", "--compact", is_flag=True, help="One short line per snapshot.")
@pass_globals
def snapshots(
    g: Globals, selection: SnapshotFilter, latest: int | None, group_by: str, compact: bool
) -> None:
    """List snapshots, oldest first."""
    fields = _group_fields(group_by)
    out = Output(g)
    repo = g.open(reading=True, write_only=True)
    if not repo.keys.CAN_OPEN_DATA:
        if selection != EVERY_SNAPSHOT or latest is not None or fields:
            # Silently listing every ID would look like an answer to the filter.
            raise KeyIsWriteOnly(
                action="select or group snapshots (their hosts, paths, tags and times are sealed)"
            )
        _sealed(out, sorted(repo.snapshot_ids()))
        return
    docs: list[dict[str, Any]] = [
        snapshot_doc(sid, s) for sid, s in repo.iter_snapshots() if selection.matches(s)
    ]
    docs.sort(key=lambda d: (d["time_ns"], d["id"]))
    groups = _grouped(docs, fields or ["hostname", "paths"])
    if latest is not None:
        groups = [(key, members[-latest:]) for key, members in groups]
        kept = {d["id"] for _, members in groups for d in members}
        docs = [d for d in docs if d["id"] in kept]

    def table(members: list[dict[str, Any]]) -> None:
        if compact:
            out.line(f"{'ID':8}  {'time':19}  {'host':12}  tags")
        else:
            out.line(f"{'ID':8}  {'time':19}  {'host':12}  {'size':>10}  paths")
        for d in members:
            when = local_time(d["time_ns"])
            tags = ", ".join(d["tags"])
            flag = _flag(d)
            if compact:
                out.line(f"{d['id'][:8]}  {when}  {d['hostname'][:12]:12}  {tags}{flag}")
                continue
            size = human_bytes(d["summary"].get("bytes_total", 0))
            shown = f"  [{tags}]" if tags else ""
            out.line(
                f"{d['id'][:8]}  {when}  {d['hostname'][:12]:12}  {size:>10}  "
                f"{', '.join(d['paths'])}{shown}{flag}"
            )
            for a in d["anomalies"]:
                out.line(f"          unusual: {one_line(a['message'])}")

    def human() -> None:
        if not fields:
            table(docs)
        for key, members in groups if fields else []:
            out.line(f"snapshots of {_describe(key)}:")
            table(members)
            out.line("")
        out.line(f"{len(docs)} snapshot{'' if len(docs) == 1 else 's'}")

    doc: dict[str, Any] = {"count": len(docs)}
    if fields:
        doc["groups"] = [{"group_key": key, "snapshots": members} for key, members in groups]
    else:
        doc["snapshots"] = docs
    out.emit(doc, human, answer=True)


def _sealed(out: Output, ids: list[bytes]) -> None:
    """What a write-only key sees of the snapshots: their IDs (the names of the files),
    nothing inside them; each is sealed whole to the repository's public key (spec §4.4)."""

    def human() -> None:
        for sid in ids:
            out.line(sid.hex()[:8])
        out.line(
            f"{len(ids)} snapshot{'' if len(ids) == 1 else 's'} (the key is write-only: "
            "times, hosts and paths are sealed)"
        )

    out.emit({"count": len(ids), "sealed": [s.hex() for s in ids]}, human, answer=True)


def _flag(d: dict[str, Any]) -> str:
    """The mark of a snapshot whose backup was flagged as unusual."""
    if not d["anomalies"]:
        return ""
    return f"  !unusual ({one_line(', '.join(a['kind'] for a in d['anomalies']))})"


def _group_fields(group_by: str) -> list[str]:
    """The snapshot fields ``--group-by`` names (restic's spelling: host, paths, tags)."""
    fields = []
    for name in filter(None, (part.strip() for part in group_by.split(","))):
        field = GROUP_FIELDS.get(name) or GROUP_FIELDS.get(name + "s")
        if field is None:
            raise UsageError(f"--group-by {name!r}: use host, paths and/or tags")
        if field not in fields:
            fields.append(field)
    return fields


def _grouped(
    docs: list[dict[str, Any]], fields: list[str]
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The snapshots (oldest first) in groups of equal ``fields``, groups in order of
    their first snapshot."""
    groups: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for d in docs:
        key = {f: sorted(d[f]) if isinstance(d[f], list) else d[f] for f in fields}
        groups.setdefault(repr(sorted(key.items())), (key, []))[1].append(d)
    return list(groups.values())


def _describe(key: dict[str, Any]) -> str:
    parts = []
    if "hostname" in key:
        parts.append(f"host {key['hostname']}")
    if "paths" in key:
        parts.append(f"paths {', '.join(key['paths'])}")
    if "tags" in key:
        parts.append(f"tags [{', '.join(key['tags'])}]")
    return "; ".join(parts)
