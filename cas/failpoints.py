"""Named fail points: kill the process at a chosen step, to prove crashes are safe.

``CAS_FAILPOINTS`` holds comma-separated names, each optionally ``name@N``
(die on the N-th time the step is reached; the first by default).  When a
running cas reaches a named step, it sends itself SIGKILL: no ``finally``
block, no atexit handler and no lock release runs, exactly as after a power
cut or ``kill -9``.  The crash tests (tests/test_crash.py) set the variable
on a real ``cas`` subprocess and then check that nothing was lost.

The variable is read once; when it is unset, ``hit`` is one dictionary
lookup on an empty dict.  Names in use (spec/format.md §14.3 and §13.5):

- repository: ``pack-stored`` (after a pack upload), ``before-index``,
  ``index-written``, ``before-snapshot``;
- prune: ``prune-repacked``, ``prune-marked``, ``prune-index-deleted``
  (after each superseded index file deleted), ``prune-pack-deleted``
  (after each pack deleted), ``prune-before-final-index``;
- locks: ``lock-written`` (after the own lock file is stored).
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "CAS_FAILPOINTS"

_lock = threading.Lock()
_armed: dict[str, int] | None = None  # name -> the hit that kills
_hits: dict[str, int] = {}


def parse(spec: str) -> dict[str, int]:
    """``"a,b@3"`` -> ``{"a": 1, "b": 3}``; malformed entries are ignored."""
    armed: dict[str, int] = {}
    for item in spec.split(","):
        name, _, count = item.strip().partition("@")
        if not name:
            continue
        try:
            n = int(count) if count else 1
        except ValueError:
            continue
        if n >= 1:
            armed[name] = n
    return armed


def _load() -> dict[str, int]:
    global _armed
    with _lock:
        if _armed is None:
            _armed = parse(os.environ.get(ENV, ""))
        return _armed


def reset() -> None:
    """Forget the parsed variable and the hit counts (for tests that change it)."""
    global _armed
    with _lock:
        _armed = None
        _hits.clear()


def hit(name: str) -> None:
    """Reach the step ``name``; SIGKILL this process if CAS_FAILPOINTS says so."""
    armed = _armed if _armed is not None else _load()
    if not armed or name not in armed:
        return
    with _lock:
        count = _hits[name] = _hits.get(name, 0) + 1
    if count == armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
