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
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import blake3
import nacl.bindings as sodium
import nacl.exceptions
import nacl.pwhash
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from cas.errors import FormatError, IntegrityError, UnsupportedVersion, UsageError

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
    """Argon2id cost parameters and salt, recorded in each key file.

    ``test_only`` marks costs below the writers' minimum (spec §4.2) that a
    test asked for explicitly (:meth:`for_tests`); writers refuse such costs
    otherwise.  It is never stored.
    """

    salt: bytes
    opslimit: int
    memlimit: int
    test_only: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def for_tests(cls, opslimit: int, memlimit: int) -> KdfParams:
        """Fresh salt with costs that may be below the minimum: for test suites only,
        where thousands of key files are made (the CLI's ``CAS_TEST_WEAK_KDF``)."""
        return cls(os.urandom(nacl.pwhash.argon2id.SALTBYTES), opslimit, memlimit, True)

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


# Cost ceilings a key file may ask for (spec §4.2); a hostile key file must not
# make us allocate unbounded memory or spin for minutes before failing: 16 passes
# over 1 GiB is about 10 s and 1 GiB at most per key file tried.
MAX_OPSLIMIT = 16
MAX_MEMLIMIT = 1 << 30
# The least a writer may use (spec §4.2): 32 MiB and 512 MiB-passes (the default).
MIN_MEMLIMIT = 32 << 20
MIN_COST = 512 << 20


class WeakKdf(UsageError):
    """KDF costs {detail}"""


def check_writer_costs(params: KdfParams) -> None:
    """Refuse costs a writer must not use: below the minimum of spec §4.2 (unless the
    params were made by :meth:`KdfParams.for_tests`) or above what readers accept."""
    ops, mem = params.opslimit, params.memlimit
    if not (1 <= ops <= MAX_OPSLIMIT and 8192 <= mem <= MAX_MEMLIMIT):
        raise WeakKdf(
            detail=f"out of range: at most {MAX_OPSLIMIT} passes over {MAX_MEMLIMIT >> 20} MiB"
        )
    if params.test_only:
        return
    if mem < MIN_MEMLIMIT or ops * mem < MIN_COST:
        raise WeakKdf(
            detail=f"too weak ({ops} passes over {mem >> 10} KiB): a key file needs at least "
            f"{MIN_MEMLIMIT >> 20} MiB and passes x memory of {MIN_COST >> 20} MiB "
            f"(the default is {DEFAULT_OPSLIMIT} passes over {DEFAULT_MEMLIMIT >> 20} MiB)"
        )


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


KEY_CHECK_SIZE = 16


def key_check(kek: bytes) -> bytes:
    """The password check value of a version 2 key file (spec §4.1): the first 16 bytes
    of BLAKE3 keyed with the key-encryption key over ``cas.key.check.v2``.  It tells a
    wrong password from a key file whose members were altered."""
    return bytes(blake3.blake3(b"cas.key.check.v2", key=kek).digest(length=KEY_CHECK_SIZE))


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
    nonce = _checked_nonce(key, nonce)
    n = len(plaintext)
    out = _sealed_frame(n, nonce)
    _encrypt_into(out, _ffi.from_buffer(plaintext), n, ad, nonce, key)
    return out


def _checked_nonce(key: bytes, nonce: bytes | None) -> bytes:
    """``nonce``, or a random one; ValueError for a key or nonce of the wrong size."""
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError("bad key or nonce size")
    return nonce


def _sealed_frame(n: int, nonce: bytes) -> bytearray:
    """A zeroed sealed buffer for ``n`` plaintext bytes, scheme byte and nonce in place."""
    out = bytearray(1 + NONCE_SIZE + n + TAG_SIZE)
    out[0] = SCHEME_XCHACHA
    out[1 : 1 + NONCE_SIZE] = nonce
    return out


def _encrypt_into(out: bytearray, source: Any, n: int, ad: bytes, nonce: bytes, key: bytes) -> None:
    """libsodium encrypts ``n`` bytes at ``source`` (a cffi pointer, which may point into
    ``out`` itself) into ``out`` after its scheme byte and nonce, tag last."""
    rc = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        _ffi.from_buffer(out) + 1 + NONCE_SIZE,
        _ffi.NULL,
        source,
        n,
        ad,
        len(ad),
        _ffi.NULL,
        nonce,
        key,
    )
    if rc != 0:  # pragma: no cover - libsodium does not fail here
        raise nacl.exceptions.CryptoError("encryption failed")


