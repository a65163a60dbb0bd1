"""What version 2's length protections cost, measured on a source tree (docs/leaks.md).

    python tools/leak_costs.py SOURCE [--work DIR] [--units 0,65536,131072,262144]

1. Backs SOURCE up with the cas CLI into two new (version 2) repositories under DIR,
   one without padding and one made with ``init --padding padme``, and reports what
   each stores: the Padmé overhead (spec §8.1).
2. Reads every file of the snapshot back as restore does (cas/restore/blobstream.py:
   files in tree order, neighbouring blobs of a pack merged into one request) with
   blob ranges in whole units of each size (0: exact ranges, version 1), through a
   backend that counts requests and bytes: the cost of §9.6's aligned reads.
3. For reads of one blob at a time (mount, copy, check's repair paths): the bytes
   an aligned read fetches beyond the blob's own, from the index alone.

Prints one JSON document; docs/leaks.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cas.backend.local import LocalBackend
from cas.format import pack as packfmt
from cas.repo import Repository, open_repository
from cas.restore.blobstream import BlobStream
from cas.walker import load_tree

PASSWORD = "leak-costs"


class Counting(LocalBackend):
    """A local backend that counts ranged reads of packs and their bytes."""

    requests = 0
    bytes_read = 0

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = super().read(name, offset, length)
        if name.startswith("data/"):
            self.requests += 1
            self.bytes_read += len(data)
        return data


def cas(*args: str) -> None:
    env = dict(os.environ, CAS_PASSWORD=PASSWORD)
    subprocess.run([sys.executable, "-m", "cas", *args], check=True, env=env)


def stored_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


def files_of(repo: Repository, tree: bytes) -> list[list[tuple[bytes, int]]]:
    """Per directory, its regular files' (blob ID, size) lists end to end, in the order
    restore visits them (it plans a directory's files together)."""
    out: list[list[tuple[bytes, int]]] = []
    here: list[tuple[bytes, int]] = []
    for node in load_tree(repo, tree):
        if node.type == "dir" and node.subtree is not None:
            out += files_of(repo, node.subtree)
        elif node.type == "file" and node.content:
            here += zip(node.content, node.sizes, strict=True)
    return ([here] if here else []) + out


def restore_reads(
    repo: Repository, backend: Counting, files: list[Any], unit: int
) -> dict[str, Any]:
    """Read every file's blobs as restore does, with ranges in ``unit`` units."""
    repo.reader.read_unit = unit
    backend.requests = backend.bytes_read = 0
    stream = BlobStream(repo, 0)
    started = time.monotonic()
    plain = 0
    for blobs in files:
        stream.plan(blobs)
        for blob_id, size in blobs:
            plain += len(stream.get(blob_id, size))
    stream.close()
    return {
        "unit": unit,
        "requests": backend.requests,
        "bytes_read": backend.bytes_read,
        "plaintext": plain,
        "seconds": round(time.monotonic() - started, 1),
    }


def single_blob_reads(repo: Repository, files: list[Any], unit: int) -> dict[str, Any]:
    """Bytes fetched by reading each data blob alone, exact and in ``unit`` units."""
    exact = aligned = blobs = 0
    seen: set[bytes] = set()
    for file_blobs in files:
        for blob_id, _ in file_blobs:
            if blob_id in seen:
                continue
            seen.add(blob_id)
            loc = repo.locate(blob_id)
            size = repo.reader.known_pack_size(loc.pack_id) or loc.offset + loc.length
            start = loc.offset - loc.offset % unit
            end = loc.offset + loc.length
            end = max(end, min(end + (-end % unit), size))
            exact += loc.length
            aligned += end - start
            blobs += 1
    return {"unit": unit, "blobs": blobs, "exact_bytes": exact, "aligned_bytes": aligned}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cas-leak-costs"))
    ap.add_argument("--units", default="0,65536,131072,262144")
    ap.add_argument("--reuse", action="store_true", help="the repositories of an earlier run")
    args = ap.parse_args()
    units = [int(u) for u in args.units.split(",")]
    if not args.reuse:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
    result: dict[str, Any] = {"source": str(args.source), "repositories": {}}
    for padding in ("none", "padme"):
        repo_dir = args.work / padding
        if not args.reuse:
            cas("-q", "-r", str(repo_dir), "init", "--padding", padding)
            cas("-q", "-r", str(repo_dir), "backup", str(args.source))
        result["repositories"][padding] = {"stored_bytes": stored_bytes(repo_dir)}
    plain_repo = result["repositories"]["none"]["stored_bytes"]
    padded = result["repositories"]["padme"]["stored_bytes"]
    result["padme_overhead"] = round(padded / plain_repo - 1, 5)

    backend = Counting(args.work / "none")
    repo = open_repository(backend, PASSWORD.encode())
    sid = repo.snapshot_ids()[0]
    files = files_of(repo, repo.load_snapshot(sid).tree)
    result["directories_with_files"] = len(files)
    result["restore"] = [restore_reads(repo, backend, files, u) for u in units]
    result["single_blob"] = [single_blob_reads(repo, files, u) for u in units if u]
    # the padded repository, read as restore does in 64 KiB units
    pbackend = Counting(args.work / "padme")
    prepo = open_repository(pbackend, PASSWORD.encode())
    pfiles = files_of(prepo, prepo.load_snapshot(prepo.snapshot_ids()[0]).tree)
    result["restore_padded"] = restore_reads(prepo, pbackend, pfiles, packfmt.READ_UNIT)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
