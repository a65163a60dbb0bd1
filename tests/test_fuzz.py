"""Hostile input: every decoder, fed arbitrary and mutated bytes, raises only cas errors.

Each decoder of ``cas/format`` (and ``compress.decode_payload``) gets, with
hypothesis:

- arbitrary bytes;
- mutations of a valid encoding (byte flips, truncation, insertion, splices);
- for sealed documents, arbitrary *plaintexts* sealed with the right key and
  associated data: the AEAD rejects every mutated ciphertext, so the parsing
  behind it is reached only this way (payload flag, zstd, msgpack, fields);
- structured documents: valid ones with fields removed, retyped or added.

Whatever the input, the only exceptions allowed out are ``CasError``
subclasses, and anything accepted re-encodes to something that decodes to
the same value.  ``pytest -s`` prints the number of examples per decoder.

Also here: a repository of a newer format version is refused with a clear
message, and a snapshot whose tree belongs to another repository is caught.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import nacl.pwhash
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import crypto
from cas.backend.memory import MemoryBackend
from cas.chunking.chunker import ChunkerParams
from cas.crypto import BlobType, MasterKeys, WriteOnlyKey
from cas.errors import CasError, UnsupportedVersion
from cas.format import compress
from cas.format import config as configfmt
from cas.format import generation as genfmt
from cas.format import index as indexfmt
from cas.format import keyfile as keyfmt
from cas.format import lock as lockfmt
from cas.format import pack as packfmt
from cas.format import snapshot as snapfmt
from cas.format import tree as treefmt
from cas.format.codec import pack_canonical, unpack_map
from cas.repo import layout, open_repository
from tests.support.cli import run_cas
from tests.support.repos import PASSWORD, new_repo, populate

CI_EXAMPLES = 200
LONG_EXAMPLES = 5000
KEYS = MasterKeys(bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96)), bytes(32))
EXAMPLES: dict[str, int] = {}
ACCEPTED: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_examples() -> Iterator[None]:
    yield
    total = sum(EXAMPLES.values())
    print(f"\nfuzz examples: {total} in all; {dict(sorted(EXAMPLES.items()))}")
    print(f"of which accepted: {dict(sorted(ACCEPTED.items()))}")


def only_cas_errors(name: str, decode: Callable[[], Any]) -> Any:
    """Run ``decode``; a CasError means "refused" (None), anything else fails the test."""
    EXAMPLES[name] = EXAMPLES.get(name, 0) + 1
    try:
        out = decode()
        ACCEPTED[name] = ACCEPTED.get(name, 0) + 1
        return out
    except CasError as e:
        # one line for the user, and nothing a hostile input could use to drive a terminal
        assert str(e) and not any(ord(c) < 32 or ord(c) == 127 for c in str(e)), str(e)
        assert len(str(e)) < 500, str(e)
        return None


# -- valid encodings to mutate ------------------------------------------------------------


def _valid_nodes() -> list[treefmt.Node]:
    f = treefmt.Node(
        name=b"file\xff",
        type="file",
        mode=0o644,
        size=10,
        content=[bytes(32), bytes(range(32))],
        sizes=[4, 6],
        digest=bytes(32),
        xattrs=[(b"user.a", b"1")],
        user="root",
        links=2,
        flags=0x10,
    )
    d = treefmt.Node(name=b"dir", type="dir", mode=0o755, subtree=bytes(32))
    link = treefmt.Node(name=b"link", type="symlink", target=b"file\xff", size=5)
    dev = treefmt.Node(name=b"tty", type="chardev", rdev=1025, extra={"future": [1, "x"]})
    # One node of every other type too, so mutations reach each type's rules (spec §11.3).
    empty = treefmt.Node(name=b"empty", type="file", digest=bytes(range(1, 33)))
    disk = treefmt.Node(name=b"sda", type="blockdev", rdev=2048)
    fifo = treefmt.Node(name=b"fifo", type="fifo")
    sock = treefmt.Node(name=b"sock", type="socket")
    return [f, d, link, dev, empty, disk, fifo, sock]


VALID_TREE = treefmt.encode_tree(_valid_nodes())
SNAPSHOT = snapfmt.Snapshot(
    time.time_ns(),
    bytes(32),
    [b"/home", b"/\xff"],
    "host",
    "user",
    tags=["b", "a"],
    parent=bytes(range(32)),
    program="cas test",
    summary={"files": 3, "duration": 1.5, "nothing": None},
    # §12.1: the optional fields of a flagged backup, so their checks are fuzzed too
    extra={
        "changes": {"files": 10, "parent_files": 9, "renamed": 8, "renamed_to": "locked"},
        "anomalies": [{"kind": "renamed", "count": 8, "total": 9, "extension": "locked"}],
    },
)
VALID_SNAPSHOT = snapfmt.encode_snapshot(SNAPSHOT, KEYS.data_key)
ENTRIES = [
    packfmt.PackEntry(bytes(32), BlobType.DATA, 0, 100, 50),
    packfmt.PackEntry(bytes(range(32)), BlobType.DATA, 100, 42, 1),
]
VALID_INDEX = indexfmt.encode_index(
    indexfmt.IndexFile(
        {bytes(range(32)): ENTRIES}, [bytes(32)], {bytes(31) + b"\x01": (5, ENTRIES[:1])}
    ),
    KEYS.index_key,
)
CONFIG = configfmt.Config(bytes(32), ChunkerParams(), 16 << 20)
VALID_CONFIG = configfmt.encode_config(CONFIG, KEYS.data_key)
VALID_CONFIG_DOCUMENT = configfmt.config_plaintext(CONFIG)
LOCK = lockfmt.LockInfo("host", "user", 1234, 5, True, "prune", 3)
VALID_LOCK = lockfmt.encode_lock(LOCK, KEYS.index_key)


def _keyfile(version: int) -> bytes:
    _, raw = keyfmt.create(
        KEYS,
        b"pw",
        crypto.KdfParams(bytes(16), 1, 8192, test_only=True),
        created="2024-01-01T00:00:00Z",
        hostname="h",
        username="u",
        version=version,
    )
    return raw


VALID_KEYFILE = _keyfile(2)
# A version 1 key file (members not bound), as cas wrote before: still decoded.
VALID_KEYFILE_V1 = _keyfile(1)
GENERATION = genfmt.Generation(
    3, bytes(32), 5, [bytes([1]) * 32], bytes([2]) * 32, [bytes([3]) * 32], [], "forget"
)
VALID_GENERATION = genfmt.encode_generation(GENERATION, KEYS.index_key)


def _valid_pack() -> bytes:
    blobs = [b"", b"hello" * 100, bytes(200)]
    body, entries = b"", []
    for data in blobs:
        bid = crypto.blob_id(KEYS.id_key, BlobType.DATA, data)
        sealed = packfmt.seal_blob(KEYS, BlobType.DATA, bid, data)
        entries.append(packfmt.PackEntry(bid, BlobType.DATA, len(body), len(sealed), len(data)))
        body += sealed
    return body + packfmt.encode_pack_tail(KEYS, entries)


VALID_PACK = _valid_pack()
VALID_PAYLOADS = [compress.encode_payload(b"x" * 1000), compress.encode_payload(b"short")]

# -- strategies --------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """A valid encoding, damaged a few times."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            data[pos:] = draw(st.binary(max_size=64)) + bytes(data[pos:])
    return bytes(data)


