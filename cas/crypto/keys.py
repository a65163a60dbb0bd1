"""Repository keys as objects: what a key may do is asked of the key.

A repository's secrets are one random :class:`MasterKeys` set, stored in key
files wrapped under passwords (spec/format.md §4).  The rest of cas never
picks raw key bytes out of it: it asks a :class:`KeyBase` to compute blob IDs
and file digests, to derive the chunker's permutation, and for the two
sealing domains, ``data`` (blob contents, snapshots, the config) and
``index`` (pack headers, index files, locks), each a :class:`Sealer` that
seals and opens.  A key of another kind (the write-only key reserved in
spec §4.4, which may seal data but not open it) is a new subclass
registered with :func:`key_factory`, not edits wherever keys are used.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Protocol

import msgpack

from cas.crypto.primitives import (
    KEY_SIZE,
    SCHEME_PUBLIC,
    BlobType,
    FileDigest,
    blob_id,
    chunker_permutation,
    chunker_window_key,
    open_sealed,
    open_sealed_to_public,
    seal_buffer,
    seal_parts,
    seal_to_public,
    x25519_public,
    x25519_secret,
)
from cas.errors import EXIT_WRITE_ONLY, CasError, FormatError, UnsupportedKeyType


class Sealer(Protocol):
    """One sealing domain of a key: seal and open with associated data."""

    def seal(
        self, plaintext: bytes | bytearray | memoryview, ad: bytes, nonce: bytes | None = None
    ) -> bytearray: ...

    def open(
        self, sealed: bytes | bytearray | memoryview, ad: bytes, what: str
    ) -> bytes | bytearray: ...


class SecretKey:
    """A 32-byte XChaCha20-Poly1305 key that both seals and opens."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("bad key size")
        self._key = key

    def seal(
        self, plaintext: bytes | bytearray | memoryview, ad: bytes, nonce: bytes | None = None
    ) -> bytearray:
        """scheme byte | 24-byte nonce | ciphertext | tag (spec §5)."""
        return seal_buffer(self._key, plaintext, ad, nonce)

    def seal_parts(
        self,
        head: bytes,
        body: bytes | bytearray | memoryview,
        zeros: int,
        ad: bytes,
        nonce: bytes | None = None,
    ) -> bytearray:
        """``seal(head + body + bytes(zeros), ...)``, the payload laid out and encrypted
        in place in the result (``seal_parts``): no joined copy of it."""
        return seal_parts(self._key, head, body, zeros, ad, nonce)

    def open(
        self, sealed: bytes | bytearray | memoryview, ad: bytes, what: str
    ) -> bytes | bytearray:
        """Verify and decrypt; IntegrityError if anything was altered."""
        return open_sealed(self._key, sealed, ad, what)

    def __repr__(self) -> str:
        return "SecretKey(...)"  # never the key itself


class DataKey(SecretKey):
    """The data key: seals with scheme 0 and opens scheme 0 and scheme 1, the objects
    sealed to the repository's public key (spec §5.5), whose secret it derives."""

    __slots__ = ()

    def open(
        self, sealed: bytes | bytearray | memoryview, ad: bytes, what: str
    ) -> bytes | bytearray:
        """Verify and decrypt either scheme; IntegrityError if anything was altered."""
        if len(sealed) and sealed[0] == SCHEME_PUBLIC:
            return open_sealed_to_public(x25519_secret(self._key), sealed, ad, what)
        return open_sealed(self._key, sealed, ad, what)

    def __repr__(self) -> str:
        return "DataKey(...)"


class PublicSealer:
    """Seals to the repository's X25519 public key (scheme 1, spec §5.5) and opens
    nothing: the data domain of a key that may write but not read (spec §4.4)."""

    __slots__ = ("_public",)

    def __init__(self, public: bytes) -> None:
        if len(public) != KEY_SIZE:
            raise ValueError("bad public key size")
        self._public = public

    def seal(
        self, plaintext: bytes | bytearray | memoryview, ad: bytes, nonce: bytes | None = None
    ) -> bytearray:
        """1 | ephemeral public key | nonce | ciphertext | tag."""
        return bytearray(seal_to_public(self._public, plaintext, ad, None, nonce))

    def open(
        self, sealed: bytes | bytearray | memoryview, ad: bytes, what: str
    ) -> bytes | bytearray:
        """Refused: what is sealed to the public key opens only with the data key."""
        raise KeyIsWriteOnly(action=f"open {what}")


def as_sealer(key: Sealer | bytes) -> Sealer:
    """A Sealer for ``key``; raw bytes (test vectors, tools) become a :class:`SecretKey`."""
    return SecretKey(key) if isinstance(key, bytes) else key


