"""Reading data blobs from another process: what it needs, and the reader it builds.

A restore worker process (cas/restore/worker.py) writes files whose blobs
the main process has already located in the master index.  It does not load
the index: it gets a :class:`ReaderSpec` (the location, the backend options
and the key) once, over its socket, and then each blob's pack, offset and
length with the files that need it.  :func:`open_located` turns the spec
into a :class:`LocatedReader` on a backend of its own (retries and all, but
no local cache: data blobs are read by range and never cached).

The spec carries the key material, so it travels only over a socket or pipe
to a process this one started, never on a command line or in the
environment (spec/format.md §15.1).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cas import crypto
from cas.backend.base import Backend
from cas.backend.registry import open_backend, shared_location, split_location
from cas.crypto import BlobType
from cas.errors import BlobNotFound
from cas.format.pack import V1, PackFormat, open_blob
from cas.repo.blobreader import PackRanges
from cas.repo.index import Location

if TYPE_CHECKING:
    from cas.repo.repository import Repository


@dataclass(frozen=True)
class ReaderSpec:
    """How another process reaches the same repository to read data blobs."""

    location: str
    backend_options: tuple[object, ...]
    key_type: str
    key_material: bytes
    # How the repository's packs are laid out: blob ranges are read in its units,
    # and a backup worker writes packs and pads blobs as the repository does.
    pack_format: PackFormat = V1

    def encode(self) -> bytes:
        """Bytes for the socket (pickle: both ends are this same cas)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def decode(raw: bytes) -> ReaderSpec:
        """The spec ``encode`` wrote."""
        spec = pickle.loads(raw)  # from the parent process, over a private socket
        if not isinstance(spec, ReaderSpec):
            raise TypeError("not a reader spec")
        return spec

    def __repr__(self) -> str:
        return f"ReaderSpec({self.location!r}, ...)"  # never the key


def reader_spec(
    repo: Repository, location: str, backend_options: tuple[object, ...]
) -> ReaderSpec | None:
    """The spec for ``repo`` opened at ``location``, or None when another process
    cannot reach that location (an in-memory backend).  With a write-only key (spec
    §4.4) it serves backup's workers only, which seal and read nothing stored: every
    reading command refuses such a key before it starts helpers."""
    if not shared_location(location):
        return None
    return ReaderSpec(
        location, backend_options, repo.keys.TYPE, repo.keys.encode(), repo.config.pack_format
    )


class LocatedReader(PackRanges):
    """Data blobs by the locations the caller gives (``add``), on its own backend.

    What a BlobStream needs (cas/restore/blobstream.py PackReader).  A blob
    whose copy fails raises its CasError: the caller that holds the whole
    index can try another copy.
    """

    def __init__(self, backend: Backend, keys: crypto.KeyBase) -> None:
        self.backend = backend
        self._keys = keys
        self._where: dict[bytes, Location] = {}
        self._uses: dict[bytes, int] = {}

    def add(self, blob_id: bytes, pack_id: bytes, offset: int, length: int) -> None:
        """Where ``blob_id`` is stored (kept until ``forget`` as often as it was added)."""
        self._where[blob_id] = Location(pack_id, offset, length)
        self._uses[blob_id] = self._uses.get(blob_id, 0) + 1

    def forget(self, blob_ids: list[bytes]) -> None:
        """Locations no longer needed, once each per ``add``."""
        for b in blob_ids:
            n = self._uses.get(b, 0) - 1
            if n > 0:
                self._uses[b] = n
            else:
                self._uses.pop(b, None)
                self._where.pop(b, None)

    def file_digest(self) -> crypto.FileDigest:
        """A new whole-file digest under the repository's ID key."""
        return self._keys.file_digest()

    def locate(self, blob_id: bytes) -> Location:
        """The location given for ``blob_id``; BlobNotFound if none was."""
        loc = self._where.get(blob_id)
        if loc is None:
            raise BlobNotFound(blob=blob_id.hex())
        return loc

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        """Read and open one blob at its given location."""
        loc = self.locate(blob_id)
        sealed = self.read_pack_range(loc.pack_id, loc.offset, loc.length)
        return open_blob(self._keys, blob_type, blob_id, sealed, raw_length)

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()


def open_located(spec: ReaderSpec) -> LocatedReader:
    """A LocatedReader on a backend of its own for ``spec``."""
    keys = crypto.key_factory(spec.key_type, spec.key_material)
    reader = LocatedReader(open_backend(spec.location, spec.backend_options), keys)
    reader.read_unit = spec.pack_format.read_unit
    reader.version = spec.pack_format.version
    # A local pack read in pieces costs a few more system calls, not requests: a
    # verifying process then holds a piece, not a 16 MiB pack.
    reader.stream_packs = split_location(spec.location)[0] in ("", "file")
    return reader
