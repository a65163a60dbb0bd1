"""The repository's generations, and what this client trusts of them (spec §13.6).

Every write that adds or removes a snapshot, or retires index files, is
recorded in a generation record written once under the next number
(``If-None-Match: *`` on S3, an exclusive link locally): two clients cannot
both write generation *n*; the loser reads the winner's record and tries
*n + 1*.  With the client state (:mod:`cas.repo.clientstate`) this finds
what a provider can do without the keys: hide a snapshot this client saw
(gone without a tombstone), roll the repository back (a generation older
than one seen), replay a superseded index file, or put another repository
at a known location.  Each is a :class:`Finding`; unless ``strict`` is off
(``check``), the first one raises :class:`UntrustedChange`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from cas import crypto, failpoints
from cas.backend.base import Backend
from cas.errors import CasError, ObjectExists, UntrustedChange
from cas.format import generation as genfmt
from cas.ids import storage_id
from cas.repo import layout
from cas.repo.clientstate import ClientState, RepoState

MAX_RACES = 64  # generation numbers tried before giving up on a busy repository


@dataclass(frozen=True)
class Finding:
    """One change the provider could have made behind this client's back."""

    kind: str  # snapshot_hidden, generation_rollback, index_replayed, repository_swapped
    message: str
    object: str = ""  # the object it is about: snapshots/<id>, index/<id>, index/gen-<n>

    def as_dict(self) -> dict[str, str]:
        """For --json."""
        return {"kind": self.kind, "object": self.object, "message": self.message}


def _location_key(location: str) -> str:
    """A location as the client state binds it: a local path made absolute."""
    if "://" in location:
        return location
    return os.path.abspath(location)


