"""``cas prune``: remove data no snapshot needs (plan first, then execute)."""

from __future__ import annotations

from functools import partial
from typing import Any

import click

from cas.check.verifier import VerifierPool
from cas.cli.common import Globals, Output, human_bytes, pass_globals
from cas.cli.options import Workers, workers_option
from cas.errors import LockedError, UsageError
from cas.repo import Repository
from cas.repo.locks import RepoLock
from cas.repo.prune import PruneOptions, PrunePlan, Salvager, execute_prune, plan_prune
from cas.wording import counted


def parse_fraction(text: str) -> float:
    """``5%`` or ``0.05`` -> 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"not a fraction: {text!r} (examples: 5%, 0.1)") from None
    if not 0 <= value <= 1:
        raise UsageError("--max-unused must be between 0% and 100%")
    return value


@click.command()
@click.option(
    "--max-unused",
    default="5%",
    show_default=True,
    help="Repack packs in which more than this share of bytes is unused.",
)
@click.option("--dry-run", "-n", is_flag=True, help="Print the plan; change nothing.")
@workers_option("read and check the packs to repack")
@pass_globals
def prune(g: Globals, max_unused: str, dry_run: bool, workers: Workers) -> None:
    """Delete data that no snapshot needs, safely beside running backups.

    Packs to delete are first marked in the index; they are deleted once no
    backup that could still refer to them is running (at once when none is).
    """
    out = Output(g)
    repo = g.open()
    doc = run_prune(g, out, repo, parse_fraction(max_unused), dry_run, workers)
    out.emit(doc, lambda: prune_lines(out, doc))


def run_prune(
    g: Globals,
    out: Output,
    repo: Repository,
    max_unused: float,
    dry_run: bool,
    workers: Workers | None = None,
) -> dict[str, Any]:
    """Plan and (unless dry_run) execute; shared with ``forget --prune``.  Returns
    what happened, for :func:`prune_lines` and the JSON summary."""
    with g.locked(repo, exclusive=False, command="prune", deletes=not dry_run) as lock:
        _refuse_concurrent_prune(repo, lock)
        plan = plan_prune(repo, PruneOptions(max_unused, dry_run), out.report)
        doc: dict[str, Any] = {"dry_run": dry_run, "plan": plan.summary()}
        if not dry_run:
            pool = _salvagers(g, repo, plan, workers or Workers(None))
            salvage: Salvager | None = None
            if pool is not None:
                salvage = partial(pool.salvage, here=repo.salvage)
            result = execute_prune(repo, plan, lock, out.report, salvage)
            doc["result"] = dict(result.__dict__)
            doc["result"]["processes"] = pool.started if pool is not None else 0
            if pool is not None:
                g.helper_requests.append(pool.requests)
                for message in pool.lost:
                    out.warn(message)
    return doc


# With the default worker count, helpers start only for this many packs to repack
# per helper: starting one costs more than repacking a pack or two.
SALVAGE_FROM = 4


def _salvagers(
    g: Globals, repo: Repository, plan: PrunePlan, workers: Workers
) -> VerifierPool | None:
    """Helper processes that read and prove the packs to repack, or None (a few
    packs, one core, ``--workers 0``)."""
    if not plan.repack:
        return None
    helpers = g.helpers(repo, workers.count)
    if helpers is None or (
        not workers.explicit and len(plan.repack) < SALVAGE_FROM * helpers.count
    ):
        return None
    return VerifierPool(helpers.spec, helpers.count, helpers.per_process(1), role="prune")


def _refuse_concurrent_prune(repo: Repository, lock: RepoLock | None) -> None:
    scan = repo.scan_locks()
    for e in scan.entries:
        if not e.stale and e.info.command == "prune" and (lock is None or e.name != lock.name):
            raise LockedError(f"another prune is running on {e.info.hostname} (pid {e.info.pid})")


def prune_lines(out: Output, doc: dict[str, Any]) -> None:
    """What prune did (or would do), for people."""
    p = doc["plan"]
    verb = "would" if doc["dry_run"] else "will"
    out.line(
        f"{counted(p['packs_kept'], 'pack')} kept, {p['packs_to_repack']} to repack "
        f"({human_bytes(p['bytes_to_repack'])}, keeping {human_bytes(p['bytes_repack_kept'])}), "
        f"{p['packs_to_remove']} unused, {p['orphan_packs']} unindexed, "
        f"{p['packs_pending_deletion']} marked earlier"
    )
    r = p["requests"]
    out.line(
        f"prune {verb} free up to {human_bytes(p['bytes_to_delete'])} with about "
        f"{r['GET']} GET, {r['PUT']} PUT, {r['DELETE']} DELETE and {r['LIST']} LIST requests"
    )
    if p["missing_packs"]:
        one = p["missing_packs"] == 1
        out.line(
            f"{counted(p['missing_packs'], 'pack')} named by the index "
            f"{'is' if one else 'are'} missing and {'was' if one else 'were'} dropped "
            "from it (run 'cas check')"
        )
    res = doc.get("result")
    if res:
        out.line(
            f"wrote {counted(res['packs_written'], 'pack')} "
            f"({human_bytes(res['bytes_written'])}), "
            f"deleted {counted(res['packs_deleted'], 'pack')}, "
            f"freed {human_bytes(res['bytes_freed'])}"
        )
        if res.get("leftovers_aborted"):
            out.line(f"aborted {counted(res['leftovers_aborted'], 'unfinished upload')}")
        if res["deferred_packs"]:
            out.line(
                f"{counted(res['deferred_packs'], 'pack')} "
                f"({human_bytes(res['deferred_bytes'])}) "
                f"{'stays' if res['deferred_packs'] == 1 else 'stay'} marked: "
                f"{res['deferred_because']}"
            )
