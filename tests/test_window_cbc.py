"""The window chunker's AES-128-CBC: the system libcrypto's (through ctypes) gives the
bytes ``cryptography``'s does, on every buffer kind the chunker reads, call after call
(the chain carried over), and the chunker falls back to ``cryptography`` without it."""

from __future__ import annotations

import mmap
import os
import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cas.chunking import cbc
from cas.chunking.chunker import ChunkerParams, WindowChunker


def _reference(key: bytes, calls: list[bytes]) -> list[bytes]:
    dec = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()
    return [dec.update(part) for part in calls]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "mmap"])
def test_libcrypto_cbc_matches_cryptography_across_calls(kind: str) -> None:
    assert cbc.uses_libcrypto()
    rng = random.Random(kind)
    key = rng.randbytes(16)
    data = rng.randbytes(1 << 18)
    buf: bytes | bytearray | mmap.mmap
    if kind == "bytes":
        buf = data
    elif kind == "bytearray":
        buf = bytearray(data)
    else:
        buf = mmap.mmap(-1, len(data))
        buf[:] = data
    spans = []
    for _ in range(40):
        n = 16 * rng.randrange(0, 4100)
        at = rng.randrange(0, len(data) - n + 1)
        spans.append((at, n))
    want = _reference(key, [data[at : at + n] for at, n in spans])
    for prefer in (True, False):
        dec = cbc.cbc_decryptor(key, prefer)
        assert isinstance(dec, cbc._LibcryptoCbc) == prefer
        out = bytearray(65600)
        for (at, n), expect in zip(spans, want, strict=True):
            assert dec.decrypt_into(buf, at, n, out) == n
            assert bytes(out[:n]) == expect
    if isinstance(buf, mmap.mmap):
        buf.close()  # no export left behind


def test_out_of_bounds_and_partial_blocks_are_refused() -> None:
    dec = cbc.cbc_decryptor(bytes(16))
    out = bytearray(64)
    for at, n in ((0, 15), (40, 32), (-16, 16), (0, 80)):
        with pytest.raises(ValueError):
            dec.decrypt_into(bytes(64), at, n, out)


def test_the_chunker_cuts_the_same_without_libcrypto(monkeypatch: pytest.MonkeyPatch) -> None:
    params = ChunkerParams(4096, 16384, 65536)
    key = os.urandom(16)
    data = random.Random(7).randbytes(3 << 20)
    with_lib = WindowChunker(key, params).cut_points(data)
    monkeypatch.setattr(cbc, "_LIB", [None])  # as where no libcrypto loads
    chunker = WindowChunker(key, params)
    assert isinstance(chunker._aes, cbc._CryptographyCbc)
    assert chunker.cut_points(data) == with_lib
    assert len(with_lib) > 10
