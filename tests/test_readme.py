"""The README's examples run (issue 15, acceptance): each fenced ```sh block is run with
bash under ``set -euo pipefail``, against a local repository or, for ``s3://``
locations, moto's S3 server on 127.0.0.1.

A block that uses a repository it does not make (no ``CAS_REPOSITORY=`` in it) gets a
local one holding a backup of the home directory.  A block right after
``<!-- not run by tests/test_readme.py: why -->`` is left out (the install step, the
test suite itself).  What cannot run as written is mapped, each mapping in MAPPINGS
with its reason; everything else runs as the README says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import sweep
from tests.support.cli import TEST_ENV
from tests.support.mounts import fuse_usable

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(autouse=True)
def _sweep_password() -> None:
    """The README's examples set their own password: the teardown sweep
    (tests/support/sweep.py) opens their repositories with it."""
    for password in (
        "correct-horse-battery-staple",
        "a password of mine",
        "a password",
        "another password",
        "a write-only key's password",
    ):
        sweep.knows_password(password)


SKIP = re.compile(r"<!-- not run by tests/test_readme\.py: (.+?) -->\n```sh\n")
BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)

# (what the README says, what the test runs, why)
MAPPINGS = [
    ("s3://my-bucket/", "s3://$BUCKET/", "a fresh bucket on moto's server (CAS_S3_ENDPOINT)"),
    ("/mnt/usb/cas", "$SCRATCH/usb/cas", "no USB disk in a test"),
    ("cas mount /mnt/cas", "mount_briefly $SCRATCH/mnt", "mount runs until unmounted"),
    ("/home/me", "$HOME", "the test's home directory is not /home/me"),
    ("/tmp/", "$SCRATCH/", "each run has its own scratch directory"),
    ("4374ded6", "$(readme_id pack)", "a pack of this repository (the README's is an example)"),
    ("9d6c70f8", "$(readme_id blob)", "a blob of this repository"),
    ("1a2b3c4d", "$(readme_id snapshot)", "a snapshot of this repository"),
    (":/srv ", ":$HOME ", "the test backs up its home, not /srv"),
    ("sudo ", "", "the test runs as root (skipped otherwise)"),
]

# Shell functions the mappings use.
PRELUDE = r"""
set -euo pipefail
mount_briefly() {
    mkdir -p "$1"
    cas mount "$1" > "$SCRATCH/mount.out" &
    local pid=$!
    until grep -q " $1 " /proc/self/mountinfo; do
        kill -0 $pid  # it failed: set -e stops here
        sleep 0.1
    done
    fusermount3 -u "$1"
    wait $pid
}
readme_id() { "$PYTHON" "$SCRATCH/../ids.py" "$1"; }
"""

# Prints the ID prefix of a snapshot, pack or blob of $CAS_REPOSITORY.
IDS = r"""
import os, sys
from cas import repo as repo_pkg
from cas.backend import S3Options
from cas.repo import RepoOptions
from cas.cli.common import read_password_file

options = RepoOptions(
    backend=(S3Options(endpoint=os.environ.get("CAS_S3_ENDPOINT"), path_style=True),),
    cache=False,
)
password = os.environ.get("CAS_PASSWORD")
r = repo_pkg.open(
    os.environ["CAS_REPOSITORY"],
    lambda: password.encode() if password else read_password_file(os.environ["CAS_PASSWORD_FILE"]),
    options,
)
kind = sys.argv[1]
if kind == "snapshot":
    print(next(r.iter_snapshots())[0].hex()[:8])
else:
    for f in r.active_index_files().values():
        for pid, entries in sorted(f.packs.items()):
            if entries[0].type.name == "DATA":
                print((pid if kind == "pack" else entries[0].blob_id).hex()[:8])
                sys.exit(0)
r.close()
"""


def blocks() -> list[tuple[int, str, str | None]]:
    """(line number, text, why it is not run) of every ```sh block."""
    text = README.read_text()
    why_not = {m.end(): m.group(1) for m in SKIP.finditer(text)}  # at the block's text
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1), why_not.get(m.start(1)))
        for m in BLOCK.finditer(text)
    ]


def mapped(block: str) -> str:
    for said, run, _ in MAPPINGS:
        block = block.replace(said, run)
    return block


def test_every_block_is_run_or_says_why_not() -> None:
    found = blocks()
    assert len(found) >= 4
    assert all(why for _, _, why in found if why is not None)
    run = [b for b in found if b[2] is None]
    assert len(run) >= 3
    assert any("s3://" in text for _, text, _ in run)


def _home(home: Path) -> None:
    """What the README's examples find in ~: files, photos, a password, other.txt,
    laptop.txt."""
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "cat.jpg").write_bytes(os.urandom(50_000))
    (home / "notes.odt").write_bytes(b"notes")
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    (home / ".config" / "cas").mkdir(parents=True)
    (home / ".config" / "cas" / "password").write_text("a password of mine\n")


@pytest.mark.parametrize(
    "line", [b[0] for b in blocks() if b[2] is None], ids=lambda n: f"README.md:{n}"
)
def test_the_readme_example_runs(line: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    text = next(t for n, t, _ in blocks() if n == line)
    if "sudo " in text and os.geteuid() != 0:
        pytest.skip("the example uses sudo; the test maps it only as root")
    if "cas mount" in text and not fuse_usable():
        pytest.skip("the example mounts and FUSE is not usable here")
    home, scratch, bin_dir = tmp_path / "home" / "me", tmp_path / "scratch", tmp_path / "bin"
    _home(home)
    scratch.mkdir()
    bin_dir.mkdir()
    (tmp_path / "ids.py").write_text(IDS)
    wrapper = bin_dir / "cas"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cas "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    env.update(TEST_ENV)
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        HOME=str(home),
        SCRATCH=str(scratch),
        PYTHON=sys.executable,
        # cas's own state (check --max-age's record) outside the home the examples back
        # up, or `check --against ~` would find it; TEST_ENV does the same for the cache
        XDG_CACHE_HOME=str(scratch / "xdg-cache"),
    )
    if "s3://" in text:
        server = request.getfixturevalue("s3_server")
        env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
        env.pop("AWS_ENDPOINT_URL", None)
        bucket = f"readme-{os.urandom(6).hex()}"
        env.update(BUCKET=bucket, CAS_S3_ENDPOINT=server, CAS_S3_PATH_STYLE="1")
    work = home / "work"
    work.mkdir()
    (work / "other.txt").write_text("another password\n")
    (work / "laptop.txt").write_text("a write-only key's password\n")
    if "CAS_REPOSITORY=" not in text:  # it uses one: a local one with a backup of ~
        env.update(CAS_REPOSITORY=str(scratch / "repo"), CAS_PASSWORD="a password")
        for args in (["init"], ["backup", str(home)]):
            made = subprocess.run([wrapper, *args], env=env, capture_output=True, timeout=600)
            assert made.returncode == 0, made.stderr
    script = PRELUDE + mapped(text)
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, timeout=600
    )
    assert proc.returncode == 0, (script, proc.stdout.decode(), proc.stderr.decode())
    assert b"Traceback" not in proc.stderr
