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


def test_a_chunking_worker_maps_one_openssl_and_not_cryptography() -> None:
    out = _run(
        "import sys\n"
        "import cas.backup.worker\n"
        "from cas import ids\n"
        "from cas.chunking.chunker import ChunkerParams, make_chunker\n"
        "from cas.crypto import MasterKeys\n"
        "params = ChunkerParams(4096, 16384, 65536)\n"
        "cuts = make_chunker(MasterKeys.generate(), params).cut_points(bytes(range(256)) * 4096)\n"
        "h = ids.new_sha256(b'abc'); h.update(memoryview(b'def')); h.update(bytearray(1 << 20))\n"
        "maps = {line.split()[-1] for line in open('/proc/self/maps') if '/' in line}\n"
        "ssl = sorted(p for p in maps if 'libcrypto' in p or 'cryptography' in p)\n"
        "print(len(cuts) > 1, any(m.startswith('cryptography') for m in sys.modules),"
        " type(h).__module__, h.hexdigest(), len(ssl))"
    )
    cut, crypto, module, hexed, openssls = out.split()
    assert (cut, crypto, module, openssls) == ("True", "False", "_hashlib", "1")
    assert hexed == hashlib.sha256(b"abcdef" + bytes(1 << 20)).hexdigest()
    assert ids.new_sha256(b"abc").hexdigest() == hashlib.sha256(b"abc").hexdigest()
