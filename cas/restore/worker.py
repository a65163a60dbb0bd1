"""A restore writer process: ``python -m cas.restore.worker FD`` (cas/restore/pool.py).

It reads its spec (repository location, backend options, key) from the
socket, then restores each batch it is sent into the directory descriptor
that came with it, and reports back.  Batches already received are planned
ahead, so their blobs load while the current one is written.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from cas import failpoints, ipc
from cas.backend import request_summary
from cas.errors import CasError, FormatError
from cas.format.tree import Node
from cas.repo.readerspec import LocatedReader, ReaderSpec, open_located
from cas.restore.restorer import (
    BATCH_DIRS,
    RestoreAborted,
    RestoreOptions,
    Restorer,
    RestoreReporter,
)

PROGRESS_EVERY = 8 << 20  # bytes written between progress messages


class _Collector(RestoreReporter):
    """Gathers a batch's actions and warnings; sends progress as it goes."""

    def __init__(self, sock: socket.socket, actions: bool) -> None:
        self.sock = sock
        self.wanted = actions  # the main process shows each entry's action
        self.actions: list[tuple[str, bytes]] = []
        self.warnings: list[str] = []
        self.unreported = 0

    def action(self, what: str, path: bytes) -> None:
        if self.wanted:
            self.actions.append((what, path.rpartition(b"/")[2]))

    def bytes_done(self, n: int) -> None:
        self.unreported += n
        if self.unreported >= PROGRESS_EVERY:
            ipc.send(self.sock, ["p", self.unreported])
            self.unreported = 0

    def warning(self, message: str) -> None:
        self.warnings.append(message)


class _WriterRestorer(Restorer):
    """Restores leaves; data it cannot read goes back to the main process."""

    retry: list[bytes]

    def _data_failed(self, path: bytes, node: Node, e: CasError) -> None:
        self.retry.append(node.name)

    def _leaf(self, d: Any, node: Node) -> None:
        super()._leaf(d, node)
        failpoints.hit("restore-writer-file")


@dataclass
class _Group:
    """The files of one directory in a batch."""

    fd: int
    fresh: bool
    clean: bool
    path: bytes
    nodes: list[Node]
    bad: list[tuple[bytes, str]]  # node maps that are not valid nodes: (name, why)


@dataclass
class _Batch:
    job: int
    groups: list[_Group]
    blobs: list[bytes]


def _receive(sock: socket.socket, reader: LocatedReader) -> _Batch:
    msg, fds = ipc.recv_fds(sock, BATCH_DIRS)
    try:
        if len(fds) != len(msg["g"]):
            raise ValueError("a batch came without a descriptor for each directory")
        blobs = []
        packs = [bytes(p) for p in msg["packs"]]
        add = reader.add
        for blob_id, pack, offset, length in msg["loc"]:
            add(blob_id, packs[pack], offset, length)
            blobs.append(blob_id)
        groups = []
        for fd, (fresh, clean, path, docs) in zip(fds, msg["g"], strict=True):
            nodes, bad = [], []
            for doc in docs:
                try:  # validated here, not in the main process (it only read the names)
                    nodes.append(Node.from_doc(doc))
                except FormatError as e:
                    bad.append((doc["name"], str(e)))
            groups.append(_Group(fd, bool(fresh), bool(clean), bytes(path), nodes, bad))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return _Batch(msg["j"], groups, blobs)


def _serve(sock: socket.socket) -> None:
    # Before the loading thread starts: summed peak of a two-writer restore of linux
    # into tmpfs 167-173 -> 154-156 MiB, big 154.5 -> 145.5 MiB, CPU the same
    # (docs/performance.md, "One malloc arena per restore writer").
    ipc.one_arena()
    init = ipc.recv(sock)
    spec = ReaderSpec.decode(bytes(init["spec"]))
    reader = open_located(spec)
    if "units" in init:
        reader.units_kept = int(init["units"])
    collector = _Collector(sock, bool(init.get("actions", True)))
    restorer = _WriterRestorer(
        reader,
        reader.file_digest,
        RestoreOptions(**init["options"]),
        collector,
        connections=int(init["connections"]),
        budget=int(init["budget"]),
        max_request=int(init["max_request"]),
    )
    restorer._tmp_prefix = bytes(init["prefix"])
    pending: deque[_Batch] = deque()
    waiting = select.poll()  # not select(): the descriptor may be above 1024
    waiting.register(sock, select.POLLIN)
    try:
        while True:
            # Take every batch already sent, so their blobs load while this one is written.
            while not pending or waiting.poll(0):
                batch = _receive(sock, reader)
                restorer.plan_ahead([n for g in batch.groups for n in g.nodes])
                pending.append(batch)
            batch = pending.popleft()
            results = []
            try:
                for g in batch.groups:
                    restorer.retry = []
                    collector.actions, collector.warnings = [], []
                    summary = restorer.restore_leaves(
                        g.fd, g.path, g.nodes, fresh=g.fresh, clean=g.clean
                    )
                    for name, why in g.bad:
                        restorer.fail(g.path + b"/" + name, f"cannot read its tree: {why}")
                    report = [collector.actions, collector.warnings, restorer.retry]
                    # Only its counts that are not zero: a directory's files are
                    # usually a handful of one kind, and the main process adds each.
                    counts = {k: v for k, v in summary.as_dict().items() if v}
                    results.append([counts, *report])
            except RestoreAborted as e:
                ipc.send(sock, ["x", e.fields["detail"]])
                return
            finally:
                for g in batch.groups:
                    os.close(g.fd)
                reader.forget(batch.blobs)
            requests = request_summary(reader.backend)  # so far, for the cost report
            # The progress not yet sent goes with the report: one frame (and one event
            # in the main process) per batch, not two.
            done = ["d", batch.job, results, requests, time.process_time()]
            ipc.send(sock, [*done, collector.unreported])
            collector.unreported = 0
    finally:
        restorer.close()
        reader.close()


def _tell(sock: socket.socket, e: Exception) -> None:
    ipc.send(sock, ["e", f"{type(e).__name__}: {e}"])


def main(argv: list[str]) -> None:
    """Entry point: ``python -m cas.restore.worker FD``."""
    ipc.run_helper(argv, _serve, _tell)


if __name__ == "__main__":
    main(sys.argv)
