"""The repository: the only way to stored objects.

Everything that names, writes or deletes an object in a repository lives in
this package (the backends below it only keep bytes): key files
(:mod:`~cas.repo.keyring`), index files and the master index
(:mod:`~cas.repo.indexstore`), packs written (:mod:`~cas.repo.packwriter`)
and read (:mod:`~cas.repo.blobreader`), snapshots and the facade that joins
them (:mod:`~cas.repo.repository`), locks, leftovers, the local cache, and
the upkeep that rewrites the repository: prune and repack
(:mod:`~cas.repo.prune`) and the index rebuild (:mod:`~cas.repo.rebuild`).
:func:`open` builds the whole storage stack for a location.

Importing a module of this package (a restore writer needs only
:mod:`~cas.repo.readerspec` and what it reads with) does not import the rest:
the names below are looked up on first use (PEP 562), so a helper process does
not carry the whole repository layer (and the chunker, click, ...) in its memory.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cas.repo.connect import (
        RepoOptions,
        init_repository,
        open,
        open_on,
        open_repository,
        open_storage,
        read_config_version,
        repository_exists,
    )
    from cas.repo.keyring import KeyInfo
    from cas.repo.repository import Repository
    from cas.repo.verified import read_verified

_WHERE = {
    "KeyInfo": "keyring",
    "RepoOptions": "connect",
    "Repository": "repository",
    "init_repository": "connect",
    "open": "connect",
    "open_on": "connect",
    "open_repository": "connect",
    "open_storage": "connect",
    "read_config_version": "connect",
    "read_verified": "verified",
    "repository_exists": "connect",
}

__all__ = [
    "KeyInfo",
    "RepoOptions",
    "Repository",
    "init_repository",
    "open",
    "open_on",
    "open_repository",
    "open_storage",
    "read_config_version",
    "read_verified",
    "repository_exists",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
