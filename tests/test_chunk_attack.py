"""The chosen-file attack of spec/format.md §7.5, end to end (tools/chunk_attack.py).

A repository made with today's algorithm (``window-aes128``) gives the attacker
nothing; one made with the older ``fastcdc-2016-permuted`` (the control) gives
away its permutation, after which the chunk lengths of a known file are
predicted exactly.  Real ``cas init`` and ``cas backup --compression off`` into a
local repository; the attacker sees only the lengths of the ranged reads the
client makes (a logging backend) and its own file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support import sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import chunk_attack


@pytest.fixture(autouse=True)
def _sweep_password() -> None:
    """tools/chunk_attack.py runs cas with its own password: the teardown sweep
    (tests/support/sweep.py) opens the repositories with it."""
    sweep.knows_password(chunk_attack.PASSWORD)


def test_the_attack_recovers_the_permutation_of_the_older_chunker(tmp_path: Path) -> None:
    out = chunk_attack.run("fastcdc-2016-permuted", tmp_path)
    assert out.recovery.permutation is not None and out.recovery.stage == 256
    # the known file, never seen by the attacker's chunking before: every length
    assert out.known_chunks > 50
    assert out.exact_lengths and out.cut_match == 1.0


def test_the_attack_recovers_nothing_against_window_aes128(tmp_path: Path) -> None:
    out = chunk_attack.run("window-aes128", tmp_path)
    assert out.recovery.permutation is None
    assert out.recovery.stage == 0  # not even the first two byte values
    assert out.recovery.hypotheses_tested == 65_280  # every pair tried, none fits
    assert out.known_chunks > 50 and not out.exact_lengths
    # chance: a guessed cut lands on one of ~100 observed ones in 1 MiB about 1% of the
    # time; an attacker who learnt anything would do far better
    assert out.cut_match <= 0.1


def test_the_provider_view_is_lengths_plus_a_constant(tmp_path: Path) -> None:
    """The log the attack works from: one ranged read per blob, sealed length = chunk
    length + the sealing overhead (§5, §8), summing to the file's size (a version 1
    repository: version 2 reads whole 64 KiB units, §9.6, checked at the end)."""
    repo = tmp_path / "repo"
    chunk_attack.cas("init", "-r", repo, "--chunk-min", 2048, "--chunk-avg", 8192,
                     "--chunk-max", 32768, "--format-version", 1)  # fmt: skip
    f = tmp_path / "src" / "f.bin"
    f.parent.mkdir()
    f.write_bytes(bytes(range(256)) * 400)
    lengths = chunk_attack.logged_read_lengths(repo, chunk_attack.back_up(repo, f), "f.bin")
    overhead, rest = divmod(sum(lengths) - 256 * 400, len(lengths))
    assert len(lengths) > 3 and rest == 0 and 0 < overhead < 100
    # the same file in a version 2 repository: every read is a whole 64 KiB unit or runs
    # to the pack's end, whatever the chunk: no read has a chunk's length
    v2 = tmp_path / "v2"
    chunk_attack.cas("init", "-r", v2, "--chunk-min", 2048, "--chunk-avg", 8192,
                     "--chunk-max", 32768)  # fmt: skip
    v2_lengths = chunk_attack.logged_read_lengths(v2, chunk_attack.back_up(v2, f), "f.bin")
    # (how many reads there are is not the point: a unit already read may serve the next
    # blob, which varies with where the blobs were placed; what each read shows is)
    assert v2_lengths and len(set(v2_lengths)) <= 2
    assert not set(v2_lengths) & set(lengths)
