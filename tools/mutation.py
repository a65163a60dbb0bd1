"""Mutation testing of cas's guard modules with cosmic-ray: is a small wrong turn caught?

Each mutant is one small change to the code (a comparison flipped, a constant
moved by one, a condition negated, a ``break`` turned into ``continue`` ...);
the tests that guard the module run against it, and a mutant they let pass
("survived") points at behaviour no test pins.  Run it on a module, or on the
lines a change touched:

    python tools/mutation.py cas/format/pack.py                    # the module's own tests
    python tools/mutation.py cas/format/pack.py --tests tests/test_vectors.py
    python tools/mutation.py --changed main                        # lines changed since main
    python tools/mutation.py cas/format/compress.py --budget 600 --sample 80

It works on a copy of the tree (your files are never mutated), runs one
mutant at a time (``taskset -c 1`` in front keeps it on one core of a shared
machine), stops starting new mutants after ``--budget`` seconds, and prints
the score (killed / (killed + survived)) and every survivor with its diff.
Scores and the survivors' verdicts (a test added, or equivalent and why) are
recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The tests that guard each module: fast ones, aimed at it.  Modules not named
# here need --tests.
GUARDS: dict[str, list[str]] = {
    "cas/format/pack.py": ["tests/test_pack_format.py", "tests/test_vectors.py"],
    "cas/format/compress.py": ["tests/test_vectors.py", "tests/test_compress.py"],
    "cas/format/index.py": ["tests/test_vectors.py", "tests/test_index_load.py"],
    "cas/format/tree.py": [
        "tests/test_vectors.py",
        "tests/test_posixmeta.py",
        "tests/test_tree_format.py",
    ],
    "cas/format/config.py": ["tests/test_vectors.py", "tests/test_config_format.py"],
    "cas/format/keyfile.py": ["tests/test_vectors.py", "tests/test_keyfiles.py"],
    "cas/format/snapshot.py": ["tests/test_vectors.py", "tests/test_snapshot_format.py"],
    "cas/format/lock.py": ["tests/test_vectors.py", "tests/test_locks.py"],
    "cas/format/codec.py": ["tests/test_vectors.py", "tests/test_codec_format.py"],
    "cas/format/generation.py": [
        "tests/test_vectors.py",
        "tests/test_checker_paths.py",
        "tests/test_generation_format.py",
    ],
    "cas/crypto/primitives.py": [
        "tests/test_vectors.py",
        "tests/test_keys.py",
        "tests/test_crypto_edges.py",
        "tests/test_keyfiles.py",
    ],
    "cas/crypto/keys.py": [
        "tests/test_keys.py",
        "tests/test_vectors.py",
        "tests/test_crypto_edges.py",
    ],
    "cas/restore/restorer.py": [
        "tests/test_blind_spots.py",
        "tests/test_archiver.py",
        "tests/test_restore_paths.py",
    ],
    "cas/repo/packwriter.py": ["tests/test_packwriter.py", "tests/test_blind_spots.py"],
    "cas/repo/index.py": ["tests/test_index.py"],
    "cas/repo/indexstore.py": ["tests/test_index_load.py"],
    "cas/repo/prune.py": ["tests/test_prune_plan.py", "tests/test_pruner.py"],
    "cas/check/checker.py": [
        "tests/test_checker.py",
        "tests/test_blind_spots.py",
        "tests/test_checker_paths.py",
    ],
    "cas/backup/archiver.py": ["tests/test_archiver.py", "tests/test_change_detection.py"],
}
COPIED = ["cas", "tests", "tools", "spec", "pyproject.toml"]


def changed_lines(base: str) -> dict[str, set[int]]:
    """Lines of cas/ added or changed since ``base`` (git diff -U0), per file."""
    out = subprocess.run(
        ["git", "diff", "-U0", base, "--", "cas"], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"mutation: git diff {base} failed: {out.stderr.strip()}")
    lines: dict[str, set[int]] = {}
    current = None
    for line in out.stdout.splitlines():
        if line.startswith("+++ b/"):
            current = line[6:]
        elif line.startswith("@@") and current and current.endswith(".py"):
            m = re.match(r"@@ -\S+ \+(\d+)(?:,(\d+))? @@", line)
            if m:
                start, count = int(m.group(1)), int(m.group(2) or 1)
                lines.setdefault(current, set()).update(range(start, start + count))
    return {k: v for k, v in lines.items() if v}


def _copy_tree(dest: Path) -> None:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)


def _config(module: str, tests: list[str], timeout: float) -> str:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return (
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(' '.join(command))}\n\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def _cr(work: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "cosmic-ray"
    env = {**os.environ, "PYTHONPATH": str(work)}  # the copy's cas, not the installed one
    try:
        return subprocess.run(
            [str(exe), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, -1, "", "budget spent")


def _skip(session: Path, keep: Callable[[Any], bool]) -> int:
    """Mark every pending mutant for which ``keep(item)`` is false as skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        drop = [item.job_id for item in db.pending_work_items if not keep(item)]
        if drop:
            db.set_multiple_results(
                drop, WorkResult(output="not selected", worker_outcome=WorkerOutcome.SKIPPED)
            )
    return len(drop)


Span = tuple[tuple[int, int], tuple[int, int]]