def hostile(valid: bytes) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, or mutations of ``valid``."""
    return st.one_of(st.binary(max_size=512), mutated(valid))


ints = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 2**32, 2**63 - 1, -(2**63), 2**64 - 1, 41, 42]),
)
scalars = st.one_of(
    st.none(), st.booleans(), ints, st.floats(), st.text(max_size=20), st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.binary(max_size=8), ints), inner, max_size=5
        ),
    ),
    max_leaves=20,
)


@st.composite
def mangled(draw: st.DrawFn, doc: Any) -> Any:
    """A valid document with values removed, replaced or added at any depth."""
    if isinstance(doc, dict) and doc:
        doc = dict(doc)
        key = draw(st.sampled_from(sorted(doc, key=repr)))
        op = draw(st.sampled_from(["drop", "replace", "recurse", "add"]))
        if op == "drop":
            del doc[key]
        elif op == "replace":
            doc[key] = draw(values)
        elif op == "recurse":
            doc[key] = draw(mangled(doc[key]))
        else:
            doc[draw(st.text(max_size=8))] = draw(values)
        return doc
    if isinstance(doc, list) and doc:
        doc = list(doc)
        i = draw(st.integers(0, len(doc) - 1))
        op = draw(st.sampled_from(["drop", "replace", "recurse", "dup"]))
        if op == "drop":
            del doc[i]
        elif op == "replace":
            doc[i] = draw(values)
        elif op == "recurse":
            doc[i] = draw(mangled(doc[i]))
        else:
            doc.insert(i, doc[i])
        return doc
    return draw(values)


def documents(valid_doc: Any) -> st.SearchStrategy[Any]:
    """Documents near ``valid_doc`` (mangled one to three times) and arbitrary ones."""

    @st.composite
    def near(draw: st.DrawFn) -> Any:
        doc = valid_doc
        for _ in range(draw(st.integers(1, 3))):
            doc = draw(mangled(doc))
        return doc

    return st.one_of(near(), values)


def packed(docs: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """msgpack of documents (skipping values msgpack cannot hold), or raw junk."""

    def pack(doc: Any) -> bytes:
        try:
            raw: bytes = msgpack.packb(doc, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return b"\xc1"  # never valid msgpack
        return raw

    return st.one_of(docs.map(pack), st.binary(max_size=256))


_Z = zstandard.ZstdCompressor(write_content_size=True).compress
HOSTILE_PAYLOADS = [
    b"\x01" + struct.pack("<II", 0x184D2A50, 4) + b"skip",  # a skippable frame: no content
    b"\x01" + struct.pack("<II", 0x184D2A50, 4) + b"skip" + _Z(b"a" * 100),
    b"\x01" + _Z(b"a" * 100) + _Z(b"b" * 100),  # two frames
    b"\x01" + _Z(b"a" * 100) + b"junk",
    b"\x01" + _Z(b"a" * 100)[:-3],  # truncated
    b"\x01" + zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 100),
    b"\x01" + _Z(bytes(1 << 20)),  # 1 MiB of zeros in a few bytes: over most bounds
    b"\x02" + b"a" * 10,
    b"",
]


def payloads(plain: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Payloads around ``plain``: stored, compressed, or with a hostile flag or frame."""
    return st.one_of(
        st.sampled_from(HOSTILE_PAYLOADS),
        plain.map(lambda p: b"\x00" + p),
        plain.map(
            lambda p: b"\x01" + zstandard.ZstdCompressor(write_content_size=True).compress(p)
        ),
        plain.map(
            lambda p: b"\x01" + zstandard.ZstdCompressor(write_content_size=False).compress(p)
        ),
        st.binary(max_size=256),
    )


