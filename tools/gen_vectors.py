#!/usr/bin/env python3
"""Regenerate the known-answer test vectors in spec/vectors/ (spec/format.md §17).

    python tools/gen_vectors.py           # rewrite every vector file
    python tools/gen_vectors.py --check   # recompute; exit 1 with a summary if any file differs

Every value is computed by calling cas's own functions with fixed keys,
nonces, salts and passwords (passed through the ``nonce=`` parameters the
code provides for this purpose), so the output is deterministic.  The KDF
runs at a low cost (opslimit 1, memlimit 8 MiB) to keep generation quick.

Byte strings are lowercase hex.  Compressed payloads depend on the zstd
library version; compress.json records the version the files were made with.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import msgpack
import nacl.bindings
import zstandard
from fastcdc import fastcdc_py

from cas import crypto
from cas.chunking.chunker import PERMUTED, Chunker, ChunkerParams, WindowChunker, window_threshold
from cas.crypto import BlobType, KdfParams, MasterKeys
from cas.errors import CasError
from cas.format import codec, compress
from cas.format import config as configfmt
from cas.format import generation as genfmt
from cas.format import index as indexfmt
from cas.format import keyfile as keyfmt
from cas.format import lock as lockfmt
from cas.format import pack as packfmt
from cas.format import snapshot as snapfmt
from cas.format import tree as treefmt
from cas.ids import storage_id

VECTOR_DIR = Path(__file__).resolve().parent.parent / "spec" / "vectors"

KEYS = MasterKeys(
    data_key=bytes(range(0x00, 0x20)),
    index_key=bytes(range(0x20, 0x40)),
    id_key=bytes(range(0x40, 0x60)),
    chunker_key=bytes(range(0x60, 0x80)),
)
KDF_OPS = 1
KDF_MEM = 8192 * 1024

# The chunker test stream: BLAKE3 XOF in keyed mode (key = bytes 0x00..0x1f)
# over this ASCII string, first STREAM_LENGTH bytes.  Stated, not stored.
STREAM_KEY = bytes(range(32))
STREAM_CONTEXT = b"cas.vectors.chunker-stream.v1"
STREAM_LENGTH = 24 << 20
SMALL_PARAMS = ChunkerParams(16 << 10, 64 << 10, 256 << 10, PERMUTED)
WINDOW_SMALL = ChunkerParams(16 << 10, 64 << 10, 256 << 10)
WINDOW_TINY = ChunkerParams(64, 256, 1024)


def chunker_stream() -> bytes:
    """The chunker test stream (see STREAM_* above)."""
    return bytes(blake3.blake3(STREAM_CONTEXT, key=STREAM_KEY).digest(length=STREAM_LENGTH))


def nonce(label: str) -> bytes:
    """A fixed 24-byte nonce: the first 24 bytes of SHA-256("cas.vectors.nonce." + label)."""
    return hashlib.sha256(b"cas.vectors.nonce." + label.encode()).digest()[:24]


def h(data: bytes) -> str:
    return data.hex()


def keys_json(keys: MasterKeys) -> dict[str, str]:
    return {
        "data": h(keys.data_key),
        "index": h(keys.index_key),
        "id": h(keys.id_key),
        "chunker": h(keys.chunker_key),
    }


def error_name(fn: Callable[..., object], *args: Any) -> str:
    """The class name of the cas error ``fn(*args)`` raises (the generator insists on one)."""
    try:
        fn(*args)
    except CasError as e:
        return type(e).__name__
    raise AssertionError("expected a cas error")


def sealed_doc_json(key: bytes, ad: bytes, sealed: bytes) -> dict[str, str]:
    """The layers of a sealed document: payload (flag + body) and the msgpack document."""
    payload = crypto.open_sealed(key, sealed, ad, "vector")
    doc = compress.decode_payload(payload, codec.MAX_DOCUMENT, "vector")
    return {"msgpack": h(doc), "payload": h(payload), "sealed": h(sealed)}


# -- kdf, aead, ids -------------------------------------------------------------------


def gen_kdf() -> dict[str, Any]:
    cases = []
    for desc, pw, salt, ops in (
        ("ASCII password, lowest cost", b"correct horse battery staple", bytes(range(16)), 1),
        (
            "same password and salt, opslimit 2",
            b"correct horse battery staple",
            bytes(range(16)),
            2,
        ),
        ("empty password", b"", bytes(range(0xF0, 0x100)), 1),
        ("UTF-8 password", "pässwörd ✓".encode(), b"\x00" * 16, 1),
    ):
        key = crypto.derive_key(pw, KdfParams(salt, ops, KDF_MEM))
        cases.append(
            {
                "description": desc,
                "password": h(pw),
                "salt": h(salt),
                "opslimit": ops,
                "memlimit": KDF_MEM,
                "key": h(key),
            }
        )
    return {
        "description": "Argon2id key derivation (§4.2): libsodium crypto_pwhash_argon2id "
        "(Argon2id v1.3, t = opslimit, m = memlimit / 1024 KiB, p = 1), 32-byte output",
        "cases": cases,
    }


def gen_aead() -> dict[str, Any]:
    key = KEYS.data_key
    cases = []
    inputs = (
        ("empty plaintext, empty associated data", b"", b""),
        ("short plaintext, snapshot AD", b"cas", snapfmt.SNAPSHOT_AD),
        (
            "blob AD: 'cas.blob.v1' | type 0 | 32-byte ID",
            b"\x00hello, world\n",
            crypto.blob_ad(BlobType.DATA, bytes(range(0x80, 0xA0))),
        ),
        ("200-byte plaintext, index AD", bytes(range(200)), indexfmt.INDEX_AD),
    )
    for i, (desc, pt, ad) in enumerate(inputs):
        n = nonce(f"aead.{i}")
        cases.append(
            {
                "description": desc,
                "key": h(key),
                "nonce": h(n),
                "ad": h(ad),
                "plaintext": h(pt),
                "sealed": h(crypto.seal(key, pt, ad, n)),
            }
        )
    good = crypto.seal(key, b"cas", snapfmt.SNAPSHOT_AD, nonce("aead.1"))
    tag_flipped = good[:-1] + bytes((good[-1] ^ 1,))
    invalid = []
    for desc, sealed, ad in (
        ("last tag byte flipped", tag_flipped, snapfmt.SNAPSHOT_AD),
        ("opened with another associated data", good, indexfmt.INDEX_AD),
        ("unknown scheme byte 1", b"\x01" + good[1:], snapfmt.SNAPSHOT_AD),
        ("40 bytes: shorter than scheme + nonce + tag", good[:40], snapfmt.SNAPSHOT_AD),
    ):
        invalid.append(
            {
                "description": desc,
                "key": h(key),
                "ad": h(ad),
                "sealed": h(sealed),
                "error": error_name(crypto.open_sealed, key, sealed, ad, "v"),
            }
        )
    return {
        "description": "Sealing (§5): scheme byte 0 | 24-byte nonce | XChaCha20-Poly1305-IETF "
        "ciphertext | 16-byte tag",
        "cases": cases,
        "invalid": invalid,
    }


def gen_blob_id() -> dict[str, Any]:
    id_key = KEYS.id_key
    cases: list[dict[str, Any]] = []
    for desc, t, pt in (
        ("empty data blob", BlobType.DATA, b""),
        ("empty tree blob (differs from the empty data blob)", BlobType.TREE, b""),
        ("data blob 'hello'", BlobType.DATA, b"hello"),
        ("tree blob with the same bytes", BlobType.TREE, b"hello"),
        ("data blob of 1025 zero bytes (two BLAKE3 chunks)", BlobType.DATA, bytes(1025)),
    ):
        cases.append(
            {
                "description": desc,
                "kind": "blob",
                "id_key": h(id_key),
                "type": int(t),
                "plaintext": h(pt),
                "id": h(crypto.blob_id(id_key, t, pt)),
            }
        )
    for desc, parts in (
        ("file digest of an empty file", [b""]),
        ("file digest of 'hello' (differs from the blob ID)", [b"hello"]),
        ("file digest of 1025 zero bytes fed in two parts", [bytes(500), bytes(525)]),
    ):
        d = crypto.FileDigest(id_key)
        for p in parts:
            d.update(p)
        cases.append(
            {
                "description": desc,
                "kind": "file_digest",
                "id_key": h(id_key),
                "plaintext": h(b"".join(parts)),
                "id": h(d.digest()),
            }
        )
    for desc, data in (("SHA-256 storage ID of 'hello'", b"hello"), ("of nothing", b"")):
        cases.append(
            {
                "description": desc,
                "kind": "storage_id",
                "plaintext": h(data),
                "id": h(storage_id(data)),
            }
        )
    return {
        "description": "IDs (§6): blob ID = BLAKE3-keyed(id key, type byte | plaintext); file "
        "digest = BLAKE3-keyed(id key, 0x02 | content); storage ID = SHA-256(stored bytes)",
        "cases": cases,
    }


# -- chunking ---------------------------------------------------------------------


def fastcdc_constants(p: ChunkerParams) -> dict[str, int]:
    """The derived values fastcdc uses (§7.3), from fastcdc's own helper functions."""
    bits = fastcdc_py.logarithm2(p.avg_size)
    return {
        "bits": bits,
        "mask_s": fastcdc_py.mask(bits + 1),
        "mask_l": fastcdc_py.mask(bits - 1),
        "center_size": fastcdc_py.center_size(p.avg_size, p.min_size, p.max_size),
    }


