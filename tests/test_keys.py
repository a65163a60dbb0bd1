"""Keys as objects (cas/crypto/keys.py): what each kind of key may do, and the factory."""

from __future__ import annotations

import pytest

from cas import crypto
from cas.crypto import BlobType, IdKey, KeyNotPermitted, MasterKeys, SecretKey, key_factory
from cas.errors import FormatError, IntegrityError, UnsupportedVersion
from cas.format import compress
from cas.format import keyfile as keyfmt
from cas.format import pack as packfmt
from cas.format import snapshot as snapfmt
from cas.format.snapshot import Snapshot


def test_a_full_key_does_what_the_raw_functions_do() -> None:
    keys = MasterKeys.generate()
    data = b"some plaintext"
    assert keys.blob_id(BlobType.DATA, data) == crypto.blob_id(keys.id_key, BlobType.DATA, data)
    digest = keys.file_digest()
    digest.update(data)
    raw = crypto.FileDigest(keys.id_key)
    raw.update(data)
    assert digest.digest() == raw.digest()
    assert keys.chunker_permutation() == crypto.chunker_permutation(keys.chunker_key)
    sealed = keys.data.seal(data, b"ad")
    assert crypto.open_sealed(keys.data_key, sealed, b"ad", "x") == data
    assert keys.index.open(crypto.seal(keys.index_key, data, b"ad"), b"ad", "x") == data
    with pytest.raises(IntegrityError):
        keys.index.open(sealed, b"ad", "x")  # sealed under the data key


def test_documents_take_a_key_object_or_raw_bytes_alike() -> None:
    keys = MasterKeys.generate()
    snap = Snapshot(1, b"\x01" * 32, [b"/p"], "h", "u")
    nonce = b"\x00" * 24
    assert snapfmt.encode_snapshot(snap, keys.data, nonce) == snapfmt.encode_snapshot(
        snap, keys.data_key, nonce
    )
    assert snapfmt.decode_snapshot(snapfmt.encode_snapshot(snap, keys.data), keys.data_key) == snap


def test_the_id_key_computes_ids_and_opens_nothing() -> None:
    keys = MasterKeys.generate()
    ids = keys.ids_only()
    assert isinstance(ids, IdKey) and ids.ids_only() is ids
    assert ids.blob_id(BlobType.TREE, b"t") == keys.blob_id(BlobType.TREE, b"t")
    assert ids.chunker_permutation() == keys.chunker_permutation()
    assert ids.shares_ids_with(keys) and keys.shares_ids_with(ids)
    assert not keys.shares_ids_with(MasterKeys.generate())
    assert not IdKey.CAN_OPEN_DATA and MasterKeys.CAN_OPEN_DATA
    for domain in ("data", "index"):
        with pytest.raises(KeyNotPermitted):
            getattr(ids, domain)
    sealed = packfmt.seal_blob(keys, BlobType.DATA, keys.blob_id(BlobType.DATA, b"d"), b"d", 3)
    with pytest.raises(KeyNotPermitted):
        packfmt.open_blob(ids, BlobType.DATA, keys.blob_id(BlobType.DATA, b"d"), sealed)
    assert IdKey.decode(ids.encode()) == ids
    with pytest.raises(FormatError):
        IdKey.decode(b"\x81\xa2id\xc4\x01x")


def test_copy_keys_keep_ids_and_chunking_only() -> None:
    source, fresh = MasterKeys.generate(), MasterKeys.generate()
    copied = fresh.with_ids_of(source)
    assert copied.shares_ids_with(source)
    assert copied.data_key == fresh.data_key and copied.index_key == fresh.index_key


