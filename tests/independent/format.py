"""The cas repository format, decoded from spec/format.md alone.

Nothing here comes from ``cas``: every constant, layout and check is taken from
the specification's text (section numbers in the comments), and the
cryptography goes through other libraries where the spec allows it:

- XChaCha20-Poly1305 (§5) is built from an HChaCha20 written here and the
  IETF ChaCha20-Poly1305 of ``cryptography`` (OpenSSL), not libsodium;
- Argon2id (§4.2) is ``cryptography``'s, with the memory and lane parameters
  the spec's formula gives, not PyNaCl's ``kdf``;
- BLAKE3 (§6), zstd (§8) and MessagePack (§11.2) use the libraries the spec
  names.

A reader of the spec who disagrees with cas finds the disagreement here.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import blake3
import msgpack
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

# -- refusals (the error classes of §17's invalid vectors, under our own names) ----


class Refused(Exception):
    """An input the spec says a reader MUST refuse."""


class Malformed(Refused):
    """A layout or field rule is broken (vectors: FormatError)."""


class Tampered(Refused):
    """An AEAD tag or a hash does not match (vectors: IntegrityError)."""


class Newer(Refused):
    """Another version, scheme or type than v1 knows (vectors: UnsupportedVersion)."""


class BadPassword(Refused):
    """No key file opens with the password (vectors: WrongPassword)."""


def require(cond: bool, what: str) -> None:
    if not cond:
        raise Malformed(what)


# -- §5 sealing: XChaCha20-Poly1305 from HChaCha20 + IETF ChaCha20-Poly1305 --------

SEAL_OVERHEAD = 1 + 24 + 16
_MASK32 = 0xFFFFFFFF


def _rotl(v: int, c: int) -> int:
    return ((v << c) & _MASK32) | (v >> (32 - c))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _MASK32
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK32
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _MASK32
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK32
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2): a 32-byte subkey."""
    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    s += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12)
        _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14)
        _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15)
        _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13)
        _quarter(s, 3, 4, 9, 14)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def _xchacha(key: bytes, nonce: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    return ChaCha20Poly1305(hchacha20(key, nonce[:16])), b"\0\0\0\0" + nonce[16:]


def seal(key: bytes, plaintext: bytes, ad: bytes, nonce: bytes) -> bytes:
    """§5.1: scheme 0 | nonce | ciphertext | tag."""
    aead, inner = _xchacha(key, nonce)
    return b"\0" + nonce + aead.encrypt(inner, plaintext, ad)


def unseal(key: bytes, sealed: bytes, ad: bytes) -> bytes:
    """§5.4: at least 41 bytes, scheme 0, tag verified before anything is used."""
    if len(sealed) < SEAL_OVERHEAD:
        raise Tampered("sealed string shorter than 41 bytes (truncated)")
    if sealed[0] != 0:
        raise Newer(f"sealing scheme {sealed[0]}")
    aead, inner = _xchacha(key, sealed[1:25])
    try:
        return aead.decrypt(inner, sealed[25:], ad)
    except InvalidTag:
        raise Tampered("AEAD tag") from None


# -- §5.5 scheme 1: sealed to the repository's X25519 public key -----------------------


def x25519_keys(data_key: bytes) -> tuple[bytes, bytes]:
    """(secret, public): the secret is BLAKE3 keyed with the data key over cas.x25519.v1."""
    secret = blake3.blake3(b"cas.x25519.v1", key=data_key).digest()
    public = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
    return secret, public


def unseal_scheme1(data_key: bytes, sealed: bytes, ad: bytes) -> bytes:
    if len(sealed) < 1 + 32 + 24 + 16:
        raise Tampered("too short")
    if sealed[0] != 1:
        raise Newer(f"scheme {sealed[0]}")
    secret, public = x25519_keys(data_key)
    ephemeral, nonce, body = sealed[1:33], sealed[33:57], sealed[57:]
    try:
        shared = X25519PrivateKey.from_private_bytes(secret).exchange(
            X25519PublicKey.from_public_bytes(ephemeral)
        )
    except ValueError:  # an all-zero shared secret (a low-order point)
        raise Tampered("low-order ephemeral key") from None
    key = blake3.blake3(shared + ephemeral + public, derive_key_context="cas.scheme1.v1").digest()
    aead, inner = _xchacha(key, nonce)
    try:
        return aead.decrypt(inner, body, ad)
    except InvalidTag:
        raise Tampered("scheme 1 tag") from None


def unseal_data(data_key: bytes, sealed: bytes, ad: bytes) -> bytes:
    """§5.4, §5.5: where a data-key object is expected (blobs, snapshots), scheme 1 too."""
    if len(sealed) and sealed[0] == 1:
        return unseal_scheme1(data_key, sealed, ad)
    return unseal(data_key, sealed, ad)


# -- §4.2 key derivation ------------------------------------------------------------


def derive_kek(password: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    """Argon2id, t = opslimit, m = floor(memlimit / 1024) KiB, p = 1, 32 bytes."""
    kdf = Argon2id(salt=salt, length=32, iterations=opslimit, lanes=1, memory_cost=memlimit // 1024)
    return kdf.derive(password)


# -- §6 IDs ---------------------------------------------------------------------------

DATA, TREE = 0, 1


def blob_id(id_key: bytes, blob_type: int, plaintext: bytes) -> bytes:
    return blake3.blake3(bytes([blob_type]) + plaintext, key=id_key).digest()


def file_digest(id_key: bytes, content: bytes) -> bytes:
    return blake3.blake3(b"\x02" + content, key=id_key).digest()


def storage_id(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- §7 chunking ----------------------------------------------------------------------

GEAR_HEX = """
5c95c078 22408989 2d48a214 12842087 530f8afb 474536b9 2963b4f1 44cb738b
4ea7403d 4d606b6e 074ec5d3 3af39d18 726003ca 37a62a74 51a2f58e 7506358e
5d4ab128 4d4ae17b 41e85924 470c36f7 4741cbe1 01bb7f30 617c1de3 2b0c3a1f
50c48f73 21a82d37 6095ace0 419167a0 3caf49b0 40cea62d 66bc1c66 545e1dad
2bfa77cd 6e85da24 5fb0bdc5 652cfc29 3a0ae1ab 2837e0f3 6387b70e 13176012
4362c2bb 66d8f4b1 37fce834 2c9cd386 21144296 627268a8 650df537 2805d579
3b21ebbd 7357ed34 3f58b583 7150ddca 7362225e 620a6070 2c5ef529 7b522466
768b78c0 4b54e51e 75fa07e5 06a35fc6 30b71024 1c8626e1 296ad578 28d7be2e
1490a05a 7cee43bd 698b56e3 09dc0126 4ed6df6e 02c1bfc7 2a59ad53 29c0e434
7d6c5278 507940a7 5ef6ba93 68b6af1e 46537276 611bc766 155c587d 301ba847
2cc9dda7 0a438e2c 0a69d514 744c72d3 4f326b9b 7ef34286 4a0ef8a7 6ae06ebe
669c5372 12402dcb 5feae99d 76c7f4a7 6abdb79c 0dfaa038 20e2282c 730ed48b
069dac2f 168ecf3e 2610e61f 2c512c8e 15fb8c06 5e62bc76 69555135 0adb864c
4268f914 349ab3aa 20edfdb2 51727981 37b4b3d8 5dd17522 6b2cbfe4 5c47cf9f
30fa1ccd 23dedb56 13d1f50a 64eddee7 0820b0f7 46e07308 1e2d1dfd 17b06c32
250036d8 284dbf34 68292ee0 362ec87c 087cb1eb 76b46720 104130db 71966387
482dc43f 2388ef25 524144e1 44bd834e 448e7da3 3fa6eaf9 3cda215c 3a500cf3
395cb432 5195129f 43945f87 51862ca4 56ea8ff1 201034dc 4d328ff5 7d73a909
6234d379 64cfbf9c 36f6589a 0a2ce98a 5fe4d971 03bc15c5 44021d33 16c1932b
37503614 1acaf69d 3f03b779 49e61a03 1f52d7ea 1c6ddd5c 062218ce 07e7a11a
1905757a 7ce00a53 49f44f29 4bcc70b5 39feea55 5242cee8 3ce56b85 00b81672
46beeccc 3ca0ad56 2396cee8 78547f40 6b08089b 66a56751 781e7e46 1e2cf856
3bc13591 494a4202 520494d7 2d87459a 757555b6 42284cc1 1f478507 75c95dff
35ff8dd7 4e4757ed 2e11f88c 5e1b5048 420e6699 226b0695 4d1679b4 5a22646f
161d1131 125c68d9 1313e32e 4aa85724 21dc7ec1 4ffa29fe 72968382 1ca8eef3
3f3b1c28 39c2fb6c 6d76493f 7a22a62e 789b1c2a 16e0cb53 7deceeeb 0dc7e1c6
5c75bf3d 52218333 106de4d6 7dc64422 65590ff4 2c02ec30 64a9ac67 59cab2e9
4a21d2f3 0f616e57 23b54ee8 02730aaa 2f3c634d 7117fc6c 01ac6f05 5a9ed20c
158c4e2a 42b699f0 0c7c14b3 02bd9641 15ad56fc 1c722f60 7da1af91 23e0dbcb
0e93e12b 64b2791d 440d2476 588ea8dd 4665a658 7446c418 1877a774 5626407e
7f63bd46 32d2dbd8 3c790f4a 772b7239 6f8b2826 677ff609 0dc82c11 23ffe354
2eac53a6 16139e09 0afd0dbc 2a4d4237 56a368c7 234325e4 2dce9187 32e8ea7e
"""
GEAR = [int(w, 16) for w in GEAR_HEX.split()]
GEAR_SHA256 = "d499f6cdb238b999913ce6bc226452991b403b71cb0b144ca82ecf6e2ce2032a"


def permutation(chunker_key: bytes) -> list[int]:
    """§7.1: a keyed Fisher-Yates shuffle of 0..255 with rejection sampling."""
    stream = blake3.blake3(b"cas.chunker.permutation.v1", key=chunker_key).digest(length=8192)
    words = struct.unpack("<2048I", stream)
    perm = list(range(256))
    w = 0
    for i in range(255, 0, -1):
        n = i + 1
        limit = 2**32 - (2**32 % n)
        r = words[w]
        w += 1
        while r >= limit:
            r = words[w]
            w += 1
        j = r % n
        perm[i], perm[j] = perm[j], perm[i]
    return perm


@dataclass(frozen=True)
class ChunkParams:
    """§7.3's derived constants for (min, avg, max)."""

    min: int
    avg: int
    max: int
    algorithm: str = "fastcdc-2016-permuted"

    @property
    def bits(self) -> int:
        return round(math.log2(self.avg))

    @property
    def mask_s(self) -> int:
        return 2 ** (self.bits + 1) - 1

    @property
    def mask_l(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def center(self) -> int:
        center = self.avg - min(self.min + math.ceil(self.min / 2), self.avg)
        return min(center, self.max)


def chunk_ends(data: bytes, perm: list[int], p: ChunkParams, final: bool = True) -> list[int]:
    """§7.3's pseudo-code over ``P = perm[data]``; the end offset of each chunk.

    With ``final`` false, ``data`` is a prefix of a longer stream and only the
    cuts that more data cannot move are returned: a mask match, or ``max``
    bytes after the chunk's start (§7.4).
    """
    permuted = data.translate(bytes(perm))
    gear = GEAR

    def search(start: int, n: int) -> int:
        i = min(p.min, n)
        h = 0
        while i < n:
            h = (h >> 1) + gear[permuted[start + i]]
            if h & (p.mask_s if i < p.center else p.mask_l) == 0:
                return i + 1
            i += 1
        return 0

    return _ends(len(data), p, search, final)


def _ends(size: int, p: ChunkParams, search: Callable[[int, int], int], final: bool) -> list[int]:
    """Chunk after chunk (§7.3, §7.6): ``search(start, n)`` is the cut's length, or 0
    when none of the ``n`` bytes in view makes one."""
    ends: list[int] = []
    start = 0
    while start < size:
        n = min(size - start, p.max)
        cut = search(start, n)
        if not cut:
            if not final and n < p.max:
                break  # the prefix ended before a cut was found
            cut = n
        start += cut
        ends.append(start)
    return ends


def window_key(chunker_key: bytes) -> bytes:
    """§7.6: the AES-128 key, 16 bytes of BLAKE3's keyed XOF over a context string."""
    return blake3.blake3(b"cas.chunker.window-aes128.v1", key=chunker_key).digest(length=16)


def window_chunk_ends(data: bytes, aes_key: bytes, p: ChunkParams, final: bool = True) -> list[int]:
    """§7.6: cut after the first length l >= min where AES-128-decrypt of the 16 bytes
    before it, XOR the 16 bytes before those, starts with four bytes that, read
    big-endian, are below 2^32 // max(avg - min, 1); else at max or the end of the stream."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    aes = Cipher(algorithms.AES(aes_key), modes.ECB()).decryptor()
    threshold = 2**32 // max(p.avg - p.min, 1)

    def search(start: int, n: int) -> int:
        length = p.min
        while length <= n:
            batch = range(length, min(length + 4096, n + 1))
            out = aes.update(b"".join(data[start + x - 16 : start + x] for x in batch))
            for k, x in enumerate(batch):
                value = int.from_bytes(out[16 * k : 16 * k + 4], "big")
                before = int.from_bytes(data[start + x - 32 : start + x - 28], "big")
                if value ^ before < threshold:
                    return x
            length = batch.stop
        return 0

    return _ends(len(data), p, search, final)


# -- §8 payloads ------------------------------------------------------------------------

DOCUMENT_BOUND = 1 << 30


def unpad_payload(payload: bytes) -> bytes:
    """§8.1: a flag with the high bit set: 0x80 | f, u32 LE m, m bytes, zero bytes."""
    if not payload or payload[0] < 0x80:
        return payload
    require(len(payload) >= 5, "padded payload shorter than 5 bytes")
    (m,) = struct.unpack("<I", payload[1:5])
    require(5 + m <= len(payload), "padded payload length past its end")
    require(payload[5 + m :] == bytes(len(payload) - 5 - m), "padding not zero")
    return bytes([payload[0] - 0x80]) + payload[5 : 5 + m]


def padme(length: int) -> int:
    """§8.1: E = floor(log2 L), S = floor(log2 E) + 1, round L up to a multiple of 2^(E-S)."""
    if length < 2:
        return length
    e = math.floor(math.log2(length))
    while 2 ** (e + 1) <= length:  # floating point at large L
        e += 1
    while 2**e > length:
        e -= 1
    s = e.bit_length()  # floor(log2 E) + 1 for E >= 1
    unit = 2 ** (e - s)
    return -(-length // unit) * unit


def decode_payload(payload: bytes, bound: int) -> bytes:
    """Flag 0: stored; flag 1: exactly one zstd frame with its content size <= bound."""
    require(len(payload) >= 1, "empty payload")
    flag, rest = payload[0], payload[1:]
    if flag == 0:
        require(len(rest) <= bound, "stored payload over its bound")
        return rest
    require(flag == 1, f"unknown payload flag {flag}")
    try:
        size = zstandard.frame_content_size(rest)
    except zstandard.ZstdError as e:
        raise Malformed(f"zstd frame header: {e}") from None
    require(size >= 0, "zstd frame without a content size")
    require(size <= bound, "zstd content size over the bound")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(rest)
    except zstandard.ZstdError as e:
        raise Malformed(f"zstd: {e}") from None
    require(dobj.eof, "truncated zstd frame")
    require(not dobj.unused_data, "bytes after the zstd frame")
    require(len(out) == size, "zstd output differs from its recorded size")
    return out


def encode_payload(content: bytes, level: int | None) -> bytes:
    """What §8 says writers SHOULD do: zstd only when shorter, never for <= 64 bytes."""
    if level is not None and len(content) > 64:
        frame = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(content)
        if len(frame) < len(content):
            return b"\x01" + frame
    return b"\x00" + content


# -- §11.2 msgpack ------------------------------------------------------------------------


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise Malformed(f"msgpack: {e}") from None


def canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj, key=lambda k: k.encode())}
    if isinstance(obj, list | tuple):
        return [canonical(v) for v in obj]
    return obj


def pack_canonical(obj: Any) -> bytes:
    """§11.2: sorted str keys, bin for bytes, shortest encodings."""
    return bytes(msgpack.packb(canonical(obj), use_bin_type=True))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v: Any) -> bool:
    return isinstance(v, bytes) and len(v) == 32


def _version(doc: Any, what: str, version: int = 1) -> dict[str, Any]:
    require(isinstance(doc, dict), f"{what} is not a map")
    if doc.get("v") != version:
        raise Newer(f"{what} version {doc.get('v')!r}")
    return doc  # type: ignore[no-any-return]


# -- §3 config -------------------------------------------------------------------------------

CONFIG_MAGIC = b"CASREPO"


@dataclass(frozen=True)
class Config:
    repo_id: bytes
    chunker: ChunkParams
    pack_size: int
    doc: dict[str, Any]
    version: int = 1


def config_version(data: bytes) -> int:
    """§3.1/§16: the plaintext version byte (1 or 2), read before any password is asked."""
    require(len(data) >= 8 and data[:7] == CONFIG_MAGIC, "config magic")
    if data[7] not in (1, 2):
        raise Newer(f"repository format version {data[7]}")
    return data[7]


def open_config(data: bytes, data_key: bytes) -> Config:
    version = config_version(data)
    doc = unpack(decode_payload(unseal(data_key, data[8:], data[:8]), DOCUMENT_BOUND))
    return _config_doc(doc, version)


def _config_doc(raw_doc: Any, version: int) -> Config:
    doc = _version(raw_doc, "config", version)
    if version == 2 and "padding" in doc:
        require(doc["padding"] == "padme", f"padding {doc['padding']!r}")
    ch = doc.get("chunker")
    require(isinstance(ch, dict), "config chunker")
    if ch.get("algorithm") not in ("fastcdc-2016-permuted", "window-aes128"):
        raise Malformed(f"chunker algorithm {ch.get('algorithm')!r}")
    lo, avg, hi = ch.get("min"), ch.get("avg"), ch.get("max")
    require(all(_is_int(v) for v in (lo, avg, hi)), "chunker sizes")
    require(64 <= lo <= avg <= hi <= 2**30, "chunker sizes out of order")
    require(avg >= 256 and hi >= 1024 and lo <= 64 << 20 and avg <= 256 << 20, "chunker sizes")
    pack_size = doc.get("pack_size")
    require(_is_int(pack_size) and 1 << 20 <= pack_size <= 1 << 30, "pack_size")
    require(_is_id(doc.get("id")), "repository id")
    return Config(doc["id"], ChunkParams(lo, avg, hi, ch["algorithm"]), pack_size, doc, version)


# -- §4 key files ----------------------------------------------------------------------------

MASTER_KEYS = ("chunker", "data", "id", "index")


@dataclass(frozen=True)
class MasterKeys:
    data: bytes
    index: bytes
    id: bytes
    chunker: bytes


KEYFILE_MAX = 64 << 10  # §4.1
KEY_CHECK_CONTEXT = b"cas.key.check.v2"


def key_check(kek: bytes) -> bytes:
    """§4.1: the first 16 bytes of BLAKE3 keyed with the KEK over ``cas.key.check.v2``."""
    return blake3.blake3(KEY_CHECK_CONTEXT, key=kek).digest(length=16)


@dataclass(frozen=True)
class WriteOnlyKeys:
    """§4.4: a write-only key file's sealed map."""

    index: bytes
    id: bytes
    chunker: bytes
    public: bytes
    config: bytes
    config_sha256: bytes


WRITE_ONLY_KEYS = ("chunker", "config_sha256", "id", "index", "public")
WRITE_ONLY_FIELDS = ("index", "id", "chunker", "public", "config", "config_sha256")


def open_keyfile(text: bytes, password: bytes) -> MasterKeys:
    """§4.1: a key file of type "full"; any other type is refused as newer."""
    keys = open_any_keyfile(text, password, ("full",))
    assert isinstance(keys, MasterKeys)
    return keys


def open_any_keyfile(
    text: bytes, password: bytes, types: tuple[str, ...] = ("full", "write-only")
) -> MasterKeys | WriteOnlyKeys:
    """§4.1 and §4.4: a key file of one of ``types``."""
    require(len(text) <= KEYFILE_MAX, "key file too large")
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("key file is not JSON") from None
    require(isinstance(doc, dict), "key file is not an object")
    version = doc.get("version")
    if not _is_int(version) or version not in (1, 2):
        raise Newer(f"key file version {version!r}")
    kind = doc.get("type")
    if kind not in types:
        raise Newer(f"key type {kind!r}")
    kdf = doc.get("kdf")
    require(isinstance(kdf, dict), "kdf")
    require(kdf.get("algorithm") == "argon2id", f"kdf {kdf.get('algorithm')!r}")
    ops, mem = kdf.get("opslimit"), kdf.get("memlimit")
    require(_is_int(ops) and 1 <= ops <= 16, "opslimit")
    require(_is_int(mem) and 8192 <= mem <= 1 << 30, "memlimit")
    try:
        salt = base64.b64decode(kdf.get("salt", ""), validate=True)
        sealed = base64.b64decode(doc.get("keys", ""), validate=True)
        check = base64.b64decode(doc["check"], validate=True) if "check" in doc else None
    except (ValueError, TypeError):
        raise Malformed("base64") from None
    require(len(salt) == 16, "salt length")
    if version == 1:
        require(check is None, "a version 1 key file has no check value")
        require(kind == "full", "a write-only key file is version 2")
        ad = b"cas.key.v1"
    else:
        require(check is not None and len(check) == 16, "check value")
        info = {k: doc.get(k) for k in ("created", "hostname", "username")}
        require(all(isinstance(v, str) for v in info.values()), "informational members")
        bound = {
            **info,
            "kdf": {"algorithm": "argon2id", "memlimit": mem, "opslimit": ops, "salt": salt},
            "type": kind,
            "version": 2,
        }
        ad = b"cas.key.v2" + pack_canonical(bound)
    kek = derive_kek(password, salt, ops, mem)
    if check is not None and key_check(kek) != check:
        raise BadPassword("the check value does not match")
    try:
        plain = unseal(kek, sealed, ad)
    except Tampered:
        if version == 1:
            raise BadPassword("the key file does not open") from None
        raise  # the password is right: the file was altered
    keys = unpack(plain)
    require(isinstance(keys, dict), "master keys")
    if kind == "write-only":
        for name in WRITE_ONLY_KEYS:
            require(isinstance(keys.get(name), bytes) and len(keys[name]) == 32, f"key {name}")
        require(isinstance(keys.get("config"), bytes) and keys["config"], "config document")
        return WriteOnlyKeys(
            keys["index"],
            keys["id"],
            keys["chunker"],
            keys["public"],
            keys["config"],
            keys["config_sha256"],
        )
    for name in MASTER_KEYS:
        require(isinstance(keys.get(name), bytes) and len(keys[name]) == 32, f"key {name}")
    return MasterKeys(keys["data"], keys["index"], keys["id"], keys["chunker"])


def write_only_config(raw_config: bytes, keys: WriteOnlyKeys) -> Config:
    """§4.4: the config a write-only key carries, for the stored config it hashes to."""
    version = config_version(raw_config)
    if storage_id(raw_config) != keys.config_sha256:
        raise Tampered("the config is not the one this write-only key was made for")
    return _config_doc(unpack(keys.config), version)


# -- §9 packs --------------------------------------------------------------------------------

ENTRY = 41


@dataclass(frozen=True)
class Entry:
    """One blob of a pack: header fields plus the implicit offset."""

    id: bytes
    type: int
    offset: int
    length: int
    raw_length: int


def pack_header(pack: bytes, index_key: bytes) -> list[Entry]:
    """§9.4 steps 1 to 3 (and §9.6 for 'CPK2')."""
    require(len(pack) >= 8 and pack[-4:] in (b"CPK1", b"CPK2"), "pack trailer magic")
    (h,) = struct.unpack("<I", pack[-8:-4])
    require(ENTRY <= h <= 256 << 20 and h + 8 <= len(pack), "pack header length")
    sealed = pack[len(pack) - 8 - h : len(pack) - 8]
    return header_entries(sealed, index_key, len(pack), pack[-4:] == b"CPK2")


def v2_entries(plain: bytes) -> bytes:
    """§9.6: u32 LE n, 41·n bytes of entries, zero bytes."""
    require(len(plain) >= 4, "CPK2 header shorter than its count")
    (n,) = struct.unpack("<I", plain[:4])
    require(4 + ENTRY * n <= len(plain), "CPK2 count past the header")
    require(plain[4 + ENTRY * n :] == bytes(len(plain) - 4 - ENTRY * n), "CPK2 padding not zero")
    return plain[4 : 4 + ENTRY * n]


def header_entries(sealed: bytes, index_key: bytes, pack_size: int, v2: bool) -> list[Entry]:
    """§9.4 steps 2 and 3 on a sealed header of a pack of ``pack_size`` bytes."""
    h = len(sealed)
    if sealed[0] != 0:
        raise Malformed("pack header scheme byte (damage, not a newer format)")
    plain = unseal(index_key, sealed, b"cas.pack.v1")
    if v2:
        plain = v2_entries(plain)
    require(len(plain) % ENTRY == 0, "pack header length not a multiple of 41")
    entries = []
    offset = 0
    for k in range(0, len(plain), ENTRY):
        t, length, raw = struct.unpack("<BII", plain[k : k + 9])
        require(t in (DATA, TREE), "blob type")
        require(length >= 42, "stored length under 42")
        entries.append(Entry(plain[k + 9 : k + 41], t, offset, length, raw))
        offset += length
    require(offset + h + 8 == pack_size, "blobs and header do not tile the pack")
    return entries


def open_blob(keys: MasterKeys, e: Entry, sealed: bytes) -> bytes:
    """§9.4 step 4: AD with type and ID, bounded payload, exact length, ID recomputed."""
    require(len(sealed) == e.length, "sealed blob length")
    plain = decode_payload(
        unpad_payload(unseal_data(keys.data, sealed, b"cas.blob.v1" + bytes([e.type]) + e.id)),
        e.raw_length,
    )
    require(len(plain) == e.raw_length, "blob raw length")
    if blob_id(keys.id, e.type, plain) != e.id:
        raise Tampered("blob ID does not recompute")
    return plain


def header_plaintext(entries: list[Entry]) -> bytes:
    return b"".join(struct.pack("<BII", e.type, e.length, e.raw_length) + e.id for e in entries)


# -- §10 index files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexFile:
    packs: dict[bytes, list[Entry]]
    garbage: dict[bytes, tuple[int, list[Entry]]]
    supersedes: list[bytes]


def _entries(raw: Any) -> list[Entry]:
    require(isinstance(raw, list), "blob entries")
    out = []
    for item in raw:
        require(isinstance(item, list) and len(item) == 5, "blob entry")
        bid, t, off, length, rawlen = item
        require(_is_id(bid), "blob entry ID")
        require(t in (DATA, TREE) and _is_int(t), "blob entry type")
        require(all(_is_int(v) for v in (off, length, rawlen)), "blob entry integers")
        require(off >= 0 and rawlen >= 0 and length > SEAL_OVERHEAD, "blob entry values")
        out.append(Entry(bid, t, off, length, rawlen))
    return out


def open_index(data: bytes, index_key: bytes) -> IndexFile:
    doc = _version(
        unpack(decode_payload(unseal(index_key, data, b"cas.index.v1"), DOCUMENT_BOUND)), "index"
    )
    packs: dict[bytes, list[Entry]] = {}
    garbage: dict[bytes, tuple[int, list[Entry]]] = {}
    require(isinstance(doc.get("packs"), list), "index packs")
    for p in doc["packs"]:
        require(isinstance(p, dict) and _is_id(p.get("id")), "index pack")
        require(p["id"] not in packs, "pack repeated in an index file")
        packs[p["id"]] = _entries(p.get("blobs"))
    for g in doc.get("garbage", []):
        require(isinstance(g, dict) and _is_id(g.get("id")) and _is_int(g.get("marked")), "garbage")
        require(g["id"] not in packs and g["id"] not in garbage, "pack repeated in an index file")
        garbage[g["id"]] = (g["marked"], _entries(g.get("blobs")))
    sup = doc.get("supersedes")
    require(isinstance(sup, list) and all(_is_id(s) for s in sup), "supersedes")
    return IndexFile(packs, garbage, sup)


# -- §11 trees --------------------------------------------------------------------------------

NODE_TYPES = {"file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket"}
_REQUIRED_INTS = ("mode", "uid", "gid", "size", "mtime_ns", "atime_ns", "ctime_ns", "inode")


def _check_node(n: Any) -> dict[str, Any]:
    require(isinstance(n, dict), "node is not a map")
    name = n.get("name")
    require(isinstance(name, bytes) and name not in (b"", b".", b".."), "node name")
    require(b"/" not in name and b"\0" not in name, "unsafe node name")
    require(n.get("type") in NODE_TYPES, f"node type {n.get('type')!r}")
    for key in (*_REQUIRED_INTS, "device"):
        require(_is_int(n.get(key)), f"node field {key}")
    for key in ("links", "rdev", "flags"):
        require(key not in n or _is_int(n[key]), f"node field {key}")
    for key in ("user", "group"):
        require(key not in n or isinstance(n[key], str), f"node field {key}")
    for key in ("digest", "subtree"):
        require(key not in n or _is_id(n[key]), f"node field {key}")
    xattrs = n.get("xattrs", [])
    require(isinstance(xattrs, list), "xattrs")
    for pair in xattrs:
        require(isinstance(pair, list) and len(pair) == 2, "xattr pair")
        require(all(isinstance(v, bytes) for v in pair), "xattr pair")
    require(("content" in n) == ("sizes" in n), "content and sizes")
    if "content" in n:
        require(isinstance(n["content"], list) and all(_is_id(c) for c in n["content"]), "content")
        require(isinstance(n["sizes"], list), "sizes")
        require(all(_is_int(s) and s >= 0 for s in n["sizes"]), "sizes")
        require(len(n["content"]) == len(n["sizes"]), "content and sizes lengths")
    _check_type_rules(n)
    return n  # type: ignore[no-any-return]


# §11.3 per-type rules: the fields a type may carry, and what each type needs.
_ONLY_FOR = {
    "content": {"file"},
    "sizes": {"file"},
    "digest": {"file"},
    "subtree": {"dir"},
    "target": {"symlink"},
    "rdev": {"chardev", "blockdev"},
}


def _check_type_rules(n: dict[str, Any]) -> None:
    kind = n["type"]
    for key, kinds in _ONLY_FOR.items():
        require(key not in n or kind in kinds, f"{key} on a {kind}")
    if kind == "file":
        sizes = n.get("sizes", [])
        require(sum(sizes) == n["size"], "file sizes do not add up")
        require((n["size"] > 0) == bool(n.get("content")), "file content and size")
    elif kind == "symlink":
        target = n.get("target")
        require(isinstance(target, bytes) and target and b"\0" not in target, "symlink target")
        require(n["size"] == len(target), "symlink size")
    else:
        require(n["size"] == 0, f"size of a {kind}")
        if kind == "dir":
            require("subtree" in n, "directory without subtree")


def decode_tree(plaintext: bytes) -> list[dict[str, Any]]:
    doc = _version(unpack(plaintext), "tree")
    nodes = doc.get("nodes")
    require(isinstance(nodes, list), "tree nodes")
    out = [_check_node(n) for n in nodes]
    names = [n["name"] for n in out]
    require(all(a < b for a, b in itertools.pairwise(names)), "names not increasing")
    return out


# -- §12 snapshots, §13 locks ---------------------------------------------------------------------


def open_snapshot(data: bytes, data_key: bytes) -> dict[str, Any]:
    doc = _version(
        unpack(decode_payload(unseal_data(data_key, data, b"cas.snapshot.v1"), DOCUMENT_BOUND)),
        "snapshot",
    )
    require(_is_int(doc.get("time")) and _is_id(doc.get("tree")), "snapshot time, tree")
    require(isinstance(doc.get("paths"), list), "snapshot paths")
    require(all(isinstance(p, bytes) for p in doc["paths"]), "snapshot paths")
    for key in ("hostname", "username", "program"):
        require(isinstance(doc.get(key), str), f"snapshot {key}")
    require(_is_int(doc.get("uid")) and _is_int(doc.get("gid")), "snapshot uid, gid")
    require(isinstance(doc.get("tags"), list), "snapshot tags")
    require(isinstance(doc.get("summary"), dict), "snapshot summary")
    require("parent" not in doc or _is_id(doc["parent"]), "snapshot parent")
    # §12.1: optional; values of changes are counts or text, anomalies name a kind,
    # a count and a total (and for renamed, text for the extension).
    if "changes" in doc:
        changes = doc["changes"]
        require(isinstance(changes, dict), "snapshot changes")
        for k, v in changes.items():
            require(isinstance(k, str) and (isinstance(v, str) or _is_count(v)), "changes")
    if "anomalies" in doc:
        require(isinstance(doc["anomalies"], list), "snapshot anomalies")
        for a in doc["anomalies"]:
            require(isinstance(a, dict) and isinstance(a.get("kind"), str), "anomaly kind")
            require(_is_count(a.get("count")) and _is_count(a.get("total")), "anomaly count")
            require(isinstance(a.get("extension", ""), str), "anomaly extension")
    return doc


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def open_lock(data: bytes, index_key: bytes) -> dict[str, Any]:
    doc = _version(
        unpack(decode_payload(unseal(index_key, data, b"cas.lock.v1"), DOCUMENT_BOUND)), "lock"
    )
    for key in ("hostname", "username", "command"):
        require(isinstance(doc.get(key), str), f"lock {key}")
    require(_is_int(doc.get("pid")) and doc["pid"] > 0, "lock pid")
    require(_is_int(doc.get("time")), "lock time")
    require(isinstance(doc.get("exclusive"), bool), "lock exclusive")
    require(_is_int(doc.get("started", 0)), "lock started")
    return doc


# -- §13.6 generation records ------------------------------------------------------------


def open_generation(data: bytes, index_key: bytes, n: int, repo_id: bytes) -> dict[str, Any]:
    """Generation record ``n`` of repository ``repo_id`` (the number from its name)."""
    doc = _version(
        unpack(decode_payload(unseal(index_key, data, b"cas.generation.v1"), DOCUMENT_BOUND)),
        "generation record",
    )
    require(_is_int(doc.get("n")) and 1 <= doc["n"] < 2**63, "generation number")
    require(doc["n"] == n, f"generation record {n} holds generation {doc['n']}")
    require(doc.get("repo") == repo_id, "generation record of another repository")
    require(_is_int(doc.get("time")), "generation time")
    for key in ("snapshots", "forgotten", "retired"):
        ids = doc.get(key, [])
        require(isinstance(ids, list) and all(_is_id(i) for i in ids), f"generation {key}")
        require(all(a < b for a, b in itertools.pairwise(ids)), f"generation {key} not sorted")
    require("prev" not in doc or _is_id(doc["prev"]), "generation prev")
    require(isinstance(doc.get("command", ""), str), "generation command")
    require(isinstance(doc.get("accepted", False), bool), "generation accepted")
    return doc  # type: ignore[no-any-return]