def sealed_plaintexts(key: bytes, ad: bytes, valid_doc: Any) -> st.SearchStrategy[bytes]:
    """Arbitrary plaintexts properly sealed: what an attacker cannot make, a bug could."""
    return payloads(packed(documents(valid_doc))).map(lambda p: crypto.seal(key, p, ad, bytes(24)))


def _doc(key: bytes, ad: bytes, sealed: bytes) -> Any:
    plain = crypto.open_sealed(key, sealed, ad, "test")
    return msgpack.unpackb(compress.decode_payload(plain, 1 << 30, "test"), raw=False)


TREE_DOC = msgpack.unpackb(VALID_TREE, raw=False)
SNAPSHOT_DOC = _doc(KEYS.data_key, snapfmt.SNAPSHOT_AD, VALID_SNAPSHOT)
INDEX_DOC = _doc(KEYS.index_key, indexfmt.INDEX_AD, VALID_INDEX)
CONFIG_DOC = _doc(KEYS.data_key, VALID_CONFIG[:8], VALID_CONFIG[8:])
LOCK_DOC = _doc(KEYS.index_key, lockfmt.LOCK_AD, VALID_LOCK)
GENERATION_DOC = _doc(KEYS.index_key, genfmt.GENERATION_AD, VALID_GENERATION)
KEYFILE_DOC = json.loads(VALID_KEYFILE)
MASTER_DOC = msgpack.unpackb(KEYS.encode(), raw=False)
WRITE_ONLY_DOC = msgpack.unpackb(
    KEYS.write_only(VALID_CONFIG_DOCUMENT, hashlib.sha256(VALID_CONFIG).digest()).encode(),
    raw=False,
)

