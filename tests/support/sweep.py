"""After every test, the independent reader (tests/independent/) reads every repository the
test made or changed, local or on a loopback S3 server (issue 20, Deliver 3).

What is read, per repository (``read_repository``): the key files and the config
(with a password the test used), every index file, generation record, lock and
snapshot, every pack (header, tiling, every blob opened and re-hashed, entries
against the live index) and every snapshot's trees, each file rebuilt from its
blobs and checked against its sizes and whole-file digest.  Any departure from
spec/format.md fails the test at teardown.

Which repositories: a directory holding ``config`` and ``keys/`` anywhere under the
directories of the session's base temporary directory that appeared during the test
(its ``tmp_path``, ``mktemp`` directories), plus any ``-r``/``--to`` path a ``cas`` run of
the test named elsewhere; on S3, every repository (a ``config`` beside ``keys/``) in
a bucket, or a top-level prefix of a bucket, that appeared on a registered server
during the test.  Directories made by module- and session-scoped fixtures (templates
that tests copy or share) are read again whenever their objects change, and once
more when the fixture ends.

Cheap by design: the test KDF, each pack read once, and a repository whose objects
(relative names, sizes and mtimes on disk, ETags on S3) are those of one already read
is not read again (a template's copies before the test changes them).

A test that damages a repository on purpose says so with
``@pytest.mark.damaged_repo_ok("why")``: the reader still reads everything and its
refusals are counted, not raised.  A repository no password the test used opens
(a password typed at a prompt) fails the test too, until the test names the password
with ``knows_password``.  ``CAS_TEST_SWEEP=0`` turns the sweep off (to measure it);
``CAS_TEST_SWEEP_LOG=FILE`` appends every refusal (and every marked test's outcome) to
FILE as the run goes.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.independent.format import BadPassword, Refused
from tests.independent.repository import (
    HEX_ID,
    LocalStore,
    S3Store,
    Store,
    open_keys,
    read_repository,
)

ENABLED = os.environ.get("CAS_TEST_SWEEP", "1") != "0"
LOG = os.environ.get("CAS_TEST_SWEEP_LOG")  # a file: every refusal, marked or not, one a line
# The passwords of tests/support (repos.py, cli.py) and of modules with their own.
DEFAULT_PASSWORDS = [b"test-password", b"crash-test-password", b"correct horse"]
PASSWORD_FILE_OPTIONS = {
    "--password-file",
    "--new-password-file",
    "--from-password-file",
    "--to-password-file",
}
REPO_OPTIONS = {"-r", "--repo", "--to", "--copy-keys-from"}
S3_FIXTURES = {"s3_server", "s3_client", "s3_bucket", "s3_any", "seaweed_server", "moto_iam"}


@dataclass
class Stats:
    """What the sweep did in this process (printed at the end with ``-s``/``-rA``)."""

    read: int = 0
    unchanged: int = 0
    refused_as_marked: int = 0
    unreadable: int = 0
    seconds: float = 0.0  # wall time of the reads
    cpu: float = 0.0  # this process's CPU time in them (steadier on a shared machine)
    total_cpu: float = 0.0  # and in the whole sweep (finding repositories, signatures)
    blobs: int = 0
    files: int = 0
    opted_out: dict[str, str] = field(default_factory=dict)


@dataclass
class _State:
    passwords: list[bytes] = field(default_factory=list)  # seen in the current test
    paths: set[Path] = field(default_factory=set)  # -r paths of the current test
    touched_s3: bool = False
    seen_top: set[str] = field(default_factory=set)
    shared_top: set[str] = field(default_factory=set)
    shared_repos: dict[Path, str] = field(default_factory=dict)  # repo -> owning fixture
    opened_with: dict[str, bytes] = field(default_factory=dict)
    good: set[tuple[Any, ...]] = field(default_factory=set)  # signatures read without refusal
    servers: dict[str, _Server] = field(default_factory=dict)


@dataclass
class _Server:
    client: Any
    shared: set[str]  # buckets where each test takes a prefix of its own
    buckets: set[str] = field(default_factory=set)
    seen: set[tuple[str, str]] = field(default_factory=set)  # (bucket, top-level prefix)


STATE = _State()
STATS = Stats()


# -- what the tests tell the sweep ----------------------------------------------------


def knows_password(password: str | bytes) -> None:
    """A password the current test gave cas some other way (a prompt, a command)."""
    pw = password.encode() if isinstance(password, str) else password
    if pw not in STATE.passwords:
        STATE.passwords.append(pw)


def _password_file(path: str) -> None:
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return
    knows_password(raw)
    knows_password(raw.rstrip(b"\r\n \t"))


def note_cli(args: list[str], env: dict[str, str]) -> None:
    """A ``cas`` run of the test: its passwords and the repositories it names."""
    for name in ("CAS_PASSWORD", "CAS_OTHER_PASSWORD"):
        if env.get(name):
            knows_password(env[name])
    if env.get("CAS_PASSWORD_FILE"):
        _password_file(env["CAS_PASSWORD_FILE"])
    locations = [env["CAS_REPOSITORY"]] if env.get("CAS_REPOSITORY") else []
    for opt, value in itertools.pairwise(args):
        if opt in PASSWORD_FILE_OPTIONS:
            _password_file(value)
        elif opt in REPO_OPTIONS:
            locations.append(value)
    for arg in args:
        for opt in (*PASSWORD_FILE_OPTIONS, *REPO_OPTIONS):
            if arg.startswith(opt + "=") and opt.startswith("--"):
                value = arg.split("=", 1)[1]
                (_password_file if opt in PASSWORD_FILE_OPTIONS else locations.append)(value)
    for loc in locations:
        if loc.startswith("s3://"):
            STATE.touched_s3 = True
        elif "://" not in loc:
            STATE.paths.add(Path(loc).absolute())


def serve(name: str, client: Any, shared: tuple[str, ...] = ()) -> None:
    """An S3 server whose buckets the sweep reads (``client`` may list every bucket);
    ``shared``: buckets where tests take a prefix each."""
    STATE.servers[name] = _Server(client, set(shared))
    _s3_new_roots(STATE.servers[name])  # what is there already is nobody's


def unserve(name: str) -> None:
    """The server stops."""
    STATE.servers.pop(name, None)


def signature(root: Path) -> tuple[Any, ...]:
    """What the sweep compares to know a local repository unchanged: take it before a
    test's own full read with the independent reader, and ``vouch`` for it after."""
    return _local_signature(root)


