"""Key files under ``keys/``: list, add, remove, and unlock the master keys with a password.

Every key file wraps one copy of the repository's master keys under a
password (spec/format.md §4).  This module is the only code that names,
writes or deletes key files.
"""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass

from cas import crypto
from cas.backend.base import Backend
from cas.errors import (
    CasError,
    FormatError,
    IntegrityError,
    ObjectNotFound,
    UnsupportedVersion,
    WrongPassword,
)
from cas.format import config as configfmt
from cas.format import keyfile as keyfmt
from cas.ids import storage_id
from cas.repo import layout
from cas.repo.verified import read_verified


@dataclass
class KeyInfo:
    """A key file as listed by ``cas key list``."""

    key_id: bytes
    created: str
    hostname: str
    username: str
    type: str
    current: bool


@dataclass(frozen=True)
class Unlocked:
    """What a password opened: the master keys, the config and the key file used."""

    keys: crypto.KeyBase
    config: configfmt.Config
    key_id: bytes


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_key(
    backend: Backend, keys: crypto.KeyBase, password: bytes, kdf: crypto.KdfParams
) -> bytes:
    """Store a new key file wrapping ``keys`` under ``password``; returns its ID."""
    _, raw = keyfmt.create(
        keys,
        password,
        kdf,
        created=_now_iso(),
        hostname=socket.gethostname(),
        username=getpass.getuser(),
    )
    kid = storage_id(raw)
    backend.write(layout.key_name(kid), raw)
    return kid


def key_ids(backend: Backend) -> list[bytes]:
    """IDs of every key file (readable or not), sorted."""
    return sorted(i for i in (layout.id_from_name(o.name) for o in backend.list(layout.KEYS)) if i)


def list_keys(
    backend: Backend, current: bytes, damaged: dict[bytes, str] | None = None
) -> list[KeyInfo]:
    """Every readable key file, parsed (their master keys stay sealed), oldest first; a
    damaged one is left out and recorded in ``damaged`` (raised without it)."""
    out = []
    for kid in key_ids(backend):
        try:
            kf = keyfmt.decode_keyfile(read_verified(backend, layout.key_name(kid), "key file"))
        except ObjectNotFound:
            continue  # removed by another client since the listing
        except (IntegrityError, FormatError, UnsupportedVersion) as e:
            if damaged is None:
                raise
            damaged[kid] = str(e)
            continue
        out.append(KeyInfo(kid, kf.created, kf.hostname, kf.username, kf.type, kid == current))
    return sorted(out, key=lambda k: (k.created, k.key_id))


def remove_key(backend: Backend, key_id: bytes, current: bytes) -> None:
    """Delete a key file; refuses the one this session was opened with."""
    if key_id == current:
        raise CasError("refusing to remove the key in use; open with another key first")
    name = layout.key_name(key_id)
    backend.stat(name)
    backend.delete(name)


def delete_key(backend: Backend, key_id: bytes) -> None:
    """Delete a key file unconditionally (a password change, once the new one is stored)."""
    backend.delete(layout.key_name(key_id))


def has_keys(backend: Backend) -> bool:
    """Whether any key file is stored."""
    return any(layout.id_from_name(o.name) for o in backend.list(layout.KEYS))


def remove_all_keys(backend: Backend) -> None:
    """Delete every key file (the leftovers of an init that died before its config)."""
    for o in backend.list(layout.KEYS):
        backend.delete(o.name)


class TooManyKeyFiles(WrongPassword):
    """wrong password: no key file tried opens with it; {detail}"""


# At most this many key files are tried for one password (spec §4.5): with the cost
# ceilings of §4.2, a storage provider planting key files can cost a client a bounded time.
MAX_TRIED = 32


