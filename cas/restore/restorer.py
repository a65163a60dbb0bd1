"""Restore: recreate a snapshot's tree (or part of it) under a target directory.

Files are written to a temporary name beside their destination and renamed
into place only when complete, so an interrupted or failed restore never
leaves a partial file under a real name.  Every all-zero 4 KiB block at an
aligned file offset is left as a hole, so sparse files come back sparse.
Every entry is created and changed by its name inside its directory's open
descriptor (``mkdirat``, ``openat``, ``renameat``, ...), never through a
path: trees deeper than PATH_MAX restore, and a symlink planted in the
target is replaced, never followed (cas/fs/dirfd.py).  A file's metadata goes
through the descriptor that wrote it, a directory's through its own; in a
directory this restore created, nothing is looked up before it is created.
Directory metadata (times, then flags such as immutable) is applied when the
directory's contents are done, so deepest first.  Hardlinked entries of any
type are recreated as hardlinks; an immutable or append-only inode with more
names gets its flags at the end, since nothing can be linked to it after.
An existing entry that is immutable or append-only is unlocked before it is
changed or replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cas.crypto import BlobType
from cas.errors import CasError, FormatError
from cas.format.tree import Node, decode_tree_docs
from cas.fs import dirfd, posixmeta
from cas.fs.patterns import PatternSet
from cas.protocols import BlobReader, Digest
from cas.repo.index import Location
from cas.restore.blobstream import BUDGET, MAX_REQUEST, BlobStream, PackReader
from cas.restore.pool import Finished, Group, PackOwners, WriterEvent, WriterPool
from cas.walker import load_tree

SPARSE_BLOCK = 4096
PREFETCH_THREADS = 4
# With writers_after N, the writers also start once the files seen hold N times
# this many bytes (256 files or 64 MiB by default): a few large files use them too.
WRITERS_AFTER_FILE_BYTES = 256 << 10
# A batch handed to a writer process: up to this many files or bytes of one directory.
BATCH_FILES = 64
BATCH_BYTES = 16 << 20
HELD_MAX = 64  # directories' files waiting for their writer before the walk waits too
# Sharing the files with the writers (``write_share``), this process writes a few of
# its own (up to HERE_FILES) while each writer has at least FEED_FILES out, and walks on
# otherwise: a writer is kept fed.
FEED_FILES = 48
HERE_FILES = 16
# What writing a file costs, roughly (CPU seconds): to share the work by estimate
# before it is done (linux into tmpfs: 7.5 s of writing for 78,500 files and 1.3 GB;
# big: 5.3 s for 2.1 GB in a few large files).
FILE_COST = 50e-6
BYTE_COST = 2.5e-9
BATCH_DIRS = 16  # directories in one batch at most (one descriptor each)
_ZERO_BLOCK = bytes(SPARSE_BLOCK)
_ZERO_RUN = 1 << 20  # the longest step when extending a hole
# Flags that stop changes to an inode: set last, cleared before changing an existing entry.
_LOCKING_FLAGS = posixmeta.FLAG_IMMUTABLE | posixmeta.FLAG_APPEND


class RestoreAborted(CasError):
    """restore stopped: {detail}"""


@dataclass
class RestoreOptions:
    """What to restore and how."""

    includes: PatternSet = field(default_factory=lambda: PatternSet([]))
    excludes: PatternSet = field(default_factory=lambda: PatternSet([]))
    numeric_owner: bool = False
    dry_run: bool = False
    delete: bool = False
    verify: bool = False


@dataclass
class RestoreSummary:
    """What a restore did."""

    files_restored: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    symlinks: int = 0
    special: int = 0
    hardlinks: int = 0
    bytes_written: int = 0
    deleted: int = 0
    verified: int = 0
    failed: list[str] = field(default_factory=list)
    warnings: int = 0
    writers: int = 0  # writer processes that took part

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return dict(self.__dict__)


class RestoreReporter:
    """Progress and warning callbacks; the CLI overrides what it shows."""

    def action(self, what: str, path: bytes) -> None:
        """An entry was (or, with --dry-run, would be) created, skipped or deleted."""

    def wants_actions(self) -> bool:
        """Whether ``action`` is worth calling for every entry: writer processes
        send back each entry's action only if so (a restore of many small files
        otherwise spends part of its main process on names nobody shows)."""
        return type(self).action is not RestoreReporter.action

    def bytes_done(self, n: int) -> None:
        """``n`` more content bytes were written (or found already in place)."""

    def warning(self, message: str) -> None:
        """Something could not be restored exactly."""


def _fmt(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


@dataclass
class _Dir:
    target: bytes  # where this directory goes on disk
    snap_path: bytes  # its path inside the snapshot
    node: Node | None
    todo: list[Node | dict[Any, Any]]  # unvalidated node maps while writers take the files
    parent: _Dir | None
    selected: bool  # wholly selected by include patterns (or no includes given)
    created: bool = False
    fresh: bool = False  # created empty by this restore: nothing in it to compare or replace
    # Entries created in it inherit nothing (no default ACL, inode flags or setgid):
    # it is fresh and so are its parents, up to a target that passes nothing on.
    clean: bool = False
    fd: int = -1  # the directory, open once created (or, with --dry-run, if it exists)
    names: set[bytes] = field(default_factory=set)  # entry names of the snapshot tree
    # What must end before its metadata is applied: its own walk, each child
    # directory, each batch of its files out at a writer process.
    waiting: int = 1
    batch: list[Node | dict[Any, Any]] = field(default_factory=list)  # not yet at a writer
    batch_bytes: int = 0

    def __post_init__(self) -> None:
        self.names = {n["name"] if type(n) is dict else n.name for n in self.todo}  # type: ignore[union-attr]


class Restorer:
    """Writes snapshot trees to the filesystem, reading blobs through BlobReader."""

    def __init__(
        self,
        repo: BlobReader,
        new_digest: Callable[[], Digest],
        options: RestoreOptions | None = None,
        reporter: RestoreReporter | None = None,
        connections: int = PREFETCH_THREADS,
        writers: WriterPool | None = None,
        writers_after: int = 0,  # files restored here before the writers take over
        write_share: bool = False,  # this process also writes the files of packs it takes
        budget: int = BUDGET,
        max_request: int = MAX_REQUEST,
    ) -> None:
        self.repo = repo
        self.connections = max(0, connections)
        self.new_digest = new_digest
        self.opts = options or RestoreOptions()
        self.report = reporter or RestoreReporter()
        self.summary = RestoreSummary()
        self.names = posixmeta.NameCache()
        self.is_root = os.geteuid() == 0
        self._creator = (os.geteuid(), os.getegid())  # the owner of what it creates
        self._links: dict[tuple[int, int], bytes] = {}
        self._opener: dirfd.Opener | None = None  # made by restore(): it raises the fd limit
        self._flags_later: list[tuple[bytes, Node]] = []  # hardlinked immutable/append-only
        # Data blobs are loaded ahead through a BlobStream when the repository
        # can read pack ranges: the files of a directory, planned together,
        # cost a few ranged reads on worker threads instead of one read each.
        self._stream = (
            BlobStream(repo, self.connections, budget=budget, max_request=max_request)
            if isinstance(repo, PackReader) and not self.opts.dry_run
            else None
        )
        self._planned: set[int] = set()  # id() of file nodes whose blobs are planned
        self._taken = 0  # blobs of the current file taken from the stream
        # Temporary names: one random part per restore and a counter, not a getrandom per file.
        self._tmp_prefix = b".cas-restore-" + os.urandom(6).hex().encode() + b"-"
        self._tmp_count = 0
        self._tmpfile = True  # O_TMPFILE works here, until it once does not
        # Files (and symlinks, devices...) are written by writer processes when
        # given (cas/restore/pool.py), once ``writers_after`` leaves were
        # restored here: a small restore does not start processes.
        self._pool = writers if writers is not None and not self.opts.dry_run else None
        if self._pool is not None:
            self._pool.actions = self.report.wants_actions()
        self._pool_after = writers_after
        self._pool_after_bytes = writers_after * WRITERS_AFTER_FILE_BYTES if writers_after else 0
        self._leaves_here = 0
        self._patterns = bool(self.opts.includes or self.opts.excludes)  # else none to match
        self._bytes_here = 0
        self._open: dict[int, _Dir] = {}  # id() -> directories open and not finished
        self._owners = PackOwners()
        # Batches for writers that have their share out: writer -> (directory, files, blobs).
        # Files not yet at their writer: writer -> (one directory's files, their blobs).
        self._held: dict[int, deque[tuple[Group, dict[bytes, Location]]]] = {}
        self._held_count = 0  # directories' groups held
        # With ``write_share`` (fewer writers than cores: a core would be left to the
        # walk alone), this process takes packs too and writes their files when the
        # writers have their share of batches out: files of its packs wait here.
        self._share = write_share and self._pool is not None
        if self._pool is not None:
            self._pool.small_batches = self._share
        self._mine: deque[Group] = deque()
        self._mine_cost = 0.0  # estimated cost of the files in _mine
        self._held_cost: dict[int, float] = {}  # ... of those held for each writer

    # -- walking ------------------------------------------------------------

    def restore(self, tree_id: bytes, target: bytes, snap_path: bytes = b"") -> RestoreSummary:
        """Restore the entries of tree ``tree_id`` into directory ``target``."""
        target = target.rstrip(b"/") or b"/"
        opener = self._opener = self._opener or dirfd.Opener()
        if not self.opts.dry_run:
            _check_target(target)
        root = _Dir(
            target,
            snap_path,
            None,
            self._load_tree(tree_id),
            None,
            selected=not self.opts.includes,
            created=True,
        )
        try:
            # The target itself may be reached through symlinks: it is the user's choice.
            root.fd = opener.open_dir(target)
            root.clean = not self.opts.dry_run and _passes_nothing_on(root.fd)
            self._open[id(root)] = root
        except OSError as e:
            if not self.opts.dry_run:
                raise RestoreAborted(f"cannot open {_fmt(target)}: {dirfd.reason(e)}") from None
        stack = [root]
        pool = self._pool
        try:
            while stack:
                if pool is not None and pool.has_news():
                    self._handle(pool.next_event())
                d = stack[-1]
                if not d.todo:
                    stack.pop()
                    self._send(d)
                    self._release(d)
                    continue
                node = d.todo.pop()
                child = self._entry(d, node)
                if child is not None:
                    d.waiting += 1
                    stack.append(child)
            while pool is not None and (pool.busy() or self._held_count):
                self._hand_out()
                if self._mine and not pool.has_news():
                    self._write_here()
                elif pool.busy():
                    self._handle(pool.next_event())
            if pool is not None:
                self.summary.writers = pool.started
        finally:
            for d in self._open.values():
                opener.close_dir(d.fd)
            self._open.clear()
            self.close()
        self._finish_flags()
        return self.summary

    def _release(self, d: _Dir | None) -> None:
        """One thing ``d`` waited for has ended; finish it (and so on up) when none is left."""
        while d is not None:
            d.waiting -= 1
            if d.waiting > 0:
                return
            self._dir_done(d)
            d = d.parent

    def _dir_done(self, d: _Dir) -> None:
        """Everything below ``d`` is restored: remove extras, apply its metadata, close it."""
        assert self._opener is not None
        self._open.pop(id(d), None)
        try:
            if d.created and self.opts.delete:
                self._delete_extras(d)
            if d.node is not None and d.created and d.parent is not None and not self.opts.dry_run:
                self._apply(d.parent.fd, d.node.name, d.target, d.node, fd=d.fd)
        finally:
            self._opener.close_dir(d.fd)
            d.fd = -1

    def _load_tree(self, tree_id: bytes) -> list[Node | dict[Any, Any]]:
        # Not a walker walk: directories are entered and left around their entries,
        # and the files after one are planned ahead from the siblings left.
        nodes: list[Node | dict[Any, Any]]
        if self._pool is not None and self._leaves_here >= self._pool_after:
            # Writers take the files: their node maps go to them as they are and
            # are validated there; only directories and hardlinks become nodes here.
            nodes = list(decode_tree_docs(self.repo.load_blob(BlobType.TREE, tree_id)))
        else:
            nodes = list(load_tree(self.repo, tree_id))
        nodes.reverse()  # pop() yields them in name order
        return nodes

    def _entry(self, d: _Dir, item: Node | dict[Any, Any]) -> _Dir | None:
        if type(item) is dict:
            name = item["name"]
            if self._pool is not None and item.get("type") != "dir" and item.get("links", 1) == 1:
                if self._patterns:
                    snap_path = d.snap_path + b"/" + name
                    if self.opts.excludes.matches(snap_path) or not (
                        d.selected or self.opts.includes.matches(snap_path)
                    ):
                        return None
                self._batch(d, item, name)
                return None
            try:
                node = Node.from_doc(item)
            except FormatError as e:
                self._fail(d.target + b"/" + name, f"cannot read its tree: {e}")
                return None
        else:
            node = item  # type: ignore[assignment]
        snap_path = d.snap_path + b"/" + node.name
        path = d.target + b"/" + node.name
        if self.opts.excludes.matches(snap_path):
            return None
        selected = d.selected or self.opts.includes.matches(snap_path)
        if node.type == "dir":
            try:
                todo = self._load_tree(node.subtree) if node.subtree else []
            except CasError as e:
                self._fail(path, f"cannot read its tree: {e}")
                return None
            child = _Dir(path, snap_path, node, todo, d, selected)
            if selected:
                try:
                    self._make_dir(child)
                except OSError as e:
                    self._os_failure(path, e)
                    return None
            return child
        if not selected:
            return None
        if self._pool is not None and node.links <= 1:
            self._bytes_here += node.size
            if self._bytes_here >= self._pool_after_bytes:
                self._pool_after = 0  # a large file: writers from now on
            if self._leaves_here >= self._pool_after:
                self._batch(d, node, node.name)
                return None
            self._leaves_here += 1
            if self._leaves_here == max(1, self._pool_after // 4):
                self._pool.start()  # they start up while the first files are written here
        self._leaf(d, node)
        return None

    def _batch(self, d: _Dir, item: Node | dict[Any, Any], name: bytes) -> None:
        """Add a file (or symlink, device...) named ``name`` to the batch of ``d`` for a
        writer."""
        if not d.created:
            try:
                self._make_dir(d)
            except OSError as e:
                self._os_failure(d.target + b"/" + name, e)
                return
        d.batch.append(item)
        size = item.get("size", 0) if type(item) is dict else item.size  # type: ignore[union-attr]
        d.batch_bytes += size if type(size) is int else 0
        if len(d.batch) >= BATCH_FILES or d.batch_bytes >= BATCH_BYTES:
            self._send(d)

    def _leaf(self, d: _Dir, node: Node) -> None:
        """Restore the non-directory ``node`` in ``d`` here, in this process."""
        path = d.target + b"/" + node.name
        planned = node.type == "file" and self._plan(d, node)
        self._taken = 0
        try:
            self._make_dir(d)
            self._restore_leaf(d, path, node)
        except OSError as e:
            self._os_failure(path, e)
        except RestoreAborted:
            raise
        except CasError as e:
            # Damaged, missing or unreadable data (a lost pack, a storage error
            # after retries): this file is named as not restored, the rest go on.
            self._data_failed(path, node, e)
        finally:
            if planned and self._stream is not None:
                # Skipped (identical, a hardlink) or failed part-way: not needed.
                pairs = list(zip(node.content, node.sizes, strict=True))
                self._stream.discard(pairs[self._taken :])

    def _data_failed(self, path: bytes, node: Node, e: CasError) -> None:
        self._fail(path, str(e))

    def plan_ahead(self, nodes: list[Node]) -> None:
        """The blobs of these files will be asked for in this order (a writer's batch)."""
        if self._stream is None:
            return
        files = [n for n in nodes if n.type == "file" and id(n) not in self._planned]
        self._planned.update(id(n) for n in files)
        self._stream.plan(
            (b, size) for n in files for b, size in zip(n.content, n.sizes, strict=True)
        )

    def restore_leaves(
        self, dir_fd: int, target: bytes, nodes: list[Node], *, fresh: bool, clean: bool = False
    ) -> RestoreSummary:
        """Restore these non-directory entries into the open directory ``dir_fd``
        (shown as ``target``); what a writer process does with a batch.
        ``fresh``: the directory was created empty by this restore."""
        self._opener = self._opener or dirfd.Opener()
        self.summary = RestoreSummary()
        d = _Dir(target, b"", None, [], None, True, created=True, fresh=fresh, fd=dir_fd)
        d.clean = clean
        self.plan_ahead(nodes)
        for node in nodes:
            self._leaf(d, node)
        return self.summary

    # -- writer processes ---------------------------------------------------

    def _send(self, d: _Dir) -> None:
        """Hand ``d``'s pending files to a writer process (here, if none can take them)."""
        nodes = d.batch
        if not nodes:
            return
        d.batch, d.batch_bytes = [], 0
        pool = self._pool
        assert pool is not None and isinstance(self.repo, PackReader)
        pool.start()
        # Each file goes to the writer that reads the pack of its first blob
        # (PackOwners): a unit shared by neighbouring blobs is read once.
        owners, count = self._owners, pool.size()
        here = self._take_here if self._share and count else None
        parts: dict[
            int, tuple[list[Node | dict[Any, Any]], dict[bytes, Location], list[float]]
        ] = {}
        contents = [n.get("content") if type(n) is dict else n.content for n in nodes]  # type: ignore[union-attr]
        # The blobs of all these files located in one call where the repository can
        # (a Python search per blob through four layers was a tenth of this process).
        where = self._locate_many(contents)
        bulk = where is not None
        if where is None:
            where = {}
        locate = self.repo.locate
        w = -1
        for n, content in zip(nodes, contents, strict=True):
            first, mine = -1, []
            if type(content) is list:  # else none, or malformed: the writer says which
                for b in content:
                    if type(b) is bytes:
                        loc = where.get(b)
                        if loc is None and not bulk:
                            try:
                                loc = where[b] = locate(b)
                            except CasError:  # the writer reports it missing
                                loc = None
                        if loc is not None:
                            if first < 0 and count:
                                # Shared with this process: by parts of packs, finer
                                # than whole packs for its share to follow its load.
                                key = (loc.pack_id, loc.offset >> 21) if here else loc.pack_id
                                first = owners.owner(key, count, here)
                                if first == count:
                                    break  # written here: no locations to send
                            mine.append((b, loc))
            if first >= 0:
                w = first
            elif w < 0 and count:
                w = min(range(count), key=pool.load)
            part = parts.get(w)
            if part is None:
                part = parts[w] = ([], {}, [0.0])
            part[0].append(n)
            part[1].update(mine)
            if here is not None:  # its estimated cost counts for the next choice at once
                size = n.get("size", 0) if type(n) is dict else n.size  # type: ignore[union-attr]
                cost = FILE_COST + BYTE_COST * (size if type(size) is int else 0)
                part[2][0] += cost
                if w == count:
                    self._mine_cost += cost
                else:
                    self._held_cost[w] = self._held_cost.get(w, 0.0) + cost
        held = self._held
        for w, (items, located, costs) in parts.items():
            # Held while the writer has its share of batches out (the others are
            # not kept waiting meanwhile), then sent with the other files held.
            group = Group(d, d.fd, d.target, items, d.fresh, d.clean, cost=costs[0])
            if w == count and here is not None:
                self._mine.append(group)
            else:
                held.setdefault(w, deque()).append((group, located))
            self._held_count += 1
            d.waiting += 1
        self._hand_out()
        while self._mine and (pool.files_out() or 0) >= FEED_FILES:
            self._write_here()  # the writers have enough to do: write here meanwhile
        while self._held_count > HELD_MAX:
            if self._mine:
                self._write_here()
            else:
                self._handle(pool.next_event())

    def _locate_many(self, contents: list[Any]) -> dict[bytes, Location] | None:
        """Where the blobs of these content lists are (those not found are left out),
        or None where the repository locates one blob at a time."""
        locate_many = getattr(self.repo, "locate_many", None)
        if locate_many is None:
            return None
        ids = [
            b for content in contents if type(content) is list for b in content if type(b) is bytes
        ]
        try:
            found: dict[bytes, Location] = locate_many(ids)
        except CasError:  # blob by blob, each missing one reported by its writer
            return None
        return found

    def _take_here(self) -> bool:
        """Whether this process takes a part of a pack met for the first time: when the
        CPU time it used so far and the estimated cost of the files waiting for it
        are less than the same for every writer (the walk is its work too, so it
        takes more of the files when the walk costs less)."""
        pool = self._pool
        assert pool is not None
        mine = time.process_time() + self._mine_cost
        for w in range(pool.size()):
            work = pool.work(w)
            if work is not None and work + self._held_cost.get(w, 0.0) <= mine:
                return False
        return True

    def _write_here(self) -> None:
        """Write a batch of the files of this process's packs (``write_share``)."""
        pool = self._pool
        assert pool is not None
        # Planned a batch ahead of what is written, so that its blobs load meanwhile.
        ahead: list[Node] = []
        files = 0
        for group in self._mine:
            if files >= BATCH_FILES:
                break
            if not group.planned:
                nodes = self._nodes(group.directory, group.nodes)
                group.nodes, group.planned = list(nodes), True
                ahead += nodes
            files += len(group.nodes)
        self.plan_ahead(ahead)
        groups: list[tuple[_Dir, list[Node]]] = []
        files = 0
        while self._mine and files < HERE_FILES:
            group = self._mine.popleft()
            self._held_count -= 1
            self._mine_cost -= group.cost
            files += len(group.nodes)
            groups.append((group.directory, group.nodes))  # type: ignore[arg-type]
        for d, nodes in groups:
            for node in nodes:
                self._leaf(d, node)
                if pool.has_news():  # a writer wants its next batch
                    self._handle(pool.next_event())
            self._release(d)

    def _hand_out(self) -> None:
        """Submit held files to the writers that have room, the files of several
        directories in one batch (those that waited while the writer was busy)."""
        pool = self._pool
        if not self._held_count or pool is None:
            return
        for w, queue in self._held.items():
            writer = w if w >= 0 else None
            while queue and not pool.full(writer):
                groups: list[Group] = []
                where: dict[bytes, Location] = {}
                files = 0
                while queue and files < BATCH_FILES and len(groups) < BATCH_DIRS:
                    group, located = queue.popleft()
                    groups.append(group)
                    where.update(located)
                    files += len(group.nodes)
                    if w in self._held_cost:
                        self._held_cost[w] -= group.cost  # now counted by the pool
                self._held_count -= len(groups)
                if not pool.submit(groups, where, writer=writer):
                    for group in groups:
                        self._here(group.directory, group.nodes)
                        self._release(group.directory)

    def _here(self, d: _Dir, items: list[Node | dict[Any, Any]]) -> None:
        """Restore these entries of ``d`` in this process."""
        nodes = self._nodes(d, items)
        self.plan_ahead(nodes)
        for node in nodes:
            self._leaf(d, node)

    def _nodes(self, d: _Dir, items: list[Node | dict[Any, Any]]) -> list[Node]:
        """These entries of ``d`` as nodes; a map that is not a valid node fails its entry."""
        nodes = []
        for item in items:
            if type(item) is dict:
                try:
                    nodes.append(Node.from_doc(item))
                except FormatError as e:
                    self._fail(d.target + b"/" + item["name"], f"cannot read its tree: {e}")
            else:
                nodes.append(item)  # type: ignore[arg-type]
        return nodes

    def _handle(self, event: WriterEvent) -> None:
        """Take in what a writer process reported."""
        self._take_in(event)
        if event.done or event.redo:
            self._hand_out()  # a writer has room again (or died: to the others)

    def _take_in(self, event: WriterEvent) -> None:
        if event.bytes_done:
            self.report.bytes_done(event.bytes_done)
        if event.aborted is not None:
            raise RestoreAborted(event.aborted)
        if not event.done:
            for d, nodes in event.redo:
                # The writer died with this batch: some of its files may be there
                # (or its temporary files): compare and replace, as in a used target.
                d.fresh = d.clean = False
                if d.fd >= 0:
                    _remove_temporaries(d.fd, event.tmp_prefix)
                self._here(d, nodes)
                self._release(d)
            if event.lost:
                self._warn(event.lost)
            return
        for done in event.done:
            self._finished(done)

    def _finished(self, done: Finished) -> None:
        """Take in a directory's files a writer restored."""
        d = done.directory
        s = self.summary
        for key, value in done.summary.items():
            if key == "failed":
                s.failed.extend(value)
            elif isinstance(value, int) and hasattr(s, key):
                setattr(s, key, getattr(s, key) + value)
        for what, name in done.actions:
            self.report.action(what, d.target + b"/" + name)
        for message in done.warnings:
            self.report.warning(message)
        if done.retry:
            # Data the writer could not read: here the whole index is at hand,
            # with any other copy of a blob stored twice.
            self._here(d, done.retry)
        self._release(d)

    def _plan(self, d: _Dir, node: Node) -> bool:
        """Plan the blobs of ``node`` and of the files right after it (up to the next
        directory, which is restored in between); whether ``node``'s are planned."""
        if self._stream is None:
            return False
        if id(node) in self._planned:
            self._planned.discard(id(node))
            return True
        run = [node]
        for n in reversed(d.todo):
            if isinstance(n, dict) or n.type == "dir":
                break
            snap_path = d.snap_path + b"/" + n.name
            if n.type != "file" or self.opts.excludes.matches(snap_path):
                continue
            if d.selected or self.opts.includes.matches(snap_path):
                run.append(n)
                self._planned.add(id(n))
        self._stream.plan(
            (b, size) for n in run for b, size in zip(n.content, n.sizes, strict=True)
        )
        return True

    def _os_failure(self, path: bytes, e: OSError) -> None:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise RestoreAborted(f"{_fmt(path)}: {e.strerror}") from None
        self._fail(path, dirfd.reason(e))

    def _make_dir(self, d: _Dir) -> None:
        """Create ``d`` and any ancestors not yet created (lazily, for --include).

        It is opened without following a symlink, and what is in its place
        (a planted symlink too) is removed first, so nothing restored below
        it can land outside the target.
        """
        chain = []  # iteratively: an --include may select one file 4,000 levels down
        while not d.created:
            chain.append(d)
            assert d.parent is not None
            d = d.parent
        for d in reversed(chain):
            self._make_one_dir(d)

    def _make_one_dir(self, d: _Dir) -> None:
        assert d.parent is not None and d.node is not None and self._opener is not None
        parent_fd, name = d.parent.fd, d.node.name
        if self.opts.dry_run:
            with contextlib.suppress(OSError):  # to compare with what is there
                d.fd = self._opener.open_dir(name, parent_fd) if parent_fd >= 0 else -1
        else:
            st = None
            if not d.parent.fresh:
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(name, dir_fd=parent_fd)
            if st is not None and stat.S_ISDIR(st.st_mode):
                _unlock(parent_fd, name)  # its flags come back with the rest of its metadata
            else:
                if st is not None:
                    self._clear(parent_fd, name)
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                d.fresh = True
                d.clean = d.parent.clean
            d.fd = self._opener.open_dir(name, parent_fd)
        if d.fd >= 0:
            self._open[id(d)] = d
        d.created = True
        self.summary.dirs += 1
        self.report.action("dir", d.target)

    # -- leaves -------------------------------------------------------------

    def _restore_leaf(self, d: _Dir, path: bytes, node: Node) -> None:
        """Restore the non-directory ``node`` as ``node.name`` in ``d`` (shown as ``path``)."""
        dir_fd, name = d.fd, node.name
        key = (node.device, node.inode)
        # A hardlink cannot be made to an immutable or append-only inode.
        flags_later = node.links > 1 and bool(node.flags & _LOCKING_FLAGS)
        if node.links > 1 and key in self._links:
            self.summary.hardlinks += 1
            self.report.action("hardlink", path)
            if not self.opts.dry_run:
                if not d.fresh:
                    self._clear(dir_fd, name)
                # The first name is reached by its path: beyond PATH_MAX this fails
                # (ENAMETOOLONG), naming the file.
                os.link(self._links[key], name, dst_dir_fd=dir_fd, follow_symlinks=False)
                self._apply(dir_fd, name, path, node, restore_flags=not flags_later)
        elif node.type == "file":
            if not d.fresh and self._identical(dir_fd, name, node):
                self.summary.files_unchanged += 1
                self.report.action("unchanged", path)
                self.report.bytes_done(node.size)
                if self.opts.verify:
                    self.summary.verified += 1  # just hashed and compared
                if not self.opts.dry_run:
                    _unlock(dir_fd, name)
                    self._apply(dir_fd, name, path, node, restore_flags=not flags_later)
            else:
                self.report.action("file", path)
                if not self.opts.dry_run:
                    self._write_file(
                        dir_fd,
                        path,
                        node,
                        restore_flags=not flags_later,
                        fresh=d.fresh,
                        created=d.clean,
                    )
                self.summary.files_restored += 1
        else:
            self.report.action(node.type, path)
            if node.type == "symlink":
                self.summary.symlinks += 1
            else:
                self.summary.special += 1
            if not self.opts.dry_run:
                try:
                    posixmeta.create_special(name, node, dir_fd=dir_fd)
                except FileExistsError:
                    self._clear(dir_fd, name)
                    posixmeta.create_special(name, node, dir_fd=dir_fd)
                self._apply(
                    dir_fd, name, path, node, restore_flags=not flags_later, created=d.clean
                )
        if flags_later and not self.opts.dry_run:
            self._flags_later.append((path, node))
        if node.links > 1:
            self._links[key] = path

    def _clear(self, dir_fd: int, name: bytes) -> None:
        """Remove what is at ``name`` in ``dir_fd`` (a directory only with --delete)."""
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not self.opts.delete:
                raise OSError(errno.EISDIR, "a directory is in the way (use --delete)")
            _remove_tree(dir_fd, name)
        else:
            _unlock(dir_fd, name)
            os.unlink(name, dir_fd=dir_fd)

    def _identical(self, dir_fd: int, name: bytes, node: Node) -> bool:
        if dir_fd < 0:  # --dry-run, and the directory does not exist yet
            return False
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != node.size or node.digest is None:
            return False
        if st.st_nlink > 1 and node.links == 1:
            return False  # linked to another name here but not in the snapshot: rewrite
        return self._digest_of(dir_fd, name) == node.digest

    def _digest_of(self, dir_fd: int, name: bytes) -> bytes:
        assert self._opener is not None
        h = self.new_digest()
        fd = self._opener.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd)
        try:
            while block := os.read(fd, 4 << 20):
                h.update(block)
        finally:
            os.close(fd)
        return h.digest()

    def close(self) -> None:
        """Stop the loading threads and the writer processes."""
        if self._stream is not None:
            self._stream.close()
        if self._pool is not None:
            self._pool.close()

    def _blob(self, blob_id: bytes, size: int) -> bytes | bytearray:
        if self._stream is None:
            return self.repo.load_blob(BlobType.DATA, blob_id, size)
        self._taken += 1  # taken even if loading it fails: the stream let go of it
        return self._stream.get(blob_id, size)

    def _write_file(
        self,
        dir_fd: int,
        path: bytes,
        node: Node,
        *,
        restore_flags: bool,
        fresh: bool,
        created: bool = False,
    ) -> None:
        """Write ``node``'s content unnamed or under a temporary name, then give it its
        name and apply its metadata.

        In a directory this restore created (``fresh``) the file is made with
        ``O_TMPFILE`` and linked in once complete: one directory operation,
        and a crash leaves nothing.  Elsewhere (or where the filesystem lacks
        ``O_TMPFILE``) it is written under a temporary name and renamed over
        whatever is in the way.  Owner, xattrs, mode, times and flags go
        through the descriptor that wrote the content, after the file has its
        name (an immutable file cannot be linked or renamed) and after
        ``--verify`` has read it back.
        """
        name = node.name
        fd = -1
        if fresh and self._tmpfile:
            try:
                fd = os.open(b".", _TMPFILE_FLAGS, 0o600, dir_fd=dir_fd)
            except OSError as e:
                if e.errno not in _NO_TMPFILE:
                    raise
                self._tmpfile = False
        tmp: bytes | None = None
        if fd < 0:
            tmp = self._tmp_name(name)
            fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
        named = False
        try:
            out = SparseWriter(fd)
            last = len(node.content) - 1
            for i, (blob_id, size) in enumerate(zip(node.content, node.sizes, strict=True)):
                if i == 0 and last == 0:
                    out.write_all(self._blob(blob_id, size))  # most files: often one write
                else:
                    out.write(self._blob(blob_id, size))
                self.summary.bytes_written += size
                self.report.bytes_done(size)
            if last != 0:
                out.finish()
            if tmp is None:
                try:
                    os.link(b"/proc/self/fd/%d" % fd, name, dst_dir_fd=dir_fd)
                except FileExistsError:  # made since the directory was: replace it
                    tmp = self._tmp_name(name)
                    os.link(b"/proc/self/fd/%d" % fd, tmp, dst_dir_fd=dir_fd)
            if tmp is not None:
                try:  # rename replaces a file or symlink in the way, never following it
                    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except (IsADirectoryError, PermissionError):  # a directory, an immutable file
                    self._clear(dir_fd, name)
                    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            named = True
            if self.opts.verify:  # before the mode is applied: it may forbid reading
                self._verify(dir_fd, path, node)
            self._apply(
                dir_fd, name, path, node, restore_flags=restore_flags, fd=fd, created=created
            )
        finally:
            os.close(fd)
            if not named and tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)

    def _tmp_name(self, name: bytes) -> bytes:
        self._tmp_count += 1
        return self._tmp_prefix + str(self._tmp_count).encode() + b"-" + name[:100]

    def _verify(self, dir_fd: int, path: bytes, node: Node) -> None:
        if self._digest_of(dir_fd, node.name) != node.digest:
            self._fail(path, "content differs from the snapshot after writing")
        else:
            self.summary.verified += 1

    def _apply(
        self,
        dir_fd: int,
        name: bytes,
        path: bytes,
        node: Node,
        *,
        restore_flags: bool = True,
        fd: int | None = None,
        created: bool = False,
    ) -> None:
        """Apply ``node``'s metadata; ``created``: the entry was just made in a clean
        directory (``_Dir.clean``)."""
        for w in posixmeta.apply_metadata(
            name,
            node,
            names=self.names,
            numeric_owner=self.opts.numeric_owner,
            is_root=self.is_root,
            restore_flags=restore_flags,
            dir_fd=dir_fd,
            shown=path,
            fd=fd,
            created_by=self._creator if created else None,
        ):
            self._warn(w)

    def _finish_flags(self) -> None:
        """Inode flags held back for hardlinks (reached by path: the directories are closed)."""
        if self.opts.dry_run:
            return
        for path, node in self._flags_later:
            try:
                current = posixmeta.get_flags(path)
                wanted = (current & ~posixmeta.RESTORABLE_FLAGS) | (
                    node.flags & posixmeta.RESTORABLE_FLAGS
                )
                if wanted != current:
                    posixmeta.set_flags(path, wanted)
            except OSError as e:
                self._warn(f"could not restore inode flags of {_fmt(path)}: {e.strerror}")

    def _delete_extras(self, d: _Dir) -> None:
        """Remove what is in a restored directory but not in its snapshot tree."""
        if d.fd < 0:
            return  # with --dry-run the directory may not exist yet
        try:
            present = os.listdir(d.fd)
        except OSError:
            return
        for entry in present:
            name = os.fsencode(entry)
            if name in d.names or name.startswith(b".cas-restore-"):
                continue
            path = d.target + b"/" + name
            self.summary.deleted += 1
            self.report.action("delete", path)
            if not self.opts.dry_run:
                try:
                    self._clear(d.fd, name)
                except OSError as e:
                    self._fail(path, f"could not delete: {e.strerror}")

    def fail(self, path: bytes, why: str) -> None:
        """Name ``path`` as not restored, and why."""
        self._fail(path, why)

    def _fail(self, path: bytes, why: str) -> None:
        self.summary.failed.append(_fmt(path))
        self.report.warning(f"{_fmt(path)}: not restored: {why}")

    def _warn(self, message: str) -> None:
        self.summary.warnings += 1
        self.report.warning(message)