def gen_chunker() -> dict[str, Any]:
    perms = []
    for desc, key in (
        ("the vector chunker key", KEYS.chunker_key),
        ("an all-zero chunker key", bytes(32)),
    ):
        perms.append(
            {
                "description": desc,
                "chunker_key": h(key),
                "permutation": h(crypto.chunker_permutation(key)),
            }
        )
    stream = chunker_stream()
    perm = crypto.chunker_permutation(KEYS.chunker_key)
    identity = bytes(range(256))
    runs = []
    for desc, params, permutation in (
        ("small parameters, keyed", SMALL_PARAMS, perm),
        ("small parameters, identity permutation (plain fastcdc)", SMALL_PARAMS, identity),
        ("default parameters, keyed", ChunkerParams(algorithm=PERMUTED), perm),
    ):
        ends = Chunker(permutation, params).cut_points(stream)
        runs.append(
            {
                "description": desc,
                "permutation": "identity" if permutation == identity else "chunker_key",
                "min": params.min_size,
                "avg": params.avg_size,
                "max": params.max_size,
                "derived": fastcdc_constants(params),
                "chunk_ends": ends,
            }
        )
    return {
        "description": "Keyed chunking (§7): permutation from the chunker key, and chunk end "
        "offsets over a stated stream",
        "chunker_key": h(KEYS.chunker_key),
        "permutations": perms,
        "stream": {
            "recipe": "BLAKE3 keyed mode, key = stream_key, input = ASCII stream_context; "
            "the first `length` bytes of the extended output",
            "stream_key": h(STREAM_KEY),
            "stream_context": STREAM_CONTEXT.decode(),
            "length": STREAM_LENGTH,
            "sha256": h(hashlib.sha256(stream).digest()),
        },
        "runs": runs,
        "window_aes128": gen_window_chunker(stream),
    }


def gen_window_chunker(stream: bytes) -> dict[str, Any]:
    """The window-aes128 chunker (§7.6): AES keys, and chunk ends over the same stream."""
    keys = [
        {"chunker_key": h(k), "aes_key": h(crypto.chunker_window_key(k))}
        for k in (KEYS.chunker_key, bytes(32))
    ]
    aes_key = crypto.chunker_window_key(KEYS.chunker_key)
    runs = []
    for desc, params, length in (
        ("tiny parameters, the first 64 KiB of the stream", WINDOW_TINY, 64 << 10),
        ("small parameters", WINDOW_SMALL, len(stream)),
        ("default parameters", ChunkerParams(), len(stream)),
    ):
        runs.append(
            {
                "description": desc,
                "min": params.min_size,
                "avg": params.avg_size,
                "max": params.max_size,
                "threshold": window_threshold(params),
                "length": length,
                "chunk_ends": WindowChunker(aes_key, params).cut_points(stream[:length]),
            }
        )
    return {
        "description": "window-aes128 (§7.6): AES-128 keys derived from chunker keys, and chunk "
        "end offsets over a prefix of the stream with the vector chunker key",
        "keys": keys,
        "runs": runs,
    }


# -- compression ------------------------------------------------------------------


def gen_compress() -> dict[str, Any]:
    cases = []
    for desc, data, level in (
        ("empty input: stored", b"", 3),
        ("64 bytes: never compressed (64 bytes or fewer are stored)", b"a" * 64, 3),
        ("65 repetitive bytes: zstd", b"a" * 65, 3),
        ("208 bytes of text: zstd", b"cas repository format, version 1\n" * 6 + b"0123456789", 3),
        ("256 distinct bytes: zstd does not shrink them, stored", bytes(range(256)), 3),
        ("compression disabled (level None): stored", b"a" * 100, None),
    ):
        cases.append(
            {
                "description": desc,
                "input": h(data),
                "level": level,
                "payload": h(compress.encode_payload(data, level)),
            }
        )
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 100)
    invalid = []
    for desc, payload, max_size in (
        ("empty payload", b"", 100),
        ("unknown flag byte 2", b"\x02abc", 100),
        ("zstd frame without a content size", b"\x01" + no_size, 1000),
        ("stored payload larger than the reader's bound", b"\x00" + b"a" * 101, 100),
        (
            "zstd frame larger than the reader's bound",
            compress.encode_payload(b"a" * 101, 3),
            100,
        ),
    ):
        invalid.append(
            {
                "description": desc,
                "payload": h(payload),
                "max_size": max_size,
                "error": error_name(compress.decode_payload, payload, max_size, "v"),
            }
        )
    return {
        "description": "Payload encoding (§8): flag byte 0 = stored, 1 = one zstd frame with "
        "its content size.  Encoder output for flag 1 is specific to the zstd version below; "
        "any conforming decoder must decode it.",
        "zstd_version": ".".join(map(str, zstandard.ZSTD_VERSION)),
        "cases": cases,
        "invalid": invalid,
    }


# -- packs and index files --------------------------------------------------------

DATA_BLOBS = (
    ("compressible data blob (zstd)", b"All work and no play makes Jack a dull boy. " * 8, 3),
    ("incompressible data blob (stored)", bytes(range(0x20, 0x7F)), 3),
    ("empty data blob (one flag byte sealed: 42 bytes)", b"", 3),
)
TREE_BLOBS = (("tree blob, compression off", b"\x82\xa5nodes\x90\xa1v\x01", None),)


