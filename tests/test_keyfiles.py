"""Key files that a storage provider cannot turn against a client (spec §4, issue 18):
writers refuse weak KDF costs, version 2 binds every member to the seal, version 1
files stay readable, and readers bound what planted key files cost them."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.pwhash
import pytest

from cas import crypto
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.errors import EXIT_USAGE, FormatError, IntegrityError, WrongPassword
from cas.format import keyfile as keyfmt
from cas.ids import storage_id
from cas.repo import keyring, layout
from cas.repo.connect import RepoOptions, open_on, open_repository, open_storage
from tests.support.cli import run_cas
from tests.support.repos import PASSWORD, cheap_kdf, new_repo

KEYS = crypto.MasterKeys.generate()
INFO = dict(created="2024-01-01T00:00:00Z", hostname="h", username="u")


# -- writers refuse weak costs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ops", "mem"),
    [(1, 8 << 20), (15, 32 << 20), (1, 256 << 20), (64, 8 << 20), (17, 32 << 20), (1, 2 << 30)],
)
def test_writers_refuse_costs_below_the_minimum_or_above_the_ceilings(ops: int, mem: int) -> None:
    with pytest.raises(crypto.WeakKdf) as info:
        keyfmt.create(KEYS, b"pw", crypto.KdfParams.new(ops, mem), **INFO)
    assert info.value.exit_code == EXIT_USAGE and "\n" not in str(info.value)


@pytest.mark.parametrize(("ops", "mem"), [(16, 32 << 20), (8, 64 << 20), (1, 512 << 20)])
def test_writers_accept_the_minimum_and_more(ops: int, mem: int) -> None:
    crypto.check_writer_costs(crypto.KdfParams.new(ops, mem))  # no derivation needed


def test_only_the_explicit_test_switch_lowers_the_minimum() -> None:
    kf, _ = keyfmt.create(KEYS, b"pw", crypto.KdfParams.for_tests(1, 8 << 20), **INFO)
    assert keyfmt.unlock(kf, b"pw") == KEYS
    with pytest.raises(crypto.WeakKdf):  # the ceilings hold even for tests
        crypto.check_writer_costs(crypto.KdfParams.for_tests(17, 8 << 20))


def test_the_cli_refuses_weak_costs_without_the_test_switch(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    off = {"CAS_TEST_WEAK_KDF": "0"}  # the suite's cheap CAS_KDF_* costs stay set
    r = run_cas("-r", repo, "init", env=off)
    assert r.code == EXIT_USAGE, r
    assert r.err.strip().count("\n") == 0 and "KDF costs too weak" in r.err, r.err
    assert not (repo / "config").exists() and not (repo / "keys").exists()
    r = run_cas("-r", repo, "init", "--json", env=off)
    assert r.code == EXIT_USAGE and "too weak" in r.err
    assert run_cas("-r", repo, "init").code == 0  # with the switch, as the suite runs
    pw_file = tmp_path / "pw"
    pw_file.write_text("another password\n")
    for cmd in (["key", "add"], ["key", "passwd"]):
        r = run_cas("-r", repo, *cmd, "--new-password-file", pw_file, env=off)
        assert r.code == EXIT_USAGE and "too weak" in r.err, (cmd, r)
    assert len(list((repo / "keys").iterdir())) == 1  # nothing written
    over = {"CAS_KDF_OPSLIMIT": "17", "CAS_KDF_MEMLIMIT": str(32 << 20)}
    r = run_cas("-r", repo, "key", "add", "--new-password-file", pw_file, env=over)
    assert r.code == EXIT_USAGE and "out of range" in r.err, r


def test_the_cli_default_costs_are_accepted(tmp_path: Path) -> None:
    env = {"CAS_TEST_WEAK_KDF": "0", "CAS_KDF_OPSLIMIT": "", "CAS_KDF_MEMLIMIT": ""}
    r = run_cas("-r", tmp_path / "repo", "init", "--json", env=env)
    assert r.code == 0, r
    (key,) = (tmp_path / "repo" / "keys").iterdir()
    doc = json.loads(key.read_bytes())
    assert doc["version"] == 2 and "check" in doc
    assert (doc["kdf"]["opslimit"], doc["kdf"]["memlimit"]) == (16, 32 << 20)


# -- version 2 binds every member ---------------------------------------------------------


def _rewrite_key(backend: MemoryBackend | LocalBackend, **changes: object) -> None:
    """Change members of the one key file and store it under its new name, as a
    storage provider could."""
    (kid,) = keyring.key_ids(backend)
    doc = json.loads(backend.read(layout.key_name(kid)))
    for k, v in changes.items():
        if isinstance(v, dict):
            doc[k] = {**doc[k], **v}
        else:
            doc[k] = v
    raw = (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()
    backend.delete(layout.key_name(kid))
    backend.write(layout.key_name(storage_id(raw)), raw)


@pytest.mark.parametrize(
    "change",
    [
        {"hostname": "elsewhere"},
        {"username": "mallory"},
        {"created": "2001-01-01T00:00:00Z"},
        {"x_unknown": "ignored"},  # unknown members are not bound: still opens
    ],
)
def test_altered_members_read_as_tampering(change: dict[str, object]) -> None:
    backend = MemoryBackend()
    new_repo(backend)
    _rewrite_key(backend, **change)
    if "x_unknown" in change:
        open_repository(backend, PASSWORD)
        return
    with pytest.raises(keyfmt.KeyFileAltered, match="key file altered") as info:
        open_repository(backend, PASSWORD)
    assert isinstance(info.value, IntegrityError)  # exit 1, not the wrong-password 12
    with pytest.raises(WrongPassword):  # a wrong password still reads as one
        open_repository(backend, b"not the password")


def test_altered_type_and_costs_never_open() -> None:
    backend = MemoryBackend()
    new_repo(backend)
    _rewrite_key(backend, type="write-only")  # a known type now (§4.4), and bound to the seal
    with pytest.raises(keyfmt.KeyFileAltered, match="type"):
        open_repository(backend, PASSWORD)
    backend = MemoryBackend()
    new_repo(backend)
    _rewrite_key(backend, kdf={"opslimit": 2})  # another KEK: the check value fails
    with pytest.raises(WrongPassword):
        open_repository(backend, PASSWORD)


@pytest.mark.damaged_repo_ok("alters a key file's members to see check report it")
def test_altered_members_are_reported_by_the_cli(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init").code == 0
    _rewrite_key(LocalBackend(str(repo)), hostname="\x1b[2Jevil")
    r = run_cas("-r", repo, "snapshots")
    assert r.code == 1 and r.err.startswith("cas: key file altered"), r
    assert r.err.strip().count("\n") == 0 and "\x1b" not in r.err


def test_version_1_key_files_stay_readable() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    _, raw = keyfmt.create(repo.keys, b"old password", cheap_kdf(), version=1, **INFO)
    assert json.loads(raw)["version"] == 1 and "check" not in json.loads(raw)
    backend.write(layout.key_name(storage_id(raw)), raw)
    old = open_repository(backend, b"old password")
    assert old.key_id == storage_id(raw) and old.config == repo.config
    infos = {k.key_id: k for k in keyring.list_keys(backend, old.key_id)}
    assert infos[storage_id(raw)].hostname == "h"
    # a version 1 file's members are not bound (documented): an edit still opens
    doc = json.loads(raw)
    doc["hostname"] = "edited"
    edited = (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()
    backend.write(layout.key_name(storage_id(edited)), edited)
    backend.delete(layout.key_name(storage_id(raw)))
    assert open_repository(backend, b"old password").key_id == storage_id(edited)


# -- readers bound what planted key files cost --------------------------------------------


def _plant(backend: MemoryBackend | LocalBackend, ops: int, mem: int, password: bytes) -> bytes:
    """A key file of another key set, as a storage provider could write one; not derived."""
    kf = keyfmt.KeyFile(
        crypto.KdfParams(bytes(16), ops, mem), b"\0" * 60, "c", "h", "u", check=bytes(16)
    )
    raw = keyfmt.encode_keyfile(kf)
    backend.write(layout.key_name(storage_id(raw)), raw)
    return storage_id(raw)


def _count_derivations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The memlimit of every Argon2id run (a costly planted file must never be run)."""
    runs: list[int] = []
    real = nacl.pwhash.argon2id.kdf

    def counted(size: int, pw: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
        runs.append(memlimit)
        assert memlimit <= 8 << 20, "a planted costly key file was derived"
        return bytes(real(size, pw, salt, opslimit=opslimit, memlimit=memlimit))

    monkeypatch.setattr(nacl.pwhash.argon2id, "kdf", counted)
    return runs


def test_planted_costly_key_files_are_tried_last(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MemoryBackend()
    new_repo(backend)
    for _ in range(3):
        _plant(backend, crypto.MAX_OPSLIMIT, crypto.MAX_MEMLIMIT, PASSWORD)
    runs = _count_derivations(monkeypatch)
    open_repository(backend, PASSWORD)
    assert len(runs) == 1


def test_at_most_32_key_files_are_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MemoryBackend()
    new_repo(backend)
    for i in range(40):  # each costlier than the real one, so tried after it
        _plant(backend, 2, (8 << 20) - 1024 * i, PASSWORD)
    runs = _count_derivations(monkeypatch)
    with pytest.raises(WrongPassword, match="only 32 of the 41 key files were tried"):
        open_repository(backend, b"wrong")
    assert len(runs) == keyring.MAX_TRIED
    runs.clear()
    open_repository(backend, PASSWORD)  # the real one is the cheapest: tried first
    assert len(runs) == 1


def test_an_oversized_key_file_is_not_read() -> None:
    backend = MemoryBackend()
    new_repo(backend)
    junk = b"{" + b" " * (keyfmt.MAX_SIZE + 1)
    backend.write(layout.key_name(storage_id(junk)), junk)
    open_repository(backend, PASSWORD)
    damaged: dict[bytes, str] = {}
    keyring.list_keys(backend, b"", damaged)
    assert "larger than 64 KiB" in damaged[storage_id(junk)]


def test_the_key_that_opened_last_is_tried_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = str(tmp_path / "repo")
    options = RepoOptions(cache_dir=str(tmp_path / "cache"))
    repo = new_repo(LocalBackend(location))
    # A second, costlier key: ordered after the first by cost, so found second.
    second = repo.add_key(b"second", crypto.KdfParams.for_tests(2, 8 << 20))
    runs = _count_derivations(monkeypatch)
    assert open_on(open_storage(location, options), lambda: b"second", options).key_id == second
    assert len(runs) == 2
    runs.clear()
    assert open_on(open_storage(location, options), lambda: b"second", options).key_id == second
    assert len(runs) == 1  # remembered in the cache of the location
    runs.clear()
    open_on(open_storage(location, options), lambda: PASSWORD, options)
    assert len(runs) == 2  # a wrong note costs one derivation, nothing else


# -- the decoder's bounds (each written against a mutant, docs/reliability.md §8.3) -------


def _key_file_doc() -> dict[str, object]:
    _, raw = keyfmt.create(KEYS, PASSWORD, cheap_kdf(), **INFO)
    doc: dict[str, object] = json.loads(raw)
    return doc


def test_a_key_file_of_exactly_the_size_bound_is_read() -> None:
    """§4.1: at most 64 KiB.  A key file padded with JSON white space to exactly that is
    read; one byte more is not."""
    raw = json.dumps(_key_file_doc()).encode()
    exact = raw + b" " * (keyfmt.MAX_SIZE - len(raw))
    assert keyfmt.decode_keyfile(exact).check is not None
    with pytest.raises(FormatError, match="larger than 64 KiB"):
        keyfmt.decode_keyfile(exact + b" ")


@pytest.mark.parametrize(
    "check",
    [
        lambda c: base64.b64encode(base64.b64decode(c)[:15]).decode(),
        lambda c: base64.b64encode(base64.b64decode(c) + b"x").decode(),
        lambda c: c[:4] + "!" + c[4:],
        lambda c: c + "\n",
    ],
    ids=["short", "long", "not-base64", "newline"],
)
def test_a_check_value_not_of_its_size_or_not_strict_base64_is_refused(
    check: Callable[[str], str],
) -> None:
    """The version 2 check value is 16 bytes in strict base64 (§4.1): anything else is a
    malformed key file when it is read, not a wrong password when it is opened."""
    doc = _key_file_doc()
    assert isinstance(doc["check"], str) and len(base64.b64decode(doc["check"])) == 16
    doc["check"] = check(doc["check"])
    with pytest.raises(FormatError):
        keyfmt.decode_keyfile(json.dumps(doc).encode())


@pytest.mark.parametrize("member", ["salt", "keys"])
def test_the_salt_and_the_sealed_keys_are_strict_base64(member: str) -> None:
    """A character outside base64 in the KDF salt or the sealed keys makes a malformed
    key file (``binascii`` would otherwise drop it and read the rest)."""
    doc: dict[str, Any] = _key_file_doc()
    where = doc["kdf"] if member == "salt" else doc
    assert keyfmt.decode_keyfile(json.dumps(doc).encode())
    where[member] = where[member][:4] + "!" + where[member][4:]
    with pytest.raises(FormatError):
        keyfmt.decode_keyfile(json.dumps(doc).encode())
