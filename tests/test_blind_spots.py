"""Four small wrong turns the rest of the suite let through (issue 20), each caught here.

Each test names the deliberate bug ("mutant") it exists to kill; docs/reliability.md
shows each mutant applied by hand with the test failing on it.

- restore's skip-identical check must compare content, not only the size;
- ``restore --verify`` must report a file whose written bytes differ;
- ``check --read-data`` must say a pack does not hash to its name;
- a periodic index file (every 32 packs) must come after every pack it names.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.repo.packwriter import INDEX_EVERY_PACKS
from tests.independent.format import open_index
from tests.independent.repository import open_keys
from tests.support.cli import Result, run_cas
from tests.support.repos import PASSWORD, new_repo


def _json(result: Result, code: int = 0) -> Any:
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    return result.json()


def _one_file_snapshot(tmp_path: Path, content: bytes) -> tuple[str, Path, Path]:
    """A repository holding one snapshot of a directory with one file ``f``."""
    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(content)
    _json(run_cas("-r", repo, "--json", "init"))
    _json(run_cas("-r", repo, "--json", "backup", src))
    return str(repo), src, tmp_path / "out"


# -- restore: skip-identical compares content ------------------------------------------


def test_restore_rewrites_a_same_size_file_whose_content_differs(tmp_path: Path) -> None:
    """Mutant killed: ``Restorer._identical`` answering yes once the sizes agree (its
    digest comparison made always true).  The file is overwritten with other bytes of
    the same size and given back its original mtime, so only content tells them apart."""
    repo, src, out = _one_file_snapshot(tmp_path, b"AAAA")
    _json(run_cas("-r", repo, "--json", "restore", "latest", "--target", out))
    restored = out / str(src).lstrip("/") / "f"
    assert restored.read_bytes() == b"AAAA"
    st = restored.stat()
    restored.write_bytes(b"BBBB")
    os.utime(restored, ns=(st.st_atime_ns, st.st_mtime_ns))

    again = _json(run_cas("-r", repo, "--json", "restore", "latest", "--target", out))
    assert restored.read_bytes() == b"AAAA"
    assert (again["summary"]["files_restored"], again["summary"]["files_unchanged"]) == (1, 0)
    # and a file that really is identical is still skipped
    third = _json(run_cas("-r", repo, "--json", "restore", "latest", "--target", out))
    assert (third["summary"]["files_restored"], third["summary"]["files_unchanged"]) == (0, 1)


# -- restore --verify reports a mismatch ---------------------------------------------------

# A storage that does not keep what it is given: the first write of the marked content
# lands with its first byte changed (installed in every cas process, writers included).
_LOSSY_DISK = """
import os
_real_pwrite = os.pwrite
def _lossy_pwrite(fd, data, offset, _real=_real_pwrite):
    head = bytes(data[:8])
    if head == b"LOSSYDSK":
        os.pwrite = _real
        return _real(fd, b"X" + bytes(data[1:]), offset)
    return _real(fd, data, offset)
