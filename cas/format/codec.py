"""Shared helpers: canonical msgpack and sealed msgpack documents."""

from __future__ import annotations

from typing import Any

import msgpack

from cas import crypto
from cas.errors import FormatError, UnsupportedVersion
from cas.format import compress

# Upper bound for any decoded document (index, tree, snapshot, config).
MAX_DOCUMENT = 1 << 30


def pack_canonical(obj: Any) -> bytes:
    """msgpack with map keys sorted, so equal objects encode to equal bytes."""
    raw: bytes = msgpack.packb(sorted_keys(obj), use_bin_type=True)
    return raw


def sorted_keys(obj: Any) -> Any:
    """``obj`` with every map's keys in sorted order (recursively)."""
    if isinstance(obj, dict):
        try:
            keys = sorted(obj)
        except TypeError:  # keys of mixed types, in fields cas does not know (fuzzing found it)
            keys = sorted(obj, key=lambda k: (type(k).__name__, repr(k)))
        return {k: sorted_keys(obj[k]) for k in keys}
    if isinstance(obj, (list, tuple)):
        return [sorted_keys(v) for v in obj]
    return obj


def unpack(raw: bytes | bytearray, what: str) -> Any:
    """Decode msgpack, turning any decoder complaint into FormatError."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:
        raise FormatError(what=what, detail=f"msgpack: {e}") from None


def unpack_map(
    raw: bytes | bytearray, what: str, version_key: str = "v", version: int = 1
) -> dict[str, Any]:
    """Decode a msgpack map carrying a format version, refusing any but ``version``."""
    doc = unpack(raw, what)
    if not isinstance(doc, dict):
        raise FormatError(what=what, detail="not a map")
    v = doc.get(version_key)
    if not isinstance(v, int):
        raise FormatError(what=what, detail="missing version")
    if v != version:
        raise UnsupportedVersion(what=what, version=v, supported=version)
    return doc


def seal_document(
    key: crypto.Sealer | bytes,
    ad: bytes,
    doc: Any,
    nonce: bytes | None = None,
    *,
    sorted_already: bool = False,
) -> bytes:
    """Canonical msgpack, compressed when that pays, then sealed with ``key``.

    ``sorted_already``: every map of ``doc`` was built with its keys in sorted order,
    so it is packed as it is (an index file of 100,000 blobs is not copied first)."""
    raw = msgpack.packb(doc, use_bin_type=True) if sorted_already else pack_canonical(doc)
    return seal_packed(key, ad, raw, nonce)


def seal_packed(
    key: crypto.Sealer | bytes, ad: bytes, raw: bytes, nonce: bytes | None = None
) -> bytes:
    """``seal_document`` of a document already packed (canonical msgpack ``raw``)."""
    payload = compress.encode_payload(raw)
    return bytes(crypto.as_sealer(key).seal(payload, ad, nonce))


def open_document(
    key: crypto.Sealer | bytes, ad: bytes, sealed: bytes, what: str, version: int = 1
) -> dict[str, Any]:
    """Inverse of ``seal_document``: authenticate, decompress, decode and check that the
    version is ``version`` (the config's; 1 for every other document)."""
    plain = crypto.as_sealer(key).open(sealed, ad, what)
    return unpack_map(compress.decode_payload(plain, MAX_DOCUMENT, what), what, "v", version)


def shown(value: Any) -> str:
    """A value from a hostile or damaged document, fit for a one-line message (no raw
    newlines or terminal escapes, bounded length; fuzzing found both unbounded forms)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def field(doc: dict[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    """``doc[key]`` checked against ``typ``; FormatError when missing or mistyped."""
    value = doc.get(key)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
        raise FormatError(what=what, detail=f"field {key!r} missing or of the wrong type")
    return value


def id_field(doc: dict[str, Any], key: str, what: str) -> bytes:
    """A 32-byte ID field."""
    value = field(doc, key, bytes, what)
    if len(value) != crypto.ID_SIZE:
        raise FormatError(what=what, detail=f"field {key!r} is not a 32-byte ID")
    return bytes(value)
