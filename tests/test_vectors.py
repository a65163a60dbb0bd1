"""Known-answer tests: the code reproduces every file in spec/vectors/ (spec/format.md §17).

Each vector is checked in both directions where the format allows it:
decoding the stored bytes gives the recorded values, and encoding the
values with the recorded nonce gives the stored bytes.  Encoder output that
went through zstd is compared only when the zstd library is the version the
vectors were made with (compress.json), since compressed bytes may change
between zstd versions without any change to the format.

The tests also carry small reference implementations of §7 written from the
spec's text (the permutation and the cut-point search), so the spec, the
vectors and the code are checked against each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import msgpack
import pytest
import zstandard
from fastcdc import fastcdc_py

from cas import crypto, errors
from cas.chunking.chunker import Chunker, ChunkerParams
from cas.crypto import BlobType, KdfParams, MasterKeys
from cas.format import compress
from cas.format import config as configfmt
from cas.format import generation as genfmt
from cas.format import index as indexfmt
from cas.format import keyfile as keyfmt
from cas.format import lock as lockfmt
from cas.format import pack as packfmt
from cas.format import snapshot as snapfmt
from cas.format import tree as treefmt
from cas.ids import storage_id

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "spec" / "vectors"
EXPECTED_FILES = {
    "kdf.json",
    "aead.json",
    "blob_id.json",
    "chunker.json",
    "compress.json",
    "pack.json",
    "index.json",
    "tree.json",
    "snapshot.json",
    "config.json",
    "keyfile.json",
    "keyfile_write_only.json",
    "lock.json",
    "scheme1.json",
    "generation.json",
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def b(text: str) -> bytes:
    return bytes.fromhex(text)


def cases(name: str, key: str = "cases") -> list[Any]:
    """pytest params for the list ``key`` of vector file ``name``, labelled by description."""
    return [pytest.param(c, id=c["description"]) for c in load(name).get(key, [])]


ZSTD_SAME = ".".join(map(str, zstandard.ZSTD_VERSION)) == load("compress.json")["zstd_version"]


def assert_encoded(actual: bytes, expected_hex: str, payload_hex: str) -> None:
    """Encoder output equals the vector, unless it holds zstd output from another zstd version."""
    if payload_hex.startswith("01") and not ZSTD_SAME:
        return
    assert actual.hex() == expected_hex


def assert_error(name: str, fn: Callable[[], object]) -> None:
    """``fn`` raises the cas error class called ``name`` (exactly that class)."""
    with pytest.raises(errors.CasError) as info:
        fn()
    assert type(info.value).__name__ == name, str(info.value)


def canonical(obj: Any) -> bytes:
    """Canonical msgpack as §11.2 states it: maps with sorted keys, bin for bytes, str for text."""

    def sort(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: sort(o[k]) for k in sorted(o)}
        if isinstance(o, list):
            return [sort(v) for v in o]
        return o

    raw: bytes = msgpack.packb(sort(obj), use_bin_type=True)
    return raw


def master_keys(j: dict[str, str]) -> MasterKeys:
    return MasterKeys(b(j["data"]), b(j["index"]), b(j["id"]), b(j["chunker"]))


def test_every_vector_file_is_present_and_described() -> None:
    assert {p.name for p in VECTORS.glob("*.json")} == EXPECTED_FILES
    for name in EXPECTED_FILES:
        doc = load(name)
        assert doc["description"]
        for key in ("cases", "invalid"):
            for c in doc.get(key, []):
                assert c["description"]


def test_generator_check_mode_passes() -> None:
    """tools/gen_vectors.py --check recomputes every file and finds no difference."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


# -- §4.2 KDF, §5 sealing, §6 IDs -------------------------------------------------------


@pytest.mark.parametrize("c", cases("kdf.json"))
def test_kdf(c: dict[str, Any]) -> None:
    params = KdfParams(b(c["salt"]), c["opslimit"], c["memlimit"])
    assert crypto.derive_key(b(c["password"]), params).hex() == c["key"]


@pytest.mark.parametrize("c", cases("aead.json"))
def test_aead(c: dict[str, Any]) -> None:
    key, nonce, ad, pt = b(c["key"]), b(c["nonce"]), b(c["ad"]), b(c["plaintext"])
    sealed = b(c["sealed"])
    assert crypto.seal(key, pt, ad, nonce) == sealed
    assert crypto.open_sealed(key, sealed, ad, "vector") == pt
    # scheme 0 | nonce | ciphertext (as long as the plaintext) | 16-byte tag
    assert sealed[0] == 0 and sealed[1:25] == nonce and len(sealed) == 1 + 24 + len(pt) + 16


