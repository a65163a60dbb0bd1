"""Cryptographic primitives: key derivation, authenticated encryption, keyed IDs
(spec/format.md §4-§7).

Blobs and documents are sealed with XChaCha20-Poly1305 (libsodium via
PyNaCl); blob IDs and whole-file digests are keyed BLAKE3, so neither leaks
what the plaintext is to someone without the keys.  These functions take raw
key bytes; the rest of cas holds keys as objects (:mod:`cas.crypto.keys`).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum

import blake3
import nacl.bindings as sodium
import nacl.exceptions
import nacl.pwhash
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from cas.errors import FormatError, IntegrityError, UnsupportedVersion

KEY_SIZE = 32
NONCE_SIZE = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_SIZE = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
ID_SIZE = 32

SCHEME_XCHACHA = 0  # the only scheme of format v1; the byte leaves room for others
SEAL_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE


class BlobType(IntEnum):
    """What a blob holds; part of its ID's hash input and of its AEAD associated data."""

    DATA = 0
    TREE = 1


# Domain byte hashed before the file content for whole-file digests.
DIGEST_DOMAIN = b"\x02"


DEFAULT_OPSLIMIT = 16
DEFAULT_MEMLIMIT = 32 << 20


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters and salt, recorded in each key file."""

    salt: bytes
    opslimit: int
    memlimit: int

    @classmethod
    def new(cls, opslimit: int | None = None, memlimit: int | None = None) -> KdfParams:
        """Fresh random salt with the given costs (default: 16 passes over 32 MiB).

        32 MiB is the memory of restic's scrypt parameters (N = 2^15, r = 8:
        128 * r * N bytes), so deriving the key adds no more to a command's peak
        memory than restic's does (it is the peak of short commands); 16 passes
        keep the time-area cost of a guess where 8 passes over 64 MiB put it
        (512 MiB-passes; about 0.15 s on this project's 2-core machine).
        """
        return cls(
            salt=os.urandom(nacl.pwhash.argon2id.SALTBYTES),
            opslimit=opslimit or DEFAULT_OPSLIMIT,
            memlimit=memlimit or DEFAULT_MEMLIMIT,
        )


# Cost ceilings a key file may ask for; a hostile key file must not make us
# allocate unbounded memory or spin for hours before failing.
MAX_OPSLIMIT = 64
MAX_MEMLIMIT = 4 << 30


def derive_key(password: bytes, params: KdfParams) -> bytes:
    """Argon2id(password, salt) -> 32-byte key-encryption key."""
    if not (1 <= params.opslimit <= MAX_OPSLIMIT and 8192 <= params.memlimit <= MAX_MEMLIMIT):
        raise FormatError(what="key file", detail="KDF cost parameters out of range")
    if len(params.salt) != nacl.pwhash.argon2id.SALTBYTES:
        raise FormatError(what="key file", detail="bad salt length")
    return bytes(
        nacl.pwhash.argon2id.kdf(
            KEY_SIZE, password, params.salt, opslimit=params.opslimit, memlimit=params.memlimit
        )
    )


def seal(key: bytes, plaintext: bytes, ad: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt and authenticate: scheme byte | 24-byte nonce | ciphertext | 16-byte tag.

    ``nonce`` is only for test vectors; real use draws a random one (192-bit
    nonces make random choice safe for any number of messages).
    """
    return bytes(seal_buffer(key, plaintext, ad, nonce))


def seal_buffer(
    key: bytes, plaintext: bytes | bytearray | memoryview, ad: bytes, nonce: bytes | None = None
) -> bytearray:
    """``seal`` into a fresh bytearray, for blobs on their way into a pack.

    libsodium writes the ciphertext straight into the result (through
    PyNaCl's own cffi handle): PyNaCl's wrapper would zero a buffer and copy
    it out, and framing would copy it again: three passes over every byte.
    """
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError("bad key or nonce size")
    n = len(plaintext)
    out = bytearray(1 + NONCE_SIZE + n + TAG_SIZE)
    out[0] = SCHEME_XCHACHA
    out[1 : 1 + NONCE_SIZE] = nonce
    dest = _ffi.from_buffer(out)
    rc = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        dest + 1 + NONCE_SIZE,
        _ffi.NULL,
        _ffi.from_buffer(plaintext),
        n,
        ad,
        len(ad),
        _ffi.NULL,
        nonce,
        key,
    )
    if rc != 0:  # pragma: no cover - libsodium does not fail here
        raise nacl.exceptions.CryptoError("encryption failed")
    return out