def build_pack(
    label: str,
    blob_type: BlobType,
    blobs: tuple[Any, ...],
    version: int = 1,
    padding: str | None = None,
) -> dict[str, Any]:
    sealed_blobs, entries, offset, out_blobs = [], [], 0, []
    for i, (desc, pt, level) in enumerate(blobs):
        bid = crypto.blob_id(KEYS.id_key, blob_type, pt)
        n = nonce(f"{label}.blob.{i}")
        sealed = packfmt.seal_blob(KEYS, blob_type, bid, pt, level, n, padding)
        sealed_blobs.append(sealed)
        entries.append(packfmt.PackEntry(bid, blob_type, offset, len(sealed), len(pt)))
        offset += len(sealed)
        out_blobs.append(
            {
                "description": desc,
                "type": int(blob_type),
                "plaintext": h(pt),
                "level": level,
                "id": h(bid),
                "nonce": h(n),
                "payload": h(compress.encode_payload(pt, level)),
                **(
                    {}
                    if padding is None
                    else {
                        "padded_payload": h(
                            packfmt.pad_payload(compress.encode_payload(pt, level), padding)
                        )
                    }
                ),
                "sealed": h(sealed),
            }
        )
    header_nonce = nonce(f"{label}.header")
    tail = packfmt.encode_pack_tail(KEYS, entries, header_nonce, version)
    data = b"".join(sealed_blobs) + tail
    parsed = packfmt.parse_pack(KEYS, data)
    assert parsed == entries
    n = int.from_bytes(data[-8:-4], "little")
    header_plain = crypto.open_sealed(KEYS.index_key, data[-8 - n : -8], packfmt.PACK_AD, "v")
    return {
        "description": f"a {blob_type.name.lower()} pack of {len(blobs)} blob(s)"
        + ("" if version == 1 else f", version {version}")
        + ("" if padding is None else f", blobs padded ({padding})"),
        **({} if version == 1 else {"version": version, "padding": padding}),
        "blobs": out_blobs,
        "header_plaintext": h(header_plain),
        "header_nonce": h(header_nonce),
        "pack": h(data),
        "pack_id": h(storage_id(data)),
        "entries": [entry_json(e) for e in parsed],
    }


def entry_json(e: packfmt.PackEntry) -> dict[str, Any]:
    return {
        "id": h(e.blob_id),
        "type": int(e.type),
        "offset": e.offset,
        "length": e.length,
        "raw_length": e.raw_length,
    }


def gen_pack() -> dict[str, Any]:
    data_pack = build_pack("pack.data", BlobType.DATA, DATA_BLOBS)
    tree_pack = build_pack("pack.tree", BlobType.TREE, TREE_BLOBS)
    good = bytes.fromhex(data_pack["pack"])
    first = bytes.fromhex(data_pack["blobs"][0]["sealed"])
    second_id = bytes.fromhex(data_pack["blobs"][1]["id"])
    n = len(good)
    invalid = []
    for desc, pack in (
        ("trailer magic altered", good[:-1] + b"2"),
        (
            "header length one too large",
            good[:-8]
            + (int.from_bytes(good[-8:-4], "little") + 1).to_bytes(4, "little")
            + good[-4:],
        ),
        ("one byte inserted before the first blob: blobs no longer tile the pack", b"\x00" + good),
        ("sealed header altered", good[: n - 9] + bytes((good[n - 9] ^ 1,)) + good[n - 8 :]),
    ):
        invalid.append(
            {
                "description": desc,
                "pack": h(pack),
                "error": error_name(packfmt.parse_pack, KEYS, pack),
            }
        )
    v2_data = build_pack("pack.v2.data", BlobType.DATA, DATA_BLOBS, 2)
    v2_padded = build_pack("pack.v2.padded", BlobType.DATA, DATA_BLOBS, 2, "padme")
    invalid_v2 = []
    entry = packfmt.PackEntry(b"\x11" * 32, BlobType.DATA, 0, 100, 50)
    records = packfmt.encode_header([entry])
    for i, (desc, plain) in enumerate(
        (
            ("count larger than the entries the header holds", struct.pack("<I", 2) + records),
            ("padding not zero", struct.pack("<I", 1) + records + b"\x00" * 40 + b"\x01"),
            ("shorter than its count", b"\x01\x00"),
        )
    ):
        sealed = bytes(KEYS.index.seal(plain, packfmt.PACK_AD, nonce(f"pack.v2.bad.{i}")))
        size = 100 + len(sealed) + packfmt.TRAILER_SIZE
        invalid_v2.append(
            {
                "description": desc,
                "header_plaintext": h(plain),
                "sealed_header": h(sealed),
                "pack_size": size,
                "error": error_name(packfmt.decode_header, KEYS, sealed, size, 2),
            }
        )
    padme = [
        {"length": n, "padded": packfmt.padme(n)}
        for n in (0, 1, 2, 42, 100, 255, 256, 1000, 4096, 65537, 1 << 20, (1 << 20) + 1, 8388659)
    ]
    swapped = {
        "description": "the first blob's bytes opened as the second blob (type and ID are in "
        "the AD, so a blob cannot be swapped for another)",
        "type": 0,
        "id": h(second_id),
        "sealed": h(first),
        "error": error_name(packfmt.open_blob, KEYS, BlobType.DATA, second_id, first),
    }
    return {
        "description": "Packs (§9): sealed blobs, sealed header (index key, AD 'cas.pack.v1'), "
        "u32 LE header length, 'CPK1'; version 2 packs (§9.6: 'CPK2', the header's entry count "
        "first and zero padding to a bucket of 256 entries or the power of two above); Padmé "
        "padded payloads (§8.1) and Padmé lengths",
        "master_keys": keys_json(KEYS),
        "packs": [data_pack, tree_pack],
        "packs_v2": [v2_data, v2_padded],
        "invalid_v2_headers": invalid_v2,
        "padme": padme,
        "invalid": invalid,
        "invalid_blobs": [swapped],
    }


def sealed_invalid(desc: str, key_name: str, ad: bytes, doc: Any, label: str) -> dict[str, Any]:
    """A refused document: ``doc`` sealed under the key ``key_name`` names (index_key or
    data_key) with ``ad``, and the error its decoder raises."""
    key = getattr(KEYS, key_name)
    sealed = codec.seal_document(key, ad, doc, nonce(label))
    decode = indexfmt.decode_index if ad == indexfmt.INDEX_AD else snapfmt.decode_snapshot
    return {
        "description": desc,
        key_name: h(key),
        "sealed": h(sealed),
        "error": error_name(decode, sealed, key),
    }


def gen_index() -> dict[str, Any]:
    pack = gen_pack()
    packs = {
        bytes.fromhex(p["pack_id"]): [
            packfmt.PackEntry(
                bytes.fromhex(e["id"]),
                BlobType(e["type"]),
                e["offset"],
                e["length"],
                e["raw_length"],
            )
            for e in p["entries"]
        ]
        for p in pack["packs"]
    }
    cases = []
    for i, (desc, idx) in enumerate(
        (
            ("the two packs of pack.json", indexfmt.IndexFile(packs)),
            (
                "an index file that supersedes two others and lists no packs",
                indexfmt.IndexFile({}, [storage_id(b"index a"), storage_id(b"index b")]),
            ),
            (
                "prune's marking index: one live pack, one pack marked for deletion",
                indexfmt.IndexFile(
                    dict(list(packs.items())[:1]),
                    [storage_id(b"index c")],
                    {k: (1_700_000_000_000_000_000, v) for k, v in list(packs.items())[1:]},
                ),
            ),
        )
    ):
        n = nonce(f"index.{i}")
        sealed = indexfmt.encode_index(idx, KEYS.index_key, n)
        cases.append(
            {
                "description": desc,
                "index_key": h(KEYS.index_key),
                "nonce": h(n),
                "packs": [
                    {"id": h(pid), "blobs": [entry_json(e) for e in entries]}
                    for pid, entries in idx.packs.items()
                ],
                "supersedes": [h(s) for s in idx.supersedes],
                "garbage": [
                    {"id": h(pid), "marked": marked, "blobs": [entry_json(e) for e in entries]}
                    for pid, (marked, entries) in idx.garbage.items()
                ],
                **sealed_doc_json(KEYS.index_key, indexfmt.INDEX_AD, sealed),
                "file_id": h(storage_id(sealed)),
            }
        )
    invalid = []
    bid = bytes(range(32))
    for i, (desc, doc) in enumerate(
        (
            ("document version 2", {"v": 2, "packs": [], "supersedes": []}),
            (
                "blob entry with a stored length of 41 (not more than the seal overhead)",
                {"v": 1, "packs": [{"id": bid, "blobs": [[bid, 0, 0, 41, 0]]}], "supersedes": []},
            ),
            (
                "blob entry of unknown type 2",
                {"v": 1, "packs": [{"id": bid, "blobs": [[bid, 2, 0, 100, 0]]}], "supersedes": []},
            ),
        )
    ):
        invalid.append(sealed_invalid(desc, "index_key", indexfmt.INDEX_AD, doc, f"index.bad.{i}"))
    return {
        "description": "Index files (§10): canonical msgpack sealed under the index key, "
        "AD 'cas.index.v1'",
        "cases": cases,
        "invalid": invalid,
    }


