#!/usr/bin/env python3
"""Coverage-guided fuzzing of cas's decoders with atheris (libFuzzer for Python).

    python tools/fuzz.py --list
    python tools/fuzz.py TARGET [--corpus DIR] [libFuzzer/atheris flags ...]
    python tools/fuzz.py snapshot -atheris_runs=100000
    python tools/fuzz.py pack --corpus /tmp/pack-corpus -max_total_time=600

One target per decoder.  Each feeds the fuzzer's bytes through the same
property as tests/test_fuzz.py (hypothesis): only ``CasError`` subclasses may
escape, their message is one line without control characters, and whatever
is accepted re-encodes stably.  Anything else is a crash: atheris prints the
traceback, writes the input to ``crash-<sha1>`` (see ``-artifact_prefix``)
and exits with status 1.

Sealed documents (snapshot, index, config, lock) are fuzzed through their
*plaintext*: the fuzzer's bytes are the payload (flag byte, then msgpack or a
zstd frame), sealed with the right key and associated data before decoding,
because the AEAD turns every mutated ciphertext away before any parsing (the
``sealed`` and ``*_raw`` targets cover that path).

Seeds come from spec/vectors/*.json (the keys of the vectors are the keys
used here) and from the valid encodings of tests/test_fuzz.py; they are
written to ``--corpus DIR`` (default: a temporary directory removed at exit),
where libFuzzer also keeps the new inputs it finds.  Only cas's own modules
are instrumented; zstd, msgpack and libsodium are C and are fuzzed blind.
Needs ``pip install atheris`` (a manylinux wheel for CPython 3.11).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "spec" / "vectors"
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["cas"]):
    import cas.crypto
    import cas.format.codec
    import cas.format.compress
    import cas.format.config
    import cas.format.generation
    import cas.format.index
    import cas.format.keyfile
    import cas.format.lock
    import cas.format.pack
    import cas.format.snapshot
    import cas.format.tree  # noqa: F401  (imported here to be instrumented)

from cas import crypto  # noqa: E402
from cas.format import generation as genfmt  # noqa: E402
from cas.format import index as indexfmt  # noqa: E402
from cas.format import lock as lockfmt  # noqa: E402
from cas.format import pack as packfmt  # noqa: E402
from cas.format import snapshot as snapfmt  # noqa: E402
from tests import test_fuzz as t  # noqa: E402

KEYS = t.KEYS
CONFIG_HEADER = t.VALID_CONFIG[:8]
MAX_BODY = 1 << 20  # blob bytes made up to tile a fuzzed pack header


def _sealed(key: bytes, ad: bytes) -> Callable[[bytes], bytes]:
    return lambda payload: crypto.seal(key, payload, ad, bytes(24))


def _pack_from_header(plain: bytes) -> None:
    """A fuzzed header plaintext, sealed, after blob bytes that tile the pack when possible."""
    whole = len(plain) - len(plain) % packfmt.ENTRY.size
    total = sum(e[1] for e in packfmt.ENTRY.iter_unpack(plain[:whole]))
    body = bytes(total) if total <= MAX_BODY else plain[:64]
    t.prop_pack_header_tiled((plain, body))


def _blob(data: bytes) -> None:
    """The first 4 bytes are the recorded raw length (all ones: unknown), the rest the payload."""
    head = data[:4].ljust(4, b"\0")
    (n,) = struct.unpack("<I", head)
    t.prop_blob(data[4:], None if n == 0xFFFFFFFF else n)


def _payload(data: bytes) -> None:
    """The first 4 bytes bound the output size, the rest is the payload."""
    (n,) = struct.unpack("<I", data[:4].ljust(4, b"\0"))
    t.prop_payload(data[4:], n)


def _config(data: bytes) -> None:
    t.prop_config(CONFIG_HEADER + _sealed(KEYS.data_key, CONFIG_HEADER)(data))


def _trailer(data: bytes) -> None:
    (size,) = struct.unpack("<Q", data[:8].ljust(8, b"\0"))
    t.prop_trailer(data[8:], size)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "tree": t.prop_tree,
    "snapshot": lambda d: t.prop_snapshot(_sealed(KEYS.data_key, snapfmt.SNAPSHOT_AD)(d)),
    "snapshot_raw": t.prop_snapshot,
    "index": lambda d: t.prop_index(_sealed(KEYS.index_key, indexfmt.INDEX_AD)(d)),
    "index_raw": t.prop_index,
    "config": _config,
    "config_raw": t.prop_config,
    "lock": lambda d: t.prop_lock(_sealed(KEYS.index_key, lockfmt.LOCK_AD)(d)),
    "generation": lambda d: t.prop_generation(_sealed(KEYS.index_key, genfmt.GENERATION_AD)(d)),
    "keyfile": t.prop_keyfile,
    "master_keys": t.prop_master_keys,
    "write_only_keys": t.prop_write_only_keys,
    "pack": t.prop_pack,
    "pack_header": _pack_from_header,
    "pack_trailer": _trailer,
    "blob": _blob,
    "payload": _payload,
    "sealed": t.prop_sealed,
    "sealed_to_public": t.prop_sealed_to_public,
}


def _hex(doc: Any, *path: str) -> list[bytes]:
    """Every value at ``path`` (a list is walked item by item) in a vectors document."""
    if not path:
        return [bytes.fromhex(doc)] if isinstance(doc, str) else []
    if isinstance(doc, list):
        return [b for item in doc for b in _hex(item, *path)]
    if isinstance(doc, dict) and path[0] in doc:
        return _hex(doc[path[0]], *path[1:])
    return []


def _vectors(name: str, *paths: tuple[str, ...]) -> list[bytes]:
    doc = json.loads((VECTORS / f"{name}.json").read_text())
    return [b for p in paths for b in _hex(doc, *p)]


def _payload_of(sealed: bytes, key: bytes, ad: bytes) -> bytes:
    return crypto.open_sealed(key, sealed, ad, "seed")


def seeds(target: str) -> list[bytes]:
    """Valid (and a few refused) inputs of one target, to start from."""
    u32 = struct.Struct("<I").pack
    payloads = _vectors("compress", ("cases", "payload"), ("invalid", "payload"))
    by_target: dict[str, list[bytes]] = {
        "tree": [t.VALID_TREE, *_vectors("tree", ("cases", "plaintext"), ("invalid", "plaintext"))],
        "snapshot": [
            _payload_of(t.VALID_SNAPSHOT, KEYS.data_key, snapfmt.SNAPSHOT_AD),
            *_vectors("snapshot", ("cases", "payload")),
        ],
        "snapshot_raw": [t.VALID_SNAPSHOT, *_vectors("snapshot", ("cases", "sealed"))],
        "index": [
            _payload_of(t.VALID_INDEX, KEYS.index_key, indexfmt.INDEX_AD),
            *_vectors("index", ("cases", "payload")),
        ],
        "index_raw": [
            t.VALID_INDEX,
            *_vectors("index", ("cases", "sealed"), ("invalid", "sealed")),
        ],
        "config": [
            _payload_of(t.VALID_CONFIG[8:], KEYS.data_key, CONFIG_HEADER),
            *_vectors("config", ("cases", "payload")),
        ],
        "config_raw": [t.VALID_CONFIG, *_vectors("config", ("cases", "file"), ("invalid", "file"))],
        "lock": [
            _payload_of(t.VALID_LOCK, KEYS.index_key, lockfmt.LOCK_AD),
            *_vectors("lock", ("cases", "payload")),
        ],
        "generation": [
            _payload_of(t.VALID_GENERATION, KEYS.index_key, genfmt.GENERATION_AD),
            *_vectors("generation", ("cases", "payload")),
        ],
        "keyfile": [
            t.VALID_KEYFILE,
            t.VALID_KEYFILE_V1,
            *_vectors("keyfile", ("cases", "file"), ("invalid", "file")),
        ],
        "master_keys": [KEYS.encode(), *_vectors("keyfile", ("cases", "master_keys_msgpack"))],
        "write_only_keys": _vectors("keyfile_write_only", ("cases", "write_only_keys_msgpack")),
        "pack": [
            t.VALID_PACK,
            *_vectors("pack", ("packs", "pack"), ("packs_v2", "pack"), ("invalid", "pack")),
        ],
        "pack_header": _vectors(
            "pack",
            ("packs", "header_plaintext"),
            ("packs_v2", "header_plaintext"),
            ("invalid_v2_headers", "header_plaintext"),
        ),
        "pack_trailer": [
            struct.pack("<Q", len(t.VALID_PACK)) + t.VALID_PACK[-packfmt.TRAILER_SIZE :]
        ],
        "blob": [
            u32(0xFFFFFFFF) + p
            for p in _vectors(
                "pack", ("packs", "blobs", "payload"), ("packs_v2", "blobs", "padded_payload")
            )
        ],
        "payload": [u32(1 << 20) + p for p in [*payloads, *t.HOSTILE_PAYLOADS]],
        "sealed": _vectors("aead", ("cases", "sealed"), ("invalid", "sealed")),
        "sealed_to_public": _vectors("scheme1", ("cases", "sealed"), ("invalid", "sealed")),
    }
    return by_target[target]


def write_corpus(target: str, directory: Path) -> None:
    """The seeds of ``target`` as files named by their SHA-1, as libFuzzer does."""
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds(target):
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def main(argv: list[str]) -> None:
    """Parse TARGET and --corpus, hand the rest to libFuzzer, and fuzz (never returns)."""
    if len(argv) < 2 or argv[1] in ("-h", "--help", "--list"):
        print(__doc__.split("\n\n")[0] if argv[1:2] != ["--list"] else "", file=sys.stderr)
        print("targets: " + " ".join(TARGETS))
        sys.exit(0 if argv[1:2] == ["--list"] else 2)
    target, rest = argv[1], argv[2:]
    if target not in TARGETS:
        sys.exit(f"unknown target {target!r}; targets: {' '.join(TARGETS)}")
    if "--corpus" in rest:
        i = rest.index("--corpus")
        corpus = Path(rest[i + 1])
        del rest[i : i + 2]
    else:
        corpus = Path(tempfile.mkdtemp(prefix=f"cas-fuzz-{target}-"))
        atexit.register(shutil.rmtree, corpus, ignore_errors=True)
    write_corpus(target, corpus)
    prop = TARGETS[target]

    def one_input(data: bytes) -> None:
        prop(data)

    atheris.Setup([argv[0], *rest, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