# -- the properties -------------------------------------------------------------------


def prop_tree(raw: bytes) -> None:
    nodes = only_cas_errors("tree", lambda: treefmt.decode_tree(raw))
    if nodes is not None:  # accepted: re-encoding is stable (compared as bytes: NaN != NaN)
        again = treefmt.encode_tree(nodes)
        assert treefmt.encode_tree(treefmt.decode_tree(again)) == again


def prop_node(doc: Any) -> None:
    node = only_cas_errors("tree node", lambda: treefmt.Node.from_doc(doc))
    if node is not None:
        raw = pack_canonical({"v": 1, **node.to_doc()})
        assert (
            pack_canonical({"v": 1, **treefmt.Node.from_doc(unpack_map(raw, "t")).to_doc()}) == raw
        )


def prop_snapshot(raw: bytes) -> None:
    snap = only_cas_errors("snapshot", lambda: snapfmt.decode_snapshot(raw, KEYS.data_key))
    if snap is not None:
        again = snapfmt.encode_snapshot(snap, KEYS.data_key, bytes(24))
        decoded = snapfmt.decode_snapshot(again, KEYS.data_key)
        assert snapfmt.encode_snapshot(decoded, KEYS.data_key, bytes(24)) == again


def prop_index(raw: bytes) -> None:
    idx = only_cas_errors("index", lambda: indexfmt.decode_index(raw, KEYS.index_key))
    if idx is not None:
        again = indexfmt.encode_index(idx, KEYS.index_key)
        assert indexfmt.decode_index(again, KEYS.index_key) == idx


def prop_config(raw: bytes) -> None:
    only_cas_errors("config version", lambda: configfmt.read_version(raw))
    cfg = only_cas_errors("config", lambda: configfmt.decode_config(raw, KEYS.data_key))
    if cfg is not None:
        again = configfmt.encode_config(cfg, KEYS.data_key)
        assert configfmt.decode_config(again, KEYS.data_key) == cfg


def prop_lock(raw: bytes) -> None:
    info = only_cas_errors("lock", lambda: lockfmt.decode_lock(raw, KEYS.index_key))
    if info is not None:
        assert info.pid > 0
        again = lockfmt.encode_lock(info, KEYS.index_key)
        assert lockfmt.decode_lock(again, KEYS.index_key) == info


def prop_generation(raw: bytes) -> None:
    record = only_cas_errors("generation", lambda: genfmt.decode_generation(raw, KEYS.index_key))
    if record is not None:
        assert record.n >= 1
        again = genfmt.encode_generation(record, KEYS.index_key)
        assert genfmt.decode_generation(again, KEYS.index_key) == record


def prop_keyfile(raw: bytes) -> None:
    kf = only_cas_errors("key file", lambda: keyfmt.decode_keyfile(raw))
    if kf is not None:
        assert keyfmt.decode_keyfile(keyfmt.encode_keyfile(kf)) == kf
        # Unlocking runs Argon2id at the file's cost: only when that is cheap.
        if kf.kdf.opslimit <= 2 and kf.kdf.memlimit <= (1 << 20):
            only_cas_errors("key file unlock", lambda: keyfmt.unlock(kf, b"pw"))
        else:
            only_cas_errors("key file kdf bounds", lambda: _refused_or_costly(kf))


def _refused_or_costly(kf: keyfmt.KeyFile) -> None:
    p = kf.kdf
    if 1 <= p.opslimit <= crypto.MAX_OPSLIMIT and 8192 <= p.memlimit <= crypto.MAX_MEMLIMIT:
        return  # within the allowed ceilings: too slow to run here, and legitimate
    crypto.derive_key(b"pw", p)  # must refuse before deriving


def prop_master_keys(raw: bytes) -> None:
    keys = only_cas_errors("master keys", lambda: MasterKeys.decode(raw))
    if keys is not None:
        assert MasterKeys.decode(keys.encode()) == keys


