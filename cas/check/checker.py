"""``check``: prove a repository sound, returning findings as data (never printing).

The check runs in phases, each reporting progress through a callback:

1. list every object once and sort it into the layout (spec §2); names that
   are not part of it are reported, as are damaged key files, undecodable lock
   files and leftovers of interrupted uploads;
2. load every index file (SHA-256 against its name, AEAD, shape), skipping
   superseded ones, into a private index: a damaged index file is a finding,
   not the end of the check;
3. compare the packs the index names with the packs stored: missing packs,
   unreferenced packs (orphans), sizes that do not fit the index entries;
4. read each indexed pack's header (two ranged reads) and compare it with the
   index;
5. optionally (``read_data``) read whole packs, re-hash them and open every
   blob (Repository.verify_pack), all or a subset (cas.check.state);
6. read every snapshot and walk its trees: every tree and data blob must be in
   the index and readable.

Phase 5 runs before the walk so that a blob found damaged there is already
known when the walk meets it: every damaged or missing object is traced, in
the same single walk, to the snapshots and paths that need it.  When helper
processes verify the packs, this process walks meanwhile, in the time it would
wait for them; the walk is undone and done again after phase 5 if a pack does
not verify, so the findings are those of the phases in order.

Severity: anything that can make a snapshot unrestorable, or shows that stored
bytes are not what was written, is an error.  Orphaned packs, duplicate blobs,
undecodable lock files, unknown objects and leftover uploads are warnings:
interrupted or concurrent backups leave them, nothing is lost, and prune or a
manual clean-up removes them.

The checker uses only the read side of the repository (:class:`CheckedRepository`).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from cas import failpoints, ipc
from cas.backend.base import ReadBackend
from cas.check.findings import Affected, CheckResult, CheckSummary, Finding, Severity
from cas.check.state import CheckState, Subset, select_packs
from cas.check.verifier import VerifierPool
from cas.crypto import BlobType, KeyBase
from cas.errors import BlobNotFound, CasError, FormatError, IntegrityError, ObjectNotFound
from cas.format import generation as genfmt
from cas.format import index as indexfmt
from cas.format import pack as packfmt
from cas.format.config import Config
from cas.format.keyfile import decode_keyfile
from cas.format.snapshot import decode_snapshot
from cas.format.tree import Node, decode_tree_docs
from cas.ids import storage_id
from cas.progress import Progress
from cas.repo import layout
from cas.repo.blobreader import read_aligned
from cas.repo.index import Location, MasterIndex
from cas.repo.leftovers import find_leftovers
from cas.repo.locks import scan_locks
from cas.walker import bottom_up
from cas.wording import counted

_T = TypeVar("_T")

# Listing and index loading start over when an index file vanishes in between
# (a concurrent prune or index repair); after this many tries, go on.
LISTING_ATTEMPTS = 3
# The longest slice of the snapshot walk between looks at the verifying processes'
# answers (``Checker._read_data_walking``), in seconds.
WALK_SLICE = 0.005

"""``progress(phase, done, total)``: called as each phase advances."""


@dataclass
class CheckOptions:
    """What to check beyond the structure."""

    read_data: bool = False  # read and verify whole packs
    subset: Subset | None = None  # only some packs (implies read_data)
    max_age: float | None = None  # seconds; only packs due (implies read_data)
    state: CheckState | None = None  # verification times, updated as packs verify
    leftover_min_age: float = 3600.0  # younger uploads may still be running
    workers: int = 4  # packs read at once (headers, --read-data)
    # packs proven at once in this process (--read-data without helpers), if fewer: a
    # local repository's packs are proven in pieces, and on one core two threads held
    # 79-85 MiB at the peak of a linux check where four held 93-106, for no more CPU
    data_workers: int | None = None
    # pack headers read at once, if fewer than ``workers``: a local repository's headers
    # are one pread each, and on two cores one thread left the main process of a linux
    # check 4 MiB lower at the summed peak than four (the decoded headers in flight,
    # 2 x workers of them, leave their heap fragments resident for the data check)
    header_workers: int | None = None
    clock: Callable[[], float] = time.time
    # --read-data in helper processes (cas/check/verifier.py), from this many packs
    verifier: VerifierPool | None = None
    verifier_from: int = 1

    @property
    def reads_data(self) -> bool:
        """Whether packs are read whole."""
        return self.read_data or self.subset is not None or self.max_age is not None


class CheckedRepository(Protocol):
    """The read side of a repository: all the checker uses."""

    @property
    def backend(self) -> ReadBackend: ...

    @property
    def keys(self) -> KeyBase: ...

    @property
    def config(self) -> Config: ...

    def read_pack_header(self, pack_id: bytes) -> list[packfmt.PackEntry]: ...

    def verify_pack(self, pack_id: bytes) -> list[packfmt.PackEntry]: ...


@dataclass
class _IndexedPack:
    """A pack as the index describes it: its entries kept as header bytes (41 per blob)."""

    index_file: bytes
    header: bytes
    tiles: bool  # offsets are contiguous from 0, as a pack's blobs are
    marked: bool = False  # marked for deletion by prune
    as_garbage: bool = False  # first seen in an index file's garbage list

    def entries(self) -> list[packfmt.PackEntry]:
        out, offset = [], 0
        for t, length, raw, bid in packfmt.ENTRY.iter_unpack(self.header):
            out.append(packfmt.PackEntry(bid, BlobType(t), offset, length, raw))
            offset += length
        return out

    def expected_size(self, version: int) -> int:
        """The pack's size as its entries give it, with the header of ``version`` (§9.6)."""
        blobs: int = sum(e[1] for e in packfmt.ENTRY.iter_unpack(self.header))
        return packfmt.pack_size(version, blobs, len(self.header) // packfmt.ENTRY.size)


def check(
    repo: CheckedRepository, options: CheckOptions | None = None, progress: Progress | None = None
) -> CheckResult:
    """Check ``repo``; see the module docstring for what is checked."""
    return Checker(repo, options, progress).run()


def _given(raw: bytes) -> bytes:
    return raw


def _entries(
    f: indexfmt.BlobLocations | indexfmt.IndexFile, garbage: bool
) -> Iterator[tuple[bytes, list[packfmt.PackEntry]]]:
    """Each pack of an index file (its live packs, or those under ``garbage``) with its
    entries, made one pack at a time from compact columns."""
    if isinstance(f, indexfmt.IndexFile):
        if garbage:
            yield from ((p, e) for p, (_, e) in f.garbage.items())
        else:
            yield from f.packs.items()
        return
    if garbage:
        yield from ((p, f.entries(first, n)) for p, _, first, n in f.garbage)
    else:
        yield from ((p, f.entries(first, n)) for p, first, n in f.packs)


def _short(id_: bytes) -> str:
    return id_.hex()[:8]


def _blob_object(blob_type: BlobType, blob_id: bytes) -> str:
    return f"{'tree' if blob_type is BlobType.TREE else 'blob'}:{blob_id.hex()}"


def _prefixed(name: bytes, uses: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name + b"/" + rel if rel else name, key) for rel, key in uses]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


