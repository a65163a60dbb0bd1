"""BlobStream: planned blobs come back exact, in few requests, within a budget, errors per blob."""

from __future__ import annotations

import random

import pytest

from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.errors import CasError
from cas.repo import Repository, layout
from cas.restore.blobstream import BlobStream
from tests.support.repos import new_repo


def small_blobs(repo: Repository, n: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        data = rnd.randbytes(rnd.randrange(100, 20_000)) + b"%d" % i
        bid, _ = repo.save_blob(BlobType.DATA, data)
        out.append((bid, data))
    repo.flush()
    return out


@pytest.fixture
def repo() -> Repository:
    return new_repo(MemoryBackend(), pack_size=1 << 20)


def test_small_blobs_in_plan_order_come_back_exact_in_few_requests(repo: Repository) -> None:
    blobs = small_blobs(repo, 400)
    packs = {repo.locate(b).pack_id for b, _ in blobs}
    stream = BlobStream(repo, threads=3)
    stream.plan((b, len(d)) for b, d in blobs)
    for b, d in blobs:
        assert stream.get(b, len(d)) == d
    stream.close()
    # Neighbours in a pack share a request (1 MiB packs, 8 MiB requests): about one per pack.
    assert len(packs) <= stream.requests <= 2 * len(packs)


def test_repeated_and_unplanned_blobs(repo: Repository) -> None:
    blobs = small_blobs(repo, 30)
    stream = BlobStream(repo, threads=2)
    order = [blobs[0], blobs[1], blobs[0], blobs[2], blobs[1]]
    stream.plan((b, len(d)) for b, d in order)
    for b, d in order:
        assert stream.get(b, len(d)) == d
    b, d = blobs[20]  # never planned: loaded alone
    assert stream.get(b, len(d)) == d
    stream.close()


def test_discarded_blobs_are_not_kept(repo: Repository) -> None:
    blobs = small_blobs(repo, 50)
    stream = BlobStream(repo, threads=2, budget=1)
    stream.plan((b, len(d)) for b, d in blobs)
    stream.discard((b, len(d)) for b, d in blobs[10:40])
    for b, d in blobs[:10] + blobs[40:]:
        assert stream.get(b, len(d)) == d
    assert not stream._ahead and not stream._uses
    stream.close()


def test_budget_bounds_what_is_loaded_ahead(repo: Repository) -> None:
    blobs = small_blobs(repo, 200)
    budget = 50_000
    stream = BlobStream(repo, threads=2, budget=budget, max_request=40_000)
    stream.plan((b, len(d)) for b, d in blobs)
    for b, d in blobs:
        # At most the budget plus one request's worth is ever ahead of the consumer.
        assert stream._ahead_bytes <= budget + 40_000 + 20_100
        assert stream.get(b, len(d)) == d
    stream.close()


def test_a_blob_is_loaded_ahead_only_if_it_fits_beside_what_is_held(
    repo: Repository,
) -> None:
    """Not merely while what is held is under the budget: a restore writer otherwise
    held up to a whole large blob more (``big``: writers of 39-45 MiB, 37-40 after)."""
    rnd = random.Random(7)
    sizes = [10_000, 10_000, 45_000, 10_000]
    blobs = []
    for size in sizes:
        data = rnd.randbytes(size)
        blobs.append((repo.save_blob(BlobType.DATA, data)[0], data))
    repo.flush()
    budget = 50_000
    stream = BlobStream(repo, threads=0, budget=budget, max_request=30_000)
    stream.plan((b, len(d)) for b, d in blobs)
    assert 0 < stream._ahead_bytes <= budget  # the 45,000-byte blob waits
    for b, d in blobs:  # and comes when asked for
        assert stream.get(b, len(d)) == d
    stream.close()


@pytest.mark.parametrize("threads", [0, 2])
def test_a_blob_larger_than_the_budget_is_not_loaded_while_another_is_out(
    repo: Repository, threads: int
) -> None:
    """The blob ``get`` handed out last is being written until the next ``get``: it counts
    against the budget, so blobs each larger than the budget are held one at a time (a
    writer holding two decoded 5 MiB blobs had its peak raised by one), while small ones
    still load ahead beside it."""
    rnd = random.Random(5)
    big = [rnd.randbytes(60_000) for _ in range(4)]
    small = [rnd.randbytes(500) for _ in range(20)]
    order = [*big[:2], *small, *big[2:]]
    ids = [repo.save_blob(BlobType.DATA, d)[0] for d in order]
    repo.flush()
    stream = BlobStream(repo, threads=threads, budget=50_000, max_request=4096)
    stream.plan((b, len(d)) for b, d in zip(ids, order, strict=True))
    for i, (b, d) in enumerate(zip(ids, order, strict=True)):
        assert stream.get(b, len(d)) == d
        if len(d) > 50_000:  # out: nothing more loaded ahead
            assert stream._ahead_bytes == 0
        elif i + 1 < len(order) and len(order[i + 1]) < 50_000:
            assert stream._ahead_bytes > 0  # small ones still come ahead
    stream.close()


def test_damage_costs_only_the_blobs_it_touches(repo: Repository) -> None:
    blobs = small_blobs(repo, 60)
    backend = repo.backend
    victim = blobs[30][0]
    loc = repo.locate(victim)
    name = layout.pack_name(loc.pack_id)
    raw = bytearray(backend.read(name))
    raw[loc.offset + loc.length // 2] ^= 1
    backend.delete(name)
    backend.write(name, bytes(raw))
    stream = BlobStream(repo, threads=2)
    stream.plan((b, len(d)) for b, d in blobs)
    for b, d in blobs:
        if b == victim:
            with pytest.raises(CasError):
                stream.get(b, len(d))
        else:
            assert stream.get(b, len(d)) == d
    stream.close()


def test_truncated_pack_falls_back_to_single_reads(repo: Repository) -> None:
    blobs = small_blobs(repo, 60)
    backend = repo.backend
    # the blob at the start of a pack (blobs go to packs at random, spec §9.5)
    head = next(b for b, _ in blobs if repo.locate(b).offset == 0)
    first = repo.locate(head)
    name = layout.pack_name(first.pack_id)
    raw = backend.read(name)
    cut = first.offset + first.length + 10  # the first blob survives, the rest of the pack not
    backend.delete(name)
    backend.write(name, raw[:cut])
    stream = BlobStream(repo, threads=2)
    stream.plan((b, len(d)) for b, d in blobs)
    ok = 0
    for b, d in blobs:
        if repo.locate(b).pack_id == first.pack_id and b != head:
            with pytest.raises(CasError):
                stream.get(b, len(d))
        else:
            assert stream.get(b, len(d)) == d
            ok += 1
    stream.close()
    assert ok >= 1


def test_unknown_blob_raises_for_that_blob_only(repo: Repository) -> None:
    blobs = small_blobs(repo, 5)
    unknown = bytes(32)
    stream = BlobStream(repo, threads=2)
    plan = [(blobs[0][0], len(blobs[0][1])), (unknown, 10), (blobs[1][0], len(blobs[1][1]))]
    stream.plan(plan)
    assert stream.get(*plan[0]) == blobs[0][1]
    with pytest.raises(CasError):
        stream.get(unknown, 10)
    assert stream.get(*plan[2]) == blobs[1][1]
    stream.close()