def prop_write_only_keys(raw: bytes) -> None:
    """A write-only key's sealed map (spec §4.4), and the config document it carries."""
    keys = only_cas_errors("write-only keys", lambda: WriteOnlyKey.decode(raw))
    if keys is not None:
        assert WriteOnlyKey.decode(keys.encode()) == keys
        only_cas_errors(
            "write-only config",
            lambda: configfmt.decode_config_for_write_only(
                VALID_CONFIG, keys.config, hashlib.sha256(VALID_CONFIG).digest()
            ),
        )


def prop_pack(raw: bytes) -> None:
    entries = only_cas_errors("pack", lambda: packfmt.parse_pack(KEYS, raw))
    if entries is None:
        return
    assert sum(e.length for e in entries) + packfmt.TRAILER_SIZE < len(raw) + 1
    for e in entries:
        sealed = raw[e.offset : e.offset + e.length]
        only_cas_errors("pack blob", _opener(e, sealed))


def _opener(e: packfmt.PackEntry, sealed: bytes) -> Callable[[], bytes]:
    return lambda: packfmt.open_blob(KEYS, e.type, e.blob_id, sealed, e.raw_length)


def prop_pack_header(plain: bytes, body: bytes) -> None:
    """A sealed header of arbitrary entries, after arbitrary blob bytes (as a version 1
    and as a version 2 pack, whose header starts with a count and ends in zeros)."""
    tail = crypto.seal(KEYS.index_key, plain, packfmt.PACK_AD, bytes(24))
    for version, magic in ((1, packfmt.TRAILER_MAGIC), (2, packfmt.TRAILER_MAGIC_V2)):
        pack = body + tail + struct.pack("<I", len(tail)) + magic
        only_cas_errors("pack header", lambda p=pack: packfmt.parse_pack(KEYS, p))
        size = len(pack)
        only_cas_errors(
            "pack header",
            lambda n=size, v=version: packfmt.decode_header(KEYS, tail, n, v),
        )


def prop_pack_header_tiled(header_and_body: tuple[bytes, bytes]) -> None:
    prop_pack_header(*header_and_body)
    plain, body = header_and_body
    tail = crypto.seal(KEYS.index_key, plain, packfmt.PACK_AD, bytes(24))
    pack = body + tail + struct.pack("<I", len(tail)) + packfmt.TRAILER_MAGIC
    entries = only_cas_errors("pack header tiled", lambda: packfmt.parse_pack(KEYS, pack))
    if entries is not None:
        assert all(e.type in (BlobType.DATA, BlobType.TREE) for e in entries)
        assert all(e.length > crypto.SEAL_OVERHEAD for e in entries)
        for e in entries:
            only_cas_errors("pack blob", _opener(e, pack[e.offset : e.offset + e.length]))


def prop_trailer(trailer: bytes, size: int) -> None:
    n = only_cas_errors("pack trailer", lambda: packfmt.header_length(trailer, size))
    if n is not None:
        assert crypto.SEAL_OVERHEAD <= n <= size - packfmt.TRAILER_SIZE


def prop_blob(payload: bytes, raw_length: int | None) -> None:
    bid = bytes(32)
    sealed = crypto.seal(KEYS.data_key, payload, crypto.blob_ad(BlobType.DATA, bid), bytes(24))
    data = only_cas_errors(
        "blob", lambda: packfmt.open_blob(KEYS, BlobType.DATA, bid, sealed, raw_length)
    )
    assert data is None  # the ID of all zeros is never right
    inner = only_cas_errors("padded payload", lambda: packfmt.unpad_payload(payload, "p"))
    if inner is not None:  # a padded payload's inner one is never longer
        assert len(inner) <= len(payload) and not (inner and inner[0] & packfmt.PADDED)


def prop_payload(payload: bytes, max_size: int) -> None:
    out = only_cas_errors("payload", lambda: compress.decode_payload(payload, max_size, "p"))
    if out is not None:
        assert len(out) <= max_size


def prop_sealed(sealed: bytes) -> None:
    only_cas_errors("sealed", lambda: crypto.open_sealed(KEYS.data_key, sealed, b"ad", "x"))