@pytest.mark.parametrize("c", cases("aead.json", "invalid"))
def test_aead_invalid(c: dict[str, Any]) -> None:
    assert_error(
        c["error"], lambda: crypto.open_sealed(b(c["key"]), b(c["sealed"]), b(c["ad"]), "v")
    )


@pytest.mark.parametrize("c", cases("scheme1.json"))
def test_scheme1(c: dict[str, Any]) -> None:
    """§5.5: sealed to the repository's public key; the data key opens it, the
    symmetric opener of v1 refuses it as newer."""
    secret, public = crypto.x25519_secret(b(c["data_key"])), b(c["public"])
    assert secret.hex() == c["secret"] and crypto.x25519_public(secret) == public
    ad, pt, sealed = b(c["ad"]), b(c["plaintext"]), b(c["sealed"])
    assert crypto.seal_to_public(public, pt, ad, b(c["ephemeral_secret"]), b(c["nonce"])) == sealed
    assert sealed[0] == 1 and sealed[1:33].hex() == c["ephemeral_public"]
    assert sealed[33:57].hex() == c["nonce"] and len(sealed) == 73 + len(pt)
    keys = MasterKeys(b(c["data_key"]), bytes(32), bytes(32), bytes(32))
    assert keys.public_key() == public and keys.data.open(sealed, ad, "v") == pt
    assert crypto.open_sealed_to_public(secret, sealed, ad, "v") == pt
    assert_error(
        "UnsupportedVersion", lambda: crypto.open_sealed(b(c["data_key"]), sealed, ad, "v")
    )


@pytest.mark.parametrize("c", cases("scheme1.json", "invalid"))
def test_scheme1_invalid(c: dict[str, Any]) -> None:
    keys = MasterKeys(b(c["data_key"]), bytes(32), bytes(32), bytes(32))
    assert_error(c["error"], lambda: keys.data.open(b(c["sealed"]), b(c["ad"]), "v"))


@pytest.mark.parametrize("c", cases("blob_id.json"))
def test_ids(c: dict[str, Any]) -> None:
    data = b(c["plaintext"])
    if c["kind"] == "blob":
        key = b(c["id_key"])
        assert crypto.blob_id(key, BlobType(c["type"]), data).hex() == c["id"]
        # §6: keyed BLAKE3 over the type byte followed by the plaintext.
        assert blake3.blake3(bytes((c["type"],)) + data, key=key).hexdigest() == c["id"]
    elif c["kind"] == "file_digest":
        key = b(c["id_key"])
        d = crypto.FileDigest(key)
        for i in range(0, len(data), 700):
            d.update(data[i : i + 700])
        assert d.digest().hex() == c["id"]
        assert blake3.blake3(b"\x02" + data, key=key).hexdigest() == c["id"]
    else:
        assert storage_id(data).hex() == c["id"] == hashlib.sha256(data).hexdigest()


# -- §7 chunking ------------------------------------------------------------------


def spec_permutation(chunker_key: bytes) -> bytes:
    """§7.1 as written: Fisher-Yates driven by the keyed BLAKE3 XOF, with rejection."""
    words = struct.unpack(
        "<2048I",
        blake3.blake3(b"cas.chunker.permutation.v1", key=chunker_key).digest(length=8192),
    )
    perm, w = list(range(256)), 0
    for i in range(255, 0, -1):
        while True:
            r, w = words[w], w + 1
            if r < 2**32 - (2**32 % (i + 1)):
                break
        j = r % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return bytes(perm)


