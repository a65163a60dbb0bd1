"""A BlobWriter that stores nothing, for ``backup --dry-run``, and what the backup would cost.

:class:`DryRunWriter` answers the archiver's dedup questions from the
repository and remembers the blobs a real backup would add; :meth:`estimate`
turns them into what the backup would store and upload: bytes, packs, PUT
requests and dollars (:class:`BackupEstimate`).

Stored sizes come from compressing new blobs as the repository would (zstd
at its level), because compressibility decides the size and nothing else
predicts it.  Compressing costs more than the rest of a dry run (on the
development machine, zstd level 3 ran at ~165 MB/s on mixed data while the
dry run read, chunked and hashed at ~460 MB/s), so only the first
:data:`EXACT_BYTES` of new data are all compressed; after that one blob in
:data:`SAMPLE_EVERY`, chosen by its ID (a keyed hash, so the sample is
unrelated to content), and the others are assumed to compress like that
sample.  The extrapolation waits for the end, when the sample is largest, so
the writer keeps one 8-byte size per new blob (8 MB for a terabyte of 1 MiB
chunks) and replays the packer's rule over them.  Small backups are thus
estimated exactly, and large ones for about an eighth of the cost of
compressing everything.
"""

from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

from cas.backend.accounting import PriceTable
from cas.crypto import SEAL_OVERHEAD, BlobType, FileDigest
from cas.format import compress
from cas.format import pack as packfmt
from cas.format.snapshot import Snapshot
from cas.repo import Repository
from cas.repo.packwriter import INDEX_EVERY_PACKS

EXACT_BYTES = 128 << 20  # new data compressed in full before sampling starts
SAMPLE_EVERY = 8  # then one blob in this many is compressed
# Per pack: the sealed header's overhead and the trailer; per blob: its header entry.
# An index entry is a msgpack array of an ID and four ints (spec §10), ~50 bytes.
INDEX_BYTES_PER_BLOB = 50
SNAPSHOT_BYTES = 1024  # a snapshot file, roughly


class _Tally:
    """New blobs of one type: sizes measured or to be extrapolated, and the sample."""

    def __init__(self) -> None:
        self.blobs = 0
        self.raw_bytes = 0
        # In arrival order, as packs fill: a sealed size measured (> 0), or
        # minus the plaintext size of a blob whose sealed size is extrapolated.
        self.sizes = array("q")
        self.measured = [0, 0]  # plaintext and payload bytes of every compressed blob
        self.sample = [0, 0]  # the same for the ID-sampled blobs after EXACT_BYTES
        self.extrapolated = False

    def add(self, raw: int, sealed: int | None) -> None:
        """Count a blob of ``raw`` plaintext bytes: ``sealed`` measured, or None."""
        self.blobs += 1
        self.raw_bytes += raw
        self.sizes.append(-raw if sealed is None else sealed)
        self.extrapolated |= sealed is None

    def ratio(self) -> float:
        """Payload bytes per plaintext byte for blobs not compressed: the sample's, if any."""
        raw, payload = self.sample if self.sample[0] else self.measured
        return payload / raw if raw else 1.0

    def packs(self, pack_size: int, fmt: packfmt.PackFormat = packfmt.V1) -> tuple[int, int]:
        """(packs, bytes) once stored: Packer's rule replayed over the sizes, each blob
        padded and each pack's header sized as the repository's format does."""
        ratio = self.ratio()
        packs = fill = count = stored = 0
        for size in self.sizes:
            blob = size if size > 0 else round(-size * ratio) + SEAL_OVERHEAD
            if fmt.padding is not None:
                blob = packfmt.padme(blob + packfmt.PAD_LENGTH.size)
            fill += blob
            count += 1
            if fill >= pack_size:  # as Packer: a pack is finished once it reaches the target
                packs += 1
                stored += packfmt.pack_size(fmt.version, fill, count)
                fill = count = 0
        if count:
            packs += 1
            stored += packfmt.pack_size(fmt.version, fill, count)
        return packs, stored