def prop_sealed_to_public(sealed: bytes) -> None:
    """Scheme 1 (spec §5.5) through the data key, which opens both schemes."""
    plain = only_cas_errors("scheme 1", lambda: KEYS.data.open(sealed, b"ad", "x"))
    if plain is not None and sealed[:1] == b"\x01":
        assert plain == b"secret"  # nothing else was sealed under this AD and key


# -- the tests ----------------------------------------------------------------------------

SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)


def fuzz(n: int, prop: Callable[..., None], *strategies: st.SearchStrategy[Any]) -> Any:
    """A test running ``prop`` on ``n`` examples of ``strategies``."""

    @settings(max_examples=n, **SETTINGS)  # type: ignore[arg-type]
    @given(st.tuples(*strategies))
    def test(args: tuple[Any, ...]) -> None:
        prop(*args)

    return test


def _tree_docs() -> st.SearchStrategy[bytes]:
    return packed(documents(TREE_DOC))


header_entries = st.tuples(
    st.one_of(st.integers(0, 255), st.sampled_from([0, 1])),
    st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 100)),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=32, max_size=32),
)
header_plaintexts = st.one_of(
    st.binary(max_size=41 * 4),
    st.lists(header_entries, max_size=4).map(
        lambda es: b"".join(struct.pack("<BII32s", *e) for e in es)
    ),
)


