"""``cas forget``: remove snapshots by retention policy or by ID (the data stays until prune).

Forgetting deletes only ``snapshots/<id>`` files, never data, so it takes a
shared lock like backup: a concurrent backup or restore loses nothing.  Prune
(spec §13.5) counts a live ``forget`` lock among those of commands that may
write snapshots and so defers deleting packs it marked while forget runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from cas.cli.cmd_prune import parse_fraction, prune_lines, run_prune
from cas.cli.common import Globals, Output, fs_text, pass_globals
from cas.cli.nodeview import local_time, snapshot_doc
from cas.cli.options import snapshot_filter_options
from cas.errors import CasError, FormatError, IntegrityError, UnsupportedVersion, UsageError
from cas.format.snapshot import Snapshot
from cas.manage.policy import (
    UNLIMITED,
    Decision,
    Duration,
    EmptyPolicy,
    GroupKey,
    GroupPlan,
    Policy,
    SnapshotRef,
    anomaly_guard,
    keep_guarded,
    parse_group_by,
    plan_forget,
)
from cas.repo import Repository
from cas.selection import SnapshotFilter

_F = TypeVar("_F", bound=Callable[..., Any])


def _count(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A count >= 0, or ``unlimited`` (-1)."""
    if value.strip().lower() == "unlimited":
        return UNLIMITED
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise click.BadParameter(f"{value!r} is not a count >= 0 or 'unlimited'", ctx, param)
    return n


def _keep_option(name: str, what: str) -> Callable[[_F], _F]:
    return click.option(
        f"--keep-{name}",
        f"keep_{name}",
        default="0",
        callback=_count,
        metavar="N",
        help=f"Keep {what} ('unlimited' for all).",
    )


@click.command()
@click.argument("snapshot_ids", nargs=-1, metavar="[ID]...")
@_keep_option("last", "the N newest snapshots")
@_keep_option("hourly", "the newest snapshot of each of the last N hours that have one")
@_keep_option("daily", "the newest snapshot of each of the last N days that have one")
@_keep_option("weekly", "the newest snapshot of each of the last N ISO weeks that have one")
@_keep_option("monthly", "the newest snapshot of each of the last N months that have one")
@_keep_option("yearly", "the newest snapshot of each of the last N years that have one")
@click.option(
    "--keep-within",
    metavar="DURATION",
    help="Keep snapshots less than DURATION older than the newest one, e.g. 2y5m7d3h.",
)
@click.option("--keep-tag", multiple=True, metavar="TAG", help="Keep snapshots with this tag.")
@click.option(
    "--group-by",
    default="host,paths",
    show_default=True,
    help="Apply the policy separately to each group of snapshots sharing these "
    "(comma list of host, paths, tags; empty for one group).",
)
@snapshot_filter_options(only="Only consider")
@click.option(
    "--allow-anomalous",
    is_flag=True,
    help="Also forget snapshots flagged as unusual by their backup and the newest "
    "unflagged snapshot before each (kept otherwise, whatever the policy).",
)
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be kept and removed.")
@click.option("--prune", is_flag=True, help="Run prune afterwards to free the space.")
@click.option(
    "--max-unused",
    default="5%",
    show_default=True,
    help="With --prune: repack packs in which more than this share of bytes is unused.",
)
@pass_globals
def forget(
    g: Globals,
    snapshot_ids: tuple[str, ...],
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    keep_within: str | None,
    keep_tag: tuple[str, ...],
    group_by: str,
    selection: SnapshotFilter,
    allow_anomalous: bool,
    dry_run: bool,
    prune: bool,
    max_unused: str,
) -> None:
    """Remove snapshots: those no --keep-* rule keeps, or the IDs given.

    Each group of snapshots (by default: same host and paths) is judged on its
    own. A snapshot kept by any rule is kept. A snapshot its backup flagged as
    unusual, and the newest unflagged one before it (same host and paths), are
    kept unless --allow-anomalous. Only snapshot files are deleted; run prune
    (or --prune) to free the data no snapshot needs any more.
    """
    out = Output(g)
    try:
        within = Duration.parse(keep_within) if keep_within is not None else None
        groups = parse_group_by(group_by)
    except ValueError as e:
        raise UsageError(str(e)) from None
    policy = Policy(
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        within,
        tuple(dict.fromkeys(keep_tag)),
    )
    if snapshot_ids and not (policy.is_empty() and selection == SnapshotFilter()):
        raise UsageError("give either snapshot IDs or --keep-*/--host/--tag/--path, not both")
    if not snapshot_ids and policy.is_empty():
        raise EmptyPolicy()
    unused = parse_fraction(max_unused)

    repo = g.open()
    with g.locked(repo, exclusive=False, command="forget", deletes=not dry_run):
        damaged: list[bytes] = []
        if snapshot_ids:
            plans, snaps, damaged = _by_id(repo, snapshot_ids)
            if not allow_anomalous:
                _refuse_guarded(plans, repo)
                for sid in damaged:  # named to be removed: no warning that it is damaged
                    repo.damaged_snapshots.pop(sid, None)
        else:
            snaps = dict(repo.iter_snapshots())
            refs = [SnapshotRef.of(i, s) for i, s in snaps.items()]
            plans = plan_forget([r for r in refs if selection.matches(r)], policy, groups, None)
            if not allow_anomalous:
                plans = keep_guarded(plans, anomaly_guard(refs))
        doomed = [d.ref.id for p in plans for d in p.remove] + damaged
        if not dry_run:
            repo.remove_snapshots(doomed)

    doc = {
        "dry_run": dry_run,
        "policy": policy.describe(),
        "groups": [_group_doc(p, snaps) for p in plans],
        "removed": [sid.hex() for sid in doomed],
        "damaged": [sid.hex() for sid in damaged],
    }
    # A dry run exists to show the plan: -q does not hide it.
    if not prune or not g.json:  # people see what was forgotten before prune starts
        out.emit(doc, lambda: _human(out, doc), answer=dry_run)
    if prune:
        # After the forget lock is released: prune takes its own.
        pruned = run_prune(g, out, repo, unused, dry_run)
        if g.json:  # one summary for the whole command
            out.emit({**doc, "prune": pruned})
        else:
            out.emit(pruned, lambda: prune_lines(out, pruned))