def annotation_spans(path: Path) -> list[Span]:
    """((line, col), (end line, end col)) of every type annotation.  With ``from
    __future__ import annotations`` (every cas module) annotations are never evaluated,
    so a mutant inside one is equivalent by construction and is not run."""
    import ast

    spans: list[Span] = []
    for node in ast.walk(ast.parse(path.read_text())):
        notes: list[ast.expr | None] = []
        if isinstance(node, ast.arg | ast.AnnAssign):
            notes.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            notes.append(node.returns)
        for note in notes:
            if note is not None and note.end_lineno is not None:
                spans.append(
                    ((note.lineno, note.col_offset), (note.end_lineno, note.end_col_offset or 0))
                )
    return spans


def _inside(pos: tuple[int, int], spans: list[Span]) -> bool:
    return any(a <= pos < b for a, b in spans)


def run_module(
    module: str,
    tests: list[str],
    *,
    lines: set[int] | None,
    budget: float,
    sample: int | None,
    timeout: float,
    seed: int,
) -> dict[str, object]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    with tempfile.TemporaryDirectory(prefix="cas-mutation-") as tmp:
        work = Path(tmp)
        _copy_tree(work)
        (work / "cr.toml").write_text(_config(module, tests, timeout))
        session = work / "session.sqlite"
        done = _cr(work, "init", "cr.toml", str(session))
        if done.returncode != 0:
            sys.exit(f"mutation: cosmic-ray init failed: {done.stderr.strip()[-400:]}")
        notes = annotation_spans(work / module)
        in_notes = _skip(
            session,
            lambda item: not all(_inside(tuple(m.start_pos), notes) for m in item.mutations),
        )
        if lines is not None:
            _skip(session, lambda item: any(
                lines & set(range(m.start_pos[0], m.end_pos[0] + 1)) for m in item.mutations
            ))  # fmt: skip
        if sample is not None:
            with use_db(str(session), WorkDB.Mode.open) as db:
                ids = sorted(item.job_id for item in db.pending_work_items)
            chosen = set(random.Random(seed).sample(ids, min(sample, len(ids))))
            _skip(session, lambda item: item.job_id in chosen)
        base = _cr(work, "baseline", "cr.toml", timeout=timeout * 2)
        if base.returncode != 0:
            sys.exit(f"mutation: the tests fail without any mutant:\n{base.stdout[-2000:]}")
        start = time.monotonic()
        _cr(work, "exec", "cr.toml", str(session), timeout=budget)
        spent = time.monotonic() - start

        killed, survivors, pending, skipped = 0, [], 0, 0
        with use_db(str(session), WorkDB.Mode.open) as db:
            pending = sum(1 for _ in db.pending_work_items)
            for item, result in db.completed_work_items:
                if result.worker_outcome == WorkerOutcome.SKIPPED:
                    skipped += 1
                elif result.test_outcome == TestOutcome.SURVIVED:
                    m = item.mutations[0]
                    survivors.append(
                        {
                            "line": m.start_pos[0],
                            "operator": m.operator_name,
                            "diff": result.diff or "",
                        }
                    )
                else:
                    killed += 1
        tried = killed + len(survivors)
        return {
            "module": module,
            "tests": tests,
            "mutants_tried": tried,
            "killed": killed,
            "survived": len(survivors),
            "not_run_budget_spent": pending,
            "equivalent_in_annotations": in_notes,
            "not_selected": skipped - in_notes,
            "score": round(killed / tried, 3) if tried else None,
            "seconds": round(spent),
            "survivors": sorted(survivors, key=lambda s: (s["line"], s["operator"])),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("modules", nargs="*", help="modules to mutate, e.g. cas/format/pack.py")
    ap.add_argument("--changed", metavar="BASE", help="only lines changed since git BASE")
    ap.add_argument("--tests", nargs="+", help="test files to run (default: the module's guards)")
    ap.add_argument("--budget", type=float, default=900, help="seconds per module (default 900)")
    ap.add_argument("--sample", type=int, help="try only N mutants, drawn at random (seeded)")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=120, help="seconds per mutant's test run")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = ap.parse_args(argv)
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        print("mutation: cosmic-ray is not installed (pip install -e '.[test]')", file=sys.stderr)
        return 2

    touched = changed_lines(args.changed) if args.changed else None
    modules = list(args.modules) or sorted(touched or {})
    if not modules:
        print("mutation: no module given and no changed lines", file=sys.stderr)
        return 2
    reports = []
    for module in modules:
        if not (ROOT / module).is_file():
            print(f"mutation: no such module: {module}", file=sys.stderr)
            return 2
        tests = args.tests or GUARDS.get(module)
        if not tests:
            print(f"mutation: no guard tests known for {module}; give --tests", file=sys.stderr)
            return 2
        lines = None if touched is None else touched.get(module, set())
        reports.append(
            run_module(
                module,
                tests,
                lines=lines,
                budget=args.budget,
                sample=args.sample,
                timeout=args.timeout,
                seed=args.seed,
            )
        )
    if args.json:
        print(json.dumps(reports, indent=1))
    else:
        for r in reports:
            print(
                f"{r['module']}: score {r['score']} ({r['killed']} killed of "
                f"{r['mutants_tried']} tried, {r['survived']} survived; "
                f"{r['not_run_budget_spent']} not run, budget spent; {r['seconds']} s)"
            )
            for s in r["survivors"]:  # type: ignore[attr-defined]
                print(f"  survived: line {s['line']} {s['operator']}\n{s['diff']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