def _order(
    backend: Backend, first: bytes | None
) -> tuple[list[tuple[str, keyfmt.KeyFile | Exception]], int]:
    """The key files to try, in order, and how many were listed: the remembered one
    first, then the cheapest to derive (a planted costly file is tried last), at most
    MAX_TRIED; a listed file larger than a key file can be is not read."""
    listed = [o for o in backend.list(layout.KEYS) if layout.id_from_name(o.name) is not None]
    if not listed:
        raise FormatError(what="repository", detail="it has no key files")
    first_name = layout.key_name(first) if first is not None else None
    listed.sort(key=lambda o: (o.name != first_name, o.name))
    parsed: list[tuple[str, keyfmt.KeyFile | Exception]] = []
    for o in listed[: MAX_TRIED * 2]:
        try:
            if o.size > keyfmt.MAX_SIZE:
                raise FormatError(what="key file", detail=f"{o.name} is {o.size} bytes")
            parsed.append(
                (o.name, keyfmt.decode_keyfile(read_verified(backend, o.name, "key file")))
            )
        except (ObjectNotFound, IntegrityError, UnsupportedVersion) as e:
            parsed.append((o.name, e))

    def cost(item: tuple[str, keyfmt.KeyFile | Exception]) -> tuple[bool, int, str]:
        name, kf = item
        work = kf.kdf.opslimit * kf.kdf.memlimit if isinstance(kf, keyfmt.KeyFile) else 0
        return (name != first_name, work, name)

    return sorted(parsed, key=cost)[:MAX_TRIED], len(listed)


def _config(raw_config: bytes, keys: crypto.KeyBase) -> configfmt.Config:
    """The config as ``keys`` opens it: a write-only key cannot, and carries the document
    of the one config it was made for (spec §4.4)."""
    if isinstance(keys, crypto.WriteOnlyKey):
        return configfmt.decode_config_for_write_only(raw_config, keys.config, keys.config_sha256)
    return configfmt.decode_config(raw_config, keys.data)


def write_only_key(keys: crypto.KeyBase, raw_config: bytes) -> crypto.WriteOnlyKey:
    """The write-only key of the repository whose config is ``raw_config``, made from its
    full ``keys`` (KeyIsWriteOnly for any other key)."""
    if not isinstance(keys, crypto.MasterKeys):
        raise crypto.KeyIsWriteOnly(action="add keys")
    cfg = configfmt.decode_config(raw_config, keys.data)
    return keys.write_only(configfmt.config_plaintext(cfg), storage_id(raw_config))


def unlock(
    backend: Backend, password: bytes, raw_config: bytes, first: bytes | None = None
) -> Unlocked:
    """Unlock with a key file that ``password`` opens and that opens the config, trying
    ``first`` (the key file that opened last time) before the others."""
    tried, listed = _order(backend, first)
    damaged: list[str] = []
    altered: list[str] = []  # the password is right, the file was changed
    opened_elsewhere: list[str] = []  # the password opened these, but not the config
    vanished = 0
    for name, kf in tried:
        try:
            if isinstance(kf, Exception):
                raise kf
            keys = keyfmt.unlock(kf, password)
        except ObjectNotFound:
            vanished += 1  # removed by another client since the listing (cas key remove)
            continue
        except WrongPassword:
            continue
        except keyfmt.KeyFileAltered as e:
            altered.append(f"{name}: {e.fields['detail']}")
            continue
        except (IntegrityError, UnsupportedVersion) as e:
            damaged.append(str(e))
            continue
        try:
            cfg = _config(raw_config, keys)
        except IntegrityError as e:
            # A key file left by an interrupted init of another repository here:
            # it opens with the password but its keys do not open this config.
            opened_elsewhere.append(f"key file {name}: its keys do not open the config ({e})")
            continue
        kid = layout.id_from_name(name)
        assert kid is not None
        return Unlocked(keys, cfg, kid)
    if altered:
        raise keyfmt.KeyFileAltered(detail="; ".join(altered))
    if opened_elsewhere:
        # The password is right, so this is damage (of the config, or a stray key file).
        raise IntegrityError(what="config", detail="; ".join(opened_elsewhere))
    if damaged and len(damaged) == len(tried) - vanished:
        raise IntegrityError(what="key files", detail="; ".join(damaged))
    if vanished == len(tried):
        raise FormatError(
            what="repository", detail="its key files were removed while it was opened"
        )
    if listed > len(tried):
        raise TooManyKeyFiles(
            detail=f"only {len(tried)} of the {listed} key files were tried (at most "
            f"{MAX_TRIED}); remove key files that are not in use ('cas key list')"
        )
    raise WrongPassword()