os.pwrite = _lossy_pwrite
"""


def test_restore_verify_reports_a_file_the_disk_did_not_keep(tmp_path: Path) -> None:
    """Mutant killed: ``Restorer._verify`` never finding a mismatch.  The target's
    storage changes one byte of the file as it is written; without ``--verify`` the
    restore cannot know (exit 0, the file wrong), with it the file is reported."""
    content = b"LOSSYDSK" + random.Random(1).randbytes(100_000)
    repo, src, out = _one_file_snapshot(tmp_path, content)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_LOSSY_DISK)
    lossy = {"PYTHONPATH": str(site)}

    blind = _json(run_cas("-r", repo, "--json", "restore", "latest", "--target", out, env=lossy))
    restored = out / str(src).lstrip("/") / "f"
    assert restored.read_bytes() == b"X" + content[1:]  # the fault happened
    assert blind["warnings"] == []

    checked = run_cas(
        "-r", repo, "--json", "restore", "latest", "--target", tmp_path / "out2", "--verify",
        env=lossy,
    )  # fmt: skip
    assert checked.code != 0 and "Traceback" not in checked.err
    assert "content differs from the snapshot after writing" in checked.out + checked.err
    assert "/f" in checked.out + checked.err
    # and on a storage that keeps what it is given, --verify passes
    good = _json(
        run_cas("-r", repo, "--json", "restore", "latest", "--target", tmp_path / "o3", "--verify")
    )
    assert good["summary"]["verified"] == 1 and good["warnings"] == []


# -- check --read-data names a pack that does not hash to its name --------------------------


@pytest.mark.damaged_repo_ok("a pack overwritten with another pack's bytes, for check to name")
def test_read_data_says_a_pack_does_not_hash_to_its_name(tmp_path: Path) -> None:
    """Mutant killed: reading whole packs without checking their SHA-256 name
    (``read_pack`` without ``read_verified``).  One pack's file is replaced by another
    valid pack's bytes: its header and blobs open, only the name tells."""
    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    rnd = random.Random(2)
    for i in range(6):
        (src / f"f{i}").write_bytes(rnd.randbytes(400_000))
    _json(run_cas("-r", repo, "--json", "init", "--pack-size", str(1 << 20)))
    _json(run_cas("-r", repo, "--json", "backup", src))
    packs = sorted((p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.name)
    data_packs = [p for p in packs if p.stat().st_size > 500_000]
    assert len(data_packs) >= 2
    victim, other = data_packs[0], data_packs[1]
    victim.chmod(0o600)
    victim.write_bytes(other.read_bytes())

    for workers in ("0", "2"):
        found = _json(
            run_cas("-r", repo, "--json", "check", "--read-data", "--workers", workers), code=1
        )
        damaged = [f for f in found["findings"] if f["kind"] == "pack_damaged"]
        assert [f["object"] for f in damaged] == [f"data/{victim.name[:2]}/{victim.name}"]
        assert "does not match its name" in damaged[0]["message"], damaged


# -- a periodic index file comes after the packs it names -------------------------------------


class _Recording:
    """A storage that remembers the order in which objects were written."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()
        self.order: list[str] = []
        self.objects: dict[str, bytes] = {}

    def write(self, name: str, data: bytes, **options: Any) -> None:
        self.inner.write(name, data, **options)
        self.order.append(name)
        self.objects[name] = bytes(data)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


class _Objects:
    """The recorded objects as a store for the independent reader."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def list(self, prefix: str) -> list[str]:
        return sorted(n for n in self.objects if n.startswith(prefix + "/"))

    def read(self, name: str) -> bytes:
        return self.objects[name]


def test_every_index_file_is_written_after_the_packs_it_names() -> None:
    """Mutant killed: a pack reported stored (and so indexed) before it is written, which
    puts the periodic index file written at the 32nd pack ahead of that pack (spec §14.1
    rule 1).  Only a slow crash test saw it; here the order of writes is recorded."""
    backend = _Recording()
    backend.create()
    repo = new_repo(backend)  # type: ignore[arg-type]  # 1 MiB packs
    rnd = random.Random(3)
    for _ in range((INDEX_EVERY_PACKS + 4) * 16):
        repo.save_blob(BlobType.DATA, rnd.randbytes(64 << 10))
    repo.flush()

    keys, _ = open_keys(_Objects(backend.objects), PASSWORD)
    index_names = [n for n in backend.order if n.startswith("index/")]
    assert len(index_names) >= 2  # a periodic one and the final one
    for name in index_names:
        written_before = set(backend.order[: backend.order.index(name)])
        packs = open_index(backend.objects[name], keys.index).packs
        assert packs
        for pid in packs:
            assert f"data/{pid.hex()[:2]}/{pid.hex()}" in written_before, (name, pid.hex())


def test_the_recording_store_sees_every_write() -> None:
    """The double above hides nothing: what it records is what the memory store holds."""
    backend = _Recording()
    backend.create()
    repo = new_repo(backend)  # type: ignore[arg-type]
    repo.save_blob(BlobType.DATA, b"x")
    repo.flush()
    stored = {o.name for p in ("keys", "index", "data") for o in backend.inner.list(p)}
    assert stored | {"config"} == set(backend.order)