def _by_id(
    repo: Repository, refs: tuple[str, ...]
) -> tuple[list[GroupPlan], dict[bytes, Snapshot], list[bytes]]:
    """One pseudo-group that removes exactly the snapshots named, and the named snapshot
    files that cannot be read (damaged: removed all the same, they are what was asked for)."""
    snaps: dict[bytes, Snapshot] = {}
    damaged: list[bytes] = []
    for ref in refs:
        if ref == "latest":
            sid, snap = repo.find_snapshot(ref)
            snaps[sid] = snap
            continue
        sid = repo.resolve_snapshot_id(ref)
        try:
            snaps[sid] = repo.load_snapshot(sid)
        except (IntegrityError, FormatError, UnsupportedVersion):
            if sid not in damaged:
                damaged.append(sid)
    ordered = sorted(snaps.items(), key=lambda p: (p[1].time_ns, p[0]))
    decisions = [Decision(SnapshotRef.of(i, s), False, ()) for i, s in ordered]
    return [GroupPlan(GroupKey(), decisions)], snaps, damaged


class AnomalousSnapshot(CasError):
    """{detail}"""


def _refuse_guarded(plans: list[GroupPlan], repo: Repository) -> None:
    """Refuse to forget, by ID, a flagged snapshot or the newest one before it."""
    guard = anomaly_guard(SnapshotRef.of(i, s) for i, s in repo.iter_snapshots())
    for d in (d for p in plans for d in p.decisions):
        why = guard.get(d.ref.id)
        if why is not None:
            what = (
                "was flagged as unusual by its backup"
                if why == "anomaly"
                else "is the last snapshot before one flagged as unusual"
            )
            raise AnomalousSnapshot(
                f"snapshot {d.ref.id.hex()[:8]} {what}; nothing was forgotten "
                "(give --allow-anomalous to forget it)"
            )


def _snap_doc(d: Decision, snap: Snapshot) -> dict[str, Any]:
    return snapshot_doc(d.ref.id, snap, reasons=list(d.reasons))


def _group_doc(plan: GroupPlan, snaps: dict[bytes, Snapshot]) -> dict[str, Any]:
    k = plan.key
    return {
        "key": {
            "hostname": k.hostname,
            "paths": None if k.paths is None else [fs_text(p) for p in k.paths],
            "tags": None if k.tags is None else list(k.tags),
        },
        "keep": [_snap_doc(d, snaps[d.ref.id]) for d in plan.keep],
        "remove": [_snap_doc(d, snaps[d.ref.id]) for d in plan.remove],
    }


def _describe_key(key: dict[str, Any]) -> str:
    parts = []
    if key["hostname"] is not None:
        parts.append(f"host {key['hostname']}")
    if key["paths"] is not None:
        parts.append(f"paths {', '.join(key['paths']) or '(none)'}")
    if key["tags"] is not None:
        parts.append(f"tags {', '.join(key['tags']) or '(none)'}")
    return "; ".join(parts) or "all snapshots"


def _snapshots(n: int) -> str:
    return f"{n} snapshot{'' if n == 1 else 's'}"


def _table(out: Output, rows: list[dict[str, Any]], with_reasons: bool) -> None:
    header = f"  {'ID':8}  {'time':19}  {'host':12}  {'tags':16}  reasons"
    out.line(header if with_reasons else header.removesuffix("reasons").rstrip())
    for r in rows:
        tags = ",".join(r["tags"])[:16]
        line = f"  {r['id'][:8]}  {local_time(r['time_ns'])}  {r['hostname'][:12]:12}  {tags:16}"
        if with_reasons:
            line += "  " + ", ".join(r["reasons"])
        out.line(line.rstrip())


def _human(out: Output, doc: dict[str, Any]) -> None:
    for group in doc["groups"]:
        title = _describe_key(group["key"]) if doc["policy"] else "snapshots given"
        out.line(f"{title}:")
        if group["keep"]:
            out.line(f"keep {_snapshots(len(group['keep']))}:")
            _table(out, group["keep"], True)
        if group["remove"]:
            out.line(f"remove {_snapshots(len(group['remove']))}:")
            _table(out, group["remove"], False)
        out.line("")
    verb = "would remove" if doc["dry_run"] else "removed"
    for sid in doc["damaged"]:
        out.line(f"{verb} damaged snapshot {sid[:8]} (its file cannot be read)")
    out.line(f"{verb} {_snapshots(len(doc['removed']))}")
