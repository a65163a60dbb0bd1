"""What a backup worker maps: fastcdc (and the click and hashlib it imports) only for a
``fastcdc-2016-permuted`` repository, and one OpenSSL, not two, for the pack names."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from cas import ids
from cas.chunking.chunker import PERMUTED, WINDOW_AES, ChunkerParams, make_chunker
from cas.crypto import MasterKeys


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True
    )
    return done.stdout.strip()


def test_a_backup_worker_imports_neither_fastcdc_nor_click() -> None:
    out = _run(
        "import sys, cas.backup.worker; "
        "print(sorted(m for m in ('fastcdc', 'click', 'hashlib', '_hashlib') if m in sys.modules))"
    )
    assert out == "[]"


def test_the_permuted_chunker_still_loads_fastcdc() -> None:
    keys = MasterKeys.generate()
    data = bytes(range(256)) * 4096
    for algorithm in (PERMUTED, WINDOW_AES):
        params = ChunkerParams(4096, 16384, 65536, algorithm)
        cuts = make_chunker(keys, params).cut_points(data)
        assert cuts[-1] == len(data) and len(cuts) > 1


def test_sha256_from_the_loaded_openssl_gives_the_same_digests() -> None:
    out = _run(
        "import sys\n"
        "from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n"
        "from cas import ids\n"
        "h = ids.new_sha256(b'abc'); h.update(memoryview(b'def')); h.update(bytearray(1 << 20))\n"
        "print(type(h).__name__, '_hashlib' in sys.modules, h.hexdigest(), h.digest().hex(),"
        " ids.storage_id(b'').hex(), ids.new_sha256().hexdigest())"
    )
    kind, loaded, hexed, digest, empty, empty2 = out.split()
    want = hashlib.sha256(b"abcdef" + bytes(1 << 20)).hexdigest()
    assert (kind, loaded) == ("_RustSha256", "False")
    assert hexed == digest == want
    assert empty == empty2 == hashlib.sha256(b"").hexdigest()
    # in a process that has hashlib (this one), hashlib's own
    assert ids.new_sha256(b"abc").hexdigest() == hashlib.sha256(b"abc").hexdigest()
