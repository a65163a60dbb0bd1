"""Chunk large files in a helper process, beside the backup (spec/format.md §7).

fastcdc's compiled cut-point loop holds the GIL, so chunking on the backup's
main thread stalls the threads that compress and seal.  For a large file the
archiver hands its open descriptor (SCM_RIGHTS over a Unix socket, so deep
paths and files that are not reachable by name work alike) to one helper
process, which reads the file, chunks it with the repository's keyed
chunker, and streams back each chunk's size and blob ID, then the whole-file
digest.  The archiver reads only the chunks the repository lacks and hashes
them again before storing them, so a file that changes between the two
reads is caught (the IDs differ) and read again the normal way.

The keys reach the helper through the socket, never its command line or
environment.  If the helper cannot start or dies, ``failed`` is set and
every file is chunked in the backup process, as without it.

Wire format (private to one backup run): frames of a little-endian u32
length and a msgpack value.  Parent to helper: one frame ``{"perm", "min",
"avg", "max", "algorithm", "id_key"}``, then per file 8 bytes (the size, u64) carrying
the descriptor and a frame: None, or the parent file's ``[content, sizes]``
(about 39 bytes a chunk) to resynchronise with (cas/chunking/resync.py).
Helper to parent, per file: ``["c", [[size, id], ...]]`` frames, then
``["e", digest, bytes_read]`` or ``["x", errno, message]``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Generator
from typing import Any

from cas import crypto, ipc
from cas.chunking.chunker import ChunkerParams, StreamChunker, make_chunker
from cas.chunking.resync import ParentChunks, chunk_ids

OFFLOAD_MIN = 16 << 20  # files from this size are chunked by the helper
_BATCH = 4  # chunks per message: the parent starts on a file's first chunks early
_U64 = struct.Struct("<Q")
_send = ipc.send
_recv = ipc.recv


class WorkerGone(Exception):
    """The helper process failed; the caller chunks the file itself."""


class ChunkWorker:
    """One helper process, started on first use; ``chunks`` serves one file at a time."""

    def __init__(self, key: crypto.KeyBase, params: ChunkerParams) -> None:
        # The helper gets a key that computes IDs and chunks and can open nothing.
        self._init = {
            "key": key.ids_only().encode(),
            "min": params.min_size,
            "avg": params.avg_size,
            "max": params.max_size,
            "algorithm": params.algorithm,
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self.failed = False
        self.digest = b""
        self.bytes_read = 0

    def _ensure(self) -> socket.socket:
        """The socket to the helper, starting it on first use (raises OSError)."""
        if self._sock is not None:
            return self._sock
        # It needs no password or credentials, so none is passed on.
        self._proc, parent = ipc.spawn("cas.chunking.worker")
        self._sock = parent
        _send(parent, self._init)
        return parent

    def _talk(self, step: Callable[[], Any]) -> Any:
        """Run one exchange with the helper; any failure of the helper or the
        socket marks it failed and becomes WorkerGone."""
        try:
            return step()
        except (OSError, EOFError, ValueError) as e:
            self._fail()
            raise WorkerGone(str(e)) from None

    def chunks(
        self, fd: int, size: int, parent: ParentChunks | None = None
    ) -> Generator[tuple[int, bytes], None, None]:
        """(size, blob ID) of each chunk of the open file ``fd``, as the helper finds them
        (taking ``parent``'s chunks where they fit, cas/chunking/resync.py).

        Afterwards ``digest`` and ``bytes_read`` describe what the helper read.
        A read error in the helper is raised here as OSError; a failed helper
        as WorkerGone (and ``failed`` stays set).  Closing the iterator early
        waits for the helper to finish that file.
        """
        if self.failed:
            raise WorkerGone("chunk helper unavailable")
        sock = self._talk(self._ensure)
        self._talk(lambda: socket.send_fds(sock, [_U64.pack(size)], [fd]))
        wire = None if parent is None else [parent.content, parent.sizes]
        self._talk(lambda: _send(sock, wire))
        ended = False
        try:
            while True:
                kind, *rest = self._talk(lambda: _recv(sock))
                if kind == "c":
                    for n, blob_id in rest[0]:
                        yield n, bytes(blob_id)
                    continue
                ended = True
                if kind == "e":
                    self.digest, self.bytes_read = bytes(rest[0]), rest[1]
                    return
                raise OSError(rest[0], rest[1])  # the helper's read error, for this file
        finally:
            if not ended and not self.failed:
                # The caller stopped early: skip the rest of this file's messages.
                with contextlib.suppress(WorkerGone):
                    while self._talk(lambda: _recv(sock))[0] == "c":
                        pass

    def _fail(self) -> None:
        self.failed = True
        self.close()

    def close(self) -> None:
        """Stop the helper (it ends when its socket closes)."""
        if self._proc is not None and self._sock is not None:
            ipc.stop(self._proc, self._sock)
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        self._proc = None


# -- the helper process ----------------------------------------------------------


class _FileReader:
    """``read(n)`` and ``readinto(view)`` from the start of an open file (the
    chunker reads into its own buffer, cas/chunking/chunker.py iter_chunks)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0

    def __call__(self, n: int) -> bytes:
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data

    def readinto(self, view: memoryview) -> int:
        got = os.preadv(self.fd, [view], self.pos)
        self.pos += got
        return got


def _chunk_file(
    sock: socket.socket,
    chunker: StreamChunker,
    key: crypto.IdKey,
    fd: int,
    parent: ParentChunks | None,
) -> None:
    read = _FileReader(fd)
    digest = key.file_digest()
    batch: list[list[Any]] = []
    try:
        data_id = functools.partial(key.blob_id, crypto.BlobType.DATA)
        for chunk, blob_id in chunk_ids(chunker, data_id, read, parent):
            digest.update(chunk)
            batch.append([len(chunk), blob_id])
            if len(batch) >= _BATCH:
                _send(sock, ["c", batch])
                batch = []
    except OSError as e:
        _send(sock, ["x", e.errno or 0, e.strerror or str(e)])
        return
    if batch:
        _send(sock, ["c", batch])
    _send(sock, ["e", digest.digest(), read.pos])


def _serve(sock: socket.socket) -> None:
    init = _recv(sock)
    params = ChunkerParams(init["min"], init["avg"], init["max"], init["algorithm"])
    key = crypto.IdKey.decode(bytes(init["key"]))
    chunker = make_chunker(key, params)
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, _U64.size, 1)
        if not msg:
            return  # the backup ended
        if len(msg) < _U64.size:
            msg = ipc.exactly(sock, _U64.size, msg)
        if len(fds) != 1:
            return
        try:
            parent = ParentChunks.from_wire(_recv(sock))
            _chunk_file(sock, chunker, key, fds[0], parent)
        finally:
            os.close(fds[0])


def main(argv: list[str]) -> None:
    """Entry point of the helper: ``python -m cas.chunking.worker FD``."""
    ipc.run_helper(argv, _serve)


if __name__ == "__main__":
    main(sys.argv)
