"""Blobs sealed in place (``seal_blob`` through ``SecretKey.seal_parts``) are the bytes
the joined payload sealed by ``seal`` gave: stored, compressed and padded payloads."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from cas import crypto
from cas.crypto import BlobType, MasterKeys
from cas.format import compress
from cas.format import pack as packfmt

KEYS = MasterKeys(bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96)), bytes(32))
NONCE = bytes(range(100, 124))

PLAINTEXTS = {
    "empty": b"",
    "tiny": b"abc",
    "text": b"the same line again and again\n" * 5000,  # compressed
    "random": os.urandom(300_000),  # stored: the probe finds it incompressible
    "small random": os.urandom(1000),  # stored: zstd does not shrink it
    "large text": bytes(range(256)) * 20_000,  # compressed, over the probe's minimum
}


def _joined(plaintext: bytes, level: int | None, padding: str | None) -> bytes:
    """What ``seal_blob`` sealed before: the payload joined, padded, then sealed."""
    payload = packfmt.pad_payload(compress.encode_payload(plaintext, level), padding)
    blob_id = KEYS.blob_id(BlobType.DATA, plaintext)
    return bytes(KEYS.data.seal(payload, crypto.blob_ad(BlobType.DATA, blob_id), NONCE))


@pytest.mark.parametrize("name", sorted(PLAINTEXTS))
@pytest.mark.parametrize("level", [None, compress.DEFAULT_LEVEL])
@pytest.mark.parametrize("padding", [None, "padme"])
def test_sealed_in_place_gives_the_bytes_of_the_joined_payload(
    name: str, level: int | None, padding: str | None
) -> None:
    plaintext = PLAINTEXTS[name]
    blob_id = KEYS.blob_id(BlobType.DATA, plaintext)
    for given in (plaintext, memoryview(plaintext), bytearray(plaintext)):
        sealed = packfmt.seal_blob(KEYS, BlobType.DATA, blob_id, given, level, NONCE, padding)
        assert bytes(sealed) == _joined(plaintext, level, padding)
    opened = packfmt.open_blob(KEYS, BlobType.DATA, blob_id, bytes(sealed), len(plaintext))
    assert opened == plaintext


def test_both_payload_kinds_are_covered() -> None:
    flags = {
        name: compress.encode_parts(p, compress.DEFAULT_LEVEL)[0] for name, p in PLAINTEXTS.items()
    }
    assert flags["random"] == flags["small random"] == compress.STORED
    assert flags["text"] == flags["large text"] == compress.ZSTD


def test_a_stored_body_is_the_plaintext_itself() -> None:
    data = PLAINTEXTS["random"]
    flag, body = compress.encode_parts(data, compress.DEFAULT_LEVEL)
    assert flag == compress.STORED and body is data  # no copy before sealing


def test_seal_parts_is_seal_buffer_of_the_joined_payload() -> None:
    key = bytes(range(32))
    for head, body, zeros in ((b"\x00", b"", 0), (b"\x81\x05\x00\x00\x00", b"hello", 17)):
        got = crypto.seal_parts(key, head, body, zeros, b"ad", NONCE)
        assert got == crypto.seal_buffer(key, head + body + bytes(zeros), b"ad", NONCE)
    with pytest.raises(ValueError):
        crypto.seal_parts(key, b"\x00", b"", -1, b"ad", NONCE)


def test_a_write_only_key_still_seals_the_joined_payload() -> None:
    """A sealer other than a secret key (scheme 1) is given the payload joined."""
    wo = KEYS.write_only(b"config", bytes(32))
    plaintext = PLAINTEXTS["text"]
    blob_id = wo.blob_id(BlobType.DATA, plaintext)
    sealed = packfmt.seal_blob(wo, BlobType.DATA, blob_id, plaintext, padding="padme")
    assert sealed[0] == crypto.SCHEME_PUBLIC
    opened = packfmt.open_blob(KEYS, BlobType.DATA, blob_id, bytes(sealed), len(plaintext))
    assert opened == plaintext


def test_a_stored_blob_is_sealed_without_a_second_copy() -> None:
    """Sealing a stored 4 MiB blob allocates the sealed blob and not much more (the
    joined payload, and a bytearray's copy of a non-bytearray slice value, were each
    another 4 MiB)."""
    data = os.urandom(4 << 20)
    blob_id = KEYS.blob_id(BlobType.DATA, data)
    for padding in (None, "padme"):
        tracemalloc.start()
        try:
            sealed = packfmt.seal_blob(KEYS, BlobType.DATA, blob_id, data, padding=padding)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert sealed[1 + crypto.NONCE_SIZE :] != data  # encrypted
        assert len(sealed) <= peak < len(sealed) + (1 << 20)