@st.composite
def tiled_packs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Header entries whose lengths add up to the blob bytes before them: past the tiling check."""
    entries = draw(
        st.lists(
            st.tuples(
                st.sampled_from([0, 1, 2, 255]),
                st.integers(0, 120),
                st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 200)),
                st.binary(min_size=32, max_size=32),
            ),
            max_size=5,
        )
    )
    plain = b"".join(struct.pack("<BII32s", *e) for e in entries)
    body = draw(st.binary(min_size=sum(e[1] for e in entries), max_size=sum(e[1] for e in entries)))
    return plain, body


TARGETS: dict[str, tuple[Callable[..., None], tuple[st.SearchStrategy[Any], ...]]] = {
    "tree_bytes": (prop_tree, (hostile(VALID_TREE),)),
    "tree_documents": (prop_tree, (_tree_docs(),)),
    "node_documents": (
        prop_node,
        (st.sampled_from(TREE_DOC["nodes"]).flatmap(documents),),
    ),
    "snapshot_bytes": (prop_snapshot, (hostile(VALID_SNAPSHOT),)),
    "snapshot_plaintexts": (
        prop_snapshot,
        (sealed_plaintexts(KEYS.data_key, snapfmt.SNAPSHOT_AD, SNAPSHOT_DOC),),
    ),
    "index_bytes": (prop_index, (hostile(VALID_INDEX),)),
    "index_plaintexts": (
        prop_index,
        (sealed_plaintexts(KEYS.index_key, indexfmt.INDEX_AD, INDEX_DOC),),
    ),
    "config_bytes": (prop_config, (hostile(VALID_CONFIG),)),
    "config_plaintexts": (
        prop_config,
        (
            sealed_plaintexts(KEYS.data_key, VALID_CONFIG[:8], CONFIG_DOC).map(
                lambda s: VALID_CONFIG[:8] + s
            ),
        ),
    ),
    "lock_bytes": (prop_lock, (hostile(VALID_LOCK),)),
    "lock_plaintexts": (
        prop_lock,
        (sealed_plaintexts(KEYS.index_key, lockfmt.LOCK_AD, LOCK_DOC),),
    ),
    "generation_bytes": (prop_generation, (hostile(VALID_GENERATION),)),
    "generation_plaintexts": (
        prop_generation,
        (sealed_plaintexts(KEYS.index_key, genfmt.GENERATION_AD, GENERATION_DOC),),
    ),
    "keyfile_bytes": (prop_keyfile, (hostile(VALID_KEYFILE),)),
    "keyfile_v1_bytes": (prop_keyfile, (hostile(VALID_KEYFILE_V1),)),
    "keyfile_documents": (
        prop_keyfile,
        (
            documents(KEYFILE_DOC).map(
                lambda d: json.dumps(d, default=repr, skipkeys=True).encode()
            ),
        ),
    ),
    "master_keys": (prop_master_keys, (packed(documents(MASTER_DOC)),)),
    "write_only_keys": (prop_write_only_keys, (packed(documents(WRITE_ONLY_DOC)),)),
    "pack_bytes": (prop_pack, (hostile(VALID_PACK),)),
    "pack_headers": (prop_pack_header, (header_plaintexts, st.binary(max_size=300))),
    "pack_headers_tiled": (prop_pack_header_tiled, (tiled_packs(),)),
    "pack_trailer": (prop_trailer, (st.binary(max_size=12), st.integers(-10, 2**40))),
    "blob_payloads": (
        prop_blob,
        (payloads(st.binary(max_size=300)), st.one_of(st.none(), st.integers(0, 2**32))),
    ),
    "payloads": (
        prop_payload,
        (
            st.one_of(payloads(st.binary(max_size=300)), hostile(VALID_PAYLOADS[0])),
            st.integers(0, 1 << 30),
        ),
    ),
    "sealed": (prop_sealed, (hostile(crypto.seal(KEYS.data_key, b"secret", b"ad")),)),
    "sealed_to_public": (
        prop_sealed_to_public,
        (hostile(crypto.seal_to_public(KEYS.public_key(), b"secret", b"ad")),),
    ),
}

for _name, (_prop, _strategies) in TARGETS.items():
    globals()[f"test_fuzz_{_name}"] = fuzz(CI_EXAMPLES, _prop, *_strategies)
    globals()[f"test_fuzz_{_name}_long"] = pytest.mark.slow(
        fuzz(LONG_EXAMPLES, _prop, *_strategies)
    )


# -- versions and other repositories --------------------------------------------------------


@pytest.mark.damaged_repo_ok("a version 3 config: the reader refuses it, as cas does")
def test_newer_repository_version_is_refused_clearly(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = {"CAS_CACHE_DIR": str(tmp_path / "cache")}
    assert run_cas("-r", repo, "init", env=env).code == 0
    cfg = repo / "config"
    raw = bytearray(cfg.read_bytes())
    raw[7] = 3
    cfg.write_bytes(bytes(raw))
    for args in (
        ("snapshots",),
        ("check",),
        ("backup", tmp_path),
        ("restore", "latest", "-t", tmp_path / "out"),
    ):
        r = run_cas("-r", repo, *args, env=env)
        assert r.code == 1, (args, r.code, r.err)
        assert r.err.strip() == (
            "cas: repository has format version 3; this cas (format 2) cannot read it, upgrade cas"
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.damaged_repo_ok("a version 3 config: the reader refuses it, as cas does")
def test_newer_repository_version_is_refused_before_asking_for_a_password(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    env = {"CAS_CACHE_DIR": str(tmp_path / "cache")}
    assert run_cas("-r", repo, "init", env=env).code == 0
    raw = bytearray((repo / "config").read_bytes())
    raw[7] = 3
    (repo / "config").write_bytes(bytes(raw))
    r = run_cas("-r", repo, "snapshots", password=None, env=env)
    assert "upgrade cas" in r.err, r.err


def test_newer_versions_inside_documents_are_refused_as_such() -> None:
    """v = 2 in a sealed document, an unknown sealing scheme, a key file of version 3
    (version 2 is the current one)."""
    doc = dict(INDEX_DOC, v=2)
    sealed = crypto.seal(
        KEYS.index_key, compress.encode_payload(pack_canonical(doc)), indexfmt.INDEX_AD
    )
    with pytest.raises(UnsupportedVersion, match="upgrade cas"):
        indexfmt.decode_index(sealed, KEYS.index_key)
    with pytest.raises(UnsupportedVersion, match="upgrade cas"):
        snapfmt.decode_snapshot(b"\x01" + VALID_SNAPSHOT[1:], KEYS.data_key)
    with pytest.raises(UnsupportedVersion, match="upgrade cas"):
        keyfmt.decode_keyfile(json.dumps(dict(KEYFILE_DOC, version=3)).encode())
    with pytest.raises(UnsupportedVersion, match="upgrade cas"):
        treefmt.decode_tree(pack_canonical(dict(TREE_DOC, v=2)))


def test_snapshot_pointing_into_another_repository_is_detected(tmp_path: Path) -> None:
    """A tree ID of repository A in a snapshot of B: B's check and restore catch it."""
    a = new_repo(MemoryBackend())
    sid_a, _ = populate(a, n_files=2, seed=1)
    tree_a = a.load_snapshot(sid_a).tree
    b_backend = MemoryBackend()
    b = new_repo(b_backend)
    populate(b, n_files=2, seed=1)  # the same content: still other IDs (keyed)
    forged = dataclasses.replace(a.load_snapshot(sid_a))
    forged_id = b.save_snapshot(forged)
    assert forged.tree == tree_a
    b = open_repository(b_backend, PASSWORD)
    from cas.check.checker import CheckOptions, check
    from cas.errors import BlobNotFound

    result = check(b, CheckOptions(read_data=True))
    kinds = {(f.kind, f.object) for f in result.findings}
    assert ("tree_missing", f"tree:{tree_a.hex()}") in kinds, kinds
    assert result.errors >= 1
    with pytest.raises(BlobNotFound):
        b.load_blob(BlobType.TREE, b.load_snapshot(forged_id).tree)
    # A's snapshot file copied into B does not even open (sealed under A's data key).
    raw = a.backend.read(layout.snapshot_name(sid_a))
    b_backend.write(layout.snapshot_name(sid_a), raw)
    result = check(open_repository(b_backend, PASSWORD), CheckOptions())
    assert ("snapshot_damaged", layout.snapshot_name(sid_a)) in {
        (f.kind, f.object) for f in result.findings
    }