def seal_parts(
    key: bytes,
    head: bytes,
    body: bytes | bytearray | memoryview,
    zeros: int,
    ad: bytes,
    nonce: bytes | None = None,
) -> bytearray:
    """``seal_buffer(key, head + body + bytes(zeros), ad, nonce)`` without that payload
    ever being joined: head and body are copied into the result, where the zeros already
    are, and libsodium encrypts them there in place (its AEAD functions allow the
    message and ciphertext to be the same buffer).  The same bytes as ``seal_buffer``;
    one buffer of the blob's size instead of two (payload and sealed) while it is sealed.
    """
    nonce = _checked_nonce(key, nonce)
    if zeros < 0:
        raise ValueError("negative padding")
    start = 1 + NONCE_SIZE
    mid = start + len(head)
    n = len(head) + len(body) + zeros
    out = _sealed_frame(n, nonce)
    with memoryview(out) as view:
        # through a view: a bytearray's own slice assignment first copies any value
        # that is not a bytearray (the whole body again)
        view[start:mid] = head
        view[mid : mid + len(body)] = body
    _encrypt_into(out, _ffi.from_buffer(out) + start, n, ad, nonce, key)
    return out


def open_sealed(
    key: bytes, sealed: bytes | bytearray | memoryview, ad: bytes, what: str
) -> bytearray:
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
    return out


# -- scheme 1: sealed to the repository's X25519 public key (spec §5.5) -------------

SCHEME_PUBLIC = 1
X25519_SIZE = 32
PUBLIC_SEAL_OVERHEAD = 1 + X25519_SIZE + NONCE_SIZE + TAG_SIZE  # 73


def x25519_secret(data_key: bytes) -> bytes:
    """The repository's X25519 secret key: derived from the data key (spec §5.5), so
    every full key file, old ones included, holds it without being rewritten."""
    return bytes(blake3.blake3(b"cas.x25519.v1", key=data_key).digest())


def x25519_public(secret: bytes) -> bytes:
    """The X25519 public key of ``secret`` (what a write-only key file would hold)."""
    return bytes(sodium.crypto_scalarmult_base(secret))


def _object_key(shared: bytes, ephemeral: bytes, public: bytes) -> bytes:
    material = shared + ephemeral + public
    return bytes(blake3.blake3(material, derive_key_context="cas.scheme1.v1").digest())


def seal_to_public(
    public: bytes,
    plaintext: bytes | bytearray | memoryview,
    ad: bytes,
    ephemeral_secret: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Scheme 1: 1 | ephemeral X25519 public key | nonce | ciphertext | tag, under a
    per-object key from X25519(ephemeral, public); the sealer cannot open it again.
    ``ephemeral_secret`` and ``nonce`` are only for test vectors."""
    eph = ephemeral_secret if ephemeral_secret is not None else os.urandom(X25519_SIZE)
    nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
    eph_public = x25519_public(eph)
    try:
        shared = bytes(sodium.crypto_scalarmult(eph, public))
    except nacl.exceptions.RuntimeError:
        raise ValueError("bad public key") from None
    key = _object_key(shared, eph_public, public)
    body = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(plaintext), ad, nonce, key)
    return bytes((SCHEME_PUBLIC,)) + eph_public + nonce + body


def open_sealed_to_public(
    secret: bytes, sealed: bytes | bytearray | memoryview, ad: bytes, what: str
) -> bytes:
    """Verify and decrypt a scheme 1 string with the repository's X25519 secret key."""
    sealed = bytes(sealed)
    if len(sealed) < PUBLIC_SEAL_OVERHEAD:
        raise IntegrityError(what=what, detail="too short to be sealed data")
    if sealed[0] != SCHEME_PUBLIC:
        raise UnsupportedVersion(what=what, version=f"(scheme {sealed[0]})", supported=1)
    eph_public = sealed[1 : 1 + X25519_SIZE]
    nonce = sealed[1 + X25519_SIZE : 1 + X25519_SIZE + NONCE_SIZE]
    try:
        shared = bytes(sodium.crypto_scalarmult(secret, eph_public))
        key = _object_key(shared, eph_public, x25519_public(secret))
        return bytes(
            sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed[1 + X25519_SIZE + NONCE_SIZE :], ad, nonce, key
            )
        )
    except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError):
        raise IntegrityError(
            what=what, detail="authentication failed (wrong key or altered data)"
        ) from None


def blob_ad(blob_type: BlobType, blob_id: bytes) -> bytes:
    """Associated data binding a sealed blob to its type and ID."""
    return b"cas.blob.v1" + bytes((blob_type,)) + blob_id


def blob_id(id_key: bytes, blob_type: BlobType, plaintext: bytes | bytearray | memoryview) -> bytes:
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