class KeyBase(ABC):
    """What a repository key may do.  Subclasses say how, and whether they can at all."""

    #: The ``type`` recorded in key files of this kind.
    TYPE: ClassVar[str]
    #: Whether ``data.open`` works (a write-only key could store but not read).
    CAN_OPEN_DATA: ClassVar[bool]

    @property
    @abstractmethod
    def data(self) -> Sealer:
        """Seals and opens blob contents, snapshots and the config."""

    @property
    @abstractmethod
    def index(self) -> Sealer:
        """Seals and opens pack headers, index files and locks."""

    @abstractmethod
    def blob_id(self, blob_type: BlobType, data: bytes | bytearray | memoryview) -> bytes:
        """The keyed ID of ``data`` as a blob of ``blob_type``."""

    @abstractmethod
    def file_digest(self) -> FileDigest:
        """A fresh keyed whole-file digest."""

    @abstractmethod
    def chunker_permutation(self) -> bytes:
        """The secret byte permutation that keys chunk boundaries (spec §7)."""

    @abstractmethod
    def chunker_window_key(self) -> bytes:
        """The AES key of the ``window-aes128`` chunker (spec §7.6)."""

    @abstractmethod
    def shares_ids_with(self, other: KeyBase) -> bool:
        """Whether blob IDs and chunk boundaries agree with ``other``'s (copy needs it)."""

    @abstractmethod
    def ids_only(self) -> IdKey:
        """A key that computes IDs and chunk boundaries and can do nothing else (what a
        chunk helper process is given)."""

    @abstractmethod
    def encode(self) -> bytes:
        """The key material as stored (sealed) in key files."""


class KeyNotPermitted(CasError):
    """this key cannot {action}"""


class KeyIsWriteOnly(KeyNotPermitted):
    """the key is write-only: it cannot {action}; use a full key"""

    exit_code = EXIT_WRITE_ONLY


class _Identifying(KeyBase):
    """IDs, digests and chunk boundaries from an ID key and a chunker key (every kind so far)."""

    id_key: bytes
    chunker_key: bytes

    def blob_id(self, blob_type: BlobType, data: bytes | bytearray | memoryview) -> bytes:
        """Keyed BLAKE3 of the type byte and ``data`` under id_key."""
        return blob_id(self.id_key, blob_type, data)

    def file_digest(self) -> FileDigest:
        """A whole-file digest keyed with id_key."""
        return FileDigest(self.id_key)

    def chunker_permutation(self) -> bytes:
        """The permutation derived from chunker_key."""
        return chunker_permutation(self.chunker_key)

    def chunker_window_key(self) -> bytes:
        """The window chunker's AES key derived from chunker_key."""
        return chunker_window_key(self.chunker_key)


class _Indexing(_Identifying):
    """An index key besides the ID and chunker keys: a key of a repository (full or
    write-only) that reads and writes index files, pack headers and locks."""

    index_key: bytes

    @cached_property
    def index(self) -> Sealer:
        """Seals and opens under index_key: pack headers, index files, locks."""
        return SecretKey(self.index_key)

    def shares_ids_with(self, other: KeyBase) -> bool:
        """Same id_key and chunker_key."""
        return self.ids_only().shares_ids_with(other)

    def ids_only(self) -> IdKey:
        """The ID and chunker keys alone."""
        return IdKey(self.id_key, self.chunker_key)


@dataclass(frozen=True)
class MasterKeys(_Indexing):
    """The repository's secret key set (a ``full`` key): it may do everything.

    data_key seals blob contents, snapshots and the config; index_key seals
    pack headers, index files and locks; id_key keys blob IDs and file
    digests; chunker_key derives the byte permutation that keys chunk
    boundaries.  Splitting data_key from index_key leaves room for a
    write-only key that can deduplicate (index) without reading data.
    """

    TYPE: ClassVar[str] = "full"
    CAN_OPEN_DATA: ClassVar[bool] = True

    data_key: bytes
    index_key: bytes
    id_key: bytes
    chunker_key: bytes

    @classmethod
    def generate(cls) -> MasterKeys:
        """Draw a fresh key set from the operating system's CSPRNG."""
        return cls(*(os.urandom(KEY_SIZE) for _ in range(4)))

    @cached_property
    def data(self) -> Sealer:
        """Seals under data_key; opens what it sealed and what was sealed to the
        repository's public key (scheme 1)."""
        return DataKey(self.data_key)

    def public_key(self) -> bytes:
        """The repository's X25519 public key (spec §5.5), derived from data_key."""
        return x25519_public(x25519_secret(self.data_key))

    def write_only(self, config: bytes, config_sha256: bytes) -> WriteOnlyKey:
        """The write-only key of this repository (spec §4.4): the index, ID and chunker
        keys, the public key, and the config it cannot open (its document ``config``
        and the SHA-256 of the stored config file)."""
        return WriteOnlyKey(
            self.index_key, self.id_key, self.chunker_key, self.public_key(), config, config_sha256
        )

    def with_ids_of(self, other: MasterKeys) -> MasterKeys:
        """These keys with ``other``'s ID and chunker keys (``init --copy-keys-from``)."""
        return dataclasses.replace(self, id_key=other.id_key, chunker_key=other.chunker_key)

    def encode(self) -> bytes:
        """Serialise as the msgpack map stored (encrypted) in key files."""
        return _pack_map(
            chunker=self.chunker_key, data=self.data_key, id=self.id_key, index=self.index_key
        )

    @classmethod
    def decode(cls, raw: bytes) -> MasterKeys:
        """Parse the msgpack map written by ``encode``; unknown fields are ignored."""
        names = ("data", "index", "id", "chunker")
        return cls(*_unpack_map(raw, "master key material", names, sized=names))

    def __repr__(self) -> str:
        return "MasterKeys(...)"  # never the keys themselves