class Generations:
    """Generation records of one repository, checked against this client's state."""

    def __init__(
        self,
        backend: Backend,
        keys: crypto.KeyBase,
        repo_id: bytes,
        state_dir: ClientState | None,
    ) -> None:
        self.backend = backend
        self._keys = keys
        self.repo_id = repo_id
        self.client = state_dir
        self.state = state_dir.load(repo_id) if state_dir else RepoState()
        self.strict = True
        self.findings: list[Finding] = []
        self.highest = 0  # the highest generation listed
        self._bound = False
        self._synced = False

    # -- findings -----------------------------------------------------------------

    def _found(self, finding: Finding) -> None:
        if finding not in self.findings:
            self.findings.append(finding)
        if self.strict:
            raise UntrustedChange(finding.message)

    def bind(self) -> None:
        """This client just created the repository here: bind the location to it."""
        if self.client is not None:
            self.client.bind(_location_key(self.backend.location), self.repo_id)
            self._bound = True

    def check_binding(self) -> None:
        """A location this client knows must hold the repository it knew there."""
        if self._bound or self.client is None:
            return
        self._bound = True
        location = _location_key(self.backend.location)
        known = self.client.bound(location)
        if known is None:
            self.client.bind(location, self.repo_id)
        elif known != self.repo_id:
            self._found(
                Finding(
                    "repository_swapped",
                    f"{location} holds repository {self.repo_id.hex()[:8]}, not "
                    f"{known.hex()[:8]} this client knew there: another repository was put in "
                    "its place",
                    layout.CONFIG,
                )
            )

    # -- reading ------------------------------------------------------------------

    def sync(self, names: Iterable[tuple[str, int]] | None = None) -> None:
        """Read the generation records of a listing of ``index/`` (name, size) or, if
        None, of a new one; find rollbacks, gaps and forks, and learn the snapshots
        forgotten and index files retired since this client last looked."""
        self.check_binding()
        if names is None:
            names = ((o.name, o.size) for o in self.backend.list(layout.INDEX))
        listed = {}
        for name, size in names:
            n = layout.generation_from_name(name)
            if n is not None:
                listed[n] = size
        self.highest = max(listed, default=0)
        self._synced = True
        self._start = 0
        finding = self._trace(listed)
        if finding is not None and self._accepted(listed):
            finding = self._trace(listed)  # from the record that accepted the change
        if finding is not None:
            self._found(finding)

    def _trace(self, listed: dict[int, int]) -> Finding | None:
        """Follow the records from this client's generation to the highest listed;
        the first thing that does not add up, or None."""
        known = self.state.generation
        if known > self.highest:
            return Finding(
                "generation_rollback",
                f"the repository is at generation {self.highest}, older than generation "
                f"{known} this client saw: it was rolled back, or its records hidden",
                layout.generation_name(known),
            )
        if known and listed.get(known) != self.state.record_size:
            return Finding(
                "generation_rollback",
                f"the record of generation {known}, which this client saw, is gone or "
                "changed: the repository was rolled back or replaced",
                layout.generation_name(known),
            )
        if self.highest == known:
            return None
        # A new client starts at the latest record; after another client's accept,
        # this one starts at the accepting record.
        start = known + 1 if known else self._start or self.highest
        prev = self.state.record if known else None
        for n in range(start, self.highest + 1):
            if n not in listed:
                return Finding(
                    "generation_rollback",
                    f"the record of generation {n} is missing below generation "
                    f"{self.highest}: generation records were hidden",
                    layout.generation_name(n),
                )
            raw = self.backend.read(layout.generation_name(n))
            record = genfmt.decode_generation(raw, self._keys.index)
            if record.n != n or record.repo_id != self.repo_id:
                raise CasError(f"generation record {n} is not generation {n} of this repository")
            if prev is not None and record.prev != prev:
                return Finding(
                    "generation_rollback",
                    f"generation {n} does not follow generation {n - 1} this client saw: "
                    "the repository was rolled back and written again",
                    layout.generation_name(n),
                )
            self._learn(record, raw)
            prev = self.state.record
        return None

    def _accepted(self, listed: dict[int, int]) -> bool:
        """Whether a record above this client's generation accepts the repository as
        it is (``cas trust --accept`` by a client holding the keys); if so, this
        client's knowledge restarts from the highest such record."""
        for n in sorted((n for n in listed if n > self.state.generation), reverse=True):
            raw = self.backend.read(layout.generation_name(n))
            record = genfmt.decode_generation(raw, self._keys.index)
            if record.accepted and record.n == n and record.repo_id == self.repo_id:
                self._start = n
                self.state = RepoState(retired=self.state.retired)
                return True
        return False

    _start = 0

    def _learn(self, record: genfmt.Generation, raw: bytes) -> None:
        state = self.state
        state.snapshots -= set(record.forgotten)
        state.snapshots |= set(record.snapshots)
        state.retired |= set(record.retired)
        state.recorded = set(record.snapshots)
        state.generation, state.record, state.record_size = record.n, storage_id(raw), len(raw)

    def recorded_snapshots(self) -> set[bytes] | None:
        """The snapshots of the latest generation, or None when there is none."""
        if not self._synced:
            self.sync()
        return set(self.state.recorded) if self.state.generation else None

    # -- checks -------------------------------------------------------------------

    def check_snapshots(self, listed: set[bytes]) -> None:
        """After a listing of ``snapshots/``: every snapshot this client saw and no
        tombstone accounts for must be there.  The generation records are read after
        the listing, so a forget that finished before it is known by its tombstone."""
        self.sync()
        for sid in sorted(self.state.snapshots - listed):
            self._found(
                Finding(
                    "snapshot_hidden",
                    f"snapshot {sid.hex()[:8]}, which this client saw, is gone without a "
                    "tombstone: it was hidden or deleted behind cas's back",
                    layout.snapshot_name(sid),
                )
            )
        self.state.snapshots |= listed
        self.save()

    def check_index(self, active: Iterable[bytes]) -> None:
        """An index file in use that a generation retired was replayed."""
        for fid in sorted(set(active) & self.state.retired):
            self._found(
                Finding(
                    "index_replayed",
                    f"index file {fid.hex()[:8]} was superseded, yet it is back in use: an "
                    "old index file was replayed",
                    layout.index_name(fid),
                )
            )
        self.save()

    def save(self) -> None:
        """Keep what was learnt, unless a finding stands (it must show again next time)."""
        if self.client is not None and not self.findings:
            self.client.save(self.repo_id, self.state)

    # -- writing ------------------------------------------------------------------

    def commit(
        self,
        *,
        added: Iterable[bytes] = (),
        forgotten: Iterable[bytes] = (),
        retired: Iterable[bytes] = (),
        command: str = "",
        listed: Iterable[bytes] | None = None,
    ) -> int:
        """Write the next generation: the latest's snapshots plus ``added``, minus
        ``forgotten`` (the tombstones); ``retired`` index files.  Returns its number.
        ``listed``: the snapshots to start from when the repository has no generation
        yet (listed here if not given)."""
        added, forgotten, retired = set(added), set(forgotten), set(retired)
        for _ in range(MAX_RACES):
            if not self._synced:
                self.sync()
            state = self.state
            if state.generation:
                start = set(state.recorded)
            elif listed is not None:
                start = set(listed)
            else:
                start = {
                    i
                    for i in (
                        layout.id_from_name(o.name) for o in self.backend.list(layout.SNAPSHOTS)
                    )
                    if i
                }
            record = self._record(state.generation + 1, (start | added) - forgotten, command)
            record.forgotten, record.retired = sorted(forgotten), sorted(retired)
            if self._write(record):
                self.state.snapshots |= added
                self.save()
                return record.n
            self._synced = False  # another client wrote n: catch up, then try n + 1
        raise CasError(f"cannot record a new generation: {MAX_RACES} other clients came first")

    def _record(self, n: int, snapshots: set[bytes], command: str) -> genfmt.Generation:
        return genfmt.Generation(
            n=n,
            repo_id=self.repo_id,
            time_ns=time.time_ns(),
            snapshots=sorted(snapshots),
            prev=self.state.record or None,
            command=command,
        )

    def _write(self, record: genfmt.Generation) -> bool:
        """Store ``record`` unless its number is taken; learn it when stored."""
        raw = genfmt.encode_generation(record, self._keys.index)
        failpoints.hit("before-generation")
        try:
            self.backend.write(layout.generation_name(record.n), raw)
        except ObjectExists:
            return False
        failpoints.hit("after-generation")
        self.highest = record.n
        self._learn(record, raw)
        return True

    def accept(self, listed: set[bytes], active_index: set[bytes]) -> int:
        """Accept the repository as it is now: bind the location, drop this client's
        old knowledge, and record a generation above every one seen that holds the
        snapshots listed now (those this client saw that are gone become tombstones),
        so other clients learn of the change too.  Returns its number."""
        if self.client is not None:
            self.client.bind(_location_key(self.backend.location), self.repo_id)
        gone = self.state.snapshots - listed
        seen = self.state.generation
        self.state = RepoState()
        self.findings.clear()
        strict, self.strict = self.strict, False
        try:
            for _ in range(MAX_RACES):
                self.sync()
                self.findings.clear()
                record = self._record(max(self.highest, seen) + 1, listed, "trust --accept")
                record.forgotten, record.accepted = sorted(gone), True
                if self._write(record):
                    break
            else:
                raise CasError(
                    f"cannot record a new generation: {MAX_RACES} other clients came first"
                )
        finally:
            self.strict = strict
        self.state.snapshots = set(listed)
        self.state.retired -= set(active_index)
        if self.client is not None:
            self.client.save(self.repo_id, self.state, replace=True)
        return record.n
