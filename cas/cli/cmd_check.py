"""``cas check``: the repository's integrity, or a snapshot against the live files."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from cas.check.checker import CheckOptions, check
from cas.check.findings import CheckResult, Finding
from cas.check.sourcediff import (
    CHANGED,
    MISSING_IN_SNAPSHOT,
    MISSING_IN_SOURCE,
    Difference,
    SourceComparer,
    covering_path,
)
from cas.check.state import CheckState, parse_duration, parse_subset, state_path
from cas.check.verifier import VerifierPool
from cas.cli.common import Globals, Output, fs_text, human_bytes, pass_globals
from cas.cli.options import Workers, workers_option
from cas.errors import EXIT_ERROR, UsageError
from cas.format.snapshot import Snapshot
from cas.ipc import usable_cores
from cas.progress import Progress
from cas.repo import Repository
from cas.wording import counted

AFFECTED_SHOWN = 5  # per finding in human output; --json lists them all
# Packs of a local repository proven at once in this process (CheckOptions.data_workers)
LOCAL_DATA_WORKERS = 2
# Pack headers of a local repository read at once (CheckOptions.header_workers)
LOCAL_HEADER_WORKERS = 1


@click.command("check")
@click.option("--read-data", is_flag=True, help="Also read every pack and verify every blob.")
@click.option(
    "--read-data-subset",
    metavar="N/M|x%",
    help="Read only pack group N of M, or x% of the packs (least recently verified first).",
)
@click.option(
    "--max-age",
    metavar="DURATION",
    help="Read only packs not verified within DURATION (e.g. 30d): run nightly to spread "
    "a full read over that time.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to keep the record of verified packs (default: $XDG_CACHE_HOME/cas).",
)
@click.option(
    "--cache-dir",
    "old_state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    hidden=True,
    help="The old, deprecated name of --state-dir (not the global --cache-dir).",
)
@click.option(
    "--against",
    type=click.Path(path_type=bytes),
    help="Compare a snapshot with the files at this path instead of checking the repository.",
)
@click.option(
    "--snapshot",
    "-s",
    "snapshot_ref",
    help="With --against: the snapshot (ID prefix or 'latest'; default: the latest one "
    "holding the path).",
)
@workers_option(
    "verify packs (--read-data)",
    "one per usable core but one, when there are two or more, and this process verifies "
    "packs too, as it does whenever there are fewer than the cores",
)
@pass_globals
def check_cmd(
    g: Globals,
    read_data: bool,
    read_data_subset: str | None,
    max_age: str | None,
    state_dir: Path | None,
    old_state_dir: Path | None,
    against: bytes | None,
    snapshot_ref: str | None,
    workers: Workers,
) -> None:
    """Check the repository's structure and, optionally, its data.

    Errors (missing or damaged data, index or snapshots) exit 1 and list what
    each damaged object is needed by.  Warnings alone (unreferenced packs,
    duplicate blobs, unreadable lock files, leftover uploads, unknown objects)
    are what interrupted or concurrent backups leave behind; they exit 0.

    With --against PATH, compare a snapshot with the live files instead:
    exit 0 if identical, 1 if anything differs.
    """
    out = Output(g)
    if old_state_dir is not None:
        if state_dir is not None:
            raise UsageError("--cache-dir is the old name of --state-dir: give only --state-dir")
        out.warn("check --cache-dir is deprecated: use check --state-dir")
        state_dir = old_state_dir
    if against is not None:
        if read_data or read_data_subset or max_age:
            raise UsageError("--against cannot be combined with the --read-data options")
        _against(g, out, against, snapshot_ref)
        return
    if snapshot_ref is not None:
        raise UsageError("--snapshot is used with --against")
    options = CheckOptions(
        read_data=read_data,
        subset=parse_subset(read_data_subset) if read_data_subset else None,
        max_age=parse_duration(max_age) if max_age else None,
    )
    # An audit must read what is stored, not intact copies in the local cache.
    g.no_cache = True
    repo = g.open()
    repo.generations.strict = False  # what the storage changed is reported, not raised
    if repo.is_local:
        options.header_workers = LOCAL_HEADER_WORKERS
    state: CheckState | None = None
    if options.reads_data:
        try:
            path = state_path(repo.config.repo_id, state_dir)
        except RuntimeError:  # no home directory to put the cache in
            out.warn("no cache directory (set XDG_CACHE_HOME or use --state-dir); not recording")
        else:
            state, note = CheckState.load(path)
            if note:
                out.warn(note)
            options.state = state
        if repo.is_local:
            options.data_workers = LOCAL_DATA_WORKERS
        plan = g.helpers(repo, workers.count)
        if plan is not None:
            # Fewer processes than cores (the default: one per core but one): this
            # process verifies packs too while it waits for the helpers' answers.
            cores = usable_cores()
            count = plan.count if workers.explicit else plan.count - 1
            options.verifier = VerifierPool(
                plan.spec, count, plan.per_process(1), share=count < cores
            )
            # With the default count, not for a handful of packs: starting costs more.
            options.verifier_from = 1 if workers.explicit else 4 * plan.count
    started = time.monotonic()
    try:
        with g.locked(repo, exclusive=False, command="check"):
            result = check(repo, options, _progress(out))
            trusted = [Finding(f.kind, f.object, f.message) for f in repo.check_trust()]
            result.findings[:0] = trusted
    finally:
        if state is not None:
            _save_state(out, state)
    if options.verifier is not None:
        g.helper_requests.append(options.verifier.requests)
        for message in options.verifier.lost:
            out.warn(message)
    doc = _doc(result, time.monotonic() - started)
    doc["summary"]["processes"] = options.verifier.started if options.verifier else 0
    out.emit(doc, lambda: _human(out, result, doc["summary"]))
    if result.errors:
        sys.exit(EXIT_ERROR)


def _progress(out: Output) -> Progress:
    """The check's status line: its phase and how far it is."""

    def progress(what: str, done: int | None = None, total: int | None = None) -> None:
        out.report(f"check: {what}", done, total)

    return progress


