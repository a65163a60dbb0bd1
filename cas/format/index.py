"""Index files under ``index/`` (spec/format.md §10).

An index file is a document sealed under the index key (AD "cas.index.v1"):
``{"v": 1, "packs": [{"id": pack id, "blobs": [[blob id, type, offset,
length, raw length], ...]}, ...], "supersedes": [index file ids]}`` and,
when prune has marked packs for deletion, ``"garbage": [{"id": pack id,
"marked": ns, "blobs": [...]}, ...]`` (spec §13.5).

``decode_index`` gives every entry in full.  ``read_locations`` is the same
decoding for loading the master index: a file of packs only comes back as
its blob locations in three compact columns, never as a list per entry or a
``PackEntry`` per blob (for a 100,000-blob file, a heap peak of 11-13 MB
instead of 34-36 MB, and 5-6 MB kept instead of 24 MB).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cas import crypto
from cas.crypto import BlobType
from cas.errors import FormatError
from cas.format import compress
from cas.format.codec import (
    MAX_DOCUMENT,
    open_document,
    seal_document,
    seal_packed,
    unpack_map,
)
from cas.format.codec import field as get_field
from cas.format.pack import PackEntry

INDEX_AD = b"cas.index.v1"


@dataclass
class IndexFile:
    """The packs an index file describes, and the index files it replaces."""

    packs: dict[bytes, list[PackEntry]] = field(default_factory=dict)
    supersedes: list[bytes] = field(default_factory=list)
    garbage: dict[bytes, tuple[int, list[PackEntry]]] = field(default_factory=dict)


# One blob of an index file as it is encoded: blob ID, type, offset, length, raw length.
BlobRow = tuple[bytes, int, int, int, int]


def blob_row(e: PackEntry) -> BlobRow:
    """The row ``encode_index`` writes for ``e``."""
    return (e.blob_id, int(e.type), e.offset, e.length, e.raw_length)


def encode_index(
    idx: IndexFile, index_key: crypto.Sealer | bytes, nonce: bytes | None = None
) -> bytes:
    """Serialise and seal; packs in the order given, blobs in pack order.

    Every map is built with its keys in sorted order (the canonical form, §3), so
    the document is packed without the deep copy that sorting would make."""
    doc: dict[str, Any] = {}
    if idx.garbage:
        doc["garbage"] = [
            {"blobs": [blob_row(e) for e in entries], "id": pack_id, "marked": marked}
            for pack_id, (marked, entries) in idx.garbage.items()
        ]
    doc["packs"] = [
        {"blobs": [blob_row(e) for e in entries], "id": pack_id}
        for pack_id, entries in idx.packs.items()
    ]
    doc["supersedes"] = list(idx.supersedes)
    doc["v"] = 1
    return seal_document(index_key, INDEX_AD, doc, nonce, sorted_already=True)


def encode_pack_doc(pack_id: bytes, rows: list[BlobRow]) -> bytes:
    """One pack's map in an index file (``{"blobs": rows, "id": pack id}``, each row as
    ``blob_row`` gives it), packed:
    about 46 bytes a blob, against about 170 for its ``PackEntry`` (a backup holds the
    packs it has not yet indexed this way, ``encode_packed_index``)."""
    doc = {"blobs": rows, "id": pack_id}
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def encode_packed_index(
    packs: Sequence[bytes], index_key: crypto.Sealer | bytes, nonce: bytes | None = None
) -> bytes:
    """``encode_index`` of an index file of these packs (each from ``encode_pack_doc``,
    in this order) that supersedes nothing and marks nothing: the same bytes, from
    the packed maps joined, never a list per blob."""
    p = msgpack.Packer(use_bin_type=True)
    raw = b"".join(
        [
            p.pack_map_header(3),  # its keys in sorted order, as encode_index packs them
            p.pack("packs"),
            p.pack_array_header(len(packs)),
            *packs,
            p.pack("supersedes"),
            p.pack_array_header(0),
            p.pack("v"),
            p.pack(1),
        ]
    )
    return seal_packed(index_key, INDEX_AD, raw, nonce)


def decode_index(raw: bytes, index_key: crypto.Sealer | bytes) -> IndexFile:
    """Authenticate and parse an index file, validating every entry's shape."""
    what = "index file"
    return _decode_doc(open_document(index_key, INDEX_AD, raw, what), what)


def _decode_doc(doc: dict[str, Any], what: str) -> IndexFile:
    out = IndexFile()
    for sup in get_field(doc, "supersedes", list, what):
        out.supersedes.append(_id(sup, what))
    for p in get_field(doc, "packs", list, what):
        pack_id, entries = _pack(p, what)
        if pack_id in out.packs:
            raise FormatError(what=what, detail="a pack is listed twice")
        out.packs[pack_id] = entries
    for p in get_field(doc, "garbage", list, what) if "garbage" in doc else []:
        pack_id, entries = _pack(p, what)
        marked = get_field(p, "marked", int, what)
        if pack_id in out.packs or pack_id in out.garbage:
            raise FormatError(what=what, detail="a pack is listed twice")
        out.garbage[pack_id] = (marked, entries)
    return out


