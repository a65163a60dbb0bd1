"""What this client knows of its repositories, kept where the provider cannot write.

Under ``$XDG_STATE_HOME/cas`` (default ``~/.local/state/cas``), not in the
cache (which may be deleted at any time): ``locations.json`` binds each
location to the repository ID last accepted there, and ``<repository
ID>.json`` holds the highest generation this client saw (its number, the
SHA-256 and size of its record), the snapshots it saw and the index files
it knows were retired (spec §13.6).  Files are replaced atomically under an
``flock``, so two cas processes of one user do not lose each other's news.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas.errors import CasError


def write_private(path: Path, data: bytes, what: str) -> None:
    """Replace ``path`` with ``data`` atomically and durably, readable by this user only
    (a file of the client state: what this client saw, a write-only client's cache)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise CasError(f"cannot write {what} {path}: {e}") from None


LOCATIONS = "locations.json"


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/cas``, else ``~/.local/state/cas``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "cas"


@dataclass
class RepoState:
    """This client's knowledge of one repository."""

    generation: int = 0
    record: bytes = b""  # SHA-256 of the record of ``generation``
    record_size: int = 0
    recorded: set[bytes] = field(default_factory=set)  # the snapshots of that record
    snapshots: set[bytes] = field(default_factory=set)  # seen, not known forgotten
    retired: set[bytes] = field(default_factory=set)  # index files known superseded

    def as_json(self) -> dict[str, Any]:
        """The state as a JSON document."""
        return {
            "v": 1,
            "generation": self.generation,
            "record": self.record.hex(),
            "record_size": self.record_size,
            "recorded": sorted(s.hex() for s in self.recorded),
            "snapshots": sorted(s.hex() for s in self.snapshots),
            "retired": sorted(r.hex() for r in self.retired),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RepoState:
        """Parse a state document (written by this program, on this machine)."""
        return cls(
            generation=int(doc.get("generation", 0)),
            record=bytes.fromhex(doc.get("record", "")),
            record_size=int(doc.get("record_size", 0)),
            recorded={bytes.fromhex(s) for s in doc.get("recorded", [])},
            snapshots={bytes.fromhex(s) for s in doc.get("snapshots", [])},
            retired={bytes.fromhex(r) for r in doc.get("retired", [])},
        )

    def merge(self, other: RepoState) -> None:
        """Take in what another process of this client learnt meanwhile."""
        if other.generation > self.generation:
            self.generation, self.record = other.generation, other.record
            self.record_size, self.recorded = other.record_size, other.recorded
        self.retired |= other.retired


class ClientState:
    """The state directory of this client."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise CasError(f"cannot use the client state directory {self.root}: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, name: str) -> dict[str, Any]:
        try:
            doc = json.loads((self.root / name).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise CasError(f"cannot read the client state {self.root / name}: {e}") from None
        return doc if isinstance(doc, dict) else {}

    def _write(self, name: str, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        write_private(self.root / name, data, "the client state")

    def bound(self, location: str) -> bytes | None:
        """The repository ID this client knows at ``location``, or None."""
        value = self._read(LOCATIONS).get(location)
        return bytes.fromhex(value) if isinstance(value, str) else None

    def bind(self, location: str, repo_id: bytes) -> None:
        """Remember that ``location`` holds repository ``repo_id``."""
        with self._locked():
            doc = self._read(LOCATIONS)
            doc[location] = repo_id.hex()
            self._write(LOCATIONS, doc)

    def load(self, repo_id: bytes) -> RepoState:
        """This client's state of a repository (empty if it never saw it)."""
        return RepoState.from_json(self._read(f"{repo_id.hex()}.json"))

    def save(self, repo_id: bytes, state: RepoState, *, replace: bool = False) -> None:
        """Store ``state``, merged with what other processes stored meanwhile unless
        ``replace`` (an accepted change starts afresh)."""
        name = f"{repo_id.hex()}.json"
        with self._locked():
            if not replace:
                state.merge(RepoState.from_json(self._read(name)))
            self._write(name, state.as_json())
