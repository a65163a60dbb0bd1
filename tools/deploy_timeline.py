"""The prune-from-a-trusted-host timeline of docs/deploy.md, measured on loopback.

Starts SeaweedFS (``weed mini``, tests/support/seaweed.py) on 127.0.0.1, gives a
bucket the tests' policy (deletes denied to the backup identity), and runs:
``init`` as admin; two backups of a 64 MiB tree (tests/test_s3_backup.py's
dataset, two thirds removed before the second) as the backup identity on
another host name (``unshare --uts``, so this host's pid check does not make
their leftover locks stale at once; needs root); then as admin on this host
``forget --keep-last 1``, ``prune`` at once, 6 and 11 minutes after the last
backup, and ``check --read-data``.  Each line: when, what, exit code, seconds,
and what prune reported.  Run: ``python tools/deploy_timeline.py`` (about 12
minutes, mostly waiting).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import seaweed
from tests.support.cli import cas_env
from tests.support.s3server import FAKE_AWS_ENV, stop_process
from tests.test_s3_backup import build_dataset

PRUNE_FIELDS = ("packs_deleted", "bytes_freed", "deferred_packs", "deferred_because")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cas-deploy-timeline-"))
    process, server, _ = seaweed.start_seaweed(root)
    started = time.monotonic()
    try:
        bucket = server.new_bucket()
        server.deny_deletes(bucket)
        src = root / "src"
        size = build_dataset(src)
        print(f"tree of {size / 2**20:.0f} MiB; SeaweedFS at {server.endpoint}")
        writer = {
            **FAKE_AWS_ENV,
            "AWS_ACCESS_KEY_ID": seaweed.WRITER_KEY,
            "AWS_SECRET_ACCESS_KEY": seaweed.WRITER_SECRET,
            "CAS_CACHE_DIR": str(root / "cache-client"),
        }
        admin = {**FAKE_AWS_ENV, "CAS_CACHE_DIR": str(root / "cache-trusted")}
        base = [sys.executable, "-m", "cas", "-r", f"s3://{bucket}/repo"]
        base += ["--s3-endpoint", server.endpoint, "--s3-path-style", "--json"]

        def cas(label: str, env: dict[str, str], *args: str | Path, host: str = "") -> None:
            argv = [*base, *map(str, args)]
            if host:
                argv = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh"]
                argv += [*base, *map(str, args)]
            t = time.monotonic()
            r = subprocess.run(
                argv, env=cas_env("test-password", env), capture_output=True, text=True
            )
            took = time.monotonic() - t
            doc: dict[str, Any] = json.loads(r.stdout.splitlines()[-1]) if r.stdout.strip() else {}
            shown = {k: v for k, v in doc.get("result", {}).items() if k in PRUNE_FIELDS}
            left = len(doc.get("not_deleted", []))
            print(
                f"t={time.monotonic() - started:6.0f}s {label:32s} exit {r.returncode}"
                f" {took:5.1f}s not_deleted={left} {json.dumps(shown) if shown else ''}"
                f" {r.stderr.strip()[:200] if r.returncode else ''}"
            )
            client = server.client()
            listed = client.list_objects_v2(Bucket=bucket, Prefix="repo/locks/")
            print(f"{'':9s}lock files in the bucket: {len(listed.get('Contents', []))}")

        cas("init (trusted)", admin, "init")
        cas("backup 1 (client-a)", writer, "backup", src, host="client-a")
        shutil.rmtree(src / "d1")
        shutil.rmtree(src / "d2")
        cas("backup 2 (client-a)", writer, "backup", src, host="client-a")
        last = time.monotonic()
        cas("prune (client-a)", writer, "prune", host="client-a")
        cas("forget --keep-last 1 (trusted)", admin, "forget", "--keep-last", "1")
        for minutes in (0, 6, 11):
            time.sleep(max(0.0, last + 60 * minutes - time.monotonic()))
            cas(f"prune at +{minutes} min (trusted)", admin, "prune")
        cas("check --read-data (trusted)", admin, "check", "--read-data")
    finally:
        stop_process(process)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