def test_the_factory_builds_the_kind_a_key_file_names() -> None:
    keys = MasterKeys.generate()
    assert key_factory("full", keys.encode()) == keys
    with pytest.raises(UnsupportedVersion, match=r"type 'read-only'.*knows full and write-only"):
        key_factory("read-only", keys.encode())  # a type this cas does not know
    with pytest.raises(FormatError):  # full key material is not a write-only key's
        key_factory("write-only", keys.encode())
    wo = keys.write_only(b"\x81\xa1v\x02", bytes(32))
    assert key_factory("write-only", wo.encode()) == wo and not wo.CAN_OPEN_DATA
    assert wo.shares_ids_with(keys) and wo.public == keys.public_key()
    kdf = crypto.KdfParams.for_tests(opslimit=1, memlimit=8 << 20)
    kf, _ = keyfmt.create(keys, b"pw", kdf, created="c", hostname="h", username="u")
    assert kf.type == "full" and keyfmt.unlock(kf, b"pw") == keys


def test_keys_never_show_their_bytes() -> None:
    keys = MasterKeys.generate()
    for shown in (repr(keys), repr(keys.ids_only()), repr(keys.data), repr(SecretKey(b"k" * 32))):
        assert keys.data_key.hex() not in shown and "k" * 32 not in shown


def test_a_key_file_removed_while_the_repository_opens_is_passed_over() -> None:
    """Another client's ``cas key remove`` between the listing of key files and their
    reading: the key in hand still opens the repository, and the listing of keys shows
    the rest (the global-option matrix ran three removals side by side and met it)."""
    from collections.abc import Iterator

    from cas.backend.base import ObjectInfo
    from cas.backend.memory import MemoryBackend
    from cas.repo import keyring, layout
    from cas.repo.connect import init_repository

    class Vanishing(MemoryBackend):
        def list(self, prefix: str) -> Iterator[ObjectInfo]:
            yield from super().list(prefix)
            if prefix == layout.KEYS:  # listed, then removed before it is read
                yield ObjectInfo(layout.key_name(b"\x00" * 32), 400)

    backend = Vanishing()
    repo = init_repository(
        backend, b"pw", kdf=crypto.KdfParams.for_tests(opslimit=1, memlimit=8192)
    )
    raw_config = backend.read(layout.CONFIG)
    unlocked = keyring.unlock(backend, b"pw", raw_config)
    assert unlocked.key_id == repo.key_id
    listed = keyring.list_keys(backend, unlocked.key_id, {})
    assert [k.key_id for k in listed] == [repo.key_id]


def test_a_full_key_opens_blobs_and_snapshots_sealed_to_its_public_key() -> None:
    """Scheme 1 (spec §5.5): what a write-only client seals, any full key opens, through
    the same pack and snapshot decoders; the symmetric v1 opener refuses it as newer."""
    keys = MasterKeys.generate()
    data = b"written by a client that cannot read it" * 10
    bid = keys.blob_id(BlobType.DATA, data)
    payload = compress.encode_payload(data, 3)
    sealed = crypto.seal_to_public(keys.public_key(), payload, crypto.blob_ad(BlobType.DATA, bid))
    assert sealed[0] == crypto.SCHEME_PUBLIC
    assert packfmt.open_blob(keys, BlobType.DATA, bid, sealed, len(data)) == data
    with pytest.raises(IntegrityError):  # bound to its type and ID like scheme 0
        packfmt.open_blob(keys, BlobType.TREE, bid, sealed)
    with pytest.raises(IntegrityError):  # another repository's data key
        packfmt.open_blob(MasterKeys.generate(), BlobType.DATA, bid, sealed)
    with pytest.raises(UnsupportedVersion):
        crypto.open_sealed(keys.data_key, sealed, crypto.blob_ad(BlobType.DATA, bid), "v")
    snap = Snapshot(1, b"\x01" * 32, [b"/p"], "h", "u")
    to_public = crypto.PublicSealer(keys.public_key())
    raw = snapfmt.encode_snapshot(snap, to_public)
    assert raw[0] == crypto.SCHEME_PUBLIC and snapfmt.decode_snapshot(raw, keys.data) == snap
    with pytest.raises(KeyNotPermitted, match="write-only"):  # the sealer cannot open it
        snapfmt.decode_snapshot(raw, to_public)