def vouch(sig: tuple[Any, ...]) -> None:
    """The test read the repository of ``sig`` whole with the independent reader (no
    refusal): the sweep does not read it again unless it changes."""
    STATE.good.add(sig)


# -- finding repositories ---------------------------------------------------------------


def _listdir(path: Path) -> list[tuple[str, bool]]:
    """(name, is a directory, not following links) of ``path``'s entries, read without
    moving its access time (O_NOATIME): tests compare the atimes of their source trees,
    and on relatime an old atime moves at the first read."""
    try:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME)
        except PermissionError:  # not the owner, and not root
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in os.scandir(fd)]
    except OSError:
        return []
    finally:
        os.close(fd)


def _local_repos(top: Path) -> list[Path]:
    out = []
    stack = [top]
    while stack:
        path = stack.pop()
        entries = _listdir(path)
        names = {n for n, _ in entries}
        if "config" in names and "keys" in names and _has_key_file(path):
            out.append(path)
            continue
        stack += [path / n for n, is_dir in sorted(entries, reverse=True) if is_dir]
    return out


def _has_key_file(root: Path) -> bool:
    """A repository, not a test's objects named ``config`` and ``keys/x`` (§2.1, §4)."""
    return any(HEX_ID.fullmatch(n) for n, _ in _listdir(root / "keys"))


