"""Which packs ``check --read-data`` reads, and the local record of when each was verified.

Selection is pure (pack IDs, options, state and a clock in; a list out), so
its arithmetic is tested without a repository.  Three ways to read less than
everything, which combine:

- ``N/M``: the packs whose ID falls in group N of M (``int(id[:8]) % M == N - 1``).
  Running 1/M .. M/M reads every pack exactly once.
- ``x%``: that share of all packs, least recently verified first (never-verified
  packs first of all, in random order), so repeated runs cycle through them.
- ``max_age``: only packs that are due, i.e. verified longer ago than
  ``max_age``.  A pack never verified is due at a point between when this
  machine first saw it and ``max_age`` later, fixed by its ID, so that a
  nightly ``check --read-data --max-age 30d`` reads about a thirtieth of the
  repository each night and every pack at least once a month.

The state lives outside the repository, in a local cache directory
(``$XDG_CACHE_HOME/cas/<repo id>/check-state.json``): it is this machine's
knowledge of what it has verified, not part of the repository.  A missing or
unreadable state file only means starting over.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cas.errors import UsageError

STATE_FILE = "check-state.json"
STATE_VERSION = 1
# Save progress at most this often during a long read, so an interrupted
# check resumes where it stopped.
SAVE_INTERVAL = 30.0

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Subset:
    """``--read-data-subset``: group ``n`` of ``m``, or a percentage of the packs."""

    n: int = 0
    m: int = 0
    percent: float | None = None

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.n}/{self.m}"


def parse_subset(text: str) -> Subset:
    """``"2/5"`` or ``"10%"`` (also ``"2.5%"``); UsageError otherwise."""
    t = text.strip()
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            pct = math.nan
        if not 0 < pct <= 100:
            raise UsageError(f"bad subset {text!r}: a percentage must be above 0 and at most 100")
        return Subset(percent=pct)
    m = re.fullmatch(r"(\d+)/(\d+)", t)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UsageError(f"bad subset {text!r}: use N/M with 1 <= N <= M, or x%")
    return Subset(int(m.group(1)), int(m.group(2)))


def parse_duration(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"2w"``, ``"90m"``, ``"3600s"`` or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"bad duration {text!r} (examples: 30d, 12h, 2w)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]


def in_group(pack_id: bytes, subset: Subset) -> bool:
    """Whether ``pack_id`` belongs to group ``subset.n`` of ``subset.m``."""
    return int.from_bytes(pack_id[:8], "big") % subset.m == subset.n - 1


def _phase(pack_id: bytes) -> float:
    """A fraction in [0, 1) fixed by the pack ID (which is already a hash)."""
    return int.from_bytes(pack_id[8:16], "big") / 2**64


@dataclass
class PackRecord:
    """What this machine knows of one pack: first seen, last verified (Unix seconds)."""

    seen: float
    verified: float | None = None


@dataclass
class CheckState:
    """Verification times of packs, kept in a local JSON file."""

    packs: dict[bytes, PackRecord] = field(default_factory=dict)
    path: Path | None = None
    _last_save: float = 0.0

    # -- bookkeeping ------------------------------------------------------------

    def observe(self, pack_ids: Iterable[bytes], now: float) -> None:
        """Note the packs the repository holds now; forget those that are gone."""
        current = set(pack_ids)
        for gone in set(self.packs) - current:
            del self.packs[gone]
        for p in current:
            self.packs.setdefault(p, PackRecord(seen=now))

    def mark_verified(self, pack_id: bytes, now: float) -> None:
        """Record a successful whole-pack verification (and save now and then)."""
        rec = self.packs.setdefault(pack_id, PackRecord(seen=now))
        rec.verified = now
        if self.path is not None and time.monotonic() - self._last_save >= SAVE_INTERVAL:
            self.save()

    def last_verified(self, pack_id: bytes) -> float | None:
        """When the pack was last verified, or None."""
        rec = self.packs.get(pack_id)
        return rec.verified if rec else None

    def due(self, pack_id: bytes, now: float, max_age: float) -> bool:
        """Whether the pack should be read again under ``max_age``."""
        rec = self.packs.get(pack_id) or PackRecord(seen=now)
        if rec.verified is not None:
            return now - rec.verified >= max_age
        return now >= rec.seen + _phase(pack_id) * max_age

    # -- the file ---------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> tuple[CheckState, str | None]:
        """The state in ``path``; an empty state and a note if it is missing or unreadable."""
        state = cls(path=path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return state, None
        except OSError as e:
            return state, f"cannot read check state {path}: {e.strerror}; starting afresh"
        try:
            doc = json.loads(raw)
            if doc.get("version") != STATE_VERSION:
                raise ValueError("unknown version")
            for hex_id, rec in doc["packs"].items():
                pack_id = bytes.fromhex(hex_id)
                verified = rec.get("verified")
                state.packs[pack_id] = PackRecord(
                    float(rec["seen"]), None if verified is None else float(verified)
                )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            state.packs.clear()
            return state, f"check state {path} is damaged ({e}); starting afresh"
        return state, None

    def save(self) -> None:
        """Write the state atomically (temporary file, then rename); no-op without a path."""
        if self.path is None:
            return
        doc = {
            "version": STATE_VERSION,
            "packs": {
                p.hex(): {"seen": r.seen, "verified": r.verified}
                for p, r in sorted(self.packs.items())
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".check-state-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._last_save = time.monotonic()


def state_path(repo_id: bytes, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache dir>/<repo id hex>/check-state.json``; the cache dir defaults to
    ``$XDG_CACHE_HOME/cas`` or ``~/.cache/cas``."""
    if cache_dir is None:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg else Path.home() / ".cache"
        cache_dir = base / "cas"
    return Path(cache_dir) / repo_id.hex() / STATE_FILE


def select_packs(
    pack_ids: Iterable[bytes],
    *,
    subset: Subset | None = None,
    max_age: float | None = None,
    state: CheckState | None = None,
    now: float | None = None,
    rng: random.Random | None = None,
) -> list[bytes]:
    """The packs to read, in ID order (see the module docstring for the rules)."""
    everything = sorted(set(pack_ids))
    now = time.time() if now is None else now
    state = state or CheckState()
    chosen = everything
    if subset is not None and subset.percent is None:
        chosen = [p for p in chosen if in_group(p, subset)]
    if max_age is not None:
        chosen = [p for p in chosen if state.due(p, now, max_age)]
    if subset is not None and subset.percent is not None:
        want = math.ceil(len(everything) * subset.percent / 100)
        chosen = _least_recent(chosen, state, want, rng or random.Random())
    return sorted(chosen)


def _least_recent(
    candidates: list[bytes], state: CheckState, want: int, rng: random.Random
) -> list[bytes]:
    ties = {p: rng.random() for p in candidates}

    def age_key(p: bytes) -> tuple[float, float]:
        verified = state.last_verified(p)
        return (-math.inf if verified is None else verified, ties[p])

    return sorted(candidates, key=age_key)[:want]
