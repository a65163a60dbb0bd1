"""A user who is not root restores a tree (issue 15, item 5): owners the system will not
let them set are skipped without a warning and the exit code is 0, as with restic,
``cp -a`` and ``rsync -a``; ``--numeric-owner`` asks for owners, so there they warn.

A real user is created for the test (CI runs as root); without root it skips.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Result, run_cas

PASSWORD = "test-password"


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root")
    if shutil.which("useradd") is None:
        pytest.skip("no useradd here")
    name = f"cas{uuid.uuid4().hex[:10]}"
    made = subprocess.run(
        ["useradd", "--no-create-home", "--user-group", "--shell", "/bin/false", name],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot create a user: {made.stderr.decode().strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def _as_user(who: pwd.struct_passwd, base: Path, modules: list[str], *args: str | Path) -> Result:
    """``cas ARGS`` run as ``who``.  The interpreter may live where other users cannot
    reach (a pyenv under /root), so it starts as root, loads ``modules`` (those the
    same command loaded as root) and then gives up root for good before the command
    runs.  No helper processes: they would start a new interpreter."""
    prelude = (
        "import importlib, os\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        pass\n"
        f"os.setgroups([]); os.setgid({who.pw_gid}); os.setuid({who.pw_uid})\n"
        "assert os.geteuid() != 0 and os.getuid() != 0"
    )
    env = {
        "HOME": str(base),
        "CAS_CACHE_DIR": str(base / "cache"),
        "XDG_STATE_HOME": str(base / "state"),  # the user's own client state
        "CAS_WORKERS": "0",
    }
    return run_cas(*args, password=PASSWORD, env=env, cwd=base, prelude=prelude)


def _restore_as_root(base: Path, repo: Path, target: Path) -> list[str]:
    """Restore as root (owners all kept, exit 0: unchanged); the modules it loaded."""
    listing = base / "modules"
    hook = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(listing)!r}, 'w').write('\\n'.join(sys.modules)))"
    )
    env = {"CAS_WORKERS": "0"}
    r = run_cas("-r", repo, "restore", "latest", "-t", target, env=env, prelude=hook)
    assert r.code == 0 and r.err == "", r.err
    return [m for m in listing.read_text().split("\n") if m != "__main__" and m != "cas.__main__"]


def _tree(root: Path, who: pwd.struct_passwd) -> None:
    """The user's files, and some that belong to others (root, a uid nobody has)."""
    (root / "mine" / "deep").mkdir(parents=True)
    (root / "mine" / "notes.txt").write_bytes(b"my notes\n" * 100)
    (root / "mine" / "deep" / "data.bin").write_bytes(os.urandom(300_000))
    os.symlink("notes.txt", root / "mine" / "link")
    (root / "roots").mkdir()
    (root / "roots" / "config").write_bytes(b"root's file\n")
    (root / "stranger.txt").write_bytes(b"a file of uid 43210\n")
    os.chmod(root / "mine" / "notes.txt", 0o640)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), who.pw_uid, who.pw_gid)
    os.lchown(root, who.pw_uid, who.pw_gid)
    for p in (root / "roots", root / "roots" / "config"):
        os.lchown(p, 0, 0)
    os.lchown(root / "stranger.txt", 43210, 43210)


def _same_tree(a: Path, b: Path) -> list[str]:
    """Differences in names, types, contents, modes and mtimes (not owners)."""
    diffs = []
    for dirpath, dirnames, filenames in os.walk(a):
        rel = Path(dirpath).relative_to(a)
        for name in [*dirnames, *filenames]:
            x, y = a / rel / name, b / rel / name
            sx, sy = os.lstat(x), os.lstat(y)
            if (sx.st_mode, sx.st_mtime_ns) != (sy.st_mode, sy.st_mtime_ns):
                diffs.append(f"{rel / name}: mode/mtime")
            elif stat.S_ISREG(sx.st_mode) and x.read_bytes() != y.read_bytes():
                diffs.append(f"{rel / name}: content")
            elif stat.S_ISLNK(sx.st_mode) and os.readlink(x) != os.readlink(y):
                diffs.append(f"{rel / name}: target")
        for name in os.listdir(b / rel):
            if not os.path.lexists(a / rel / name):
                diffs.append(f"{rel / name}: extra")
    return diffs


def test_a_user_restores_without_owner_warnings(user: pwd.struct_passwd) -> None:
    base = Path(tempfile.mkdtemp(prefix="cas-nonroot-"))
    try:
        os.chmod(base, 0o755)
        os.chown(base, user.pw_uid, user.pw_gid)
        src, repo = base / "src", base / "repo"
        src.mkdir()
        _tree(src, user)
        assert run_cas("-r", repo, "init", password=PASSWORD).code == 0
        r = run_cas("-r", repo, "backup", src, password=PASSWORD)
        assert r.code == 0, r.err
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(repo)], check=True)

        as_root = base / "as-root"
        modules = _restore_as_root(base, repo, as_root)
        assert _same_tree(src, as_root / str(src).lstrip("/")) == []
        owner = os.lstat(as_root / str(src).lstrip("/") / "stranger.txt")
        assert (owner.st_uid, owner.st_gid) == (43210, 43210)

        target = base / "target"
        r = _as_user(user, base, modules, "-r", repo, "restore", "latest", "--target", target)
        assert r.code == 0, r.err
        assert "warning" not in r.err and "owner" not in r.err, r.err
        restored = target / str(src).lstrip("/")
        assert _same_tree(src, restored) == []
        assert os.lstat(restored / "mine" / "notes.txt").st_uid == user.pw_uid
        assert os.lstat(restored / "roots" / "config").st_uid == user.pw_uid  # not root's

        # --numeric-owner asks for the recorded owners: those it cannot set are warned of
        again = base / "again"
        r = _as_user(
            user, base, modules, "-r", repo, "restore", "latest", "-t", again, "--numeric-owner"
        )
        assert r.code == 3, r.err
        assert "could not restore owner of" in r.err and "stranger.txt" in r.err, r.err
        assert "notes.txt" not in r.err  # the user's own files need nothing
        assert _same_tree(src, again / str(src).lstrip("/")) == []
    finally:
        shutil.rmtree(base)