def _local_signature(root: Path) -> tuple[Any, ...]:
    items = []
    stack = [Path()]
    while stack:
        rel = stack.pop()
        for name, is_dir in _listdir(root / rel):
            if is_dir:
                stack.append(rel / name)
                continue
            try:
                st = (root / rel / name).lstat()
            except OSError:
                continue
            items.append((str(rel / name), st.st_size, st.st_mtime_ns))
    return ("local", *sorted(items))


def _s3_new_roots(server: _Server) -> list[tuple[str, str]]:
    """(bucket, top-level prefix) pairs that appeared since the last look: every top of a
    new bucket, and new tops of the shared buckets (where tests take a prefix each)."""
    new = []
    for b in server.client.list_buckets().get("Buckets", []):
        bucket = b["Name"]
        if bucket in server.buckets and bucket not in server.shared:
            continue
        server.buckets.add(bucket)
        tops = {""}
        pages = server.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Delimiter="/"
        )
        for page in pages:
            tops.update(p["Prefix"] for p in page.get("CommonPrefixes", []))
        for top in sorted(tops):
            if (bucket, top) not in server.seen:
                server.seen.add((bucket, top))
                new.append((bucket, top))
    return new


def _s3_repos(client: Any, bucket: str, top: str) -> list[tuple[str, tuple[Any, ...]]]:
    """(prefix, signature) of every repository under ``top`` of ``bucket`` (for ``top``
    "", only one at the bucket's root)."""
    objects: list[tuple[str, str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=top):
        objects += [(o["Key"], o.get("ETag", ""), o["Size"]) for o in page.get("Contents", [])]
    keys = {k for k, _, _ in objects}
    out = []
    for key in sorted(keys):
        if key.rsplit("/", 1)[-1] != "config" or (top == "" and key != "config"):
            continue
        prefix = key[: -len("config")]
        named = [k[len(prefix) + 5 :] for k in keys if k.startswith(prefix + "keys/")]
        if not any(HEX_ID.fullmatch(n) for n in named):
            continue
        sig = tuple(sorted((k[len(prefix) :], e, s) for k, e, s in objects if k.startswith(prefix)))
        out.append((prefix.rstrip("/"), ("s3", *sig)))
    return out


# -- reading ------------------------------------------------------------------------------


def _candidates(key: str) -> list[bytes]:
    out = []
    for pw in [STATE.opened_with.get(key, b""), *reversed(STATE.passwords), *DEFAULT_PASSWORDS]:
        if pw and pw not in out:
            out.append(pw)
    return out


def _read(key: str, store: Store, signature: tuple[Any, ...]) -> str | None:
    """Read one repository; None if it passes, else what the reader refused."""
    if signature in STATE.good:
        STATS.unchanged += 1
        return None
    start, cpu = time.monotonic(), time.process_time()
    try:
        refusal: Refused | None = None
        for pw in _candidates(key):
            try:
                open_keys(store, pw)
            except BadPassword:
                continue
            except Refused as e:  # a damaged config, or a key file this reader refuses
                refusal = refusal or e
                continue
            view = read_repository(store, pw)
            STATE.opened_with[key] = pw
            STATE.good.add(signature)
            STATS.read += 1
            STATS.blobs += view.blobs_verified
            STATS.files += view.files_rebuilt
            return None
        if refusal is not None:
            raise refusal
        return f"{key}: no password the test used opens it (name it with sweep.knows_password)"
    except Refused as e:
        return f"{key}: {type(e).__name__}: {e}"
    except FileNotFoundError as e:  # gone while read (a test's process still removing it)
        return f"{key}: {e}"
    except PermissionError:  # a test of unreadable storage, run by a user other than root
        STATS.unreadable += 1
        return None
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "InvalidObjectState":
            raise
        STATS.unreadable += 1  # packs in an archive storage class: no GET without a restore
        return None
    finally:
        STATS.seconds += time.monotonic() - start
        STATS.cpu += time.process_time() - cpu


def _sweep_local(roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        if root.is_dir() and (root / "config").is_file():
            sig = _local_signature(root)
            problem = _read(str(root), LocalStore(root), sig)
            if problem:
                found.append(problem)
    return found


def _sweep_s3() -> list[str]:
    found = []
    for name, server in STATE.servers.items():
        for bucket, top in _s3_new_roots(server):
            for prefix, sig in _s3_repos(server.client, bucket, top):
                store = S3Store(server.client, bucket, prefix)
                problem = _read(f"{name}:s3://{bucket}/{prefix}", store, sig)
                if problem:
                    found.append(problem)
    return found


def _new_tops(base: Path) -> list[str]:
    try:
        names = set(os.listdir(base))
    except OSError:
        return []
    new = sorted(names - STATE.seen_top)
    STATE.seen_top.update(new)
    return [n for n in new if not (base / n).is_symlink()]  # pytest's "...current" links


# -- the hooks ----------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Iterator[None]:
    """Directories made by module- and session-scoped fixtures are shared: tests copy or
    change them, so their repositories are read again whenever they change."""
    if not ENABLED or fixturedef.scope == "function":
        yield
        return
    base = request.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    before = set(os.listdir(base))
    yield
    for top in sorted(set(os.listdir(base)) - before):
        STATE.shared_top.add(top)
        STATE.seen_top.add(top)
        for repo in _local_repos(base / top):
            STATE.shared_repos[repo] = fixturedef.argname


def pytest_fixture_post_finalizer(fixturedef: Any, request: pytest.FixtureRequest) -> None:
    """A shared fixture ends: its repositories are read a last time, then forgotten."""
    mine = [r for r, owner in STATE.shared_repos.items() if owner == fixturedef.argname]
    if not mine or fixturedef.scope == "function":
        return
    for r in mine:
        del STATE.shared_repos[r]
    problems = _sweep_local(mine)
    assert not problems, "independent reader: " + "; ".join(problems)


@pytest.fixture(autouse=True)
def independent_sweep(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Read every repository the test made or changed with the independent reader."""
    STATE.passwords.clear()
    STATE.paths.clear()
    STATE.touched_s3 = False
    yield
    if not ENABLED:
        return
    cpu = time.process_time()
    try:
        _sweep_after(request, tmp_path_factory)
    finally:
        STATS.total_cpu += time.process_time() - cpu


def _sweep_after(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    roots: list[Path] = []
    for top in _new_tops(base):
        roots += _local_repos(base / top)
    roots += list(STATE.shared_repos)
    roots += [p for p in sorted(STATE.paths) if not p.is_relative_to(base) and p not in roots]
    problems = _sweep_local(roots)
    s3_used = STATE.touched_s3 or request.node.get_closest_marker("s3") is not None
    if s3_used or S3_FIXTURES & set(request.fixturenames):
        problems += _sweep_s3()
    damaged = request.node.get_closest_marker("damaged_repo_ok")
    if LOG and (problems or damaged is not None):
        with open(LOG, "a") as log:
            mark = "damaged_repo_ok" if damaged is not None else "unmarked"
            for line in problems or ["(nothing refused)"]:
                log.write(f"{request.node.nodeid}\t{mark}\t{line}\n")
    if damaged is not None:
        STATS.opted_out[request.node.nodeid] = damaged.args[0] if damaged.args else ""
        STATS.refused_as_marked += len(problems)
        return
    if problems:
        pytest.fail(
            "the independent reader (tests/independent/) refuses a repository this test left"
            " (a test that damages one on purpose says so with"
            " @pytest.mark.damaged_repo_ok('why')):\n" + "\n".join(problems),
            pytrace=False,
        )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ENABLED and (STATS.read or STATS.unchanged):
        terminalreporter.write_line(
            f"independent sweep: {STATS.read} repositories read ({STATS.blobs} blobs,"
            f" {STATS.files} files) in {STATS.seconds:.1f} s ({STATS.cpu:.1f} s CPU; whole"
            f" sweep {STATS.total_cpu:.1f} s CPU),"
            f" {STATS.unchanged} unchanged,"
            f" {len(STATS.opted_out)} tests marked damaged_repo_ok"
            f" ({STATS.refused_as_marked} refusals)"
        )
