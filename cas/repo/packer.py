"""Assemble sealed blobs into pack files (spec/format.md §9).

A packer that spools (backup and repack: :class:`cas.repo.packwriter.PackWriter`)
keeps at most ``SPOOL_BUFFER`` bytes of its pack in memory: the rest goes to an
unnamed temporary file in ``$TMPDIR`` (``O_TMPFILE`` where the filesystem has it,
else unlinked at once), hashed as it is written.  A finished pack is stored from
that file in pieces (:meth:`FinishedPack.file`, ``write_file`` of the backend),
checked against its SHA-256 name first, so no process holds a whole pack; the
file disappears when the pack is stored or the process ends, even by
``kill -9``.  So four open packs per blob type cost four small buffers, not
four packs of up to 16 MiB.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from cas import crypto
from cas.backend.base import scan_pieces
from cas.crypto import BlobType
from cas.errors import BackendError, CasError, IntegrityError
from cas.format import pack as packfmt
from cas.ids import new_sha256, storage_id

# Bytes of a spooling pack kept in memory before they are written to its file.
SPOOL_BUFFER = 256 << 10


def spool_dir() -> str:
    """Where open packs spill: ``$TMPDIR``, else /tmp.  Not ``tempfile.gettempdir()``:
    its first call in a process creates and deletes a probe file there, which a
    kill -9 in between would leave behind."""
    return os.environ.get("TMPDIR") or "/tmp"


class FinishedPack:
    """A complete pack ready to store: its ID (SHA-256), size, blob entries, and bytes
    (in memory, or in the packer's temporary file until ``read``)."""

    def __init__(
        self,
        pack_id: bytes,
        size: int,
        entries: list[packfmt.PackEntry],
        data: bytes | bytearray | None = None,
        spool: BinaryIO | None = None,
    ) -> None:
        self.pack_id = pack_id
        self.size = size
        self.entries = entries
        self._data = data
        self._spool = spool

    @property
    def data(self) -> bytes | bytearray:
        """The pack's bytes (``read``)."""
        return self.read()

    def read(self) -> bytes | bytearray:
        """The pack's bytes; from the temporary file, they must still hash to the
        pack's ID (a disk that changed them is caught before anything is stored)."""
        if self._data is not None:
            return self._data
        assert self._spool is not None
        fd = self._spool.fileno()
        data = bytearray(self.size)
        view = memoryview(data)
        got = 0
        try:
            while got < self.size:
                n = os.preadv(fd, [view[got:]], got)
                if n <= 0:
                    break
                got += n
        except OSError as e:
            raise CasError(f"cannot read a temporary pack file: {e.strerror}") from None
        if got != self.size or storage_id(data) != self.pack_id:
            raise IntegrityError(what="new pack", detail="its temporary file changed")
        return data

    @property
    def in_memory(self) -> bytes | bytearray | None:
        """The pack's bytes if it is held in memory (a packer that did not spool)."""
        return self._data

    def file(self) -> BinaryIO:
        """The temporary file holding the pack's bytes (of a packer that spooled), read in
        pieces to check that they still hash to the pack's ID (a disk that changed them
        is caught before anything is stored)."""
        assert self._spool is not None
        digest = new_sha256()
        try:
            for piece in scan_pieces(self._spool, self.size):
                digest.update(piece)
        except OSError as e:
            raise CasError(f"cannot read a temporary pack file: {e.strerror}") from None
        except BackendError:
            raise IntegrityError(what="new pack", detail="its temporary file changed") from None
        if digest.digest() != self.pack_id:
            raise IntegrityError(what="new pack", detail="its temporary file changed")
        return self._spool

    def discard(self) -> None:
        """Close the temporary file (which removes it); the bytes are gone."""
        if self._spool is not None:
            self._spool.close()


class Packer:
    """Collects sealed blobs until the pack is full, then emits the finished pack.

    With ``spool``, the bytes beyond ``SPOOL_BUFFER`` go to a temporary file.
    """

    def __init__(
        self, keys: crypto.KeyBase, blob_type: BlobType, version: int = 1, *, spool: bool = False
    ) -> None:
        self.keys = keys
        self.blob_type = blob_type
        self.version = version  # of the pack layout (spec §9.6): the repository's
        # The pack's bytes not yet in the file, end to end, in one buffer: appending
        # grows it in place, and without spooling the header is appended to it at the
        # end, so a pack never exists twice (as parts and joined) and tiny blobs cost
        # no object each.
        self._data = bytearray()
        self._entries: list[packfmt.PackEntry] = []
        self._spool = spool
        self._file: BinaryIO | None = None
        self._spooled = 0  # bytes in the file
        self._hash = new_sha256()  # of the bytes in the file

    @property
    def size(self) -> int:
        """Bytes of sealed blobs so far."""
        return self._spooled + len(self._data)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, blob_id: bytes, sealed: bytes | bytearray | memoryview, raw_length: int) -> None:
        """Append one sealed blob."""
        self._entries.append(
            packfmt.PackEntry(blob_id, self.blob_type, self.size, len(sealed), raw_length)
        )
        if self._spool and len(sealed) >= SPOOL_BUFFER:
            # A large blob goes to the file as it is: copied into the buffer first, it
            # would cost a copy and, beyond 1 MiB, a fresh mapping of its size
            # (ipc.keep_heap_small) whose every page faults.
            self._spill()
            self._write(sealed)
            return
        self._data += sealed
        if self._spool and len(self._data) >= SPOOL_BUFFER:
            self._spill()

    def _spill(self) -> None:
        """Write the buffer to the temporary file (made now if need be) and hash it."""
        if self._data:
            self._write(self._data)
            self._data = bytearray()

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the temporary file (made now if need be) and hash it."""
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="cas-pack-", dir=spool_dir())  # noqa: SIM115 (closed by the pack)
            fd = self._file.fileno()
            view = memoryview(data)
            while view:
                view = view[os.pwrite(fd, view, self._spooled + len(data) - len(view)) :]
        except OSError as e:
            raise CasError(
                f"cannot write a temporary pack file in {spool_dir()}: {e.strerror}"
            ) from None
        self._hash.update(data)
        self._spooled += len(data)

    def _range(self, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` of the pack so far (from the file and the buffer)."""
        out = b""
        if start < self._spooled:
            assert self._file is not None
            stop = min(end, self._spooled)
            out = os.pread(self._file.fileno(), stop - start, start)
            if len(out) != stop - start:
                raise CasError("cannot read a temporary pack file: it is shorter than written")
        if end > self._spooled:
            lo = max(start, self._spooled) - self._spooled
            out += self._data[lo : end - self._spooled]
        return out

    def _reset(self) -> None:
        if self._file is not None:
            self._file.close()
        self._data, self._entries = bytearray(), []
        self._file, self._spooled, self._hash = None, 0, new_sha256()

    def take(self, piece: int) -> Iterator[tuple[bytes, list[packfmt.PackEntry]]]:
        """The sealed blobs added so far, in pieces of about ``piece`` bytes (more only
        for one larger blob), without a header: each piece's entries locate its blobs
        in it (offsets from the piece's start).  The packer is empty afterwards; the
        pieces are copied out one at a time, so handing over a full pack never holds
        it twice."""
        entries = self._entries
        out_entries: list[packfmt.PackEntry] = []
        start = out_size = 0
        try:
            for e in entries:
                if not out_entries:
                    start = e.offset
                out_entries.append(
                    packfmt.PackEntry(e.blob_id, e.type, out_size, e.length, e.raw_length)
                )
                out_size += e.length
                if out_size >= piece:
                    yield self._range(start, start + out_size), out_entries
                    out_entries, out_size = [], 0
            if out_entries:
                yield self._range(start, start + out_size), out_entries
        finally:
            self._reset()

    def finish(self) -> FinishedPack:
        """Append the sealed header and trailer, verify the result and reset.

        The header is parsed back with the keys before the pack is handed out, so a
        bug or a memory error here cannot produce a pack that will not read.
        """
        entries = self._entries
        tail = packfmt.encode_pack_tail(self.keys, entries, version=self.version)
        size = self.size + len(tail)
        self._data += tail
        if self._file is None:
            data = self._data
            pack = FinishedPack(storage_id(data), size, entries, data=data)
        else:
            self._spill()
            pack = FinishedPack(self._hash.digest(), size, entries, spool=self._file)
            self._file = None  # the pack owns it now
        trailer = tail[-packfmt.TRAILER_SIZE :]
        n = packfmt.header_length(trailer, size)
        header = tail[-packfmt.TRAILER_SIZE - n : -packfmt.TRAILER_SIZE]
        version = packfmt.trailer_version(trailer)
        if len(header) != n or packfmt.decode_header(self.keys, header, size, version) != entries:
            pack.discard()
            raise IntegrityError(what="new pack", detail="header does not read back as written")
        self._data, self._entries = bytearray(), []
        self._spooled, self._hash = 0, new_sha256()
        return pack
