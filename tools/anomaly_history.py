"""Measure the false alarms of backup's anomaly check over normal histories.

    python tools/anomaly_history.py [--days 30] [--scale 1] [--bench /tmp/cas-bench]
                                    [--thresholds TEXT] [--keep DIR]

Replays, each into a new local repository:

- ``home``: a generated home-like tree (tests/support/hometree.py: documents, mail,
  code, photos, archives, settings, a log, a browser cache) backed up once, then after
  each of ``--days`` days of edits (ordinary days, branch switches, photo imports,
  cleanups); then, as a check that the alarm works, once after ransomware rewrote 80%
  of the files with random bytes and renamed them ``*.locked``;
- ``linux`` and ``edits`` of ../shared/bench/datasets.sh, when they are under
  ``--bench``: the Linux source backed up, then its copy after a day of edits
  (``edits/linux``) with the first as parent; likewise ``big`` and ``edits/big``.
  A dataset without its edited copy is skipped (a first backup is never judged);
  absent datasets are reported, never generated here.

Prints each backup that was flagged and, per history, how many backups were flagged
out of how many could have been (every backup after the first).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.hometree import edit_day, make_home, ransomware  # noqa: E402


class Runner:
    """``cas`` on one local repository."""

    def __init__(self, work: Path, name: str, thresholds: str | None) -> None:
        self.repo = work / f"repo-{name}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CAS_")},
            "CAS_PASSWORD": "anomaly-history",
            "CAS_KDF_OPSLIMIT": "1",
            "CAS_KDF_MEMLIMIT": str(8 << 20),
            "CAS_CACHE_DIR": str(work / "cache"),
        }
        if thresholds is not None:
            self.env["CAS_ANOMALY_THRESHOLDS"] = thresholds
        self._cas("init")

    def _cas(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cas", "-r", str(self.repo), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )

    def backup(self, path: Path, parent: str | None = None) -> tuple[str, list[dict[str, Any]]]:
        """Back up ``path``; the snapshot ID and its anomalies."""
        args = ["backup", str(path), "--json"] + (["--parent", parent] if parent else [])
        r = self._cas(*args)
        if r.returncode not in (0, 3):
            raise SystemExit(f"cas backup {path} failed ({r.returncode}): {r.stderr.strip()}")
        doc = json.loads(r.stdout.splitlines()[-1])
        return doc["id"], doc["anomalies"]


def _show(label: str, anomalies: list[dict[str, Any]]) -> None:
    if anomalies:
        print(f"  FLAGGED {label}:")
        for a in anomalies:
            print(f"    {a['kind']}: {a['message']}")


def home(work: Path, days: int, scale: int, thresholds: str | None) -> dict[str, Any]:
    """The generated home tree: a first backup and ``days`` days of edits."""
    src = work / "home"
    make_home(src, seed=1, scale=scale)
    run = Runner(work, "home", thresholds)
    rng = random.Random(2)
    run.backup(src)
    flagged = 0
    for day in range(1, days + 1):
        kind = edit_day(src, rng, day)
        _, anomalies = run.backup(src)
        _show(f"day {day} ({kind})", anomalies)
        flagged += bool(anomalies)
    ransomware(src, rng, share=0.8, rename=True)
    _, attack = run.backup(src)
    _show("ransomware (expected)", attack)
    return {
        "history": f"home, {days} days",
        "backups": days,
        "flagged": flagged,
        "ransomware_flagged": bool(attack),
    }


def bench(work: Path, top: Path, thresholds: str | None) -> list[dict[str, Any]]:
    """The benchmark datasets that are present: each, then its edited copy."""
    results = []
    for name in ("linux", "big"):
        first, second = top / name, top / "edits" / name
        if not (first.is_dir() and second.is_dir()):
            # A first backup is never judged: without its edited copy there is nothing
            # to measure, and the datasets are large.
            print(f"  {name}: {first} or {second} absent, skipped")
            continue
        run = Runner(work, name, thresholds)
        sid, _ = run.backup(first)
        _, anomalies = run.backup(second, parent=sid)
        _show(f"edits/{name}", anomalies)
        results.append(
            {"history": f"{name} + edits", "backups": 1, "flagged": int(bool(anomalies))}
        )
    return results


def main() -> None:
    """Run the histories and print the counts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--scale", type=int, default=1, help="home tree size (about 700 files each)")
    ap.add_argument("--bench", type=Path, default=Path("/tmp/cas-bench"))
    ap.add_argument("--no-bench", action="store_true", help="only the generated home tree")
    ap.add_argument("--thresholds", default=None, help="as --anomaly-thresholds")
    ap.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cas-anomaly-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = [home(work, args.days, args.scale, args.thresholds)]
        if not args.no_bench:
            results += bench(work, args.bench, args.thresholds)
    print()
    print(f"{'history':<20} {'backups judged':>14} {'flagged':>8}")
    for r in results:
        print(f"{r['history']:<20} {r['backups']:>14} {r['flagged']:>8}")
    total = sum(r["backups"] for r in results)
    print(f"{'total':<20} {total:>14} {sum(r['flagged'] for r in results):>8}")
    attack = results[0]["ransomware_flagged"]
    print(f"ransomware after the home history: {'flagged' if attack else 'NOT flagged'}")


if __name__ == "__main__":
    main()
