"""Building the storage stack and opening (or creating) a repository on it.

``open_storage`` turns a location into the backend every command uses: the
registered backend for its scheme (with its retries and request accounting,
:mod:`cas.backend.registry`) and, unless turned off, the local cache of
immutable objects around it.  ``open`` then checks the format version,
asks for the password and unlocks.  No command assembles this itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cas import crypto
from cas.backend.base import Backend
from cas.backend.registry import open_backend
from cas.errors import (
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedVersion,
    UsageError,
)
from cas.format import FORMAT_VERSION
from cas.format import config as configfmt
from cas.repo import keyring, layout
from cas.repo.cache import LocalCache, cache_dir_for
from cas.repo.caching import CachingBackend
from cas.repo.clientstate import ClientState, default_state_dir

if TYPE_CHECKING:  # imported once the key is derived (see open_repository)
    from cas.chunking.chunker import ChunkerParams
    from cas.repo.repository import Repository

LAST_KEY = "last-key"  # the cache note naming the key file that opened last


@dataclass(frozen=True)
class RepoOptions:
    """How to reach and use a repository.

    ``backend``: options objects of backends (e.g. :class:`cas.backend.S3Options`),
    each taken by the backend of its type; ``cache``: keep immutable objects in
    a local cache (under ``cache_dir``, default ~/.cache/cas); ``connections``:
    parallel uploads (default: one per core, at least two); ``client_state``: check
    the repository against what this client saw before (spec §13.6).
    """

    backend: tuple[object, ...] = ()
    cache: bool = True
    cache_dir: str | None = None
    connections: int | None = None
    client_state: bool = False
    state_dir: str | None = None

    def state(self) -> ClientState | None:
        """This client's state directory (``state_dir``, else ``$XDG_STATE_HOME/cas``),
        or None when ``client_state`` is off (library use: nothing is checked)."""
        if not self.client_state:
            return None
        return ClientState(Path(self.state_dir) if self.state_dir else default_state_dir())

    def local_cache(self, location: str) -> LocalCache | None:
        """The local cache of ``location``, or None when caching is off."""
        if not self.cache:
            return None
        root = Path(self.cache_dir) if self.cache_dir else None
        return LocalCache(cache_dir_for(location, root))


def open_storage(location: str, options: RepoOptions = RepoOptions()) -> Backend:
    """The whole storage stack of ``location``: backend, retries, accounting, cache."""
    backend = open_backend(location, options.backend)
    cache = options.local_cache(location)
    return backend if cache is None else CachingBackend(backend, cache)


def open(
    location: str, password: Callable[[], bytes], options: RepoOptions = RepoOptions()
) -> Repository:
    """Open and unlock the repository at ``location``.

    A missing or newer repository is refused before ``password`` is asked for.
    """
    return open_on(open_storage(location, options), password, options)


def open_on(
    backend: Backend, password: Callable[[], bytes], options: RepoOptions = RepoOptions()
) -> Repository:
    """Open and unlock the repository on an already built storage stack."""
    try:
        raw_config = read_config_version(backend)
        repo = open_repository(backend, password(), raw_config, options.state())
    except BaseException:
        backend.close()
        raise
    if options.connections:
        repo.set_connections(options.connections)
    return repo


def repository_exists(backend: Backend) -> bool:
    """Whether a config object is present."""
    try:
        backend.stat(layout.CONFIG)
        return True
    except ObjectNotFound:
        return False


def read_config_version(backend: Backend) -> bytes:
    """The raw config, after checking there is one and that its version is supported."""
    try:
        raw = backend.read(layout.CONFIG)
    except ObjectNotFound:
        raise RepositoryNotFound(location=backend.location) from None
    version = configfmt.read_version(raw)
    if version not in configfmt.VERSIONS:
        raise UnsupportedVersion(what="repository", version=version, supported=FORMAT_VERSION)
    return raw


def open_repository(
    backend: Backend,
    password: bytes,
    raw_config: bytes | None = None,
    state: ClientState | None = None,
) -> Repository:
    """Unlock with the first key file that ``password`` opens, then read the config.

    ``raw_config``: the config as already read by ``read_config_version`` (callers
    check the version before asking for a password).
    """
    if raw_config is None:
        raw_config = read_config_version(backend)
    cache = backend.cache if isinstance(backend, CachingBackend) else None
    # The key file that opened last time is tried first (spec §4.5): a storage provider
    # that plants key files cannot make every open derive keys for them first.
    last = cache.note(LAST_KEY) if cache is not None else None
    first = layout.id_from_name(layout.KEYS + "/" + last) if last else None
    unlocked = keyring.unlock(backend, password, raw_config, first)
    if cache is not None and unlocked.key_id != first:
        cache.set_note(LAST_KEY, unlocked.key_id.hex())
    # Imported only now: Argon2id's 32 MiB come on top of what the process holds when it
    # derives, and the repository layer (indexes, packs, snapshots) is not needed before.
    from cas.repo.repository import Repository

    return Repository(backend, unlocked.keys, unlocked.config, unlocked.key_id, cache, state)


def init_repository(
    backend: Backend,
    password: bytes,
    *,
    chunker: ChunkerParams | None = None,
    pack_size: int = configfmt.DEFAULT_PACK_SIZE,
    kdf: crypto.KdfParams | None = None,
    share_ids_with: Repository | None = None,
    among_other_files: bool = False,
    padding: str | None = None,
    version: int = configfmt.FORMAT_VERSION,
) -> Repository:
    """Create a new repository: fresh master keys, the first key file, then the config.

    A location that holds objects outside the repository layout (a source tree
    given by mistake, another program's files) is refused unless
    ``among_other_files``: as borg does, cas does not mix its files with yours.

    With ``share_ids_with``, the new repository takes that repository's ID
    key, chunker key and chunker parameters (its data and index keys stay
    fresh), so blob IDs agree and ``cas copy`` moves only missing blobs.

    The repository has the current format version (2); ``padding`` ("padme") pads
    every sealed blob it stores (spec §8.1).

    The config is written last so a crash halfway leaves no half-made
    repository that ``open`` would accept; ``init`` refuses any location that
    already holds a config.
    """
    if not (1 << 20) <= pack_size <= (1 << 30):
        raise UsageError("the pack size must be between 1 MiB and 1 GiB")
    if version not in configfmt.VERSIONS or (padding is not None and version < 2):
        raise UsageError("a repository is version 2 (or 1, without padding)")
    if padding is not None and padding not in configfmt.PADDINGS:
        raise UsageError(f"unknown padding {padding!r}; known: {', '.join(configfmt.PADDINGS)}")
    if repository_exists(backend):
        raise RepositoryExists(location=backend.location)
    if not among_other_files:
        foreign = _first_foreign_object(backend)
        if foreign is not None:
            raise UsageError(
                f"{backend.location} already holds files that are not a cas repository "
                f"({foreign}); give an empty location, or --force to create it among them"
            )
    backend.create()
    if keyring.has_keys(backend):
        # Key files but no config: an earlier init died before writing the config.
        # They open nothing; remove them so this init starts clean.
        keyring.remove_all_keys(backend)
    from cas.chunking.chunker import ChunkerParams
    from cas.repo.repository import Repository

    keys = crypto.MasterKeys.generate()
    if share_ids_with is not None:
        if not isinstance(share_ids_with.keys, crypto.MasterKeys):
            raise UsageError("keys can only be copied from a repository opened with a full key")
        keys = keys.with_ids_of(share_ids_with.keys)
        chunker = share_ids_with.config.chunker
    cfg = configfmt.Config(os.urandom(32), chunker or ChunkerParams(), pack_size, version, padding)
    key_id = keyring.write_key(backend, keys, password, kdf or crypto.KdfParams.new())
    backend.write(layout.CONFIG, configfmt.encode_config(cfg, keys.data))
    cache = backend.cache if isinstance(backend, CachingBackend) else None
    return Repository(backend, keys, cfg, key_id, cache)


def _first_foreign_object(backend: Backend) -> str | None:
    """An object outside the repository layout (the key files an interrupted init left
    are part of it), or None."""
    try:
        listing = backend.list("")
        for info in listing:
            top = info.name.split("/", 1)[0]
            if top not in layout.DIRECTORIES and top != layout.CONFIG:
                return info.name
    except ObjectNotFound:
        return None
    return None