# -- trees and snapshots ----------------------------------------------------------


def node_json(n: treefmt.Node) -> dict[str, Any]:
    """A JSON rendering of a Node: bytes as hex, every field present."""
    return {
        "name": h(n.name),
        "type": n.type,
        "mode": n.mode,
        "uid": n.uid,
        "gid": n.gid,
        "user": n.user,
        "group": n.group,
        "size": n.size,
        "mtime_ns": n.mtime_ns,
        "atime_ns": n.atime_ns,
        "ctime_ns": n.ctime_ns,
        "inode": n.inode,
        "device": n.device,
        "links": n.links,
        "rdev": n.rdev,
        "target": None if n.target is None else h(n.target),
        "xattrs": [[h(k), h(v)] for k, v in n.xattrs],
        "flags": n.flags,
        "content": [h(c) for c in n.content],
        "sizes": list(n.sizes),
        "digest": None if n.digest is None else h(n.digest),
        "subtree": None if n.subtree is None else h(n.subtree),
        "extra": dict(n.extra),
    }


def tree_nodes() -> list[treefmt.Node]:
    t = 1_700_000_000_123_456_789
    common: dict[str, Any] = {
        "uid": 1000,
        "gid": 1000,
        "user": "alice",
        "group": "staff",
        "device": 2049,
    }
    chunk_a = crypto.blob_id(KEYS.id_key, BlobType.DATA, b"chunk a")
    chunk_b = crypto.blob_id(KEYS.id_key, BlobType.DATA, b"chunk b")
    digest = crypto.FileDigest(KEYS.id_key)
    digest.update(b"chunk achunk b")
    empty_digest = crypto.FileDigest(KEYS.id_key).digest()
    return [
        # Given out of order on purpose: the encoder sorts by name bytes.
        treefmt.Node(
            name=b"zz-dir",
            type="dir",
            mode=0o755,
            mtime_ns=t,
            atime_ns=t,
            ctime_ns=t,
            inode=11,
            links=3,
            subtree=crypto.blob_id(KEYS.id_key, BlobType.TREE, b"\x82\xa5nodes\x90\xa1v\x01"),
            **common,
        ),
        treefmt.Node(
            name=b"caf\xe9.txt",
            type="file",
            mode=0o644,
            size=14,
            mtime_ns=t,
            atime_ns=t + 1,
            ctime_ns=t + 2,
            inode=12,
            links=2,
            content=[chunk_a, chunk_b],
            sizes=[7, 7],
            digest=digest.digest(),
            xattrs=[(b"user.comment", b"\xff\x00binary"), (b"user.mime_type", b"text/plain")],
            flags=0x80000,
            **common,
        ),
        treefmt.Node(
            name=b"link",
            type="symlink",
            mode=0o777,
            size=11,
            mtime_ns=t,
            atime_ns=t,
            ctime_ns=t,
            inode=13,
            target=b"../\xfe\xfftarget",
            **common,
        ),
        treefmt.Node(
            name=b"null",
            type="chardev",
            mode=0o666,
            mtime_ns=t,
            atime_ns=t,
            ctime_ns=t,
            inode=14,
            rdev=(1 << 8) | 3,
            uid=0,
            gid=0,
            user="root",
            group="root",
            device=5,
        ),
        treefmt.Node(
            name=b"empty",
            type="file",
            mode=0o4755,
            mtime_ns=-1_000_000_000,
            atime_ns=0,
            ctime_ns=t,
            inode=15,
            uid=4_000_000_000,
            gid=65534,
            digest=empty_digest,
            extra={"x_future_field": "kept as is", "x_future_int": 7},
        ),
    ]


def gen_tree() -> dict[str, Any]:
    nodes = tree_nodes()
    plaintext = treefmt.encode_tree(nodes)
    decoded = treefmt.decode_tree(plaintext)
    empty = treefmt.encode_tree([])
    cases = [
        {
            "description": "five nodes given unsorted: non-UTF-8 name, file with content, "
            "xattrs and flags, symlink with a raw target, character device, unknown fields kept",
            "id_key": h(KEYS.id_key),
            "plaintext": h(plaintext),
            "nodes": [node_json(n) for n in decoded],
            "id": h(crypto.blob_id(KEYS.id_key, BlobType.TREE, plaintext)),
        },
        {
            "description": "an empty directory",
            "id_key": h(KEYS.id_key),
            "plaintext": h(empty),
            "nodes": [],
            "id": h(crypto.blob_id(KEYS.id_key, BlobType.TREE, empty)),
        },
    ]
    base = treefmt.Node(name=b"a", type="file", digest=bytes(32)).to_doc()
    one, two = bytes(32), bytes(range(32))
    with_content = dict(base, size=5, content=[one, two], sizes=[2, 3])
    plain = {k: v for k, v in base.items() if k != "digest"}
    invalid = []
    for desc, doc in (
        ("duplicate names", {"v": 1, "nodes": [base, base]}),
        ("names not sorted", {"v": 1, "nodes": [dict(base, name=b"b"), base]}),
        ("name '..'", {"v": 1, "nodes": [dict(base, name=b"..")]}),
        ("name containing '/'", {"v": 1, "nodes": [dict(base, name=b"a/b")]}),
        ("empty name", {"v": 1, "nodes": [dict(base, name=b"")]}),
        ("name as a msgpack str instead of bin", {"v": 1, "nodes": [dict(base, name="a")]}),
        ("unknown node type", {"v": 1, "nodes": [dict(base, type="door")]}),
        ("required field mode missing", {"v": 1, "nodes": [{"name": b"a", "type": "file"}]}),
        ("content without sizes", {"v": 1, "nodes": [dict(base, content=[bytes(32)])]}),
        ("file with a size but no content", {"v": 1, "nodes": [dict(base, size=5)]}),
        (
            "file whose sizes do not add up to its size",
            {"v": 1, "nodes": [dict(with_content, size=6)]},
        ),
        (
            "empty file with a content list",
            {"v": 1, "nodes": [dict(base, content=[one], sizes=[0])]},
        ),
        ("file with sizes but no content", {"v": 1, "nodes": [dict(base, sizes=[])]}),
        (
            "file with a negative chunk size (the sum still right)",
            {"v": 1, "nodes": [dict(with_content, sizes=[-1, 6])]},
        ),
        ("file with subtree", {"v": 1, "nodes": [dict(base, subtree=one)]}),
        ("file with target", {"v": 1, "nodes": [dict(base, target=b"x")]}),
        ("file with rdev", {"v": 1, "nodes": [dict(base, rdev=1)]}),
        ("dir without subtree", {"v": 1, "nodes": [dict(plain, type="dir")]}),
        ("dir with a size", {"v": 1, "nodes": [dict(plain, type="dir", subtree=one, size=4096)]}),
        ("dir with content", {"v": 1, "nodes": [dict(with_content, type="dir", subtree=one)]}),
        ("dir with digest", {"v": 1, "nodes": [dict(base, type="dir", subtree=one)]}),
        ("symlink without target", {"v": 1, "nodes": [dict(plain, type="symlink")]}),
        (
            "symlink whose size is not its target's length",
            {"v": 1, "nodes": [dict(plain, type="symlink", target=b"abc", size=2)]},
        ),
        (
            "symlink with subtree",
            {"v": 1, "nodes": [dict(plain, type="symlink", target=b"a", size=1, subtree=one)]},
        ),
        (
            "symlink with an empty target",
            {"v": 1, "nodes": [dict(plain, type="symlink", target=b"")]},
        ),
        ("chardev with a size", {"v": 1, "nodes": [dict(plain, type="chardev", rdev=1, size=1)]}),
        (
            "blockdev with content",
            {"v": 1, "nodes": [dict(plain, type="blockdev", content=[one], sizes=[0])]},
        ),
        ("fifo with rdev", {"v": 1, "nodes": [dict(plain, type="fifo", rdev=1)]}),
        ("fifo with target", {"v": 1, "nodes": [dict(plain, type="fifo", target=b"a")]}),
        ("socket with a size", {"v": 1, "nodes": [dict(plain, type="socket", size=1)]}),
        ("socket with digest", {"v": 1, "nodes": [dict(base, type="socket")]}),
        ("tree version 2", {"v": 2, "nodes": []}),
    ):
        raw = codec.pack_canonical(doc)
        invalid.append(
            {
                "description": desc,
                "plaintext": h(raw),
                "error": error_name(treefmt.decode_tree, raw),
            }
        )
    return {
        "description": "Tree blobs (§11): canonical msgpack plaintext and its tree blob ID",
        "cases": cases,
        "invalid": invalid,
    }


