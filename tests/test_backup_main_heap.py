"""The main process of a backup with worker processes keeps its malloc heap small
(cas/backup/pool.py): one arena for all its threads, and the free pages inside the
heap given back to the system while the workers run (``ipc.trim_heap``)."""

from __future__ import annotations

import ctypes
import os
from types import SimpleNamespace
from typing import Any

import pytest

from cas import ipc
from cas.backup import pool as pool_mod
from cas.backup.pool import SaverPool


def _pool() -> SaverPool:
    return SaverPool(
        SimpleNamespace(encode=lambda: b""),  # type: ignore[arg-type]
        2,
        claim=lambda ids: bytes(len(ids)),
        adopt=lambda pack_id, size, entries: None,
        add_sealed=lambda body, entries: None,
        level=3,
        pack_size=16 << 20,
        chunker=(1, 2, 3, "window-aes128"),
        connections=1,
    )


def test_the_main_process_makes_one_arena_and_trims_its_heap_while_workers_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool asks for one malloc arena when it is made (before the backup starts a
    thread), and reading the workers' sockets trims the heap at most every
    ``TRIM_EVERY`` seconds."""
    calls = {"arena": 0, "trim": 0}

    def count(what: str) -> Any:
        return lambda: calls.__setitem__(what, calls[what] + 1)

    monkeypatch.setattr(pool_mod.ipc, "one_arena", count("arena"))
    monkeypatch.setattr(pool_mod.ipc, "trim_heap", count("trim"))
    clock = [1000.0]
    monkeypatch.setattr(pool_mod, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    pool = _pool()
    assert calls == {"arena": 1, "trim": 0}
    pool._pump(0)  # no worker yet: nothing to read, but the heap is trimmed
    pool._pump(0)
    assert calls["trim"] == 1
    clock[0] += pool_mod.TRIM_EVERY / 2
    pool._pump(0)
    assert calls["trim"] == 1
    clock[0] += pool_mod.TRIM_EVERY / 2
    pool._pump(0)
    assert (calls["trim"], pool.trims) == (2, 2)


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(
    not os.path.exists("/proc/self/status") or os.uname().sysname != "Linux",
    reason="glibc and /proc",
)
def test_trim_heap_gives_back_free_pages_between_chunks_in_use() -> None:
    """Blocks freed between blocks still in use stay resident until ``trim_heap``."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 64 << 10, 256  # 16 MiB from the heap (below the mmap threshold)
    blocks = [libc.malloc(size) for _ in range(count)]
    try:
        for b in blocks:
            ctypes.memset(b, 1, size)  # resident
        for b in blocks[::2]:
            libc.free(b)  # holes of 64 KiB, each between two blocks in use
        before = _rss_anon()
        ipc.trim_heap()
        after = _rss_anon()
    finally:
        for b in blocks[1::2]:
            libc.free(b)
    assert before - after >= (count // 2) * size // 2  # at least half the holes went
