"""Edges of cas/crypto that known-answer vectors cannot reach (mutation testing, issue 20).

The chunker permutation's rejection rule (spec §7.1) matters only for XOF words
within a few units of 2**32, which no real key's first draws come near: here
the XOF is replaced by words placed on each side of every limit, and cas's
permutation is compared with the spec's text as written in tests/test_vectors.py.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import pytest

from cas import crypto
from cas.crypto import primitives
from cas.errors import FormatError
from tests import test_vectors


def _edge_words() -> bytes:
    """For each n = 256 .. 2: the smallest rejected word, then the largest accepted."""
    words: list[int] = []
    for n in range(256, 1, -1):
        limit = 2**32 - (2**32 % n)
        words += [limit, limit - 1] if limit < 2**32 else [2**32 - 1]
    words += [0] * (2048 - len(words))
    return struct.pack("<2048I", *words)


class _FixedXof:
    """Stands in for the ``blake3`` module: every keyed hash gives ``stream``."""

    def __init__(self, stream: bytes) -> None:
        self.stream = stream

    def blake3(self, *args: Any, **kwargs: Any) -> _FixedXof:
        return self

    def digest(self, length: int = 32) -> bytes:
        return self.stream[:length]


def test_the_permutation_rejects_exactly_the_words_the_spec_rejects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FixedXof(_edge_words())
    monkeypatch.setattr(primitives, "blake3", fake)
    monkeypatch.setattr(test_vectors, "blake3", fake)
    perm = crypto.chunker_permutation(bytes(32))
    assert perm == test_vectors.spec_permutation(bytes(32))
    # Every accepted word is n - 1 modulo n: each draw picks its own place.  A rule
    # that accepted a rejected word, or rejected an accepted one, moves something.
    assert perm == bytes(range(256))


def test_new_key_files_get_the_default_costs_the_spec_names() -> None:
    """§4.2: cas's default is opslimit 16 with memlimit 32 MiB."""
    params = crypto.KdfParams.new()
    assert (params.opslimit, params.memlimit) == (16, 32 << 20)
    assert len(params.salt) == 16 and not params.test_only


def test_writers_refuse_one_mib_pass_below_the_minimum_cost_and_name_the_minimum() -> None:
    crypto.check_writer_costs(crypto.KdfParams.new(1, 512 << 20))
    with pytest.raises(crypto.WeakKdf) as info:
        crypto.check_writer_costs(crypto.KdfParams.new(1, 511 << 20))
    message = str(info.value)
    assert "at least 32 MiB and passes x memory of 512 MiB" in message, message
    assert "the default is 16 passes over 32 MiB" in message, message


@pytest.mark.parametrize("member", ["data", "index", "id", "chunker"])
@pytest.mark.parametrize("size", [31, 33])
def test_master_key_material_with_a_key_of_the_wrong_length_is_refused(
    member: str, size: int
) -> None:
    good = crypto.MasterKeys.generate()
    doc = msgpack.unpackb(good.encode())
    assert crypto.MasterKeys.decode(msgpack.packb(doc)) == good
    doc[member] = bytes(size)
    with pytest.raises(FormatError, match="bad key length"):
        crypto.MasterKeys.decode(msgpack.packb(doc))


def test_master_keys_are_immutable() -> None:
    keys = crypto.MasterKeys.generate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.data_key = bytes(32)  # type: ignore[misc]


def test_keys_share_ids_by_value_and_only_with_both_keys_equal() -> None:
    keys = crypto.MasterKeys.generate()
    again = crypto.MasterKeys.decode(keys.encode())  # equal bytes, other objects
    assert again.shares_ids_with(keys) and again.ids_only().shares_ids_with(keys)
    for other in (
        crypto.MasterKeys.generate().with_ids_of(keys),  # the same IDs, other secrets
        dataclasses.replace(keys, chunker_key=bytes(32)),
        dataclasses.replace(keys, chunker_key=b"\xff" * 32),
        dataclasses.replace(keys, id_key=bytes(32)),
    ):
        same = other.id_key == keys.id_key and other.chunker_key == keys.chunker_key
        assert keys.ids_only().shares_ids_with(other) is same
        assert other.ids_only().shares_ids_with(keys) is same
