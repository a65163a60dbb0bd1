"""Key files under ``keys/`` (spec/format.md §4).

A key file is a small JSON document: who made it and when, the Argon2id
parameters and salt, and the master key set sealed under the key derived
from the password.  JSON because it is the one file a human may need to
inspect without cas; nothing secret is readable in it.  Version 2 binds
every member to the seal as associated data and carries a password check
value, so an altered member reads as an altered file, not as a wrong
password; version 1 files stay readable.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from nacl.bindings import sodium_memcmp  # constant time; hmac's would map OpenSSL

from cas import crypto
from cas.errors import FormatError, IntegrityError, UnsupportedVersion, WrongPassword
from cas.format.codec import pack_canonical, shown

KEY_AD = b"cas.key.v1"  # version 1: the members are not bound to the seal
KEY_AD_V2 = b"cas.key.v2"
KEY_TYPES = ("full", "write-only")  # spec §4.1, §4.4
VERSIONS = (1, 2)
VERSION = 2  # what writers write
# A key file is a few hundred bytes; anything much larger is not one (spec §4.1).
MAX_SIZE = 64 << 10


class KeyFileAltered(IntegrityError):
    """key file altered: {detail}"""


@dataclass(frozen=True)
class KeyFile:
    """The parsed, still-locked content of a key file."""

    kdf: crypto.KdfParams
    sealed_keys: bytes
    created: str
    hostname: str
    username: str
    type: str = "full"
    version: int = VERSION
    check: bytes | None = None  # version 2: the password check value (spec §4.1)


def bound_members(kf: KeyFile) -> bytes:
    """The associated data that binds a version 2 key file's members to its seal:
    ``cas.key.v2`` | canonical msgpack of every member but ``check`` and ``keys``."""
    doc = {
        "created": kf.created,
        "hostname": kf.hostname,
        "kdf": {
            "algorithm": "argon2id",
            "memlimit": kf.kdf.memlimit,
            "opslimit": kf.kdf.opslimit,
            "salt": kf.kdf.salt,
        },
        "type": kf.type,
        "username": kf.username,
        "version": kf.version,
    }
    return KEY_AD_V2 + pack_canonical(doc)


def _ad(kf: KeyFile) -> bytes:
    return KEY_AD if kf.version == 1 else bound_members(kf)


def create(
    keys: crypto.KeyBase,
    password: bytes,
    kdf: crypto.KdfParams,
    *,
    created: str,
    hostname: str,
    username: str,
    nonce: bytes | None = None,
    version: int = VERSION,
) -> tuple[KeyFile, bytes]:
    """Wrap ``keys`` under ``password``; returns the KeyFile and its file bytes.

    Costs below the minimum of spec §4.2 are refused (``WeakKdf``) unless ``kdf``
    was made by ``KdfParams.for_tests``.  ``version`` 1 is for tests and vectors
    of what older cas wrote.
    """
    crypto.check_writer_costs(kdf)
    kek = crypto.derive_key(password, kdf)
    check = crypto.key_check(kek) if version >= 2 else None
    kf = KeyFile(kdf, b"", created, hostname, username, keys.TYPE, version, check)
    kf = dataclasses.replace(kf, sealed_keys=crypto.seal(kek, keys.encode(), _ad(kf), nonce))
    return kf, encode_keyfile(kf)


def encode_keyfile(kf: KeyFile) -> bytes:
    """Serialise as JSON with sorted keys and a trailing newline."""
    doc: dict[str, Any] = {
        "version": kf.version,
        "type": kf.type,
        "created": kf.created,
        "hostname": kf.hostname,
        "username": kf.username,
        "kdf": {
            "algorithm": "argon2id",
            "salt": base64.b64encode(kf.kdf.salt).decode(),
            "opslimit": kf.kdf.opslimit,
            "memlimit": kf.kdf.memlimit,
        },
        "keys": base64.b64encode(kf.sealed_keys).decode(),
    }
    if kf.check is not None:
        doc["check"] = base64.b64encode(kf.check).decode()
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


def decode_keyfile(raw: bytes) -> KeyFile:
    """Parse a key file's JSON (no password needed)."""
    try:
        if len(raw) > MAX_SIZE:
            raise ValueError(f"larger than {MAX_SIZE >> 10} KiB")
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        version = doc["version"]
        if type(version) is not int or version not in VERSIONS:
            raise UnsupportedVersion(what="key file", version=shown(version), supported=VERSION)
        kdf: dict[str, Any] = doc["kdf"]
        if kdf["algorithm"] != "argon2id":
            raise ValueError(f"unknown KDF {shown(kdf['algorithm'])}")
        if doc["type"] not in KEY_TYPES:
            kind = f"(type {shown(doc['type'])})"
            raise UnsupportedVersion(what="key file", version=kind, supported=VERSION)
        ops, mem = kdf["opslimit"], kdf["memlimit"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (ops, mem)):
            raise ValueError("KDF costs must be integers")
        params = crypto.KdfParams(base64.b64decode(kdf["salt"], validate=True), ops, mem)
        info = [doc[k] for k in ("created", "hostname", "username")]
        check = None
        if version == 1 and "check" in doc:  # a version 2 file relabelled: never opens
            raise ValueError("a version 1 key file with a check value")
        if version >= 2:
            if not all(isinstance(v, str) for v in info):
                raise ValueError("created, hostname and username must be strings")
            check = base64.b64decode(doc["check"], validate=True)
            if len(check) != crypto.KEY_CHECK_SIZE:
                raise ValueError("bad check length")
        return KeyFile(
            params,
            base64.b64decode(doc["keys"], validate=True),
            str(info[0]),
            str(info[1]),
            str(info[2]),
            doc["type"],
            version,
            check,
        )
    except UnsupportedVersion:
        raise
    except (
        ValueError,
        KeyError,
        TypeError,
        OverflowError,
        RecursionError,
        binascii.Error,
        UnicodeDecodeError,
    ) as e:
        raise FormatError(what="key file", detail=str(e) or type(e).__name__) from None


def unlock(kf: KeyFile, password: bytes) -> crypto.KeyBase:
    """Derive the key-encryption key and open the master keys: WrongPassword if the
    password is wrong, KeyFileAltered if it is right but the file was changed (v2)."""
    try:
        ad = _ad(kf)
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a lone surrogate in a name
        raise FormatError(what="key file", detail=str(e) or type(e).__name__) from None
    kek = crypto.derive_key(password, kf.kdf)
    if kf.check is not None and not sodium_memcmp(crypto.key_check(kek), bytes(kf.check)):
        raise WrongPassword()
    try:
        plain = crypto.open_sealed(kek, kf.sealed_keys, ad, "key file")
    except IntegrityError:
        if kf.version == 1:
            raise WrongPassword() from None
        # The password is right (its check value matched): the members or the seal changed.
        raise KeyFileAltered(
            detail="the password opens it, but its members (KDF costs, type, host, user, "
            "created) or its sealed keys are not what was sealed"
        ) from None
    return crypto.key_factory(kf.type, bytes(plain))
