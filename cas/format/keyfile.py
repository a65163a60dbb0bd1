"""Key files under ``keys/`` (spec/format.md §4).

A key file is a small JSON document: who made it and when, the Argon2id
parameters and salt, and the master key set sealed under the key derived
from the password.  JSON because it is the one file a human may need to
inspect without cas; nothing secret is readable in it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cas import crypto
from cas.errors import FormatError, IntegrityError, UnsupportedVersion, WrongPassword
from cas.format.codec import shown

KEY_AD = b"cas.key.v1"
KEY_TYPES = ("full",)  # "write-only" is reserved, see spec §4.4


@dataclass(frozen=True)
class KeyFile:
    """The parsed, still-locked content of a key file."""

    kdf: crypto.KdfParams
    sealed_keys: bytes
    created: str
    hostname: str
    username: str
    type: str = "full"
    version: int = 1


def create(
    keys: crypto.KeyBase,
    password: bytes,
    kdf: crypto.KdfParams,
    *,
    created: str,
    hostname: str,
    username: str,
    nonce: bytes | None = None,
) -> tuple[KeyFile, bytes]:
    """Wrap ``keys`` under ``password``; returns the KeyFile and its file bytes."""
    kek = crypto.derive_key(password, kdf)
    kf = KeyFile(
        kdf, crypto.seal(kek, keys.encode(), KEY_AD, nonce), created, hostname, username, keys.TYPE
    )
    return kf, encode_keyfile(kf)


def encode_keyfile(kf: KeyFile) -> bytes:
    """Serialise as JSON with sorted keys and a trailing newline."""
    doc = {
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
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


def decode_keyfile(raw: bytes) -> KeyFile:
    """Parse a key file's JSON (no password needed)."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        version = doc["version"]
        if version != 1:
            raise UnsupportedVersion(what="key file", version=shown(version), supported=1)
        kdf: dict[str, Any] = doc["kdf"]
        if kdf["algorithm"] != "argon2id":
            raise ValueError(f"unknown KDF {shown(kdf['algorithm'])}")
        if doc["type"] not in KEY_TYPES:
            kind = f"(type {shown(doc['type'])})"
            raise UnsupportedVersion(what="key file", version=kind, supported=1)
        ops, mem = kdf["opslimit"], kdf["memlimit"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (ops, mem)):
            raise ValueError("KDF costs must be integers")
        params = crypto.KdfParams(base64.b64decode(kdf["salt"], validate=True), ops, mem)
        return KeyFile(
            params,
            base64.b64decode(doc["keys"], validate=True),
            str(doc["created"]),
            str(doc["hostname"]),
            str(doc["username"]),
            doc["type"],
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
    """Derive the key-encryption key and open the master keys; WrongPassword if they do not open."""
    kek = crypto.derive_key(password, kf.kdf)
    try:
        plain = crypto.open_sealed(kek, kf.sealed_keys, KEY_AD, "key file")
    except IntegrityError:
        raise WrongPassword() from None
    return crypto.key_factory(kf.type, plain)