def open_sealed(key: bytes, sealed: bytes | bytearray | memoryview, ad: bytes, what: str) -> bytes:
    """Verify and decrypt the output of ``seal``; IntegrityError if anything was altered.

    libsodium decrypts in place into one buffer (PyNaCl's wrapper would
    zero, fill and copy one, after a copy of the input).
    """
    if len(sealed) < SEAL_OVERHEAD:
        raise IntegrityError(what=what, detail="too short to be sealed data")
    if sealed[0] != SCHEME_XCHACHA:
        raise UnsupportedVersion(what=what, version=f"(scheme {sealed[0]})", supported=1)
    if len(key) != KEY_SIZE:
        raise ValueError("bad key size")
    src = _ffi.from_buffer(sealed)
    clen = len(sealed) - 1 - NONCE_SIZE
    out = bytearray(clen - TAG_SIZE)
    rc = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        _ffi.from_buffer(out),
        _ffi.NULL,
        _ffi.NULL,
        src + 1 + NONCE_SIZE,
        clen,
        ad,
        len(ad),
        src + 1,
        key,
    )
    if rc != 0:
        raise IntegrityError(what=what, detail="authentication failed (wrong key or altered data)")
    return bytes(out)


def blob_ad(blob_type: BlobType, blob_id: bytes) -> bytes:
    """Associated data binding a sealed blob to its type and ID."""
    return b"cas.blob.v1" + bytes((blob_type,)) + blob_id


def blob_id(id_key: bytes, blob_type: BlobType, plaintext: bytes | memoryview) -> bytes:
    """Keyed BLAKE3 of the type byte followed by the plaintext: the blob's 32-byte ID."""
    h = blake3.blake3(bytes((blob_type,)), key=id_key)
    h.update(plaintext)
    return bytes(h.digest())


class FileDigest:
    """Incremental keyed whole-file digest (domain byte 0x02, then the content)."""

    def __init__(self, id_key: bytes) -> None:
        self._h = blake3.blake3(DIGEST_DOMAIN, key=id_key)

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next part of the file content."""
        self._h.update(data)

    def digest(self) -> bytes:
        """The 32-byte digest of everything fed so far."""
        return bytes(self._h.digest())


def chunker_window_key(chunker_key: bytes) -> bytes:
    """The 16-byte AES-128 key of the ``window-aes128`` chunker (spec/format.md §7.6).

    The first 16 bytes of the BLAKE3 XOF keyed with chunker_key over
    ``cas.chunker.window-aes128.v1``: independent of the permutation, which is
    drawn from the same key under another context string.
    """
    return bytes(blake3.blake3(b"cas.chunker.window-aes128.v1", key=chunker_key).digest(length=16))


def chunker_permutation(chunker_key: bytes) -> bytes:
    """The secret byte permutation applied to input before cut-point search.

    Fisher-Yates over 0..255 driven by the BLAKE3 XOF keyed with chunker_key
    over the context string, drawing little-endian u32 values and rejecting
    those that would bias ``r % (i + 1)``.  Specified in spec/format.md §7.
    """
    stream = blake3.blake3(b"cas.chunker.permutation.v1", key=chunker_key).digest(length=8192)
    words = struct.unpack("<2048I", stream)
    perm = list(range(256))
    w = 0
    for i in range(255, 0, -1):
        n = i + 1
        limit = (1 << 32) - ((1 << 32) % n)
        while True:
            r = words[w]
            w += 1
            if r < limit:
                break
        j = r % n
        perm[i], perm[j] = perm[j], perm[i]
    return bytes(perm)