class SparseWriter:
    """Writes a file's content in order, leaving every all-zero aligned 4 KiB block a hole.

    The file must be new and empty.  Blocks are aligned to file offsets, not
    to chunks: a block that spans two chunks is judged as a whole, so a file
    restores with the same holes whatever its chunk boundaries were.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0  # file offset of ``tail``; always a multiple of SPARSE_BLOCK
        self.tail: bytes | bytearray = b""  # the start of a block not yet complete
        self.end = 0  # the end of the last write (the file's size so far)

    def write(self, data: bytes | bytearray) -> None:
        """Append ``data``."""
        lo = 0
        if self.tail:
            lo = SPARSE_BLOCK - len(self.tail)
            if len(data) < lo:
                self.tail += data
                return
            self._blocks(self.tail + data[:lo], 0, SPARSE_BLOCK)
        hi = lo + (len(data) - lo) // SPARSE_BLOCK * SPARSE_BLOCK
        self._blocks(data, lo, hi)
        self.tail = data[hi:]

    def finish(self) -> int:
        """Write what is left and set the file's size (a trailing hole included)."""
        if self.tail.count(0) != len(self.tail):
            self._pwrite(self.tail, 0, len(self.tail), self.pos)
        size = self.pos + len(self.tail)
        if self.end != size:  # it ends in a hole (or is empty after all)
            os.ftruncate(self.fd, size)
        return size

    def write_all(self, data: bytes | bytearray) -> int:
        """The whole content at once (``write`` then ``finish``): one system call when it
        holds no zero block and does not end in zeros."""
        cut = len(data) - len(data) % SPARSE_BLOCK
        if (
            self.pos == 0
            and not self.tail
            and data.find(_ZERO_BLOCK) < 0
            and data.count(0, cut) != len(data) - cut
        ):
            self._pwrite(data, 0, len(data), 0)
            return len(data)
        self.write(data)
        return self.finish()

    def _blocks(self, data: bytes | bytearray, lo: int, hi: int) -> None:
        """Write whole blocks ``data[lo:hi]`` at ``pos``, skipping all-zero ones."""
        base = self.pos - lo  # file offset of data[0]
        start = lo  # first byte not yet written
        i = lo
        while (k := data.find(_ZERO_BLOCK, i, hi)) >= 0:
            a = k + (lo - k) % SPARSE_BLOCK  # first block boundary at or after k
            if a + SPARSE_BLOCK > hi:
                break
            if data.count(0, a, a + SPARSE_BLOCK) != SPARSE_BLOCK:
                i = a + 1  # a zero run starting before ``a`` covers no whole block
                continue
            # Extend the hole, galloping: steps double while zero, halve on data,
            # so finding where a run ends costs about twice its length.
            end, step = a + SPARSE_BLOCK, SPARSE_BLOCK
            while end < hi:
                n = min(step, hi - end)
                if data.count(0, end, end + n) == n:
                    end += n
                    step = min(2 * step, _ZERO_RUN)
                elif step > SPARSE_BLOCK:
                    step //= 2
                else:
                    break
            self._pwrite(data, start, a, base + start)
            start = i = end
        self._pwrite(data, start, hi, base + start)
        self.pos += hi - lo

    def _pwrite(self, data: bytes | bytearray, lo: int, hi: int, offset: int) -> None:
        if lo == hi:
            return
        view = memoryview(data)[lo:hi]
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n
        self.end = max(self.end, offset)