def test_key_file_of_another_repository_does_not_open_it() -> None:
    """A key file moved from A to B (same password) opens A's keys, which do not open B's config."""
    a, b = MemoryBackend(), MemoryBackend()
    new_repo(a)
    new_repo(b)
    for o in list(b.list(layout.KEYS)):
        b.delete(o.name)
    for o in a.list(layout.KEYS):
        b.write(o.name, a.read(o.name))
    with pytest.raises(CasError, match="do not open the config"):
        open_repository(b, PASSWORD)


def test_hostile_kdf_costs_are_refused_before_deriving(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key file asking for 1 TiB of memory or 10^6 passes is refused, not obeyed."""

    def must_not_derive(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("Argon2id was run with hostile costs")

    monkeypatch.setattr(nacl.pwhash.argon2id, "kdf", must_not_derive)
    for ops, mem in ((10**6, 8192), (1, 1 << 40), (0, 8192), (1, 1024)):
        doc = dict(KEYFILE_DOC, kdf=dict(KEYFILE_DOC["kdf"], opslimit=ops, memlimit=mem))
        kf = keyfmt.decode_keyfile(json.dumps(doc).encode())
        with pytest.raises(CasError, match="out of range"):
            keyfmt.unlock(kf, b"pw")
    doc = dict(KEYFILE_DOC, kdf=dict(KEYFILE_DOC["kdf"], salt=base64.b64encode(b"x").decode()))
    with pytest.raises(CasError, match="salt"):
        keyfmt.unlock(keyfmt.decode_keyfile(json.dumps(doc).encode()), b"pw")


def test_long_hostile_values_give_short_messages() -> None:
    """A long unsafe name or unknown type in a tree, or chunker name in a config, is shown
    shortened and escaped (atheris found a tree whose error message quoted a 700-byte name)."""
    long_name = b"\x1b[2J" + b"a/" * 400
    for node in (
        dict(TREE_DOC["nodes"][1], name=long_name),
        dict(TREE_DOC["nodes"][1], type="\x1b[2J" + "x" * 800),
    ):
        raw = pack_canonical({"v": 1, "nodes": [node]})
        with pytest.raises(CasError) as info:
            treefmt.decode_tree(raw)
        assert len(str(info.value)) < 120 and "\x1b" not in str(info.value), str(info.value)
    doc = dict(CONFIG_DOC, chunker=dict(CONFIG_DOC["chunker"], algorithm="\n" + "x" * 800))
    sealed = VALID_CONFIG[:8] + crypto.seal(
        KEYS.data_key, compress.encode_payload(pack_canonical(doc)), VALID_CONFIG[:8]
    )
    with pytest.raises(CasError) as info:
        configfmt.decode_config(sealed, KEYS.data_key)
    assert len(str(info.value)) < 120 and "\n" not in str(info.value), str(info.value)
