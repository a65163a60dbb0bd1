"""A generated home directory and what a day, or ransomware, does to it.

Deterministic for a seed.  The tree mixes what a home holds: text documents and
mail (compressible), source code in projects, photos and archives (random
bytes: incompressible), settings, a log, and a browser cache whose entries are
replaced every day with incompressible bytes.  A day of edits appends to
documents and mail, edits code, adds photos and documents, deletes and renames
a few files, truncates the log and churns the cache; some days are busier (a
branch switch rewrites a third of a project, a photo import, a cleanup).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "backup",
    "snapshot",
    "meeting",
    "invoice",
    "report",
    "draft",
    "holiday",
    "budget",
    "project",
    "notes",
    "review",
]


def _text(rng: random.Random, n: int) -> bytes:
    return " ".join(rng.choice(WORDS) for _ in range(n)).encode() + b"\n"


def _code(rng: random.Random, lines: int) -> bytes:
    out = []
    for i in range(lines):
        name = rng.choice(WORDS)
        out.append(f"def {name}_{i}(x):\n    return x + {rng.randrange(1000)}  # {name}\n")
    return "".join(out).encode()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _files(root: Path, under: str = "") -> list[Path]:
    top = root / under if under else root
    return sorted(p for p in top.rglob("*") if p.is_file() and not p.is_symlink())


def make_home(root: Path, seed: int = 1, scale: int = 1) -> None:
    """Create the tree (about 700 files, 10 MiB, times ``scale``) under ``root``."""
    rng = random.Random(seed)
    for i in range(120 * scale):
        _write(root / "Documents" / f"doc{i}.txt", _text(rng, rng.randrange(50, 2000)))
    for i in range(30 * scale):
        _write(
            root / "Documents" / "archive" / f"old{i}.zip",
            rng.randbytes(rng.randrange(2000, 60000)),
        )
    for p in range(3):
        for i in range(100 * scale):
            _write(
                root / "code" / f"project{p}" / "src" / f"mod{i}.py",
                _code(rng, rng.randrange(5, 200)),
            )
    for i in range(60 * scale):
        _write(
            root / "Pictures" / "2025" / f"IMG_{i:04}.jpg",
            rng.randbytes(rng.randrange(20000, 150000)),
        )
    for i in range(40 * scale):
        _write(root / ".config" / f"app{i}" / "settings.ini", _text(rng, rng.randrange(10, 80)))
    for i in range(60 * scale):
        _write(
            root / ".cache" / "browser" / f"entry{i:03}", rng.randbytes(rng.randrange(1000, 30000))
        )
    for box in ("inbox", "sent", "archive"):
        _write(root / "Mail" / box, _text(rng, 5000))
    _write(root / ".local" / "app.log", _text(rng, 3000))


def edit_day(root: Path, rng: random.Random, day: int) -> str:
    """One day of ordinary use; returns what kind of day it was."""
    docs = _files(root, "Documents")
    for p in rng.sample(docs, min(len(docs), rng.randrange(1, 6))):
        if p.suffix == ".txt":
            with p.open("ab") as f:
                f.write(_text(rng, rng.randrange(20, 400)))
    code = _files(root, "code")
    for p in rng.sample(code, min(len(code), rng.randrange(2, 12))):
        data = p.read_bytes()
        cut = rng.randrange(len(data) + 1)
        p.write_bytes(data[:cut] + _code(rng, rng.randrange(1, 10)) + data[cut:])
    for box in ("inbox", "sent"):
        with (root / "Mail" / box).open("ab") as f:
            f.write(_text(rng, rng.randrange(100, 2000)))
    for _ in range(rng.randrange(0, 4)):
        _write(root / "Documents" / f"new{day}_{rng.randrange(10**6)}.txt", _text(rng, 300))
    for _ in range(rng.randrange(0, 3)):
        name = f"IMG_{day:02}{rng.randrange(10**4):04}.jpg"
        _write(root / "Pictures" / "2026" / name, rng.randbytes(rng.randrange(20000, 150000)))
    files = [p for p in _files(root) if "Mail" not in p.parts]
    for p in rng.sample(files, rng.randrange(0, 4)):
        p.unlink()
    docs = [p for p in _files(root, "Documents") if p.suffix == ".txt"]
    for p in rng.sample(docs, min(len(docs), rng.randrange(0, 3))):
        p.rename(p.with_name("renamed_" + p.name))
    (root / ".local" / "app.log").write_bytes(b"")  # rotated
    cache = _files(root, ".cache")
    for p in rng.sample(cache, len(cache) // 3):  # replaced with new entries
        p.write_bytes(rng.randbytes(rng.randrange(1000, 30000)))
    kind = "ordinary"
    if day % 10 == 5:  # a branch switch rewrites a third of one project
        kind = "branch switch"
        project = _files(root, f"code/project{day % 3}")
        for p in rng.sample(project, len(project) // 3):
            p.write_bytes(_code(rng, rng.randrange(5, 200)))
    elif day % 10 == 8:  # a photo import
        kind = "photo import"
        for i in range(40):
            _write(root / "Pictures" / f"import{day}" / f"IMG_{i:04}.jpg", rng.randbytes(200_000))
    elif day % 15 == 14:  # a cleanup of old archives
        kind = "cleanup"
        for p in _files(root, "Documents/archive")[::2]:
            p.unlink()
    return kind


def ransomware(root: Path, rng: random.Random, share: float = 0.8, rename: bool = True) -> int:
    """Overwrite ``share`` of the files with random bytes of the same size and (with
    ``rename``) rename each to ``NAME.locked``, as ransomware does; returns the count."""
    files = _files(root)
    hit = rng.sample(files, int(len(files) * share))
    for p in hit:
        size = p.stat().st_size
        p.write_bytes(rng.randbytes(max(size, 16)))
        if rename:
            os.rename(p, p.with_name(p.name + ".locked"))
    return len(hit)
