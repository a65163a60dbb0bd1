"""The fault-injecting backend: scripted faults happen exactly as scripted.

And, since it exists to test the layers above, a few uses of it: the
repository notices damaged reads, and a backup completes through a memory
backend that fails one request in ten.
"""

from __future__ import annotations

from typing import Any

import pytest

from cas.backend.accounting import AccountingBackend
from cas.backend.faulty import Fault, FaultyBackend, flip_last_byte, truncate_reads
from cas.backend.memory import MemoryBackend
from cas.backend.retry import RetryBackend
from cas.errors import BackendError, IntegrityError, ObjectNotFound, TransientBackendError
from cas.repo import open_repository
from tests.support.repos import PASSWORD, new_repo, populate

NAME = "data/ab/ab01"


@pytest.fixture
def memory() -> MemoryBackend:
    backend = MemoryBackend()
    backend.create()
    return backend


def attempt_writes(faulty: FaultyBackend, count: int) -> list[bool]:
    """Write ``count`` objects; True for each that succeeded."""
    results = []
    for i in range(count):
        try:
            faulty.write(f"data/ab/{i:04x}", b"x")
            results.append(True)
        except TransientBackendError:
            results.append(False)
    return results


def test_fail_the_third_write_twice(memory: MemoryBackend) -> None:
    faulty = FaultyBackend(memory)
    faulty.add("write", Fault(after=2, times=2))
    assert attempt_writes(faulty, 6) == [True, True, False, False, True, True]
    assert faulty.calls["write"] == 6
    assert [i.name for i in faulty.injected] == ["data/ab/0002", "data/ab/0003"]
    # A failed write stored nothing.
    with pytest.raises(ObjectNotFound):
        memory.stat("data/ab/0002")


def test_faults_apply_only_to_their_method_and_prefix(memory: MemoryBackend) -> None:
    faulty = FaultyBackend(memory)
    faulty.add("read", Fault(times=None, prefix="index/"))
    faulty.write("index/0001", b"i")
    faulty.write(NAME, b"d")
    assert faulty.read(NAME) == b"d"
    assert faulty.stat("index/0001").size == 1
    with pytest.raises(TransientBackendError, match="injected fault: read index/0001"):
        faulty.read("index/0001")


def test_a_percentage_of_all_requests(memory: MemoryBackend) -> None:
    faulty = FaultyBackend(memory, seed=42)
    faulty.add("*", Fault(probability=0.1, times=None))
    results = attempt_writes(faulty, 2000)
    failures = results.count(False)
    assert 140 < failures < 260  # 10% of 2000, give or take three standard deviations
    again = FaultyBackend(MemoryBackend(), seed=42)
    again.inner.create()
    again.add("*", Fault(probability=0.1, times=None))
    assert attempt_writes(again, 2000) == results  # seeded: reproducible


def test_truncated_and_flipped_reads(memory: MemoryBackend) -> None:
    memory.write(NAME, b"0123456789")
    faulty = FaultyBackend(memory)
    faulty.add("read", truncate_reads(after=1, times=1))
    faulty.add("read", flip_last_byte(after=2, times=1))
    assert faulty.read(NAME) == b"0123456789"
    assert faulty.read(NAME) == b"01234"
    assert faulty.read(NAME, 2, 3) == b"23" + bytes([ord("4") ^ 0xFF])
    assert faulty.read(NAME) == b"0123456789"
    assert [i.what for i in faulty.injected] == ["corrupt", "corrupt"]


def test_a_lost_reply_still_stores(memory: MemoryBackend) -> None:
    faulty = FaultyBackend(memory)
    faulty.add("write", Fault(lost_reply=True))
    faulty.add("delete", Fault(lost_reply=True))
    with pytest.raises(TransientBackendError):
        faulty.write(NAME, b"x")
    assert memory.read(NAME) == b"x"
    with pytest.raises(TransientBackendError):
        faulty.delete(NAME)
    with pytest.raises(ObjectNotFound):
        memory.read(NAME)


def test_a_listing_breaks_part_way(memory: MemoryBackend) -> None:
    for i in range(5):
        memory.write(f"data/ab/{i}", b"x")
    faulty = FaultyBackend(memory)
    faulty.add("list", Fault(after_items=3))
    seen = []
    with pytest.raises(TransientBackendError):
        for info in faulty.list("data"):
            seen.append(info.name)
    assert len(seen) == 3
    assert len(list(faulty.list("data"))) == 5


def test_custom_errors_and_clear(memory: MemoryBackend) -> None:
    faulty = FaultyBackend(memory)
    forbidden = BackendError("AccessDenied (HTTP 403)")
    faulty.add("stat", Fault(error=forbidden, times=None))
    faulty.add("create", Fault(error=lambda method, name: OSError(f"{method} broke")))
    with pytest.raises(BackendError) as caught:
        faulty.stat(NAME)
    assert caught.value is forbidden
    with pytest.raises(OSError, match="create broke"):
        faulty.create()
    faulty.clear()
    with pytest.raises(ObjectNotFound):
        faulty.stat(NAME)
    with pytest.raises(ValueError):
        faulty.add("rename", Fault())


# -- what the faults are for ------------------------------------------------------------------


@pytest.mark.parametrize("damage", [flip_last_byte, truncate_reads])
def test_repository_notices_damaged_reads(memory: MemoryBackend, damage: Any) -> None:
    populate(new_repo(memory), n_files=2)
    faulty = FaultyBackend(memory)
    faulty.add("read", damage(prefix="data/"))
    repo = open_repository(faulty, PASSWORD)
    repo.load_index()
    pack_ids = _pack_ids(memory)
    assert pack_ids
    for pack_id in pack_ids:
        with pytest.raises(IntegrityError):
            repo.verify_pack(pack_id)
    assert len(faulty.injected) == len(pack_ids)


def _pack_ids(backend: MemoryBackend) -> list[bytes]:
    return [bytes.fromhex(o.name.rsplit("/", 1)[1]) for o in backend.list("data")]


def test_backup_completes_through_ten_percent_faults(memory: MemoryBackend) -> None:
    faulty = FaultyBackend(memory, seed=7)
    faulty.add("*", Fault(probability=0.1, times=None))
    faulty.add("write", Fault(probability=0.1, times=None, lost_reply=True))
    backend = AccountingBackend(RetryBackend(faulty, sleep=lambda s: None))
    repo = new_repo(backend)
    snapshot_id, files = populate(repo, n_files=20, seed=3)
    assert faulty.injected, "no fault was injected: the test proves nothing"
    # Read it all back through a clean backend.
    clean = open_repository(memory, PASSWORD)
    clean.load_index()
    assert clean.load_snapshot(snapshot_id)
    for pack_id in _pack_ids(memory):
        clean.verify_pack(pack_id)
    assert len(files) == 20
    assert len(_pack_ids(memory)) >= 2