class Checker:
    """One run of the check; ``run()`` returns the result."""

    def __init__(
        self,
        repo: CheckedRepository,
        options: CheckOptions | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.repo = repo
        self.backend = repo.backend
        self.keys = repo.keys
        self.opts = options or CheckOptions()
        self._progress = progress or (lambda phase, done, total: None)
        self._reset()

    def _reset(self) -> None:
        self.summary = CheckSummary()
        self.findings: list[Finding] = []
        self.index = MasterIndex()  # blobs in live packs
        self.garbage_index = MasterIndex()  # blobs in packs marked for deletion
        self._ids: dict[str, list[bytes]] = {d: [] for d in layout.DIRECTORIES}
        self._stored: dict[bytes, int] = {}  # pack ID -> size, from the listing
        self._packs: dict[bytes, _IndexedPack] = {}  # from the index files
        self._gone: set[bytes] = set()  # indexed packs that are not stored
        self._bad: dict[bytes, Finding] = {}  # blob ID (or node key) -> why it is unusable
        self._orphan_blobs: dict[bytes, bytes] = {}  # blob ID -> unreferenced pack holding it
        self._copies: dict[bytes, list[bytes]] = {}  # blob ID -> its other packs (duplicates)
        self._visited: set[bytes] = set()
        self._drop_unless_needed: list[Finding] = []
        self._memo: dict[bytes, list[tuple[bytes, bytes]]] = {}
        # Entries of a readable tree that the tree decoder refuses (spec §11.3):
        # tree ID -> (name, why), reported as node_invalid on that entry alone.
        self._refused: dict[bytes, list[tuple[bytes, str]]] = {}
        self._generations: list[int] = []  # generation records listed (§13.6)
        self._walk_reported = True  # the walk reports its progress (_snapshot_steps)
        self._walk_ended = False  # and has reported its end

    def run(self) -> CheckResult:
        """All phases, then the findings sorted: errors first, then by kind and object."""
        for _ in range(LISTING_ATTEMPTS):
            self._reset()
            self._list_objects()
            if self._load_index():
                break
        else:
            self._add(
                "check_incomplete",
                layout.INDEX,
                "index files kept disappearing while they were read (is a prune or an index "
                "repair running?); the check may report packs and blobs it could not see",
            )
        self._check_keys()
        self._check_generations()
        self._check_locks()
        self._check_leftovers()
        self._check_packs()
        self._check_headers()
        walked = self._read_data() if self.opts.reads_data else False
        if not walked:
            self._check_snapshots()
        unneeded = {id(f) for f in self._drop_unless_needed if not f.affected}
        self.findings = [f for f in self.findings if id(f) not in unneeded]
        for f in self.findings:
            f.affected = sorted(set(f.affected))
        rank = {Severity.ERROR: 0, Severity.WARNING: 1}
        self.findings.sort(key=lambda f: (rank[f.severity], f.kind, f.object))
        return CheckResult(self.findings, self.summary)

    def _add(self, kind: str, obj: str, message: str) -> Finding:
        finding = Finding(kind, obj, message)
        self.findings.append(finding)
        return finding

    # -- phase 1: the listing, keys, locks, leftovers ---------------------------

    def _list_objects(self) -> None:
        """List snapshots, then index files, then packs: the reverse of the write order
        (spec §14.1), so that everything an object in the listing needs is in it too,
        even while backups store new objects.  (Packs first would miss the packs of
        an index file stored between the two listings and call them missing; index
        files before snapshots, the index of a snapshot stored in between.)  A
        running backup's packs not yet indexed are listed as unreferenced: a warning.
        """
        self._progress("list", 0, 0)
        n = 0
        for directory in (layout.SNAPSHOTS, layout.INDEX, layout.DATA, layout.KEYS, layout.LOCKS):
            for info in self.backend.list(directory):
                n += 1
                self._progress("list", n, 0)
                self._sort_object(info.name, info.size)
            failpoints.hit(f"check-listed-{directory}")
        # Once more for objects outside the layout's directories.
        for info in self.backend.list(""):
            top = info.name.split("/", 1)[0]
            if info.name != layout.CONFIG and top not in layout.DIRECTORIES:
                self._sort_object(info.name, info.size)
        for ids in self._ids.values():
            ids.sort()
        self.summary.packs_stored = len(self._stored)

    def _sort_object(self, name: str, size: int) -> None:
        if name == layout.CONFIG:
            return
        top = name.split("/", 1)[0]
        object_id = layout.id_from_name(name)
        if top == layout.DATA and object_id is not None and name == layout.pack_name(object_id):
            self._stored[object_id] = size
            self._ids[layout.DATA].append(object_id)
        elif top == layout.INDEX and layout.generation_from_name(name) is not None:
            self._generations.append(layout.generation_from_name(name) or 0)
        elif (
            top in self._ids
            and top != layout.DATA
            and object_id is not None
            and (name == f"{top}/{object_id.hex()}")
        ):
            self._ids[top].append(object_id)
        else:
            self._add(
                "unexpected_object", name, "not a name of the repository layout; cas ignores it"
            )

    def _read_whole(self, name: str, kind: str) -> bytes | None:
        """A content-named object checked against its name; None (with a finding) if not.

        ObjectNotFound (removed since the listing) propagates.
        """
        try:
            raw = self.backend.read(name)
        except ObjectNotFound:
            raise
        except CasError as e:
            self._add(kind, name, str(e))
            return None
        if storage_id(raw) != layout.id_from_name(name):
            self._add(
                "name_mismatch", name, "content does not hash to its name: altered or truncated"
            )
            return None
        return raw

    def _check_keys(self) -> None:
        ids = self._ids[layout.KEYS]
        for n, key_id in enumerate(ids):
            self._progress("keys", n, len(ids))
            name = layout.key_name(key_id)
            try:
                raw = self._read_whole(name, "key_damaged")
            except ObjectNotFound:
                continue  # removed since the listing (key remove, passwd)
            if raw is None:
                continue
            try:
                decode_keyfile(raw)
            except CasError as e:
                self._add("key_damaged", name, str(e))

    def _check_generations(self) -> None:
        """Every generation record opens, is the generation its name says of this
        repository, and names the record below it when that one exists (§13.6)."""
        hashes: dict[int, bytes] = {}
        records: dict[int, genfmt.Generation] = {}
        for n in sorted(self._generations):
            name = layout.generation_name(n)
            try:
                raw = self.backend.read(name)
                record = genfmt.decode_generation(raw, self.keys.index)
            except ObjectNotFound:
                continue
            except CasError as e:
                self._add("generation_damaged", name, str(e))
                continue
            if record.n != n or record.repo_id != self.repo.config.repo_id:
                self._add("generation_damaged", name, "not this generation of this repository")
                continue
            hashes[n], records[n] = storage_id(raw), record
        for n, record in records.items():
            if n - 1 in hashes and record.prev != hashes[n - 1]:
                self._add(
                    "generation_damaged",
                    layout.generation_name(n),
                    f"does not name generation {n - 1} as the one before it",
                )

    def _check_locks(self) -> None:
        self._progress("locks", 0, 0)
        for name, reason in scan_locks(self.backend, self.keys.index).unreadable:
            self._add("lock_unreadable", name, f"{reason}; it is ignored by lockers")

    def _check_leftovers(self) -> None:
        self._progress("leftovers", 0, 0)
        try:
            found = find_leftovers(self.backend, self.opts.clock())
        except CasError as e:
            self._add("check_incomplete", self.backend.location, f"leftover uploads: {e}")
            return
        for lo in found:
            if lo.age is not None and lo.age < self.opts.leftover_min_age:
                continue  # may belong to a backup still running
            age = f"{_age(lo.age)} old" if lo.age is not None else "age unknown"
            size = f"{lo.size} bytes, " if lo.size is not None else ""
            self._add(
                "leftover_upload",
                lo.name,
                f"unfinished upload ({size}{age}); safe to remove when no backup runs",
            )

    # -- phase 2: index files ---------------------------------------------------

    def _load_index(self) -> bool:
        """Load the index files; False if one vanished after the listing.

        Prune and index repair store an index file that supersedes others and
        then delete those: a check that read neither would miss every pack
        they listed, so the caller lists again.
        """
        ids = self._ids[layout.INDEX]
        # Compact columns, not an object per entry, until every file is read: only
        # then is it known which files are superseded and which packs are marked.
        files: dict[bytes, indexfmt.BlobLocations | indexfmt.IndexFile] = {}
        for n, file_id in enumerate(ids):
            self._progress("index", n, len(ids))
            name = layout.index_name(file_id)
            try:
                raw = self._read_whole(name, "index_damaged")
            except ObjectNotFound:
                return False
            if raw is None:
                continue
            try:
                files[file_id] = indexfmt.read_locations(partial(_given, raw), self.keys.index)
            except CasError as e:
                self._add("index_damaged", name, str(e))
            del raw
        superseded = {s for f in files.values() for s in f.supersedes}
        for fid in superseded.intersection(files):
            del files[fid]
        # Packs prune marked for deletion (spec §13.5) stay readable until deleted.
        doomed = {p for f in files.values() for p, _ in _entries(f, garbage=True)}
        for file_id in list(files):  # in listing order, as before
            f = files.pop(file_id)
            self.summary.index_files += 1
            for pack_id, entries in _entries(f, garbage=False):
                self._add_indexed_pack(file_id, pack_id, entries, pack_id in doomed, False)
            for pack_id, entries in _entries(f, garbage=True):
                self._add_indexed_pack(file_id, pack_id, entries, True, True)
            del f
        self.index.compact()
        self.garbage_index.compact()
        self.summary.packs_indexed = len(self._packs)
        self.summary.packs_marked = len(doomed)
        for pack_id, ip in self._packs.items():
            if not ip.tiles:
                finding = self._add(
                    "index_entry_invalid",
                    layout.pack_name(pack_id),
                    f"index file {_short(ip.index_file)}: its blob entries overlap or leave gaps",
                )
                self._mark_bad(pack_id, finding)
        return True

    def _add_indexed_pack(
        self,
        file_id: bytes,
        pack_id: bytes,
        entries: list[packfmt.PackEntry],
        marked: bool,
        as_garbage: bool,
    ) -> None:
        name = layout.pack_name(pack_id)
        header = packfmt.encode_header(entries)
        offsets = itertools.accumulate((e.length for e in entries), initial=0)
        tiles = all(e.offset == off for e, off in zip(entries, offsets, strict=False))
        first = self._packs.get(pack_id)
        if first is not None:
            if first.header == header and first.tiles == tiles:
                if as_garbage or first.as_garbage:
                    return  # marked by prune in one index file, still listed by another
                self._add(
                    "pack_indexed_twice",
                    name,
                    f"listed by index files {_short(first.index_file)} and {_short(file_id)}",
                )
            else:
                self._add(
                    "index_conflict",
                    name,
                    f"index files {_short(first.index_file)} and {_short(file_id)} list "
                    f"different blobs for it; the first is used",
                )
            return
        self._packs[pack_id] = _IndexedPack(file_id, header, tiles, marked, as_garbage)
        target = self.garbage_index if marked else self.index
        added = target.add_pack(pack_id, ((e.blob_id, e.offset, e.length) for e in entries))
        if not marked and added < len(entries):
            for e in entries:
                first_loc = self.index.get(e.blob_id)
                if first_loc is not None and first_loc.pack_id != pack_id:
                    self._copies.setdefault(e.blob_id, []).append(pack_id)
            self._add(
                "blob_duplicate",
                name,
                f"{len(entries) - added} of its {counted(len(entries), 'blob')} "
                f"{'is' if len(entries) - added == 1 else 'are'} also stored in other "
                f"packs (harmless; prune removes the extra copies)",
            )

    def _mark_bad(self, pack_id: bytes, finding: Finding, only: set[bytes] | None = None) -> None:
        """Blobs whose indexed location is in ``pack_id`` cannot be read: ``finding`` says why."""
        for e in self._packs[pack_id].entries():
            if only is not None and e.blob_id not in only:
                continue
            loc = self._locate(e.blob_id)
            if loc is not None and loc.pack_id == pack_id:
                self._bad.setdefault(e.blob_id, finding)

    def _vanished(self, pack_id: bytes) -> None:
        """An indexed pack was deleted after the listing.

        A prune running beside the check deletes the packs it found unused, so
        this is a finding only if a snapshot turns out to need the pack.
        """
        finding = self._add(
            "pack_missing", layout.pack_name(pack_id), "deleted during the check, still needed"
        )
        self._drop_unless_needed.append(finding)
        self._gone.add(pack_id)
        self._mark_bad(pack_id, finding)

    def _each(
        self, fn: Callable[[bytes], _T], pack_ids: list[bytes], workers: int | None = None
    ) -> Iterator[tuple[bytes, _T | CasError]]:
        """``fn`` over every pack on worker threads (storage latency dominates), in order.

        A CasError is returned in place of the result.  Only a bounded window of
        packs is in flight, so memory stays small and an interrupt stops soon.
        """

        def call(pack_id: bytes) -> _T | CasError:
            try:
                return fn(pack_id)
            except CasError as e:
                return e

        workers = max(1, self.opts.workers if workers is None else workers)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="cas-check")
        try:
            todo = iter(pack_ids)
            window = deque((p, pool.submit(call, p)) for p in itertools.islice(todo, 2 * workers))
            while window:
                pack_id, future = window.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    window.append((nxt, pool.submit(call, nxt)))
                yield pack_id, future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _locate(self, blob_id: bytes) -> Location | None:
        """Where a reader finds the blob: a live pack first, else a marked one."""
        return self.index.get(blob_id) or self.garbage_index.get(blob_id)

    # -- phase 3: stored packs against the index --------------------------------

    def _check_packs(self) -> None:
        self._progress("packs", 0, 0)
        for pack_id in sorted(self._packs):
            if pack_id not in self._stored:
                ip = self._packs[pack_id]
                n = len(ip.header) // packfmt.ENTRY.size
                finding = self._add(
                    "pack_missing",
                    layout.pack_name(pack_id),
                    f"index file {_short(ip.index_file)} names it ({counted(n, 'blob')}) "
                    "but it is not stored",
                )
                if ip.marked:
                    # Prune deletes marked packs: only a problem if a snapshot needs one.
                    finding.message = (
                        f"marked for deletion and deleted, but a snapshot still needs it "
                        f"(index file {_short(ip.index_file)})"
                    )
                    self._drop_unless_needed.append(finding)
                self._gone.add(pack_id)
                self._mark_bad(pack_id, finding)
        orphans = sorted(set(self._stored) - set(self._packs))
        for n, (pack_id, entries) in enumerate(self._each(self.repo.read_pack_header, orphans)):
            self._progress("packs", n, len(orphans))
            if isinstance(entries, ObjectNotFound):
                continue  # deleted since the listing (prune)
            if isinstance(entries, CasError):
                what = f"its header is unreadable ({entries})"
            else:
                for entry in entries:
                    self._orphan_blobs.setdefault(entry.blob_id, pack_id)
                what = f"it holds {counted(len(entries), 'blob')}"
            self._add(
                "pack_unreferenced",
                layout.pack_name(pack_id),
                f"no index file names it; {what} (interrupted backups leave these; prune removes "
                f"them)",
            )

    def _check_headers(self) -> None:
        packs = sorted(p for p in self._packs if p in self._stored)
        workers = min(self.opts.workers, self.opts.header_workers or self.opts.workers)
        headers = self._each(self.repo.read_pack_header, packs, workers)
        for n, (pack_id, header) in enumerate(headers):
            self._progress("headers", n, len(packs))
            ip = self._packs[pack_id]
            name = layout.pack_name(pack_id)
            if isinstance(header, ObjectNotFound):
                self._vanished(pack_id)
                continue
            if isinstance(header, CasError):
                e = header
                size, expected = self._stored[pack_id], ip.expected_size(self.repo.config.version)
                if size == expected:
                    self._add("pack_header_damaged", name, str(e))
                    continue
                finding = self._add(
                    "pack_size_mismatch",
                    name,
                    f"the index entries need {expected} bytes, the pack has {size}; header: {e}",
                )
                # Blobs that reach past a truncated end cannot be read.
                beyond = {
                    entry.blob_id
                    for entry in ip.entries()
                    if entry.offset + entry.length > size - packfmt.TRAILER_SIZE
                }
                self._mark_bad(pack_id, finding, only=beyond)
                continue
            if ip.tiles and packfmt.encode_header(header) != ip.header:
                in_index = set(ip.entries())
                in_header = set(header)
                wrong = {e.blob_id for e in in_index - in_header}
                finding = self._add(
                    "pack_header_mismatch",
                    name,
                    f"{len(in_index - in_header)} index entries are not in the header, "
                    f"{len(in_header - in_index)} header entries are not in the index",
                )
                self._mark_bad(pack_id, finding, only=wrong)

    # -- phase 4: whole packs ---------------------------------------------------

    def _read_data(self) -> bool:
        """Phase 5; whether it walked the snapshots (phase 6) too."""
        # this process proves packs too (alone, or beside its helpers): their pieces
        # and blobs of up to 8 MiB in mappings given back when freed, not in the heap
        ipc.keep_heap_small()
        now = self.opts.clock()
        state = self.opts.state
        if state is not None:
            state.observe(self._stored, now)
        candidates = [p for p in self._packs if p in self._stored and p not in self._gone]
        selected = select_packs(
            candidates,
            subset=self.opts.subset,
            max_age=self.opts.max_age,
            state=state,
            now=now,
        )
        self.summary.packs_selected = len(selected)
        pool = self.opts.verifier
        if pool is not None and len(selected) >= self.opts.verifier_from:
            return self._read_data_walking(pool, selected)
        workers = min(self.opts.workers, self.opts.data_workers or self.opts.workers)
        results = self._each(self.repo.verify_pack, selected, workers)
        for n, (pack_id, result) in enumerate(results):
            self._progress("read-data", n, len(selected))
            self._verified(pack_id, result, self.opts.clock())
        self._progress("read-data", len(selected), len(selected))
        return False

    def _verified(self, pack_id: bytes, result: object, when: float) -> None:
        """The outcome of verifying one pack (``verify_pack``'s result or its CasError)."""
        if isinstance(result, ObjectNotFound):
            self._vanished(pack_id)
            return
        if isinstance(result, IntegrityError):
            self._diagnose_pack(pack_id, result)
            return
        if isinstance(result, CasError):
            self._add("pack_unreadable", layout.pack_name(pack_id), str(result))
            return
        self.summary.packs_read += 1
        self.summary.bytes_read += self._stored[pack_id]
        if self.opts.state is not None:
            self.opts.state.mark_verified(pack_id, when)

    def _read_data_walking(self, pool: VerifierPool, selected: list[bytes]) -> bool:
        """Packs verified in the helper processes while this process walks the snapshots
        (phase 6) in the time it would wait for them; whether the walk is done.

        The walk is speculative: it sees only what the phases before found.  When every
        pack verifies, the data check changes nothing it looked at, so its result is the
        one a walk after would give.  When a pack does not, the walk is undone and the
        outcomes are taken in order as before, the walk following them (``run``).
        """
        mark = self._walk_mark()
        self._walk_reported = False  # the status line shows the packs meanwhile
        steps = self._snapshot_steps()

        def idle() -> bool:  # a slice of the walk: at most ~5 ms, then answers again
            until = time.monotonic() + WALK_SLICE
            return any(time.monotonic() >= until for _ in steps)

        outcomes: list[tuple[bytes, CasError | None, float]] = []
        for n, (pack_id, error) in enumerate(pool.verify(selected, self.repo.verify_pack, idle)):
            self._progress("read-data", n, len(selected))
            outcomes.append((pack_id, error, self.opts.clock()))
        self._progress("read-data", len(selected), len(selected))
        failed = any(error is not None for _, error, _ in outcomes)
        if failed:
            steps.close()
            self._undo_walk(mark)
        for pack_id, error, when in outcomes:
            self._verified(pack_id, error, when)
        if failed:
            return False
        self._walk_reported = True
        for _ in steps:  # the rest of the walk, if the packs were done first
            pass
        if not self._walk_ended:  # it ended while the packs were read
            ids = self._ids[layout.SNAPSHOTS]
            self._progress("snapshots", len(ids), len(ids))
        return True

    def _walk_mark(self) -> tuple[int, list[int], set[bytes], tuple[int, ...]]:
        """What the walk changes, as it is before it (``_undo_walk``)."""
        s = self.summary
        return (
            len(self.findings),
            [len(f.affected) for f in self.findings],
            set(self._bad),
            (s.snapshots, s.trees, s.dirs, s.files),
        )

    def _undo_walk(self, mark: tuple[int, list[int], set[bytes], tuple[int, ...]]) -> None:
        """Back to ``mark``: the findings, uses and counts of a walk dropped."""
        found, affected, bad, counts = mark
        del self.findings[found:]
        for finding, n in zip(self.findings, affected, strict=True):
            del finding.affected[n:]
        for key in [k for k in self._bad if k not in bad]:
            del self._bad[key]
        self._visited.clear()
        self._memo.clear()
        self._refused.clear()
        s = self.summary
        s.snapshots, s.trees, s.dirs, s.files = counts

    def _diagnose_pack(self, pack_id: bytes, error: CasError) -> None:
        """After verify_pack failed: which blobs of the pack are damaged?"""
        name = layout.pack_name(pack_id)
        finding = self._add("pack_damaged", name, str(error))
        try:
            data = self.backend.read(name)
        except CasError as err:
            finding.message += f"; cannot read it again: {err}"
            return
        self.summary.bytes_read += len(data)
        try:
            packfmt.parse_pack(self.keys, data)
            header_state = "its header is intact"
        except CasError:
            header_state = "its header is damaged"
        entries = self._packs[pack_id].entries()
        damaged = copies = 0
        for e in entries:
            sealed = data[e.offset : e.offset + e.length]
            try:
                packfmt.open_blob(self.keys, e.type, e.blob_id, sealed, e.raw_length)
            except CasError as be:
                damaged += 1
                intact = self._intact_copy(e, pack_id)
                if intact is not None:
                    # Readers take the other copy when this one fails: nothing is lost.
                    copies += 1
                    self._add(
                        "blob_copy_damaged",
                        _blob_object(e.type, e.blob_id),
                        f"in pack {_short(pack_id)}: {be}; the copy in pack {_short(intact)} "
                        "is intact and is read instead",
                    ).pack = pack_id
                    continue
                blob = self._add(
                    "blob_damaged",
                    _blob_object(e.type, e.blob_id),
                    f"in pack {_short(pack_id)}: {be}",
                )
                blob.pack = pack_id
                loc = self._locate(e.blob_id)
                if loc is not None and loc.pack_id == pack_id:
                    self._bad.setdefault(e.blob_id, blob)
        finding.message += (
            f"; {header_state}, {damaged} of {counted(len(entries), 'blob')} "
            f"{'is' if damaged == 1 else 'are'} damaged"
        )
        if copies:
            finding.message += f" ({copies} of them have intact copies in other packs)"

    def _intact_copy(self, entry: packfmt.PackEntry, damaged_pack: bytes) -> bytes | None:
        """Another pack whose copy of the blob opens and verifies, if there is one."""
        loc = self._locate(entry.blob_id)
        others = [loc.pack_id] if loc is not None else []
        others += self._copies.get(entry.blob_id, [])
        for other in dict.fromkeys(others):
            if other == damaged_pack or other in self._gone or other not in self._stored:
                continue
            found = [x for x in self._packs[other].entries() if x.blob_id == entry.blob_id]
            if not found:
                continue
            try:
                sealed = self._read_range(other, found[0].offset, found[0].length)
                packfmt.open_blob(self.keys, entry.type, entry.blob_id, sealed, entry.raw_length)
            except CasError:
                continue
            return other
        return None

    # -- phase 5: snapshots and trees -------------------------------------------

    def _check_snapshots(self) -> None:
        self._walk_reported = True
        for _ in self._snapshot_steps():
            pass

    def _snapshot_steps(self) -> Generator[None]:
        """Every snapshot read and its trees walked, a step (one tree) at a time; its
        progress is reported while ``_walk_reported`` (``_walk_ended`` says whether the
        end was)."""
        ids = self._ids[layout.SNAPSHOTS]
        self._walk_ended = False
        for n, snapshot_id in enumerate(ids):
            if self._walk_reported:
                self._progress("snapshots", n, len(ids))
            name = layout.snapshot_name(snapshot_id)
            try:
                raw = self._read_whole(name, "snapshot_damaged")
            except ObjectNotFound:
                continue  # forgotten since the listing
            if raw is None:
                continue
            try:
                snap = decode_snapshot(raw, self.keys.data)
            except CasError as e:
                self._add("snapshot_damaged", name, str(e))
                continue
            self.summary.snapshots += 1
            yield from self._walk(snap.tree)
            for rel, key in self._memo.get(snap.tree, []):
                self._bad[key].affected.append(Affected(snapshot_id, b"/" + rel))
        if self._walk_reported:
            self._progress("snapshots", len(ids), len(ids))
            self._walk_ended = True

    def _walk(self, root: bytes) -> Iterator[None]:
        """Walk tree ``root``, a step per tree; its bad uses (path relative to it, key
        into ``_bad``) are then ``_memo.get(root, [])``.

        Bottom up and memoised by tree ID, so each distinct tree is read once
        however many snapshots share it.
        """
        for tree_id, nodes in bottom_up(self._load_tree, root, self._visited):
            self._visited.add(tree_id)
            uses = [(b"", tree_id)] if nodes is None else self._uses(tree_id, nodes)
            if uses:
                self._memo[tree_id] = uses
            yield

    def _uses(self, tree_id: bytes, nodes: list[Node]) -> list[tuple[bytes, bytes]]:
        """The bad uses under a tree whose subdirectories are walked already."""
        uses: list[tuple[bytes, bytes]] = []
        self.summary.trees += 1
        for name, why in self._refused.pop(tree_id, []):
            uses.append((name, self._node_problem(tree_id, name, why)))
        for node in nodes:
            if node.type == "dir":
                self.summary.dirs += 1
                if node.subtree in self._memo:
                    uses.extend(_prefixed(node.name, self._memo[node.subtree]))
            elif node.type == "file":
                self.summary.files += 1
                uses.extend((node.name, key) for key in self._file_problems(tree_id, node))
        return uses

    def _file_problems(self, tree_id: bytes, node: Node) -> Iterator[bytes]:
        for blob_id in dict.fromkeys(node.content):
            if blob_id in self._bad:
                yield blob_id
            elif self._locate(blob_id) is None:
                self._bad[blob_id] = self._add(
                    "blob_missing", _blob_object(BlobType.DATA, blob_id), self._not_indexed(blob_id)
                )
                yield blob_id

    def _node_problem(self, tree_id: bytes, name: bytes, what: str) -> bytes:
        key = b"node:" + tree_id + b"/" + name
        if key not in self._bad:
            entry = name.decode("utf-8", "backslashreplace")
            self._bad[key] = self._add(
                "node_invalid", _blob_object(BlobType.TREE, tree_id), f"entry {entry!r}: {what}"
            )
        return key

    def _not_indexed(self, blob_id: bytes) -> str:
        orphan = self._orphan_blobs.get(blob_id)
        if orphan is None:
            return "no index file names it"
        return (
            f"no index file names it, but unreferenced pack {layout.pack_name(orphan)} holds "
            f"it: the index is incomplete ('cas repair index' rebuilds it)"
        )

    def _load_tree(self, tree_id: bytes) -> list[Node] | None:
        """The tree's nodes, or None when it is missing or damaged (with a finding)."""
        if tree_id in self._bad:
            return None
        loc = self._locate(tree_id)
        if loc is None:
            self._bad[tree_id] = self._add(
                "tree_missing", _blob_object(BlobType.TREE, tree_id), self._not_indexed(tree_id)
            )
            return None
        try:
            docs = decode_tree_docs(self.load_blob(BlobType.TREE, tree_id))
        except CasError as e:
            finding = self._add("tree_damaged", _blob_object(BlobType.TREE, tree_id), str(e))
            finding.pack = loc.pack_id
            self._bad[tree_id] = finding
            return None
        nodes = []
        for doc in docs:
            try:
                nodes.append(Node.from_doc(doc))
            except FormatError as e:  # one entry breaks §11.3: the others stay checked
                self._refused.setdefault(tree_id, []).append((doc["name"], e.fields["detail"]))
        return nodes

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        """A blob read through the checker's own index (BlobReader, for the walker).

        Not Repository.load_blob: that one loads the repository's own index, which
        stops at the first damaged index file.
        """
        loc = self._locate(blob_id)
        if loc is None:
            raise BlobNotFound(blob=blob_id.hex())
        sealed = self._read_range(loc.pack_id, loc.offset, loc.length)
        return packfmt.open_blob(self.keys, blob_type, blob_id, sealed, raw_length)

    def _read_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        """A blob's range, in the repository's read units (spec §9.6)."""
        unit = self.repo.config.pack_format.read_unit
        name = layout.pack_name(pack_id)
        size = self._stored.get(pack_id, offset + length)
        return read_aligned(self.backend, name, offset, length, unit, size)
