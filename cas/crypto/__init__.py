"""Keys, key derivation, sealing and keyed IDs (spec/format.md §4-§7).

:mod:`cas.crypto.primitives` holds the functions over raw key bytes;
:mod:`cas.crypto.keys` holds keys as objects, which is how the rest of cas
uses them.
"""

from cas.crypto.keys import (
    IdKey,
    KeyBase,
    KeyNotPermitted,
    MasterKeys,
    Sealer,
    SecretKey,
    as_sealer,
    key_factory,
)
from cas.crypto.primitives import (
    DEFAULT_MEMLIMIT,
    DEFAULT_OPSLIMIT,
    DIGEST_DOMAIN,
    ID_SIZE,
    KEY_SIZE,
    MAX_MEMLIMIT,
    MAX_OPSLIMIT,
    NONCE_SIZE,
    SCHEME_XCHACHA,
    SEAL_OVERHEAD,
    TAG_SIZE,
    BlobType,
    FileDigest,
    KdfParams,
    blob_ad,
    blob_id,
    chunker_permutation,
    chunker_window_key,
    derive_key,
    open_sealed,
    seal,
    seal_buffer,
)

__all__ = [
    "DEFAULT_MEMLIMIT",
    "DEFAULT_OPSLIMIT",
    "DIGEST_DOMAIN",
    "ID_SIZE",
    "KEY_SIZE",
    "MAX_MEMLIMIT",
    "MAX_OPSLIMIT",
    "NONCE_SIZE",
    "SCHEME_XCHACHA",
    "SEAL_OVERHEAD",
    "TAG_SIZE",
    "BlobType",
    "FileDigest",
    "IdKey",
    "KdfParams",
    "KeyBase",
    "KeyNotPermitted",
    "MasterKeys",
    "Sealer",
    "SecretKey",
    "as_sealer",
    "blob_ad",
    "blob_id",
    "chunker_permutation",
    "chunker_window_key",
    "derive_key",
    "key_factory",
    "open_sealed",
    "seal",
    "seal_buffer",
]
