"""The ``config`` file (spec/format.md §3).

Layout: 8 plaintext bytes ``b"CASREPO"`` + format version (u8), then a
document sealed under the data key with those 8 bytes as associated data.
The plaintext version lets cas refuse a newer repository before asking for
a password; the seal keeps the chunker parameters from being altered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cas import crypto
from cas.errors import FormatError, IntegrityError, UnsupportedVersion
from cas.format import FORMAT_VERSION
from cas.format.codec import (
    field,
    id_field,
    open_document,
    pack_canonical,
    seal_document,
    shown,
    unpack_map,
)
from cas.format.pack import PADDINGS, PackFormat
from cas.ids import storage_id

if TYPE_CHECKING:  # imported in _parsed: not needed before a repository's key is derived
    from cas.chunking.chunker import ChunkerParams

__all__ = [
    "FORMAT_VERSION",
    "PADDINGS",
    "VERSIONS",
    "Config",
    "config_plaintext",
    "decode_config",
    "decode_config_for_write_only",
    "encode_config",
    "header",
]

MAGIC = b"CASREPO"
# Versions this cas reads; ``init`` writes FORMAT_VERSION (2), an existing version 1
# repository stays version 1 (spec §16).
VERSIONS = (1, 2)
DEFAULT_PACK_SIZE = 16 << 20


@dataclass(frozen=True)
class Config:
    """Repository-wide parameters fixed at ``init``."""

    repo_id: bytes
    chunker: ChunkerParams
    pack_size: int = DEFAULT_PACK_SIZE
    version: int = FORMAT_VERSION
    padding: str | None = None  # version 2: "padme" pads sealed blobs (§8.1)

    @property
    def pack_format(self) -> PackFormat:
        """How this repository's packs and blobs are written and read."""
        return PackFormat(self.version, self.padding)


def header(version: int = FORMAT_VERSION) -> bytes:
    """The 8 plaintext bytes that start the config file."""
    return MAGIC + bytes((version,))


def read_version(raw: bytes) -> int:
    """The format version from the plaintext prefix (no key needed)."""
    if len(raw) < 8 or raw[:7] != MAGIC:
        raise FormatError(what="config", detail="not a cas repository config")
    return raw[7]


def _document(cfg: Config) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": cfg.version,
        "id": cfg.repo_id,
        "chunker": {
            "algorithm": cfg.chunker.algorithm,
            "min": cfg.chunker.min_size,
            "avg": cfg.chunker.avg_size,
            "max": cfg.chunker.max_size,
        },
        "pack_size": cfg.pack_size,
    }
    if cfg.padding is not None:
        if cfg.version < 2 or cfg.padding not in PADDINGS:
            raise FormatError(what="config", detail="padding needs a known scheme and version 2")
        doc["padding"] = cfg.padding
    return doc


def encode_config(
    cfg: Config, data_key: crypto.Sealer | bytes, nonce: bytes | None = None
) -> bytes:
    """Serialise and seal ``cfg``."""
    hdr = header(cfg.version)
    return hdr + seal_document(data_key, hdr, _document(cfg), nonce)


def config_plaintext(cfg: Config) -> bytes:
    """The canonical msgpack of the config document, as a write-only key carries it
    (spec §4.4): a key that cannot open the config still knows its parameters."""
    return pack_canonical(_document(cfg))


def decode_config(raw: bytes, data_key: crypto.Sealer | bytes) -> Config:
    """Check the version, authenticate and parse the config file."""
    version = read_version(raw)
    if version not in VERSIONS:
        raise UnsupportedVersion(what="repository", version=version, supported=FORMAT_VERSION)
    doc = open_document(data_key, raw[:8], raw[8:], "config", version)
    return _parsed(doc, version)


def decode_config_for_write_only(raw: bytes, plaintext: bytes, sha256: bytes) -> Config:
    """The config as a write-only key knows it (spec §4.4): ``plaintext`` (the document
    the key carries) is trusted only if ``raw``, the stored config, hashes to ``sha256``,
    so the key opens only the repository it was made for."""
    version = read_version(raw)
    if version not in VERSIONS:
        raise UnsupportedVersion(what="repository", version=version, supported=FORMAT_VERSION)
    if storage_id(raw) != sha256:
        raise IntegrityError(
            what="config", detail="it is not the config this write-only key was made for"
        )
    return _parsed(unpack_map(plaintext, "config", "v", version), version)


def _parsed(doc: dict[str, Any], version: int) -> Config:
    from cas.chunking.chunker import ALGORITHMS, ChunkerParams

    ch = field(doc, "chunker", dict, "config")
    algorithm = ch.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise FormatError(what="config", detail=f"unknown chunker {shown(algorithm)}")
    params = ChunkerParams(
        field(ch, "min", int, "config"),
        field(ch, "avg", int, "config"),
        field(ch, "max", int, "config"),
        str(algorithm),
    )
    try:
        params.validate()
    except Exception:
        raise FormatError(what="config", detail="invalid chunker parameters") from None
    pack_size = field(doc, "pack_size", int, "config")
    if not (1 << 20) <= pack_size <= (1 << 30):
        raise FormatError(what="config", detail="pack_size out of range")
    padding = doc.get("padding") if version >= 2 else None
    if padding is not None and padding not in PADDINGS:
        raise FormatError(what="config", detail=f"unknown padding {shown(padding)}")
    return Config(id_field(doc, "id", "config"), params, pack_size, version, padding)