def snapshot_json(s: snapfmt.Snapshot) -> dict[str, Any]:
    return {
        "time_ns": s.time_ns,
        "tree": h(s.tree),
        "paths": [h(p) for p in s.paths],
        "hostname": s.hostname,
        "username": s.username,
        "uid": s.uid,
        "gid": s.gid,
        "tags": list(s.tags),
        "parent": None if s.parent is None else h(s.parent),
        "program": s.program,
        "summary": dict(s.summary),
        "extra": dict(s.extra),
    }


def gen_snapshot() -> dict[str, Any]:
    tree_id = bytes.fromhex(gen_tree()["cases"][0]["id"])
    child = snapfmt.Snapshot(
        time_ns=1_700_086_400_000_000_000,
        tree=tree_id,
        paths=[b"/home/alice"],
        hostname="host1",
        username="alice",
        uid=1000,
        gid=1000,
        parent=storage_id(b"parent snapshot"),
        program="cas 0.1.0",
        extra={"x_future": [1, 2, 3]},
    )
    snaps = (
        (
            "first snapshot, tags given unsorted (stored sorted), a non-UTF-8 path",
            snapfmt.Snapshot(
                time_ns=1_700_000_000_000_000_000,
                tree=tree_id,
                paths=[b"/home/alice", b"/srv/caf\xe9"],
                hostname="host1",
                username="alice",
                uid=1000,
                gid=1000,
                tags=["weekly", "daily"],
                program="cas 0.1.0",
                summary={"files_new": 3, "bytes_added": 12345},
            ),
        ),
        ("child snapshot with a parent and an unknown field kept", child),
        (
            "a snapshot whose backup was flagged as unusual: changes and anomalies (§12.1)",
            dataclasses.replace(
                child,
                time_ns=1_700_172_800_000_000_000,
                parent=storage_id(b"child snapshot"),
                extra={
                    "changes": {
                        "files": 1000,
                        "parent_files": 1000,
                        "modified": 12,
                        "removed": 800,
                        "moved": 0,
                        "renamed": 800,
                        "emptied": 0,
                        "new_bytes": 52_428_800,
                        "incompressible_bytes": 52_000_000,
                        "renamed_to": "locked",
                        "renamed_to_count": 800,
                    },
                    "anomalies": [
                        {"kind": "removed", "count": 800, "total": 1000},
                        {"kind": "renamed", "count": 800, "total": 1000, "extension": "locked"},
                    ],
                },
            ),
        ),
    )
    cases: list[dict[str, Any]] = []
    for i, (desc, s) in enumerate(snaps):
        n = nonce(f"snapshot.{i}")
        sealed = snapfmt.encode_snapshot(s, KEYS.data_key, n)
        cases.append(
            {
                "description": desc,
                "data_key": h(KEYS.data_key),
                "nonce": h(n),
                "snapshot_in": snapshot_json(s),
                "snapshot": snapshot_json(snapfmt.decode_snapshot(sealed, KEYS.data_key)),
                **sealed_doc_json(KEYS.data_key, snapfmt.SNAPSHOT_AD, sealed),
                "file_id": h(storage_id(sealed)),
            }
        )
    first = bytes.fromhex(cases[0]["sealed"])
    as_index = codec.seal_document(
        KEYS.data_key,
        indexfmt.INDEX_AD,
        codec.unpack(
            compress.decode_payload(bytes.fromhex(cases[0]["payload"]), 1 << 20, "v"), "v"
        ),
        nonce("snapshot.bad.0"),
    )
    invalid = [
        {
            "description": "a valid snapshot document sealed with the index file AD",
            "data_key": h(KEYS.data_key),
            "sealed": h(as_index),
            "error": error_name(snapfmt.decode_snapshot, as_index, KEYS.data_key),
        },
        {
            "description": "a snapshot opened with the index key",
            "data_key": h(KEYS.index_key),
            "sealed": h(first),
            "error": error_name(snapfmt.decode_snapshot, first, KEYS.index_key),
        },
    ]
    bad_fields = (
        ("changes that is not a map", {"changes": [1]}),
        ("a negative count in changes", {"changes": {"files": -1}}),
        ("anomalies that is not an array", {"anomalies": {"kind": "removed"}}),
        ("an anomaly without a total", {"anomalies": [{"kind": "removed", "count": 1}]}),
        (
            "an anomaly whose extension is bin",
            {"anomalies": [{"kind": "renamed", "count": 1, "total": 2, "extension": b"x"}]},
        ),
    )
    for i, (desc, extra) in enumerate(bad_fields):
        doc = codec.unpack(
            compress.decode_payload(bytes.fromhex(cases[0]["payload"]), 1 << 20, "v"), "v"
        )
        doc.update(extra)
        label = f"snapshot.bad.field.{i}"
        invalid.append(sealed_invalid(desc, "data_key", snapfmt.SNAPSHOT_AD, doc, label))
    return {
        "description": "Snapshot files (§12): canonical msgpack sealed under the data key, "
        "AD 'cas.snapshot.v1'",
        "cases": cases,
        "invalid": invalid,
    }


# -- config and key files ---------------------------------------------------------


