"""``cas copy``: copy snapshots to another repository."""

from __future__ import annotations

import dataclasses
from functools import partial

import click

from cas.check.verifier import VerifierPool
from cas.cli.common import Globals, Output, human_bytes, pass_globals
from cas.cli.options import Workers, workers_option
from cas.manage.copier import Resealer, copy_snapshots, reseal_here
from cas.repo import Repository
from cas.wording import counted

# With the default worker count, helpers start once this many bytes were copied.
RESEAL_AFTER = 64 << 20


@click.command()
@click.argument("snapshots", nargs=-1)
@click.option("--to", "to_repo", required=True, metavar="REPO", help="Target repository.")
@click.option("--to-password-file", help="Password file of the target (or CAS_OTHER_PASSWORD).")
@workers_option("read blobs and seal them for the target")
@pass_globals
def copy(
    g: Globals,
    snapshots: tuple[str, ...],
    to_repo: str,
    to_password_file: str | None,
    workers: Workers,
) -> None:
    """Copy SNAPSHOTS (default: all) to the repository --to, sending only blobs it lacks.

    The target must have been created with 'cas init --copy-keys-from SOURCE'.
    """
    out = Output(g)
    src = g.open(reading=True)
    dst = g.open_other(to_repo, to_password_file)
    ids = [src.find_snapshot(s)[0] for s in snapshots] or [i for i, _ in src.iter_snapshots()]
    with (
        g.locked(src, exclusive=False, command="copy-source"),
        g.locked(dst, exclusive=False, command="copy"),
    ):
        pool = _resealers(g, src, dst, workers)
        reseal: Resealer | None = None
        if pool is not None:
            reseal = partial(pool.reseal, here=reseal_here(src, dst))
        after = 0 if workers.explicit else RESEAL_AFTER
        result = copy_snapshots(src, dst, ids, out.report, reseal, after)
    for failed in result.snapshots_failed:
        g.degraded = True
        sid, _, why = failed.partition(": ")
        out.warn(f"snapshot {sid[:8]} not copied, it cannot be read whole ({why}); run 'cas check'")
    doc = dataclasses.asdict(result)
    doc["processes"] = pool.started if pool is not None else 0
    if pool is not None:
        g.helper_requests.append(pool.requests)
        for message in pool.lost:
            out.warn(message)
    doc["snapshots_copied"] = [{"id": a, "new_id": b} for a, b in result.snapshots_copied]

    def human() -> None:
        for old, new in result.snapshots_copied:
            out.line(f"copied {old} -> {new}")
        out.line(
            f"{counted(len(result.snapshots_copied), 'snapshot')} copied, "
            f"{len(result.snapshots_skipped)} already there; "
            f"{counted(result.blobs_copied, 'blob')} ({human_bytes(result.bytes_copied)}) sent"
        )

    out.emit(doc, human)


def _resealers(
    g: Globals, src: Repository, dst: Repository, workers: Workers
) -> VerifierPool | None:
    """Helper processes that read blobs from ``src`` and seal them for ``dst``, or None
    (one core, ``--workers 0``, a repository another process cannot open)."""
    helpers = g.helpers(src, workers.count)
    if helpers is None or not dst.keys.CAN_OPEN_DATA:
        return None
    target = (dst.keys.TYPE, dst.keys.encode(), dst.compression_level, dst.config.padding)
    return VerifierPool(
        helpers.spec, helpers.count, helpers.per_process(1), role="copy", target=target
    )
