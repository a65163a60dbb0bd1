"""Assemble sealed blobs into pack files (spec/format.md §9)."""

from __future__ import annotations

from dataclasses import dataclass

from cas import crypto
from cas.crypto import BlobType
from cas.errors import IntegrityError
from cas.format import pack as packfmt
from cas.ids import storage_id

# Sealed blobs under SMALL bytes are appended to a shared buffer of up to
# SMALL_RUN bytes: a pack of 100,000 tiny blobs then holds 16 MiB, not
# 100,000 buffers with their object overhead.
SMALL = 64 * 1024
SMALL_RUN = 1 << 20


@dataclass(frozen=True)
class FinishedPack:
    """A complete pack ready to store: its ID (SHA-256), bytes and blob entries."""

    pack_id: bytes
    data: bytes
    entries: list[packfmt.PackEntry]


class Packer:
    """Collects sealed blobs until the pack is full, then emits the finished pack."""

    def __init__(self, keys: crypto.KeyBase, blob_type: BlobType) -> None:
        self.keys = keys
        self.blob_type = blob_type
        self._parts: list[bytes | bytearray | memoryview] = []
        self._small = bytearray()  # small sealed blobs, coalesced (no object per blob)
        self._entries: list[packfmt.PackEntry] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, blob_id: bytes, sealed: bytes | bytearray | memoryview, raw_length: int) -> None:
        """Append one sealed blob."""
        self._entries.append(
            packfmt.PackEntry(blob_id, self.blob_type, self.size, len(sealed), raw_length)
        )
        if len(sealed) < SMALL:
            self._small += sealed
            if len(self._small) >= SMALL_RUN:
                self._flush_small()
        else:
            self._flush_small()
            self._parts.append(sealed)
        self.size += len(sealed)

    def _flush_small(self) -> None:
        """Move the coalesced small blobs into the parts, in order."""
        if self._small:
            self._parts.append(self._small)
            self._small = bytearray()

    def take(self) -> tuple[bytes, list[packfmt.PackEntry]]:
        """The sealed blobs added so far, end to end (each entry's offset and length
        locate it), without a header; the packer is empty afterwards."""
        body = b"".join([*self._parts, self._small])
        entries = self._entries
        self._parts, self._small, self._entries, self.size = [], bytearray(), [], 0
        return body, entries

    def finish(self) -> FinishedPack:
        """Append the sealed header and trailer, verify the result and reset.

        The pack is parsed back with the keys before it is handed out, so a
        bug or a memory error here cannot produce a pack that will not read.
        """
        tail = packfmt.encode_pack_tail(self.keys, self._entries)
        data = b"".join([*self._parts, self._small, tail])
        entries = self._entries
        if packfmt.parse_pack(self.keys, data) != entries:
            raise IntegrityError(what="new pack", detail="header does not read back as written")
        self._parts, self._small, self._entries, self.size = [], bytearray(), [], 0
        return FinishedPack(storage_id(data), data, entries)