def gen_config() -> dict[str, Any]:
    repo_id = bytes(range(0xC0, 0xE0))
    cases: list[dict[str, Any]] = []
    for i, (desc, cfg) in enumerate(
        (
            (
                "default parameters",
                configfmt.Config(repo_id, ChunkerParams(algorithm=PERMUTED), version=1),
            ),
            (
                "small chunks, 4 MiB packs",
                configfmt.Config(repo_id, SMALL_PARAMS, 4 << 20, version=1),
            ),
            (
                "window-aes128 chunker, default parameters",
                configfmt.Config(repo_id, ChunkerParams(), version=1),
            ),
            ("version 2, default parameters", configfmt.Config(repo_id, ChunkerParams())),
            (
                "version 2, Padmé padding of sealed blobs (init --padding padme)",
                configfmt.Config(repo_id, ChunkerParams(), padding="padme"),
            ),
        )
    ):
        n = nonce(f"config.{i}")
        raw = configfmt.encode_config(cfg, KEYS.data_key, n)
        assert configfmt.decode_config(raw, KEYS.data_key) == cfg
        cases.append(
            {
                "description": desc,
                "data_key": h(KEYS.data_key),
                "nonce": h(n),
                "repo_id": h(cfg.repo_id),
                "chunker": {
                    "algorithm": cfg.chunker.algorithm,
                    "min": cfg.chunker.min_size,
                    "avg": cfg.chunker.avg_size,
                    "max": cfg.chunker.max_size,
                },
                "pack_size": cfg.pack_size,
                "version": cfg.version,
                "padding": cfg.padding,
                "header": h(raw[:8]),
                **sealed_doc_json(KEYS.data_key, raw[:8], raw[8:]),
                "file": h(raw),
            }
        )
    good = bytes.fromhex(cases[0]["file"])

    def bad_doc(i: int, version: int = 1, **changes: Any) -> bytes:
        hdr = configfmt.header(version)
        doc = {
            "v": version,
            "id": repo_id,
            "chunker": {
                "algorithm": PERMUTED,
                "min": 1 << 19,
                "avg": 1 << 20,
                "max": 1 << 23,
            },
            "pack_size": 16 << 20,
        }
        doc.update(changes)
        return hdr + codec.seal_document(KEYS.data_key, hdr, doc, nonce(f"config.bad.{i}"))

    invalid = []
    for desc, raw in (
        ("format version 3 in the plaintext header", b"CASREPO\x03" + good[8:]),
        ("version 2 in the plaintext header over a version 1 document", bad_doc(3, 2, v=1)),
        ("version 2: unknown padding scheme", bad_doc(4, 2, padding="zeros")),
        ("wrong magic", b"CASREPX\x01" + good[8:]),
        (
            "unknown chunker algorithm",
            bad_doc(
                0, chunker={"algorithm": "rabin", "min": 1 << 19, "avg": 1 << 20, "max": 1 << 23}
            ),
        ),
        ("pack_size below 1 MiB", bad_doc(1, pack_size=(1 << 20) - 1)),
        (
            "chunker min greater than avg",
            bad_doc(
                2,
                chunker={
                    "algorithm": PERMUTED,
                    "min": 1 << 21,
                    "avg": 1 << 20,
                    "max": 1 << 23,
                },
            ),
        ),
        ("sealed document altered (last tag byte)", good[:-1] + bytes((good[-1] ^ 0x80,))),
    ):
        invalid.append(
            {
                "description": desc,
                "data_key": h(KEYS.data_key),
                "file": h(raw),
                "error": error_name(configfmt.decode_config, raw, KEYS.data_key),
            }
        )
    return {
        "description": "The config file (§3): 'CASREPO' | version byte, then a document sealed "
        "under the data key with those 8 bytes as AD",
        "cases": cases,
        "invalid": invalid,
    }


def gen_scheme1() -> dict[str, Any]:
    secret = crypto.x25519_secret(KEYS.data_key)
    public = crypto.x25519_public(secret)
    cases = []
    for i, (desc, pt, ad) in enumerate(
        (
            ("a data blob's plaintext under its blob AD", b"hello, write-only world", None),
            ("empty plaintext, snapshot AD", b"", b"cas.snapshot.v1"),
        )
    ):
        if ad is None:
            ad = crypto.blob_ad(BlobType.DATA, crypto.blob_id(KEYS.id_key, BlobType.DATA, pt))
        eph = hashlib.sha256(b"cas.vectors.ephemeral.%d" % i).digest()
        n = nonce(f"scheme1.{i}")
        sealed = crypto.seal_to_public(public, pt, ad, eph, n)
        shared = bytes(nacl.bindings.crypto_scalarmult(eph, public))
        cases.append(
            {
                "description": desc,
                "data_key": h(KEYS.data_key),
                "secret": h(secret),
                "public": h(public),
                "ephemeral_secret": h(eph),
                "ephemeral_public": h(crypto.x25519_public(eph)),
                "shared": h(shared),
                "object_key": h(crypto.primitives._object_key(shared, sealed[1:33], public)),
                "nonce": h(n),
                "ad": h(ad),
                "plaintext": h(pt),
                "sealed": h(sealed),
            }
        )
    first = cases[0]
    good, ad = bytes.fromhex(first["sealed"]), bytes.fromhex(first["ad"])
    invalid = []
    for desc, sealed, ad_ in (
        ("a flipped ciphertext byte", good[:40] + bytes([good[40] ^ 1]) + good[41:], ad),
        ("a flipped ephemeral key byte", good[:5] + bytes([good[5] ^ 1]) + good[6:], ad),
        ("the wrong AD", good, ad + b"x"),
        ("truncated below the 73-byte overhead", good[:72], ad),
        ("an all-zero ephemeral key (low order)", good[:1] + bytes(32) + good[33:], ad),
    ):
        invalid.append(
            {
                "description": desc,
                "data_key": h(KEYS.data_key),
                "ad": h(ad_),
                "sealed": h(sealed),
                "error": error_name(KEYS.data.open, sealed, ad_, "v"),
            }
        )
    return {
        "description": "Scheme 1 (§5.5): sealed to the repository's X25519 public key, "
        "derived from the data key; the symmetric v1 opener refuses it as newer "
        "(`open_sealed` gives UnsupportedVersion)",
        "cases": cases,
        "invalid": invalid,
    }


def unlock_keyfile(raw: bytes, password: bytes) -> crypto.KeyBase:
    return keyfmt.unlock(keyfmt.decode_keyfile(raw), password)


def _keyfile_case(version: int, desc: str) -> tuple[dict[str, Any], keyfmt.KeyFile, bytes]:
    password = b"correct horse battery staple"
    salt = bytes(range(0x10, 0x20)) if version == 1 else bytes(range(0x30, 0x40))
    kdf = KdfParams(salt, KDF_OPS, KDF_MEM, test_only=True)
    n = nonce("keyfile.0" if version == 1 else "keyfile.v2")
    kf, raw = keyfmt.create(
        KEYS,
        password,
        kdf,
        created="2024-01-02T03:04:05Z",
        hostname="host1",
        username="alice",
        nonce=n,
        version=version,
    )
    kek = crypto.derive_key(password, kdf)
    case: dict[str, Any] = {
        "description": desc,
        "version": version,
        "password": h(password),
        "salt": h(salt),
        "opslimit": KDF_OPS,
        "memlimit": KDF_MEM,
        "created": kf.created,
        "hostname": kf.hostname,
        "username": kf.username,
        "nonce": h(n),
        "kek": h(kek),
        "ad": h(keyfmt.bound_members(kf) if version == 2 else keyfmt.KEY_AD),
        "check": None if kf.check is None else h(kf.check),
        "master_keys": keys_json(KEYS),
        "master_keys_msgpack": h(KEYS.encode()),
        "sealed_keys": h(kf.sealed_keys),
        "file": h(raw),
        "file_text": raw.decode(),
        "key_id": h(storage_id(raw)),
    }
    return case, kf, raw


