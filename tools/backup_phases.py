#!/usr/bin/env python3
"""Where a backup's main process spends its CPU and memory: the walk, then the end.

    python tools/backup_phases.py [--data /tmp/cas-bench/many] [--cores 2] [--cas-path DIR]
                                  [--work /tmp/cas-backup-phases]

Backs the tree up once into a fresh local repository, pinned with ``taskset`` to the
first ``--cores`` cores, with the main process's phases marked from inside it (the
archiver's and the pool's methods wrapped before the CLI runs; no change to cas): when
the walk starts, when it is done (every file's result in, the workers not yet flushed),
when the workers have flushed, and when the repository's last packs and index are
stored.  At each mark: wall and CPU seconds of the main process so far, its resident
and peak memory, and the blobs it holds as in flight (claimed or saved, in no stored
pack yet) beside the packs indexed so far.  ``--cas-path`` runs the cas found in that
directory (before and after a change).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

PASSWORD = "bench-password"

_WRAP = r"""
import os, resource, sys, time
T0 = time.perf_counter()
def _mark(what, saver=None):
    r = resource.getrusage(resource.RUSAGE_SELF)
    st = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith("Vm"))
    mib = lambda k: int(st[k].split()[0]) >> 10
    extra = ""
    if saver is not None:
        extra = f", in flight {len(saver._inflight)} blobs, {saver.stats.packs} packs indexed"
    print(f"{what}: wall {time.perf_counter() - T0:.1f} s, CPU {r.ru_utime + r.ru_stime:.1f} s, "
          f"RSS {mib('VmRSS')} MiB (peak {mib('VmHWM')} MiB){extra}", file=sys.stderr, flush=True)
from cas.backup import archiver, pool
from cas.repo import repository
_saver = []
_open = repository.Repository.claim_blobs
def claim_blobs(self, ids):
    if not _saver:
        _saver.append(self.saver)
    return _open(self, ids)
repository.Repository.claim_blobs = claim_blobs
_backup = archiver.Archiver.backup
def backup(self, *a, **k):
    _mark("walk starts")
    return _backup(self, *a, **k)
archiver.Archiver.backup = backup
_pflush = pool.SaverPool.flush
def pflush(self):
    _mark("walk done", _saver[0] if _saver else None)
    _pflush(self)
    _mark("workers flushed", _saver[0] if _saver else None)
pool.SaverPool.flush = pflush
_rflush = repository.Repository.flush
def rflush(self):
    _rflush(self)
    _mark("last packs and index stored", self.saver)
repository.Repository.flush = rflush
sys.argv = ["cas", "backup", sys.argv[1]]
from cas.cli.main import main
main()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/cas-bench/many"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--cas-path", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cas-backup-phases"))
    args = ap.parse_args()
    cas_path = args.cas_path.resolve()
    repo, state = args.work / "repo", args.work / "state"
    for p in (repo, state):
        shutil.rmtree(p, ignore_errors=True)
    env = dict(os.environ, CAS_PASSWORD=PASSWORD, CAS_REPOSITORY=str(repo))
    env["XDG_STATE_HOME"] = str(state)
    env["PYTHONPATH"] = str(cas_path)
    py = sys.executable
    subprocess.run(
        [py, "-m", "cas", "init"], env=env, cwd=cas_path, check=True, capture_output=True
    )
    cpus = ",".join(str(c) for c in range(args.cores))
    done = subprocess.run(
        ["taskset", "-c", cpus, py, "-c", _WRAP, str(args.data.resolve())],
        env=env,
        cwd=cas_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = done.stderr.splitlines()
    print("\n".join(ln for ln in lines if ": wall " in ln))
    if done.returncode != 0:
        sys.exit(f"cas backup failed ({done.returncode}): {done.stderr.strip()[-500:]}")


if __name__ == "__main__":
    main()
