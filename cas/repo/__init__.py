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
"""

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