def gen_keyfile() -> dict[str, Any]:
    password = b"correct horse battery staple"
    v2, _, raw = _keyfile_case(2, "a version 2 key file (members bound, check value)")
    v1, _, raw1 = _keyfile_case(1, "a version 1 key file, as cas wrote before: still read")
    doc, doc1 = json.loads(raw), json.loads(raw1)

    def variant(base: dict[str, Any] = doc, **changes: Any) -> bytes:
        d = dict(base)
        d.update(changes)
        return (json.dumps(d, sort_keys=True, indent=1) + "\n").encode()

    def resealed_keys() -> str:
        sealed = bytearray(base64.b64decode(doc["keys"]))
        sealed[-1] ^= 1
        return base64.b64encode(bytes(sealed)).decode()

    invalid = []
    for desc, file, pw in (
        ("wrong password", raw, b"Tr0ub4dor&3"),
        ("wrong password, version 1", raw1, b"Tr0ub4dor&3"),
        (
            "a full key file relabelled 'write-only' (the type is bound: altered)",
            variant(type="write-only"),
            password,
        ),
        ("key file version 3", variant(version=3), password),
        (
            "version 2 without its check value",
            variant({k: v for k, v in doc.items() if k != "check"}),
            password,
        ),
        ("version 2: hostname altered", variant(hostname="host2"), password),
        ("version 2: username altered", variant(username="mallory"), password),
        ("version 2: created altered", variant(created="2030-01-01T00:00:00Z"), password),
        ("version 2: sealed keys altered", variant(keys=resealed_keys()), password),
        ("version 2 relabelled as version 1", variant(version=1), password),
        ("version 1 relabelled as version 2", variant(doc1, version=2), password),
        (
            "KDF opslimit above the ceiling of 16",
            variant(kdf=dict(doc["kdf"], opslimit=17)),
            password,
        ),
        (
            "memlimit above the ceiling of 1 GiB",
            variant(kdf=dict(doc["kdf"], memlimit=(1 << 30) + 1024)),
            password,
        ),
        ("unknown KDF", variant(kdf=dict(doc["kdf"], algorithm="scrypt")), password),
        ("larger than 64 KiB", variant(x_padding="x" * (64 << 10)), password),
    ):
        invalid.append(
            {
                "description": desc,
                "password": h(pw),
                "file": h(file),
                "error": error_name(unlock_keyfile, file, pw),
            }
        )
    return {
        "description": "Key files (§4): JSON with the master key set sealed under the "
        "Argon2id-derived key; version 2 with AD 'cas.key.v2' | canonical msgpack of the "
        "members and a check value, version 1 with AD 'cas.key.v1'",
        "cases": [v2, v1],
        "invalid": invalid,
    }


class _Material:
    """Key material sealed as a key file of ``TYPE`` as it is (to make refused files)."""

    def __init__(self, kind: str, raw: bytes) -> None:
        self.TYPE, self.raw = kind, raw

    def encode(self) -> bytes:
        return self.raw


def gen_keyfile_write_only() -> dict[str, Any]:
    password = b"write only, read never"
    salt = bytes(range(0x50, 0x60))
    kdf = KdfParams(salt, KDF_OPS, KDF_MEM, test_only=True)
    cfg = configfmt.Config(bytes(range(0xC0, 0xE0)), ChunkerParams())
    raw_config = configfmt.encode_config(cfg, KEYS.data_key, nonce("keyfile.write-only.config"))
    wo = KEYS.write_only(configfmt.config_plaintext(cfg), storage_id(raw_config))
    members = dict(created="2024-01-02T03:04:05Z", hostname="laptop", username="bob")

    def key_file(keys: Any, label: str) -> tuple[keyfmt.KeyFile, bytes]:
        return keyfmt.create(keys, password, kdf, nonce=nonce(label), **members)

    kf, raw = key_file(wo, "keyfile.write-only")
    assert keyfmt.unlock(keyfmt.decode_keyfile(raw), password) == wo
    kek = crypto.derive_key(password, kdf)
    case = {
        "description": "a write-only key file (§4.4): the index, ID and chunker keys, the "
        "public key, and the config's document and SHA-256; no data key",
        "password": h(password),
        "salt": h(salt),
        "opslimit": KDF_OPS,
        "memlimit": KDF_MEM,
        **members,
        "nonce": h(nonce("keyfile.write-only")),
        "kek": h(kek),
        "ad": h(keyfmt.bound_members(kf)),
        "check": h(crypto.key_check(kek)),
        "data_key": h(KEYS.data_key),
        "config_file": h(raw_config),
        "write_only_keys": {
            "chunker": h(wo.chunker_key),
            "config": h(wo.config),
            "config_sha256": h(wo.config_sha256),
            "id": h(wo.id_key),
            "index": h(wo.index_key),
            "public": h(wo.public),
        },
        "write_only_keys_msgpack": h(wo.encode()),
        "sealed_keys": h(kf.sealed_keys),
        "file": h(raw),
        "file_text": raw.decode(),
        "key_id": h(storage_id(raw)),
    }
    doc = json.loads(raw)
    relabelled = (json.dumps(dict(doc, type="full"), sort_keys=True, indent=1) + "\n").encode()
    no_public = msgpack.unpackb(wo.encode())
    del no_public["public"]
    short = dict(msgpack.unpackb(wo.encode()), index=bytes(16))
    invalid = []
    for desc, file, pw in (
        ("wrong password", raw, b"read always"),
        ("relabelled 'full' (the type is bound: altered)", relabelled, password),
        (
            "no public key in the sealed map",
            key_file(_Material("write-only", msgpack.packb(no_public)), "kwo.1")[1],
            password,
        ),
        (
            "an index key of 16 bytes",
            key_file(_Material("write-only", msgpack.packb(short)), "kwo.2")[1],
            password,
        ),
        (
            "full master keys in a write-only key file",
            key_file(_Material("write-only", KEYS.encode()), "kwo.3")[1],
            password,
        ),
    ):
        invalid.append(
            {
                "description": desc,
                "password": h(pw),
                "file": h(file),
                "error": error_name(unlock_keyfile, file, pw),
            }
        )
    other = configfmt.encode_config(
        configfmt.Config(bytes(range(0xA0, 0xC0)), ChunkerParams()),
        KEYS.data_key,
        nonce("keyfile.write-only.other"),
    )
    refused_configs = [
        {
            "description": "another repository's config: its SHA-256 is not the key's",
            "config_file": h(other),
            "error": error_name(
                configfmt.decode_config_for_write_only, other, wo.config, wo.config_sha256
            ),
        },
        {
            "description": "this config with one byte of its seal changed",
            "config_file": h(raw_config[:-1] + bytes([raw_config[-1] ^ 1])),
            "error": error_name(
                configfmt.decode_config_for_write_only,
                raw_config[:-1] + bytes([raw_config[-1] ^ 1]),
                wo.config,
                wo.config_sha256,
            ),
        },
    ]
    return {
        "description": "Write-only key files (§4.1, §4.4): type 'write-only', the sealed map "
        "holds chunker, config (canonical msgpack of the config document, §3.1), "
        "config_sha256 (SHA-256 of the config file), id, index and public (the X25519 public "
        "key of §5.5); the config is trusted only for the stored config of that hash",
        "cases": [case],
        "invalid": invalid,
        "invalid_configs": refused_configs,
    }


def lock_json(info: lockfmt.LockInfo) -> dict[str, Any]:
    return {
        "hostname": info.hostname,
        "username": info.username,
        "pid": info.pid,
        "time_ns": info.time_ns,
        "exclusive": info.exclusive,
        "command": info.command,
        "started_ns": info.started_ns,
    }


