"""Assemble sealed blobs into pack files (spec/format.md §9)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cas import crypto
from cas.crypto import BlobType
from cas.errors import IntegrityError
from cas.format import pack as packfmt
from cas.ids import storage_id


@dataclass(frozen=True)
class FinishedPack:
    """A complete pack ready to store: its ID (SHA-256), bytes and blob entries."""

    pack_id: bytes
    data: bytes | bytearray
    entries: list[packfmt.PackEntry]


class Packer:
    """Collects sealed blobs until the pack is full, then emits the finished pack."""

    def __init__(self, keys: crypto.KeyBase, blob_type: BlobType, version: int = 1) -> None:
        self.keys = keys
        self.blob_type = blob_type
        self.version = version  # of the pack layout (spec §9.6): the repository's
        # The pack's bytes, end to end, in one buffer: appending grows it in place
        # (a large buffer is its own mapping, which glibc moves with mremap), and the
        # header is appended to it at the end, so a pack never exists twice (as
        # parts and joined) and tiny blobs cost no object each.
        self._data = bytearray()
        self._entries: list[packfmt.PackEntry] = []

    @property
    def size(self) -> int:
        """Bytes of sealed blobs so far."""
        return len(self._data)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, blob_id: bytes, sealed: bytes | bytearray | memoryview, raw_length: int) -> None:
        """Append one sealed blob."""
        self._entries.append(
            packfmt.PackEntry(blob_id, self.blob_type, len(self._data), len(sealed), raw_length)
        )
        self._data += sealed

    def take(self, piece: int) -> Iterator[tuple[bytes, list[packfmt.PackEntry]]]:
        """The sealed blobs added so far, in pieces of about ``piece`` bytes (more only
        for one larger blob), without a header: each piece's entries locate its blobs
        in it (offsets from the piece's start).  The packer is empty afterwards; the
        pieces are copied out one at a time, so handing over a full pack never holds
        it twice."""
        data, entries = self._data, self._entries
        self._data, self._entries = bytearray(), []
        view = memoryview(data)
        out: list[memoryview] = []
        out_entries: list[packfmt.PackEntry] = []
        out_size = 0
        for e in entries:
            out.append(view[e.offset : e.offset + e.length])
            out_entries.append(
                packfmt.PackEntry(e.blob_id, e.type, out_size, e.length, e.raw_length)
            )
            out_size += e.length
            if out_size >= piece:
                yield b"".join(out), out_entries
                out, out_entries, out_size = [], [], 0
        if out_entries:
            yield b"".join(out), out_entries

    def finish(self) -> FinishedPack:
        """Append the sealed header and trailer, verify the result and reset.

        The pack is parsed back with the keys before it is handed out, so a
        bug or a memory error here cannot produce a pack that will not read.
        """
        entries = self._entries
        data = self._data
        data += packfmt.encode_pack_tail(self.keys, entries, version=self.version)
        if packfmt.parse_pack(self.keys, data) != entries:
            raise IntegrityError(what="new pack", detail="header does not read back as written")
        self._data, self._entries = bytearray(), []
        return FinishedPack(storage_id(data), data, entries)