@dataclass
class BackupEstimate:
    """What a backup would add and cost, before anything is uploaded.

    Bytes are estimates of stored (compressed, sealed) sizes; requests are
    the PUTs of the backup's writes (packs, index files, the snapshot and its
    lock file; a lock is refreshed with one more PUT every two minutes of a
    long run).  Dollars: ``upload_cost_usd`` for the PUTs and the upload,
    ``storage_cost_usd_per_month`` for keeping what is added, with data
    packs priced in ``storage_class``.  The reads a backup makes (config,
    keys, index) are those this dry run made, reported beside it.
    """

    new_data_blobs: int
    new_tree_blobs: int
    bytes_new: int  # plaintext of the new blobs
    bytes_stored: int  # packs, index files and snapshot
    data_pack_bytes: int
    tree_pack_bytes: int
    compression_sampled: bool  # whether some blobs' sizes were extrapolated
    data_packs: int
    tree_packs: int
    index_files: int
    put_requests: int
    storage_class: str
    upload_cost_usd: float
    storage_cost_usd_per_month: float
    puts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The estimate as JSON-ready data."""
        return asdict(self)


class DryRunWriter:
    """Answers dedup questions from the repository, remembers would-be blobs, writes nothing."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.new_blobs: set[bytes] = set()
        self.new_bytes = 0
        self._tally = {t: _Tally() for t in BlobType}

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        return self.repo.blob_id(blob_type, data)

    def has_blob(self, blob_id: bytes) -> bool:
        return blob_id in self.new_blobs or self.repo.has_blob(blob_id)

    def save_blob(
        self, blob_type: BlobType, data: bytes, blob_id: bytes | None = None
    ) -> tuple[bytes, bool]:
        if blob_id is None:
            blob_id = self.blob_id(blob_type, data)
        if self.has_blob(blob_id):
            return blob_id, False
        self.new_blobs.add(blob_id)
        self.new_bytes += len(data)
        tally = self._tally[blob_type]
        tally.add(len(data), self._sealed_size(tally, blob_id, data))
        return blob_id, True

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        return self.repo.load_blob(blob_type, blob_id, raw_length)

    def file_digest(self) -> FileDigest:
        return self.repo.file_digest()

    def save_snapshot(self, snap: Snapshot) -> bytes:
        return b""

    def estimate(self, prices: PriceTable, storage_class: str | None = None) -> BackupEstimate:
        """What storing the new blobs would take, priced with ``prices``.

        ``storage_class`` is the class data packs would go to (None:
        STANDARD); see :meth:`PriceTable.for_storage_class`.
        """
        data, tree = self._tally[BlobType.DATA], self._tally[BlobType.TREE]
        pack_size = self.repo.config.pack_size
        (data_packs, data_bytes), (tree_packs, tree_bytes) = (
            data.packs(pack_size, self.repo.config.pack_format),
            tree.packs(pack_size, self.repo.config.pack_format),
        )
        packs = data_packs + tree_packs
        index_files = -(-packs // INDEX_EVERY_PACKS)
        blobs = data.blobs + tree.blobs
        index_bytes = blobs * INDEX_BYTES_PER_BLOB + index_files * SEAL_OVERHEAD
        warm_bytes = tree_bytes + index_bytes + SNAPSHOT_BYTES
        puts = {
            "data_packs": data_packs,
            "tree_packs": tree_packs,
            "index": index_files,
            "snapshot": 1,
            "lock": 1,
        }
        cold = prices.for_storage_class(storage_class)
        warm_puts = sum(puts.values()) - data_packs
        cold_upload = cold.cost({"PUT": data_packs}, data_bytes, 0)
        upload = cold_upload + prices.cost({"PUT": warm_puts}, warm_bytes, 0)
        storage = cold.storage_cost(data_bytes) + prices.storage_cost(warm_bytes)
        return BackupEstimate(
            new_data_blobs=data.blobs,
            new_tree_blobs=tree.blobs,
            bytes_new=data.raw_bytes + tree.raw_bytes,
            bytes_stored=data_bytes + warm_bytes,
            data_pack_bytes=data_bytes,
            tree_pack_bytes=tree_bytes,
            compression_sampled=data.extrapolated or tree.extrapolated,
            data_packs=data_packs,
            tree_packs=tree_packs,
            index_files=index_files,
            put_requests=sum(puts.values()),
            storage_class=storage_class or "STANDARD",
            upload_cost_usd=round(upload, 10),
            storage_cost_usd_per_month=round(storage, 10),
            puts=puts,
        )

    def _sealed_size(self, tally: _Tally, blob_id: bytes, data: bytes) -> int | None:
        """The blob's size once compressed and sealed, or None if it is left to extrapolate."""
        level = self.repo.compression_level
        if level is None:
            return 1 + len(data) + SEAL_OVERHEAD  # stored as is, after the flag byte
        exact = tally.raw_bytes < EXACT_BYTES
        sampled = blob_id[0] % SAMPLE_EVERY == 0
        if not (exact or sampled):
            return None
        payload = len(compress.encode_payload(data, level))
        tally.measured[0] += len(data)
        tally.measured[1] += payload
        if sampled and not exact:
            tally.sample[0] += len(data)
            tally.sample[1] += payload
        return payload + SEAL_OVERHEAD
