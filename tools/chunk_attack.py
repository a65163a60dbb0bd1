#!/usr/bin/env python3
"""The chosen-file attack on keyed chunking, end to end (spec/format.md §7.5, issue 18).

    python tools/chunk_attack.py [--chunker ALGORITHM] [--workdir DIR] [--seed N]

What the storage provider does, from its own view only:

1. A file of the attacker's choosing reaches the victim's backup (a download,
   a mail attachment): ``cas backup --compression off`` into a local
   repository made with ``--chunker ALGORITHM``.
2. The provider logs the requests the client makes.  The client reads the
   file's blobs back one by one (as ``cas dump`` and ``cas copy`` read them),
   so the log holds the ordered lengths of ranged reads of ``data/`` objects:
   each is a chunk's length plus the constant sealing overhead, which the
   provider gets from its own file's size (lengths sum to it).
3. From those lengths and the chosen bytes alone it recovers the secret: for
   ``fastcdc-2016-permuted`` the byte permutation, value by value (§7.5).
4. It predicts the chunk lengths of a file it knows but did not plant (the
   victim's copy of a public file) and compares them with what the log shows
   when the victim backs that file up and reads it.

Scaled down, and why the attack still applies: the repository uses chunk
sizes 2 KiB / 8 KiB / 32 KiB (hidden ``init`` options) instead of 512 KiB /
1 MiB / 8 MiB, and the chosen file is 256 KiB over two byte values, then 254
sections of 32 KiB each adding one value (8.2 MiB instead of issue 18's
770 MiB).  The attack needs, per byte value, a few chunks whose cut search
runs over that value and known ones; it counts chunks, not bytes, and every
rule of §7.3 (the masks, ``min``, normalised chunking, ``max``) scales with
the sizes, so a section of 4 chunks at 8 KiB is what a section of 4 chunks at
1 MiB is.  The known file is 1 MiB of random bytes (about 150 chunks).

Against ``window-aes128`` (§7.6) the same steps find no permutation that
explains the lengths (the cuts are AES decisions, not gear sums), so the
attacker predicts with what it has: a guess, which matches the observed cut
positions no better than chance.  ``tests/test_chunk_attack.py`` runs both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastcdc.fastcdc_cy import fastcdc_cy

from cas.backend.base import Backend, ObjectInfo
from cas.backend.registry import open_backend
from cas.chunking.chunker import PERMUTED, Chunker, ChunkerParams
from cas.crypto import BlobType
from cas.repo import RepoOptions, open_on
from cas.walker import load_tree

PARAMS = ChunkerParams(2048, 8192, 32768, PERMUTED)  # the sizes; the algorithm varies
FIRST_SECTION = 256 << 10  # bytes over the first two values
SECTION = 32 << 10  # bytes per further value
KNOWN_SIZE = 1 << 20
PASSWORD = "chunk-attack-password"
ENV = {
    "CAS_KDF_OPSLIMIT": "1",
    "CAS_KDF_MEMLIMIT": str(8 << 20),
    "CAS_TEST_WEAK_KDF": "1",  # a throwaway repository: the attack needs no strong key file
    "CAS_PASSWORD": PASSWORD,
}


# -- the provider's view ------------------------------------------------------------


class LoggingBackend:
    """A backend decorator that logs the ranged reads of ``data/`` objects: the
    requests an S3 provider sees (object, offset, length), nothing else."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner
        self.reads: list[tuple[str, int, int]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    @property
    def location(self) -> str:
        return self._inner.location

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._inner.read(name, offset, length)
        if name.startswith("data/"):
            self.reads.append((name, offset, len(data)))
        return data

    def stat(self, name: str) -> ObjectInfo:
        return self._inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self._inner.list(prefix)

    def close(self) -> None:
        self._inner.close()


def cas(*args: str | Path) -> str:
    """Run the cas command line as the victim would; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    env.update(ENV)
    done = subprocess.run(
        [sys.executable, "-m", "cas", *map(str, args)], env=env, capture_output=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"cas {args[0]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def logged_read_lengths(repo_dir: Path, snapshot_id: str, name: str) -> list[int]:
    """The lengths the provider logs while the client reads file ``name`` of a snapshot
    blob by blob."""
    backend = open_backend(str(repo_dir))
    logging = LoggingBackend(backend)
    repo = open_on(logging, lambda: PASSWORD.encode(), RepoOptions(cache=False))  # type: ignore[arg-type]
    try:
        snap = repo.load_snapshot(bytes.fromhex(snapshot_id))
        node = _find(repo, snap.tree, name)
        logging.reads.clear()  # tree packs read on the way: not the file's blobs
        for blob_id in node.content:
            repo.load_blob(BlobType.DATA, blob_id)
        return [length for _, _, length in logging.reads]
    finally:
        backend.close()


def _find(repo: object, tree_id: bytes, name: str) -> object:
    """The node called ``name`` anywhere below ``tree_id``."""
    for node in load_tree(repo, tree_id):  # type: ignore[arg-type]
        if node.name == name.encode():
            return node
        if node.subtree is not None:
            try:
                return _find(repo, node.subtree, name)
            except KeyError:
                pass
    raise KeyError(name)


def back_up(repo_dir: Path, path: Path) -> str:
    """``cas backup --compression off`` of one file; the new snapshot's ID."""
    out = cas("backup", "-r", repo_dir, "--compression", "off", "--json", path)
    return str(json.loads(out.strip().splitlines()[-1])["id"])


# -- the attacker's file and the attack ---------------------------------------------


def chosen_file(seed: int) -> tuple[bytes, list[int]]:
    """The attacker's file and the order in which it introduces byte values."""
    rng = random.Random(seed)
    order = list(range(256))
    rng.shuffle(order)
    # random bytes mapped onto the section's values (bytes.translate: fast)
    parts = [rng.randbytes(FIRST_SECTION).translate(bytes(order[v & 1] for v in range(256)))]
    for k in range(2, 256):
        # half the bytes the new value, so every cut search of the section meets it
        table = bytes(order[k] if v < 128 else order[v % k] for v in range(256))
        parts.append(rng.randbytes(SECTION).translate(table))
    return b"".join(parts), order


@dataclass
class Recovery:
    """What the attack found: the permutation (byte value -> GEAR index), or None."""

    permutation: bytes | None
    stage: int  # how many byte values were pinned before it stopped
    hypotheses_tested: int


def recover(data: bytes, lengths: list[int], order: list[int], p: ChunkerParams) -> Recovery:
    """Recover the permutation from chunk lengths of ``data`` (§7.5's attack).

    Each chunk's cut search reads the permuted bytes from ``start + min`` to its
    cut (or ``max``); a hypothesis for the values in that window predicts its
    length exactly.  Chunks are grouped by the last-introduced value their
    window holds; the first group fixes two values (65,280 pairs), each later
    one a single value (at most 254 candidates, depth first).
    """
    rank = bytes(order.index(v) for v in range(256))  # byte value -> when it appears
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    groups: dict[int, list[tuple[int, int]]] = {}
    for s, n in zip(starts, lengths, strict=True):
        if s + n == len(data) or n <= p.min_size:
            continue  # the stream's last chunk: no search decided it
        # the search read the permuted bytes from start + min to the cut (or max)
        stage = max(data[s + p.min_size : s + n].translate(rank))
        groups.setdefault(max(stage, 1), []).append((s, n))

    table = bytearray(256)
    used: set[int] = set()
    tested = 0

    def explains(chunks: list[tuple[int, int]]) -> bool:
        tab = bytes(table)
        for s, n in chunks:
            window = data[s : s + p.max_size].translate(tab)
            if next(fastcdc_cy(window, p.min_size, p.avg_size, p.max_size)).length != n:
                return False
        return True

    first = groups.get(1, [])
    a, b = order[0], order[1]
    found = []
    for x in range(256):
        for y in range(256):
            if x == y:
                continue
            table[a], table[b] = x, y
            tested += 1
            if first and explains(first[:1]) and explains(first):
                found.append((x, y))
    deepest = 2

    def extend(k: int) -> bool:
        """Pin values k, k + 1, ... depth first: a section whose chunks all run into
        the next one (no chunk of its own), or that two values explain, leaves
        several candidates, and the next section's chunks decide between them."""
        nonlocal tested, deepest
        deepest = max(deepest, k)
        if k == 256:
            return True
        chunks = groups.get(k, [])
        for z in range(256):
            if z in used:
                continue
            table[order[k]] = z
            tested += 1
            if explains(chunks):
                used.add(z)
                if extend(k + 1):
                    return True
                used.discard(z)
        return False

    for pair in found:
        table[a], table[b] = pair
        used.clear()
        used.update(pair)
        if extend(2):
            return Recovery(bytes(table), 256, tested)
    return Recovery(None, deepest if found else 0, tested)


def chunk_lengths(perm: bytes, data: bytes, p: ChunkerParams) -> list[int]:
    ends = Chunker(perm, p).cut_points(data)
    return [e - s for s, e in zip([0, *ends], ends, strict=False)]


def matching_cuts(predicted: list[int], observed: list[int]) -> float:
    """The share of observed cut positions that the prediction also has."""

    def cuts(lengths: list[int]) -> set[int]:
        out, pos = set(), 0
        for n in lengths[:-1]:
            pos += n
            out.add(pos)
        return out

    seen = cuts(observed)
    return len(seen & cuts(predicted)) / max(1, len(seen))


@dataclass
class Outcome:
    algorithm: str
    chosen_bytes: int
    recovery: Recovery
    known_chunks: int
    exact_lengths: bool  # the known file's lengths predicted exactly
    cut_match: float  # the share of its observed cut positions predicted

    def summary(self) -> dict[str, object]:
        return {
            "algorithm": self.algorithm,
            "chosen_file_bytes": self.chosen_bytes,
            "recovered": self.recovery.permutation is not None,
            "values_pinned": self.recovery.stage,
            "hypotheses_tested": self.recovery.hypotheses_tested,
            "known_file_chunks": self.known_chunks,
            "known_lengths_predicted_exactly": self.exact_lengths,
            "known_cut_positions_predicted": round(self.cut_match, 4),
        }


def run(algorithm: str, workdir: Path, seed: int = 1) -> Outcome:
    """The whole attack against a new repository made with ``algorithm``."""
    repo = workdir / "repo"
    cas(
        "init", "-r", repo, "--chunk-min", PARAMS.min_size, "--chunk-avg", PARAMS.avg_size,
        "--chunk-max", PARAMS.max_size, "--chunker", algorithm,
        # a version 1 repository: its blob reads have exact lengths (version 2 reads
        # whole 64 KiB units, spec §9.6), the worst case the chunker must stand alone
        "--format-version", "1",
    )  # fmt: skip
    data, order = chosen_file(seed)
    planted = workdir / "planted" / "chosen.bin"
    planted.parent.mkdir()
    planted.write_bytes(data)
    sealed = logged_read_lengths(repo, back_up(repo, planted), "chosen.bin")
    overhead, rest = divmod(sum(sealed) - len(data), len(sealed))
    if rest:
        raise RuntimeError("read lengths are not chunk lengths plus a constant")
    lengths = [n - overhead for n in sealed]
    recovery = recover(data, lengths, order, PARAMS)

    known = random.Random(seed + 1).randbytes(KNOWN_SIZE)  # public: the attacker has it
    victim = workdir / "victim" / "known.bin"
    victim.parent.mkdir()
    victim.write_bytes(known)
    observed = [n - overhead for n in logged_read_lengths(repo, back_up(repo, victim), "known.bin")]
    guess = recovery.permutation or bytes(random.Random(seed + 2).sample(range(256), 256))
    predicted = chunk_lengths(guess, known, PARAMS)
    return Outcome(
        algorithm,
        len(data),
        recovery,
        len(observed),
        predicted == observed,
        matching_cuts(predicted, observed),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunker", default="window-aes128", choices=["window-aes128", PERMUTED])
    ap.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True)
        print(json.dumps(run(args.chunker, args.workdir, args.seed).summary(), indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(args.chunker, Path(tmp), args.seed).summary(), indent=2))


if __name__ == "__main__":
    main()