def _save_state(out: Output, state: CheckState) -> None:
    try:
        state.save()
    except OSError as e:
        out.warn(f"cannot save check state {state.path}: {e.strerror}")


def _doc(result: CheckResult, duration: float) -> dict[str, Any]:
    summary = dict(result.summary.__dict__)
    summary.update(errors=result.errors, warnings=result.warnings, duration=round(duration, 3))
    return {"findings": [f.as_dict() for f in result.findings], "summary": summary}


def _human(out: Output, result: CheckResult, s: dict[str, Any]) -> None:
    for f in result.findings:
        out.line(_finding_line(f))
        out.line(f"    next: {f.next_step}")
        for a in f.affected[:AFFECTED_SHOWN]:
            out.line(f"    needed by snapshot {a.snapshot.hex()[:8]} at {fs_text(a.path)}")
        if len(f.affected) > AFFECTED_SHOWN:
            out.line(f"    ... and {len(f.affected) - AFFECTED_SHOWN} more")
    out.line(
        f"checked {counted(s['snapshots'], 'snapshot')} ({counted(s['trees'], 'tree')}, "
        f"{counted(s['files'], 'file')}), {counted(s['index_files'], 'index file')}, "
        f"{counted(s['packs_stored'], 'pack')}"
    )
    if s["packs_selected"] or s["packs_read"]:
        out.line(
            f"read {s['packs_read']} of {counted(s['packs_selected'], 'selected pack')} "
            f"({human_bytes(s['bytes_read'])})"
        )
    if result.errors:
        out.line(f"{counted(result.errors, 'error')}, {counted(result.warnings, 'warning')}")
    elif result.warnings:
        out.line(f"no errors, {counted(result.warnings, 'warning')}")
    else:
        out.line("no errors found")


def _finding_line(f: Finding) -> str:
    return f"{f.severity}: {f.kind} {f.object}: {f.message}"


# -- --against ------------------------------------------------------------------


def _against(g: Globals, out: Output, against: bytes, ref: str | None) -> None:
    path = os.path.abspath(against)
    repo = g.open()
    with g.locked(repo, exclusive=False, command="check"):
        sid, snap = _pick_snapshot(repo, ref, path)
        repo.load_index()
        comparer = SourceComparer(repo, repo.file_digest)
        diffs = comparer.compare(snap, path)
    doc = {
        "id": sid.hex(),
        "path": fs_text(path),
        "differences": [d.as_dict() for d in diffs],
        "summary": {"entries": comparer.entries, "differences": len(diffs)},
    }
    out.emit(doc, lambda: _human_diffs(out, doc, diffs))
    if diffs:
        sys.exit(EXIT_ERROR)


def _pick_snapshot(repo: Repository, ref: str | None, path: bytes) -> tuple[bytes, Snapshot]:
    if ref is not None:
        sid, snap = repo.find_snapshot(ref)
        if covering_path(snap, path) is None:
            shown = ", ".join(fs_text(p) for p in snap.paths)
            raise UsageError(
                f"{fs_text(path)} is not in snapshot {sid.hex()[:8]} (its paths: {shown})"
            )
        return sid, snap
    found = [(sid, s) for sid, s in repo.iter_snapshots() if covering_path(s, path) is not None]
    if not found:
        raise UsageError(f"no snapshot holds {fs_text(path)}")
    return found[-1]


def _human_diffs(out: Output, doc: dict[str, Any], diffs: list[Difference]) -> None:
    for d in diffs:
        out.line(_diff_line(d))
    s = doc["summary"]
    verdict = "identical" if not diffs else counted(len(diffs), "difference")
    out.line(
        f"compared {counted(s['entries'], 'entry')} of snapshot {doc['id'][:8]} with "
        f"{doc['path']}: {verdict}"
    )


def _diff_line(d: Difference) -> str:
    path = fs_text(d.path)
    if d.kind == MISSING_IN_SOURCE:
        return f"missing in source:   {path} ({d.snapshot})"
    if d.kind == MISSING_IN_SNAPSHOT:
        return f"missing in snapshot: {path} ({d.snapshot})"
    if d.kind == CHANGED:
        if d.field == "content":
            return f"changed:             {path}: content differs (digest)"
        return f"changed:             {path}: {d.field} {_show(d.field, d.snapshot)} -> " + _show(
            d.field, d.source
        )
    return f"unreadable:          {path}: {d.snapshot}"


def _show(field: str | None, value: Any) -> str:
    if value is None:
        return "(none)"
    if field == "mode":
        return f"{value:04o}"
    if field == "mtime_ns":
        secs, ns = divmod(int(value), 10**9)
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs)) + f".{ns:09d}"
    if isinstance(value, str):
        return repr(value)
    return str(value)