def spec_constants(min_size: int, avg_size: int, max_size: int) -> dict[str, int]:
    """§7.3's derived values."""
    bits = round(math.log2(avg_size))
    center = avg_size - min(min_size + (min_size + 1) // 2, avg_size)
    return {
        "bits": bits,
        "mask_s": 2 ** (bits + 1) - 1,
        "mask_l": 2 ** (bits - 1) - 1,
        "center_size": min(center, max_size),
    }


def spec_cut_points(
    data: bytes, perm: bytes, min_size: int, avg_size: int, max_size: int
) -> list[int]:
    """§7.3's cut-point search over a whole stream, as written (slow: for short inputs)."""
    k = spec_constants(min_size, avg_size, max_size)
    gear = fastcdc_py.GEAR
    p = data.translate(perm)
    ends, start = [], 0
    while start < len(p):
        n = min(len(p) - start, max_size)
        i, h, cut = min(min_size, n), 0, None
        while i < n:
            h = (h >> 1) + gear[p[start + i]]
            mask = k["mask_s"] if i < k["center_size"] else k["mask_l"]
            if h & mask == 0:
                cut = i + 1
                break
            i += 1
        start += cut if cut is not None else n
        ends.append(start)
    return ends


def chunker_stream(s: dict[str, Any]) -> bytes:
    return bytes(
        blake3.blake3(s["stream_context"].encode(), key=b(s["stream_key"])).digest(
            length=s["length"]
        )
    )


@pytest.fixture(scope="module")
def chunker_vectors() -> dict[str, Any]:
    return load("chunker.json")


@pytest.fixture(scope="module")
def stream(chunker_vectors: dict[str, Any]) -> bytes:
    data = chunker_stream(chunker_vectors["stream"])
    assert hashlib.sha256(data).hexdigest() == chunker_vectors["stream"]["sha256"]
    return data


def run_permutation(vectors: dict[str, Any], run: dict[str, Any]) -> bytes:
    if run["permutation"] == "identity":
        return bytes(range(256))
    return crypto.chunker_permutation(b(vectors["chunker_key"]))


def test_chunker_permutations(chunker_vectors: dict[str, Any]) -> None:
    for c in chunker_vectors["permutations"]:
        perm = crypto.chunker_permutation(b(c["chunker_key"]))
        assert perm.hex() == c["permutation"]
        assert spec_permutation(b(c["chunker_key"])) == perm
        assert sorted(perm) == list(range(256))


def test_chunker_cut_points(chunker_vectors: dict[str, Any], stream: bytes) -> None:
    for run in chunker_vectors["runs"]:
        params = ChunkerParams(run["min"], run["avg"], run["max"])
        assert spec_constants(run["min"], run["avg"], run["max"]) == run["derived"]
        chunker = Chunker(run_permutation(chunker_vectors, run), params)
        assert chunker.cut_points(stream) == run["chunk_ends"], run["description"]


def test_chunker_streaming_with_short_reads(chunker_vectors: dict[str, Any], stream: bytes) -> None:
    """Cut points do not depend on how the input arrives (§7.4)."""
    for run in chunker_vectors["runs"]:
        params = ChunkerParams(run["min"], run["avg"], run["max"])
        chunker = Chunker(
            run_permutation(chunker_vectors, run), params, buffer_size=3 * run["max"] + 1
        )
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            out = stream[pos : pos + min(n, 777_777)]
            pos += len(out)
            return out

        ends, total = [], 0
        for chunk in chunker.iter_chunks(read):
            total += len(chunk)
            ends.append(total)
        assert ends == run["chunk_ends"], run["description"]


def test_spec_cut_point_search_matches_the_code(
    chunker_vectors: dict[str, Any], stream: bytes
) -> None:
    """The pseudo-code of §7.3 gives the code's cut points (small parameters, 1 MiB prefix)."""
    prefix = stream[: 1 << 20]
    for run in chunker_vectors["runs"]:
        if run["max"] > len(prefix) // 2:
            continue
        perm = run_permutation(chunker_vectors, run)
        expected = spec_cut_points(prefix, perm, run["min"], run["avg"], run["max"])
        params = ChunkerParams(run["min"], run["avg"], run["max"])
        assert Chunker(perm, params).cut_points(prefix) == expected
        # Cuts made with max bytes in view are final, so they appear in the full-stream vector.
        final = [
            e
            for s, e in zip([0, *expected], expected, strict=False)
            if s + run["max"] <= len(prefix)
        ]
        assert final and final == run["chunk_ends"][: len(final)]


# -- §8 compression ---------------------------------------------------------------


@pytest.mark.parametrize("c", cases("compress.json"))
def test_compress(c: dict[str, Any]) -> None:
    data, payload = b(c["input"]), b(c["payload"])
    assert compress.decode_payload(payload, len(data), "vector") == data
    assert_encoded(compress.encode_payload(data, c["level"]), c["payload"], c["payload"])
    if payload[0] == 1:
        assert zstandard.get_frame_parameters(payload[1:]).content_size == len(data)


@pytest.mark.parametrize("c", cases("compress.json", "invalid"))
def test_compress_invalid(c: dict[str, Any]) -> None:
    assert_error(c["error"], lambda: compress.decode_payload(b(c["payload"]), c["max_size"], "v"))


# -- §9 packs, §10 index files ------------------------------------------------------


def entries_of(j: list[dict[str, Any]]) -> list[packfmt.PackEntry]:
    return [
        packfmt.PackEntry(
            b(e["id"]), BlobType(e["type"]), e["offset"], e["length"], e["raw_length"]
        )
        for e in j
    ]


@pytest.mark.parametrize("p", cases("pack.json", "packs"))
def test_pack(p: dict[str, Any]) -> None:
    keys = master_keys(load("pack.json")["master_keys"])
    pack = b(p["pack"])
    entries = entries_of(p["entries"])
    # decode: the whole pack parses to the entries and every blob opens and re-hashes
    assert packfmt.parse_pack(keys, pack) == entries
    assert storage_id(pack).hex() == p["pack_id"]
    for blob, e in zip(p["blobs"], entries, strict=True):
        sealed = pack[e.offset : e.offset + e.length]
        assert sealed.hex() == blob["sealed"]
        plain = packfmt.open_blob(keys, BlobType(blob["type"]), b(blob["id"]), sealed, e.raw_length)
        assert plain.hex() == blob["plaintext"]
        inner = crypto.open_sealed(keys.data_key, sealed, crypto.blob_ad(e.type, e.blob_id), "v")
        assert inner.hex() == blob["payload"]
    # layout (§9.1): header entries, sealed header, u32 LE length, magic
    assert pack[-4:] == b"CPK1"
    n = int.from_bytes(pack[-8:-4], "little")
    header = crypto.open_sealed(keys.index_key, pack[-8 - n : -8], b"cas.pack.v1", "v")
    assert header.hex() == p["header_plaintext"]
    assert len(header) == 41 * len(entries)
    for i, e in enumerate(entries):
        rec = header[41 * i : 41 * (i + 1)]
        assert rec == bytes((e.type,)) + struct.pack("<II", e.length, e.raw_length) + e.blob_id
    assert sum(e.length for e in entries) + n + 8 == len(pack)
    # encode: the same blobs and nonces give the same bytes
    parts = []
    for blob in p["blobs"]:
        t, pt = BlobType(blob["type"]), b(blob["plaintext"])
        assert crypto.blob_id(keys.id_key, t, pt).hex() == blob["id"]
        assert_encoded(compress.encode_payload(pt, blob["level"]), blob["payload"], blob["payload"])
        sealed = packfmt.seal_blob(keys, t, b(blob["id"]), pt, blob["level"], b(blob["nonce"]))
        assert_encoded(sealed, blob["sealed"], blob["payload"])
        parts.append(b(blob["sealed"]))
    assert packfmt.encode_header(entries).hex() == p["header_plaintext"]
    tail = packfmt.encode_pack_tail(keys, entries, b(p["header_nonce"]))
    assert b"".join(parts) + tail == pack


@pytest.mark.parametrize("p", cases("pack.json", "packs_v2"))
def test_pack_v2(p: dict[str, Any]) -> None:
    """§9.6: 'CPK2', the count first, zero padding to the bucket; §8.1: padded
    payloads."""
    keys = master_keys(load("pack.json")["master_keys"])
    pack = b(p["pack"])
    entries = entries_of(p["entries"])
    assert packfmt.parse_pack(keys, pack) == entries
    assert storage_id(pack).hex() == p["pack_id"]
    assert pack[-4:] == b"CPK2"
    n = int.from_bytes(pack[-8:-4], "little")
    header = crypto.open_sealed(keys.index_key, pack[-8 - n : -8], b"cas.pack.v1", "v")
    assert header.hex() == p["header_plaintext"]
    count = int.from_bytes(header[:4], "little")
    assert count == len(entries) and not any(header[4 + 41 * count :])
    assert len(header) == 4 + 41 * 256
    assert len(pack) == packfmt.pack_size(2, sum(e.length for e in entries), len(entries))
    parts = []
    for blob, e in zip(p["blobs"], entries, strict=True):
        t, pt, level = BlobType(blob["type"]), b(blob["plaintext"]), blob["level"]
        sealed = pack[e.offset : e.offset + e.length]
        assert sealed.hex() == blob["sealed"]
        assert packfmt.open_blob(keys, t, b(blob["id"]), sealed, e.raw_length) == pt
        inner = crypto.open_sealed(keys.data_key, sealed, crypto.blob_ad(t, e.blob_id), "v")
        if p["padding"] is not None:
            assert inner.hex() == blob["padded_payload"]
            assert len(sealed) == packfmt.padme(len(sealed))
            assert packfmt.unpad_payload(inner, "v").hex() == blob["payload"]
        else:
            assert inner.hex() == blob["payload"]
        again = packfmt.seal_blob(keys, t, e.blob_id, pt, level, b(blob["nonce"]), p["padding"])
        assert_encoded(again, blob["sealed"], blob["payload"])
        parts.append(sealed)
    tail = packfmt.encode_pack_tail(keys, entries, b(p["header_nonce"]), 2)
    assert b"".join(parts) + tail == pack


@pytest.mark.parametrize("c", cases("pack.json", "invalid_v2_headers"))
def test_pack_v2_header_invalid(c: dict[str, Any]) -> None:
    keys = master_keys(load("pack.json")["master_keys"])
    sealed = b(c["sealed_header"])
    assert_error(c["error"], lambda: packfmt.decode_header(keys, sealed, c["pack_size"], 2))


def test_padme_lengths() -> None:
    for c in load("pack.json")["padme"]:
        assert packfmt.padme(c["length"]) == c["padded"]


@pytest.mark.parametrize("c", cases("pack.json", "invalid"))
def test_pack_invalid(c: dict[str, Any]) -> None:
    keys = master_keys(load("pack.json")["master_keys"])
    assert_error(c["error"], lambda: packfmt.parse_pack(keys, b(c["pack"])))


@pytest.mark.parametrize("c", cases("pack.json", "invalid_blobs"))
def test_blob_swap_detected(c: dict[str, Any]) -> None:
    keys = master_keys(load("pack.json")["master_keys"])
    assert_error(
        c["error"], lambda: packfmt.open_blob(keys, BlobType(c["type"]), b(c["id"]), b(c["sealed"]))
    )


def open_layers(key: bytes, ad: bytes, c: dict[str, Any]) -> None:
    """sealed -> payload -> msgpack, as recorded."""
    payload = crypto.open_sealed(key, b(c["sealed"]), ad, "v")
    assert payload.hex() == c["payload"]
    assert compress.decode_payload(payload, 1 << 30, "v").hex() == c["msgpack"]
    assert crypto.seal(key, payload, ad, b(c["nonce"])).hex() == c["sealed"]
    assert_encoded(compress.encode_payload(b(c["msgpack"])), c["payload"], c["payload"])


@pytest.mark.parametrize("c", cases("index.json"))
def test_index(c: dict[str, Any]) -> None:
    key = b(c["index_key"])
    open_layers(key, b"cas.index.v1", c)
    idx = indexfmt.decode_index(b(c["sealed"]), key)
    packs = {b(p["id"]): entries_of(p["blobs"]) for p in c["packs"]}
    assert idx.packs == packs
    assert [s.hex() for s in idx.supersedes] == c["supersedes"]
    garbage = {b(p["id"]): (p["marked"], entries_of(p["blobs"])) for p in c["garbage"]}
    assert idx.garbage == garbage
    doc: dict[str, Any] = {
        "v": 1,
        "packs": [
            {
                "id": b(p["id"]),
                "blobs": [
                    [b(e["id"]), e["type"], e["offset"], e["length"], e["raw_length"]]
                    for e in p["blobs"]
                ],
            }
            for p in c["packs"]
        ],
        "supersedes": [b(s) for s in c["supersedes"]],
    }
    if c["garbage"]:
        doc["garbage"] = [
            {
                "id": b(p["id"]),
                "marked": p["marked"],
                "blobs": [
                    [b(e["id"]), e["type"], e["offset"], e["length"], e["raw_length"]]
                    for e in p["blobs"]
                ],
            }
            for p in c["garbage"]
        ]
    assert canonical(doc).hex() == c["msgpack"]
    sealed = indexfmt.encode_index(
        indexfmt.IndexFile(packs, [b(s) for s in c["supersedes"]], garbage), key, b(c["nonce"])
    )
    assert_encoded(sealed, c["sealed"], c["payload"])
    assert storage_id(b(c["sealed"])).hex() == c["file_id"]


@pytest.mark.parametrize("c", cases("index.json", "invalid"))
def test_index_invalid(c: dict[str, Any]) -> None:
    assert_error(c["error"], lambda: indexfmt.decode_index(b(c["sealed"]), b(c["index_key"])))


# -- §11 trees, §12 snapshots -------------------------------------------------------


def node_json(n: treefmt.Node) -> dict[str, Any]:
    return {
        "name": n.name.hex(),
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
        "target": None if n.target is None else n.target.hex(),
        "xattrs": [[k.hex(), v.hex()] for k, v in n.xattrs],
        "flags": n.flags,
        "content": [c.hex() for c in n.content],
        "sizes": list(n.sizes),
        "digest": None if n.digest is None else n.digest.hex(),
        "subtree": None if n.subtree is None else n.subtree.hex(),
        "extra": dict(n.extra),
    }


def opt(value: str | None) -> bytes | None:
    return None if value is None else b(value)


def node_from_json(j: dict[str, Any]) -> treefmt.Node:
    return treefmt.Node(
        name=b(j["name"]),
        type=j["type"],
        mode=j["mode"],
        uid=j["uid"],
        gid=j["gid"],
        user=j["user"],
        group=j["group"],
        size=j["size"],
        mtime_ns=j["mtime_ns"],
        atime_ns=j["atime_ns"],
        ctime_ns=j["ctime_ns"],
        inode=j["inode"],
        device=j["device"],
        links=j["links"],
        rdev=j["rdev"],
        target=opt(j["target"]),
        xattrs=[(b(k), b(v)) for k, v in j["xattrs"]],
        flags=j["flags"],
        content=[b(c) for c in j["content"]],
        sizes=list(j["sizes"]),
        digest=opt(j["digest"]),
        subtree=opt(j["subtree"]),
        extra=dict(j["extra"]),
    )


@pytest.mark.parametrize("c", cases("tree.json"))
def test_tree(c: dict[str, Any]) -> None:
    plaintext = b(c["plaintext"])
    assert [node_json(n) for n in treefmt.decode_tree(plaintext)] == c["nodes"]
    nodes = [node_from_json(j) for j in reversed(c["nodes"])]  # the encoder sorts
    assert treefmt.encode_tree(nodes) == plaintext
    assert crypto.blob_id(b(c["id_key"]), BlobType.TREE, plaintext).hex() == c["id"]
    doc = msgpack.unpackb(plaintext, raw=False)
    assert doc["v"] == 1
    names = [n["name"] for n in doc["nodes"]]
    assert names == sorted(set(names)) and all(isinstance(n, bytes) for n in names)
    assert canonical(doc) == plaintext


@pytest.mark.parametrize("c", cases("tree.json", "invalid"))
def test_tree_invalid(c: dict[str, Any]) -> None:
    assert_error(c["error"], lambda: treefmt.decode_tree(b(c["plaintext"])))


def snapshot_json(s: snapfmt.Snapshot) -> dict[str, Any]:
    return {
        "time_ns": s.time_ns,
        "tree": s.tree.hex(),
        "paths": [p.hex() for p in s.paths],
        "hostname": s.hostname,
        "username": s.username,
        "uid": s.uid,
        "gid": s.gid,
        "tags": list(s.tags),
        "parent": None if s.parent is None else s.parent.hex(),
        "program": s.program,
        "summary": dict(s.summary),
        "extra": dict(s.extra),
    }


@pytest.mark.parametrize("c", cases("snapshot.json"))
def test_snapshot(c: dict[str, Any]) -> None:
    key = b(c["data_key"])
    open_layers(key, b"cas.snapshot.v1", c)
    assert snapshot_json(snapfmt.decode_snapshot(b(c["sealed"]), key)) == c["snapshot"]
    j = c["snapshot_in"]
    snap = snapfmt.Snapshot(
        time_ns=j["time_ns"],
        tree=b(j["tree"]),
        paths=[b(p) for p in j["paths"]],
        hostname=j["hostname"],
        username=j["username"],
        uid=j["uid"],
        gid=j["gid"],
        tags=list(j["tags"]),
        parent=None if j["parent"] is None else b(j["parent"]),
        program=j["program"],
        summary=dict(j["summary"]),
        extra=dict(j["extra"]),
    )
    assert_encoded(snapfmt.encode_snapshot(snap, key, b(c["nonce"])), c["sealed"], c["payload"])
    assert storage_id(b(c["sealed"])).hex() == c["file_id"]


@pytest.mark.parametrize("c", cases("snapshot.json", "invalid"))
def test_snapshot_invalid(c: dict[str, Any]) -> None:
    assert_error(c["error"], lambda: snapfmt.decode_snapshot(b(c["sealed"]), b(c["data_key"])))


# -- §3 config, §4 key files ----------------------------------------------------------


@pytest.mark.parametrize("c", cases("config.json"))
def test_config(c: dict[str, Any]) -> None:
    key, raw = b(c["data_key"]), b(c["file"])
    version = c["version"]
    assert raw[:8] == b"CASREPO" + bytes((version,)) == b(c["header"])
    assert configfmt.read_version(raw) == version
    open_layers(key, raw[:8], c)
    assert raw[8:].hex() == c["sealed"]
    ch = c["chunker"]
    expected = configfmt.Config(
        b(c["repo_id"]),
        ChunkerParams(ch["min"], ch["avg"], ch["max"], ch["algorithm"]),
        c["pack_size"],
        version,
        c["padding"],
    )
    assert configfmt.decode_config(raw, key) == expected
    doc = {
        "v": version,
        "id": b(c["repo_id"]),
        "chunker": ch,
        "pack_size": c["pack_size"],
    }
    if c["padding"] is not None:
        doc["padding"] = c["padding"]
    assert canonical(doc).hex() == c["msgpack"]
    assert_encoded(configfmt.encode_config(expected, key, b(c["nonce"])), c["file"], c["payload"])


@pytest.mark.parametrize("c", cases("config.json", "invalid"))
def test_config_invalid(c: dict[str, Any]) -> None:
    assert_error(c["error"], lambda: configfmt.decode_config(b(c["file"]), b(c["data_key"])))


def _recreated(keys: crypto.KeyBase, password: bytes, c: dict[str, Any], version: int) -> bytes:
    """The key file ``create`` makes from a case's inputs and nonce."""
    _, raw = keyfmt.create(
        keys,
        password,
        KdfParams(b(c["salt"]), c["opslimit"], c["memlimit"], test_only=True),
        created=c["created"],
        hostname=c["hostname"],
        username=c["username"],
        nonce=b(c["nonce"]),
        version=version,
    )
    return raw


@pytest.mark.parametrize("c", cases("keyfile.json"))
def test_keyfile(c: dict[str, Any]) -> None:
    raw, password = b(c["file"]), b(c["password"])
    keys = master_keys(c["master_keys"])
    assert raw.decode() == c["file_text"]
    assert storage_id(raw).hex() == c["key_id"]
    kf = keyfmt.decode_keyfile(raw)
    assert (kf.kdf.salt.hex(), kf.kdf.opslimit, kf.kdf.memlimit) == (
        c["salt"],
        c["opslimit"],
        c["memlimit"],
    )
    assert (kf.created, kf.hostname, kf.username, kf.type, kf.version) == (
        c["created"],
        c["hostname"],
        c["username"],
        "full",
        c["version"],
    )
    assert kf.sealed_keys.hex() == c["sealed_keys"]
    assert keyfmt.unlock(kf, password) == keys
    kek = crypto.derive_key(password, kf.kdf)
    assert kek.hex() == c["kek"]
    if c["version"] == 2:
        assert crypto.key_check(kek).hex() == c["check"] == (kf.check or b"").hex()
        # §4.1: the AD is the constant, then the canonical msgpack of the bound members
        members = {
            "created": c["created"],
            "hostname": c["hostname"],
            "kdf": {
                "algorithm": "argon2id",
                "memlimit": c["memlimit"],
                "opslimit": c["opslimit"],
                "salt": b(c["salt"]),
            },
            "type": "full",
            "username": c["username"],
            "version": 2,
        }
        assert b(c["ad"]) == b"cas.key.v2" + canonical(members) == keyfmt.bound_members(kf)
    else:
        assert c["check"] is None and kf.check is None and b(c["ad"]) == b"cas.key.v1"
    assert (
        crypto.open_sealed(kek, kf.sealed_keys, b(c["ad"]), "v").hex() == c["master_keys_msgpack"]
    )
    assert keys.encode().hex() == c["master_keys_msgpack"]
    assert MasterKeys.decode(b(c["master_keys_msgpack"])) == keys
    # encode: same inputs and nonce give the same file
    assert _recreated(keys, password, c, c["version"]) == raw
    doc = json.loads(raw)
    assert doc["version"] == c["version"] and doc["type"] == "full"
    assert doc["kdf"]["algorithm"] == "argon2id"


@pytest.mark.parametrize("c", cases("keyfile_write_only.json"))
def test_keyfile_write_only(c: dict[str, Any]) -> None:
    raw, password, w = b(c["file"]), b(c["password"]), c["write_only_keys"]
    assert raw.decode() == c["file_text"] and storage_id(raw).hex() == c["key_id"]
    kf = keyfmt.decode_keyfile(raw)
    assert (kf.type, kf.version, kf.sealed_keys.hex()) == ("write-only", 2, c["sealed_keys"])
    keys = keyfmt.unlock(kf, password)
    assert isinstance(keys, crypto.WriteOnlyKey) and not keys.CAN_OPEN_DATA
    assert keys.encode().hex() == c["write_only_keys_msgpack"]
    # §4.4: the sealed map, keys sorted; bin values
    assert canonical({k: b(v) for k, v in w.items()}).hex() == c["write_only_keys_msgpack"]
    assert crypto.WriteOnlyKey.decode(b(c["write_only_keys_msgpack"])) == keys
    full = MasterKeys(b(c["data_key"]), keys.index_key, keys.id_key, keys.chunker_key)
    assert keys.public.hex() == w["public"] == full.public_key().hex()
    kek = crypto.derive_key(password, kf.kdf)
    assert kek.hex() == c["kek"] and crypto.key_check(kek).hex() == c["check"]
    assert keyfmt.bound_members(kf).hex() == c["ad"]
    # The config it carries is the stored config's document, for that config only.
    config_file = b(c["config_file"])
    assert hashlib.sha256(config_file).hexdigest() == w["config_sha256"]
    assert configfmt.decode_config_for_write_only(
        config_file, keys.config, keys.config_sha256
    ) == configfmt.decode_config(config_file, b(c["data_key"]))
    # What it seals only the data key opens (scheme 1, §5.5).
    sealed = keys.data.seal(b"blob", b"ad")
    assert sealed[0] == crypto.SCHEME_PUBLIC and full.data.open(sealed, b"ad", "x") == b"blob"
    with pytest.raises(crypto.KeyIsWriteOnly):
        keys.data.open(sealed, b"ad", "x")
    assert _recreated(keys, password, c, 2) == raw


@pytest.mark.parametrize("c", cases("keyfile_write_only.json", "invalid"))
def test_keyfile_write_only_invalid(c: dict[str, Any]) -> None:
    assert_error(
        c["error"], lambda: keyfmt.unlock(keyfmt.decode_keyfile(b(c["file"])), b(c["password"]))
    )


@pytest.mark.parametrize("c", cases("keyfile_write_only.json", "invalid_configs"))
def test_keyfile_write_only_refused_configs(c: dict[str, Any]) -> None:
    (good,) = load("keyfile_write_only.json")["cases"]
    w = good["write_only_keys"]
    assert_error(
        c["error"],
        lambda: configfmt.decode_config_for_write_only(
            b(c["config_file"]), b(w["config"]), b(w["config_sha256"])
        ),
    )


@pytest.mark.parametrize("c", cases("keyfile.json", "invalid"))
def test_keyfile_invalid(c: dict[str, Any]) -> None:
    assert_error(
        c["error"], lambda: keyfmt.unlock(keyfmt.decode_keyfile(b(c["file"])), b(c["password"]))
    )


# -- §13 lock files -------------------------------------------------------------------


@pytest.mark.parametrize("c", cases("lock.json"))
def test_lock(c: dict[str, Any]) -> None:
    key, j = b(c["index_key"]), c["lock"]
    open_layers(key, b"cas.lock.v1", c)
    info = lockfmt.LockInfo(
        j["hostname"],
        j["username"],
        j["pid"],
        j["time_ns"],
        j["exclusive"],
        j["command"],
        j["started_ns"],
    )
    assert lockfmt.decode_lock(b(c["sealed"]), key) == info
    doc = {
        "v": 1,
        "hostname": j["hostname"],
        "username": j["username"],
        "pid": j["pid"],
        "time": j["time_ns"],
        "exclusive": j["exclusive"],
        "command": j["command"],
        "started": j["started_ns"],
    }
    assert canonical(doc).hex() == c["msgpack"]
    assert_encoded(lockfmt.encode_lock(info, key, b(c["nonce"])), c["sealed"], c["payload"])
    assert storage_id(b(c["sealed"])).hex() == c["file_id"]


@pytest.mark.parametrize("c", cases("lock.json", "invalid"))
def test_lock_invalid(c: dict[str, Any]) -> None:
    assert_error(c["error"], lambda: lockfmt.decode_lock(b(c["sealed"]), b(c["index_key"])))


# -- §13.6 generation records ------------------------------------------------------------


@pytest.mark.parametrize("c", cases("generation.json"))
def test_generation(c: dict[str, Any]) -> None:
    key, j = b(c["index_key"]), c["generation"]
    open_layers(key, b"cas.generation.v1", c)
    g = genfmt.Generation(
        n=j["n"],
        repo_id=b(j["repo"]),
        time_ns=j["time_ns"],
        snapshots=[b(s) for s in j["snapshots"]],
        prev=None if j["prev"] is None else b(j["prev"]),
        forgotten=[b(s) for s in j["forgotten"]],
        retired=[b(s) for s in j["retired"]],
        command=j["command"],
        accepted=j["accepted"],
    )
    assert genfmt.decode_generation(b(c["sealed"]), key) == g
    assert c["name"] == f"index/gen-{g.n:016x}"
    assert_encoded(genfmt.encode_generation(g, key, b(c["nonce"])), c["sealed"], c["payload"])
    assert storage_id(b(c["sealed"])).hex() == c["record_sha256"]


@pytest.mark.parametrize("c", cases("generation.json", "invalid"))
def test_generation_invalid(c: dict[str, Any]) -> None:
    assert_error(c["error"], lambda: genfmt.decode_generation(b(c["sealed"]), b(c["index_key"])))