@dataclass(frozen=True)
class IdKey(_Identifying):
    """Computes blob IDs, file digests and chunk boundaries; seals and opens nothing.

    The chunk helper process (:mod:`cas.chunking.worker`) gets this key, so a
    process that reads files never holds a key that can read the repository.
    It is never stored in a key file.
    """

    TYPE: ClassVar[str] = "ids"
    CAN_OPEN_DATA: ClassVar[bool] = False

    id_key: bytes
    chunker_key: bytes

    @property
    def data(self) -> Sealer:
        """Refused: this key seals nothing."""
        raise KeyNotPermitted(action="seal or open data")

    @property
    def index(self) -> Sealer:
        """Refused: this key seals nothing."""
        raise KeyNotPermitted(action="seal or open index data")

    def shares_ids_with(self, other: KeyBase) -> bool:
        """Same id_key and chunker_key."""
        mine = other.ids_only()
        return mine.id_key == self.id_key and mine.chunker_key == self.chunker_key

    def ids_only(self) -> IdKey:
        """Itself."""
        return self

    def encode(self) -> bytes:
        """msgpack map of the two keys (sent to a chunk helper, never stored)."""
        return _pack_map(chunker=self.chunker_key, id=self.id_key)

    @classmethod
    def decode(cls, raw: bytes) -> IdKey:
        """Parse what ``encode`` wrote."""
        names = ("id", "chunker")
        return cls(*_unpack_map(raw, "ID key material", names, sized=names))

    def __repr__(self) -> str:
        return "IdKey(...)"


@dataclass(frozen=True)
class WriteOnlyKey(_Indexing):
    """A key that adds backups and reads none (key-file type ``write-only``, spec §4.4).

    It holds what deduplication needs (the index, ID and chunker keys) and the
    repository's X25519 public key, to which it seals blobs and snapshots
    (scheme 1, §5.5); it has no data key, so it opens none of them, nor the
    config, whose document and hash it carries instead.
    """

    TYPE: ClassVar[str] = "write-only"
    CAN_OPEN_DATA: ClassVar[bool] = False

    index_key: bytes
    id_key: bytes
    chunker_key: bytes
    public: bytes
    config: bytes  # canonical msgpack of the config document (spec §3.1)
    config_sha256: bytes  # SHA-256 of the config file it belongs to

    @cached_property
    def data(self) -> Sealer:
        """Seals to the public key; opens nothing (KeyIsWriteOnly)."""
        return PublicSealer(self.public)

    def encode(self) -> bytes:
        """The msgpack map stored (sealed) in a ``write-only`` key file, keys sorted."""
        return _pack_map(
            chunker=self.chunker_key,
            config=self.config,
            config_sha256=self.config_sha256,
            id=self.id_key,
            index=self.index_key,
            public=self.public,
        )

    @classmethod
    def decode(cls, raw: bytes) -> WriteOnlyKey:
        """Parse the map ``encode`` wrote; unknown fields are ignored."""
        what = "write-only key material"
        names = ("index", "id", "chunker", "public", "config", "config_sha256")
        key = cls(*_unpack_map(raw, what, names, sized=names[:4] + names[5:]))
        if not isinstance(key.config, bytes) or not key.config:
            raise FormatError(what=what, detail="no config document")
        return key

    def __repr__(self) -> str:
        return "WriteOnlyKey(...)"


def _pack_map(**members: bytes) -> bytes:
    """A key's msgpack map, as stored in a key file or sent to a helper: keys sorted."""
    raw: bytes = msgpack.packb(dict(sorted(members.items())), use_bin_type=True)
    return raw


def _unpack_map(raw: bytes, what: str, names: tuple[str, ...], sized: tuple[str, ...]) -> list[Any]:
    """The members ``names`` of a key's msgpack map, in that order (others are ignored);
    those in ``sized`` must be keys of KEY_SIZE bytes."""
    try:
        m = msgpack.unpackb(raw)
        values = [m[n] for n in names]
    except Exception as e:
        raise FormatError(what=what, detail=str(e) or type(e).__name__) from None
    for name, value in zip(names, values, strict=True):
        if name in sized and not (isinstance(value, bytes) and len(value) == KEY_SIZE):
            raise FormatError(what=what, detail="bad key length")
    return values


_KINDS: dict[str, type[MasterKeys] | type[WriteOnlyKey]] = {
    MasterKeys.TYPE: MasterKeys,
    WriteOnlyKey.TYPE: WriteOnlyKey,
}


def key_factory(key_type: str, material: bytes) -> KeyBase:
    """The key of ``key_type`` (a key file's ``type``) from its unsealed material."""
    kind = _KINDS.get(key_type)
    if kind is None:
        raise UnsupportedKeyType(key_type=repr(key_type)[:40], known=" and ".join(sorted(_KINDS)))
    return kind.decode(material)