def gen_lock() -> dict[str, Any]:
    cases = []
    for i, (desc, info) in enumerate(
        (
            (
                "shared lock of a backup",
                lockfmt.LockInfo(
                    "host1",
                    "alice",
                    4242,
                    1_700_000_000_000_000_000,
                    False,
                    "backup",
                    1_699_999_880_000_000_000,
                ),
            ),
            (
                "exclusive lock of a prune",
                lockfmt.LockInfo("host2", "root", 1, 1_700_000_120_000_000_000, True, "prune"),
            ),
        )
    ):
        n = nonce(f"lock.{i}")
        sealed = lockfmt.encode_lock(info, KEYS.index_key, n)
        assert lockfmt.decode_lock(sealed, KEYS.index_key) == info
        cases.append(
            {
                "description": desc,
                "index_key": h(KEYS.index_key),
                "nonce": h(n),
                "lock": lock_json(info),
                **sealed_doc_json(KEYS.index_key, lockfmt.LOCK_AD, sealed),
                "file_id": h(storage_id(sealed)),
            }
        )
    base = {
        "v": 1,
        "hostname": "h",
        "username": "u",
        "pid": 7,
        "time": 0,
        "exclusive": False,
        "command": "backup",
    }
    invalid = []
    for i, (desc, doc) in enumerate(
        (
            ("pid 0 (would address a process group)", dict(base, pid=0)),
            ("exclusive given as an integer", dict(base, exclusive=1)),
            ("lock version 2", dict(base, v=2)),
        )
    ):
        sealed = codec.seal_document(KEYS.index_key, lockfmt.LOCK_AD, doc, nonce(f"lock.bad.{i}"))
        invalid.append(
            {
                "description": desc,
                "index_key": h(KEYS.index_key),
                "sealed": h(sealed),
                "error": error_name(lockfmt.decode_lock, sealed, KEYS.index_key),
            }
        )
    return {
        "description": "Lock files (§13): canonical msgpack sealed under the index key, "
        "AD 'cas.lock.v1'",
        "cases": cases,
        "invalid": invalid,
    }


def generation_json(g: genfmt.Generation) -> dict[str, Any]:
    return {
        "n": g.n,
        "repo": h(g.repo_id),
        "time_ns": g.time_ns,
        "snapshots": [h(s) for s in g.snapshots],
        "prev": None if g.prev is None else h(g.prev),
        "forgotten": [h(s) for s in g.forgotten],
        "retired": [h(s) for s in g.retired],
        "command": g.command,
        "accepted": g.accepted,
    }


def gen_generation() -> dict[str, Any]:
    repo = bytes(range(0x80, 0xA0))
    snap = [bytes([i]) * 32 for i in (1, 2, 3)]
    first = genfmt.Generation(1, repo, 1_700_000_000_000_000_000, snap[:2], command="snapshot")
    first_sealed = genfmt.encode_generation(first, KEYS.index_key, nonce("generation.0"))
    second = genfmt.Generation(
        2,
        repo,
        1_700_000_060_000_000_000,
        [snap[1]],
        prev=storage_id(first_sealed),
        forgotten=[snap[0]],
        retired=[bytes([0x44]) * 32],
        command="forget",
    )
    third = genfmt.Generation(
        5,
        repo,
        1_700_000_120_000_000_000,
        [snap[1], snap[2]],
        prev=bytes([0x55]) * 32,
        forgotten=[snap[0]],
        command="trust --accept",
        accepted=True,
    )
    cases = []
    for i, (desc, g) in enumerate(
        (
            ("generation 1: a backup's snapshot, no previous record", first),
            ("generation 2: a forget's tombstone and a retired index file", second),
            ("generation 5: an accepted change (cas trust --accept) above a rollback", third),
        )
    ):
        n = nonce(f"generation.{i}")
        sealed = genfmt.encode_generation(g, KEYS.index_key, n)
        assert genfmt.decode_generation(sealed, KEYS.index_key) == g
        cases.append(
            {
                "description": desc,
                "index_key": h(KEYS.index_key),
                "nonce": h(n),
                "name": f"index/gen-{g.n:016x}",
                "generation": generation_json(g),
                **sealed_doc_json(KEYS.index_key, genfmt.GENERATION_AD, sealed),
                "record_sha256": h(storage_id(sealed)),
            }
        )
    base = {"v": 1, "n": 1, "repo": repo, "time": 0, "snapshots": [], "command": ""}
    invalid = []
    for i, (desc, doc) in enumerate(
        (
            ("generation 0", dict(base, n=0)),
            ("a snapshot ID of 31 bytes", dict(base, snapshots=[bytes(31)])),
            ("prev that is not an ID", dict(base, prev=b"x")),
            ("accepted given as an integer", dict(base, accepted=1)),
            ("record version 2", dict(base, v=2)),
            ("a tombstone listed twice", dict(base, forgotten=[bytes(32), bytes(32)])),
            ("snapshots not sorted", dict(base, snapshots=[b"\x01" * 32, bytes(32)])),
        )
    ):
        sealed = codec.seal_document(
            KEYS.index_key, genfmt.GENERATION_AD, doc, nonce(f"generation.bad.{i}")
        )
        invalid.append(
            {
                "description": desc,
                "index_key": h(KEYS.index_key),
                "sealed": h(sealed),
                "error": error_name(genfmt.decode_generation, sealed, KEYS.index_key),
            }
        )
    return {
        "description": "Generation records (§13.6): canonical msgpack sealed under the index "
        "key, AD 'cas.generation.v1', stored as index/gen-<n as 16 hex digits>",
        "cases": cases,
        "invalid": invalid,
    }


GENERATORS: dict[str, Callable[[], dict[str, Any]]] = {
    "kdf.json": gen_kdf,
    "aead.json": gen_aead,
    "scheme1.json": gen_scheme1,
    "blob_id.json": gen_blob_id,
    "chunker.json": gen_chunker,
    "compress.json": gen_compress,
    "pack.json": gen_pack,
    "index.json": gen_index,
    "tree.json": gen_tree,
    "snapshot.json": gen_snapshot,
    "config.json": gen_config,
    "keyfile.json": gen_keyfile,
    "keyfile_write_only.json": gen_keyfile_write_only,
    "lock.json": gen_lock,
    "generation.json": gen_generation,
}


def render(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> file text for every vector file."""
    return {name: render(gen()) for name, gen in GENERATORS.items()}


def diff_summary(name: str, old: str, new: str) -> str:
    """One line saying where a vector file first differs."""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=False), 1):
        if a != b:
            return (
                f"{name}: differs from line {i}: stored {a.strip()[:60]!r}, now {b.strip()[:60]!r}"
            )
    return f"{name}: differs in length ({len(old_lines)} lines stored, {len(new_lines)} now)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--dir", type=Path, default=VECTOR_DIR, help="vector directory")
    args = parser.parse_args(argv)
    files = generate()
    if not args.check:
        args.dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (args.dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {len(files)} files to {args.dir}")
        return 0
    problems = []
    for name, text in files.items():
        path = args.dir / name
        if not path.exists():
            problems.append(f"{name}: missing")
            continue
        stored = path.read_text(encoding="utf-8")
        if stored != text:
            problems.append(diff_summary(name, stored, text))
    for path in sorted(args.dir.glob("*.json")):
        if path.name not in files:
            problems.append(f"{path.name}: not produced by this generator")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) with the vector files in {args.dir}", file=sys.stderr)
        return 1
    print(f"all {len(files)} vector files match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
