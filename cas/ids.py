"""Typed identifiers.

Every object in a repository is named by 32 bytes shown as 64 lowercase hex
digits.  The NewTypes keep a pack ID from being passed where a blob ID is
expected without costing anything at run time.
"""

from __future__ import annotations

from typing import NewType, Protocol

BlobId = NewType("BlobId", bytes)  # keyed BLAKE3 of a blob's plaintext
PackId = NewType("PackId", bytes)  # SHA-256 of a pack file's bytes
FileId = NewType("FileId", bytes)  # SHA-256 of an index, snapshot, key or lock file

ID_LEN = 32


class Sha256(Protocol):
    """What cas uses of a SHA-256 hash object (``hashlib``'s)."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


def new_sha256(data: bytes | bytearray | memoryview = b"") -> Sha256:
    """A SHA-256 hash object fed ``data``: ``hashlib``'s, in every process (one policy).

    ``hashlib`` is imported here, on first use, not with this module: it maps OpenSSL's
    libcrypto (3.5 MiB resident in each process that loads it), and a restore writer,
    which reads blobs and never a whole stored file, does not need it.  A backup
    worker maps that libcrypto anyway: its window chunker's AES is libcrypto's
    (:mod:`cas.chunking.cbc`), so the pack names cost no second OpenSSL.
    """
    import hashlib  # on first use (see above)

    return hashlib.sha256(data)


SMALL_STORED = 8192  # up to this size storage_id hashes with libsodium, not OpenSSL


def storage_id(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 of stored bytes: the name of every file except ``config``.

    Up to ``SMALL_STORED`` bytes (key files, locks, the config, a cache's location)
    with libsodium's SHA-256, which every process has loaded: opening a repository then
    maps no OpenSSL before its key derivation, whose 32 MiB come on top of what the
    process holds.  Larger data with ``new_sha256`` (an OpenSSL: faster there)."""
    if len(data) <= SMALL_STORED:
        from nacl.bindings import crypto_hash_sha256

        return crypto_hash_sha256(bytes(data))
    return new_sha256(data).digest()


def to_hex(id_: bytes) -> str:
    """64 lowercase hex digits."""
    return id_.hex()


def short(id_: bytes) -> str:
    """The 8-digit prefix used in human output."""
    return id_.hex()[:8]


def parse_hex(text: str) -> bytes:
    """Parse a full 64-digit hex ID; ValueError otherwise."""
    raw = bytes.fromhex(text)
    if len(raw) != ID_LEN:
        raise ValueError(f"expected {2 * ID_LEN} hex digits, got {len(text)}")
    return raw
