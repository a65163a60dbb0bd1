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
- prune: ``prune-repacked``, ``prune-index-part`` (after each index file
  stored before the marking one), ``prune-marked``, ``prune-index-deleted``
  (after each superseded index file deleted), ``prune-pack-deleted``
  (after each pack deleted), ``prune-before-final-index``;
- generations (§13.6): ``before-generation`` and ``after-generation`` (around
  each generation record stored: after a snapshot, before a forget's deletes,
  before prune's index deletes), ``forget-tombstoned`` (before each snapshot
  file a forget deletes, its tombstone stored);
- locks: ``lock-written`` (after the own lock file is stored);
- check: ``check-listed-snapshots``, ``check-listed-index``,
  ``check-listed-data`` (after listing that directory);
- prune: ``prune-listed-packs`` (after the plan's listing of packs, before
  the listing of index files);
- helper processes: ``backup-worker-batch`` (a backup worker starts a
  batch), ``backup-worker-pack-stored`` (a worker's pack stored, not yet
  reported), ``restore-writer-file``, ``check-verify-pack``, ``prune-salvage-pack``
  (a helper salvaged a pack for prune, before it answers), ``copy-reseal-batch``
  (a helper sealed a batch of blobs for copy's target, before it answers).

**Pause instead of kill** (for concurrency tests, tests/test_concurrency.py):
``name@N:pause`` makes the N-th hit of ``name`` create the file
``$CAS_FAILPOINTS_DIR/name.paused`` and wait until ``name.go`` appears there
(polled every 10 ms; after an hour the process goes on), so a test can
hold a running cas at an exact step, run another command against the
repository, and let it go on.  Without ``CAS_FAILPOINTS_DIR``, pause
entries are ignored.
"""

from __future__ import annotations

import os
import signal
import threading
import time

ENV = "CAS_FAILPOINTS"
DIR_ENV = "CAS_FAILPOINTS_DIR"
PAUSE_LIMIT = 3600.0  # seconds a paused process waits for its go file at most

_lock = threading.Lock()
_armed: dict[str, int] | None = None  # name -> the hit that kills
_paused: dict[str, int] = {}  # name -> the hit that pauses
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


def parse_pauses(spec: str) -> dict[str, int]:
    """``"a@2:pause,b"`` -> ``{"a": 2}``: the entries that pause rather than kill."""
    items = (
        i.strip().removesuffix(":pause") for i in spec.split(",") if i.strip().endswith(":pause")
    )
    return parse(",".join(items))


def _load() -> dict[str, int]:
    """Every armed name (kills and pauses) -> the hit that acts."""
    global _armed
    with _lock:
        if _armed is None:
            spec = os.environ.get(ENV, "")
            _paused.update(parse_pauses(spec) if os.environ.get(DIR_ENV) else {})
            kills = ",".join(i for i in spec.split(",") if not i.strip().endswith(":pause"))
            _armed = {**parse(kills), **_paused}
        return _armed


def reset() -> None:
    """Forget the parsed variable and the hit counts (for tests that change it)."""
    global _armed
    with _lock:
        _armed = None
        _paused.clear()
        _hits.clear()


def hit(name: str) -> None:
    """Reach the step ``name``; SIGKILL (or pause) this process if CAS_FAILPOINTS says so."""
    armed = _armed if _armed is not None else _load()
    if not armed or name not in armed:
        return
    with _lock:
        count = _hits[name] = _hits.get(name, 0) + 1
    if count != armed[name]:
        return
    if name in _paused:
        _pause(name)
    else:
        os.kill(os.getpid(), signal.SIGKILL)


def _pause(name: str) -> None:
    """Announce ``name.paused`` in CAS_FAILPOINTS_DIR, then wait for ``name.go``."""
    directory = os.environ[DIR_ENV]
    with open(os.path.join(directory, f"{name}.paused"), "w") as f:
        f.write(str(os.getpid()))
    go = os.path.join(directory, f"{name}.go")
    deadline = time.monotonic() + PAUSE_LIMIT
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