def _pack(p: object, what: str) -> tuple[bytes, list[PackEntry]]:
    if not isinstance(p, dict):
        raise FormatError(what=what, detail="pack entry is not a map")
    pack_id = _id(p.get("id"), what)
    entries: list[PackEntry] = []
    append, types, overhead = entries.append, _BLOB_TYPES, crypto.SEAL_OVERHEAD
    for b in get_field(p, "blobs", list, what):
        # One pass per entry, type() tests: a million-blob index decodes in seconds.
        if type(b) is not list or len(b) != 5:
            raise FormatError(what=what, detail="malformed blob entry")
        bid, t, off, length, raw_len = b
        if not (type(t) is type(off) is type(length) is type(raw_len) is int):
            raise FormatError(what=what, detail="malformed blob entry")
        if t not in (0, 1) or off < 0 or length <= overhead or raw_len < 0:
            raise FormatError(what=what, detail="blob entry out of range")
        if type(bid) is not bytes or len(bid) != crypto.ID_SIZE:
            raise FormatError(what=what, detail="malformed ID")
        append(PackEntry(bid, types[t], off, length, raw_len))
    return pack_id, entries


_BLOB_TYPES = (BlobType(0), BlobType(1))


def _id(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != crypto.ID_SIZE:
        raise FormatError(what=what, detail="malformed ID")
    return value


# -- blob locations only, for loading the master index ------------------------------


@dataclass(eq=False)
class BlobLocations:
    """An index file's entries in compact columns, in file order: what loading the
    master index (and check) needs of it, without an object per entry."""

    packs: list[tuple[bytes, int, int]]  # (pack id, its first blob, how many blobs)
    ids: bytes  # the blob IDs, 32 bytes each
    offsets: array[int]
    lengths: array[int]
    types: bytes = b""  # one byte per blob
    raw_lengths: array[int] = field(default_factory=lambda: array("Q"))
    supersedes: list[bytes] = field(default_factory=list)
    garbage: list[tuple[bytes, int, int, int]] = field(default_factory=list)
    """(pack id, marked, first blob, how many blobs) of each pack under ``garbage``"""

    def __iter__(self) -> Iterator[tuple[bytes, Iterator[tuple[bytes, int, int]]]]:
        """Each listed (live) pack's ID and its (blob id, offset, length), in file order."""
        for pack_id, first, count in self.packs:
            yield pack_id, self._blobs(first, first + count)

    def garbage_packs(self) -> Iterator[tuple[bytes, Iterator[tuple[bytes, int, int]]]]:
        """The same for the packs under ``garbage``."""
        for pack_id, _, first, count in self.garbage:
            yield pack_id, self._blobs(first, first + count)

    def entries(self, first: int, count: int) -> list[PackEntry]:
        """The entries ``first`` to ``first + count`` in full."""
        ids, size = self.ids, crypto.ID_SIZE
        return [
            PackEntry(
                ids[i * size : (i + 1) * size],
                _BLOB_TYPES[self.types[i]],
                self.offsets[i],
                self.lengths[i],
                self.raw_lengths[i],
            )
            for i in range(first, first + count)
        ]

    def _blobs(self, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
        ids, size = self.ids, crypto.ID_SIZE
        for i, offset, length in zip(
            range(start * size, end * size, size),
            self.offsets[start:end],
            self.lengths[start:end],
            strict=True,
        ):
            yield ids[i : i + size], offset, length


def read_locations(
    fetch: Callable[[], bytes], index_key: crypto.Sealer | bytes
) -> BlobLocations | IndexFile:
    """``decode_index(fetch(), index_key)``, but as :class:`BlobLocations`: compact
    columns instead of an object per entry.

    Accepts and refuses exactly what ``decode_index`` does, with the same
    errors: the same steps run (open, decompress, msgpack), and the shortcut
    taken while parsing is checked afterwards; whatever it does not cover (a
    file written by prune, or anything unusual, damaged or hostile) is
    decoded by ``decode_index``'s own code from the bytes at hand (an
    :class:`IndexFile` then comes back).  ``fetch``
    rather than the sealed bytes, so that they are freed once opened.

    The shortcut: msgpack hands every array to a hook as it is parsed.  An
    array that is a valid blob entry (the very tests of ``decode_index``)
    goes into three columns and is replaced by a marker; an array made only
    of markers (a pack's ``blobs``) by the (first, count) of its entries.
    The document is then accepted only if every such range is the ``blobs``
    of a valid pack and nothing else was replaced: then it is exactly a
    document ``decode_index`` accepts, entries and all.
    """
    what = "index file"
    plain = crypto.as_sealer(index_key).open(fetch(), INDEX_AD, what)
    payload = compress.decode_payload(plain, MAX_DOCUMENT, what)
    del plain
    ids, types = bytearray(), bytearray()
    offsets, lengths, raws = array("Q"), array("Q"), array("Q")
    ranges = [0]
    try:
        doc = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,
            use_list=True,
            list_hook=_entry_hook(ids, types, offsets, lengths, raws, ranges),
        )
        found = _compact_doc(doc, len(offsets), ranges[0])
    except Exception:  # whatever it was, decode_index's own code says what
        found = None
    doc = None
    if found is None:
        del ids, types, offsets, lengths, raws
        return _decode_doc(unpack_map(payload, what), what)
    del payload
    packs, supersedes, garbage = found
    return BlobLocations(
        packs, bytes(ids), offsets, lengths, bytes(types), raws, supersedes, garbage
    )


_ENTRY = object()  # what the hook leaves in place of a valid blob entry


def _entry_hook(
    ids: bytearray,
    types: bytearray,
    offsets: array[int],
    lengths: array[int],
    raws: array[int],
    ranges: list[int],
) -> Callable[[list[Any]], Any]:
    add_id, add_offset, add_length = ids.extend, offsets.append, lengths.append
    add_type, add_raw = types.append, raws.append
    overhead, id_size, entry = crypto.SEAL_OVERHEAD, crypto.ID_SIZE, _ENTRY

    def hook(items: list[Any]) -> Any:
        if len(items) == 5:
            bid, t, off, length, raw_len = items
            # _pack's tests, all of them, as one condition.
            if (
                type(t) is type(off) is type(length) is type(raw_len) is int
                and (t == 0 or t == 1)
                and off >= 0
                and length > overhead
                and raw_len >= 0
                and type(bid) is bytes
                and len(bid) == id_size
            ):
                add_id(bid)
                add_type(t)
                add_offset(off)
                add_length(length)
                add_raw(raw_len)
                return entry
        if items and items.count(entry) == len(items):
            # Only entries: they are the last len(items) ones parsed.
            ranges[0] += 1
            return (len(offsets) - len(items), len(items))
        return items

    return hook


def _compact_doc(
    doc: Any, entries: int, ranges: int
) -> tuple[list[tuple[bytes, int, int]], list[bytes], list[tuple[bytes, int, int, int]]] | None:
    """The packs, ``supersedes`` and ``garbage`` of a hooked document that
    ``decode_index`` accepts, as (pack id, first, count), IDs and (pack id, marked,
    first, count); None for anything else (then ``decode_index`` decides)."""
    if type(doc) is not dict:
        return None
    v = doc.get("v")
    if not isinstance(v, int) or v != 1:
        return None
    supersedes = doc.get("supersedes")
    if type(supersedes) is not list:
        return None
    for s in supersedes:
        if type(s) is not bytes or len(s) != crypto.ID_SIZE:
            return None
    garbage = doc.get("garbage", []) if "garbage" in doc else []
    packs = doc.get("packs")
    if type(packs) is not list or type(garbage) is not list:
        return None
    seen: set[bytes] = set()
    counts = [0, 0]  # ranges used, entries listed
    live = _ranges(packs, seen, counts, False)
    dead = _ranges(garbage, seen, counts, True) if live is not None else None
    # Every entry and every range the hook made is accounted for: nothing was
    # replaced anywhere else (an unknown field, a map key, a mixed array).
    if live is None or dead is None or counts != [ranges, entries]:
        return None
    return [(p, f, n) for p, _, f, n in live], list(supersedes), dead


def _ranges(
    packs: list[Any], seen: set[bytes], counts: list[int], marked: bool
) -> list[tuple[bytes, int, int, int]] | None:
    """(pack id, marked or 0, first, count) of hooked pack maps; None if one is unusual."""
    out: list[tuple[bytes, int, int, int]] = []
    for p in packs:
        if type(p) is not dict:
            return None
        pack_id, blobs = p.get("id"), p.get("blobs")
        if type(pack_id) is not bytes or len(pack_id) != crypto.ID_SIZE or pack_id in seen:
            return None
        when = p.get("marked") if marked else 0
        if type(when) is not int:
            return None
        if type(blobs) is tuple:
            first, count = blobs
            counts[0] += 1
        elif type(blobs) is list and not blobs:
            first = count = 0
        else:
            return None
        seen.add(pack_id)
        out.append((pack_id, when, first, count))
        counts[1] += count
    return out