def _check_target(target: bytes) -> None:
    """Create ``target`` and make sure entries can be created in it, or stop cleanly."""
    try:
        os.makedirs(target, exist_ok=True)
        probe = target + b"/.cas-restore-probe-" + os.urandom(6).hex().encode()
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise RestoreAborted(f"cannot write into {_fmt(target)}: {e.strerror}") from None


def _passes_nothing_on(dir_fd: int) -> bool:
    """Whether entries created in this directory inherit nothing from it: no default
    ACL, no inode flags, no setgid bit (what a restore target usually is)."""
    try:
        if os.fstat(dir_fd).st_mode & stat.S_ISGID:
            return False
        try:
            os.getxattr(dir_fd, posixmeta.ACL_DEFAULT)
            return False
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                return False
        try:
            if posixmeta.fd_flags(dir_fd) & posixmeta.RESTORABLE_FLAGS:
                return False
        except OSError as e:
            if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
                return False  # flags the filesystem has but cannot tell: assume some
    except OSError:
        return False
    return True


def _remove_temporaries(dir_fd: int, prefix: bytes) -> None:
    """Remove the temporary files named ``prefix...`` that a dead writer left."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(dir_fd):
            name = os.fsencode(entry)
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dir_fd)


def _unlock(dir_fd: int, name: bytes) -> None:
    """Clear immutable/append-only on an existing file or directory so it can be changed."""
    try:
        # Only these carry flags; opening a device node could have side effects.
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            return
        flags = posixmeta.get_flags(name, dir_fd=dir_fd)
        if flags & _LOCKING_FLAGS:
            posixmeta.set_flags(name, flags & ~_LOCKING_FLAGS, dir_fd=dir_fd)
    except OSError:
        pass  # the change that follows reports the real problem


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TMPFILE_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
# O_TMPFILE refused by the filesystem (or kernel): fall back to a temporary name.
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})
_TREE_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove_tree(dir_fd: int, name: bytes) -> None:
    """``rm -rf`` of ``name`` in ``dir_fd``, however deep (no recursion, no long paths).

    Immutable and append-only flags are cleared where they stop a removal:
    on each directory before its entries go, on an entry when unlinking it fails.
    """
    stack: list[tuple[int, bytes, int, list[bytes]]] = []
    try:
        while True:
            _unlock(dir_fd, name)
            fd = os.open(name, _TREE_FLAGS, dir_fd=dir_fd)
            stack.append((dir_fd, name, fd, [os.fsencode(n) for n in os.listdir(fd)]))
            while stack:
                parent_fd, dir_name, fd, names = stack[-1]
                if not names:
                    stack.pop()
                    os.close(fd)
                    os.rmdir(dir_name, dir_fd=parent_fd)
                    continue
                entry = names.pop()
                if stat.S_ISDIR(os.lstat(entry, dir_fd=fd).st_mode):
                    dir_fd, name = fd, entry
                    break  # open it above
                try:
                    os.unlink(entry, dir_fd=fd)
                except PermissionError:
                    _unlock(fd, entry)
                    os.unlink(entry, dir_fd=fd)
            if not stack:
                return
    finally:
        for _, _, fd, _ in stack:
            os.close(fd)


def find_subtree(repo: BlobReader, tree_id: bytes, subpath: bytes) -> tuple[bytes, Node | None]:
    """Follow ``subpath`` (e.g. b"/home/me") from the root tree; returns (tree ID, last node)."""
    node: Node | None = None
    for part in [p for p in subpath.split(b"/") if p]:
        nodes = {n.name: n for n in load_tree(repo, tree_id)}
        node = nodes.get(part)
        if node is None:
            raise CasError(f"{_fmt(subpath)} is not in the snapshot")
        if node.type != "dir" or node.subtree is None:
            raise CasError(f"{_fmt(subpath)} is not a directory in the snapshot")
        tree_id = node.subtree
    return tree_id, node
