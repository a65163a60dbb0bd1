"""What an S3 backup costs in requests, counted by cas and, independently, by the server."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.support.cli import run_cas
from tests.support.s3proxy import CountingProxy
from tests.support.s3server import logged_since
from tests.support.trees import compare_trees

pytestmark = pytest.mark.s3

# werkzeug's access log; some lines are coloured with ANSI escapes
ANSI = rb"(?:\x1b\[[0-9;]*m)*"
REQUEST_LINE = re.compile(
    rb'"' + ANSI + rb"(GET|PUT|HEAD|POST|DELETE) [^\"]*HTTP/1\.[01]" + ANSI + rb'"'
)


def _server_requests(log: Path, endpoint: str, since: int) -> tuple[int, int]:
    """(number of requests the server logged after byte ``since``, new end offset)."""
    data, end = logged_since(log, endpoint, since)
    return len(REQUEST_LINE.findall(data)), end


def _ancestor_times(path: Path) -> list[tuple[int, int, int]]:
    """What the snapshot records of the directories above the backed-up one."""
    return [(st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns) for st in map(os.stat, path.parents)]


def _moto_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logs = sorted(tmp_path_factory.getbasetemp().glob("moto*/server.log"))
    assert logs, "moto server log not found"
    return logs[-1]


def _s3(
    s3_server: str, s3_bucket: str, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, str], list[str]]:
    """The environment (AWS_* and a fresh cache) and global options of a repository."""
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    # outside the backed-up tree's ancestors, whose mtimes would change otherwise
    env["CAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    args = ["-r", f"s3://{s3_bucket}/{prefix}", "--s3-endpoint", s3_server, "--s3-path-style"]
    return env, args


def _tree(src: Path, dirs: int, files: int, size: int) -> None:
    for d in range(dirs):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(files):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(size + 997 * f))


def test_unchanged_rebackup_makes_few_requests(
    s3_server: str, s3_bucket: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env, args = _s3(s3_server, s3_bucket, "r", tmp_path_factory)
    src = tmp_path / "src"
    _tree(src, 5, 20, 1000)
    assert run_cas(*args, "init", env=env).code == 0
    ancestors = _ancestor_times(src)
    first = run_cas(*args, "--json", "backup", src, env=env)
    assert first.code == 0, first.err

    log = _moto_log(tmp_path_factory)
    _, start = _server_requests(log, s3_server, 0)
    second = run_cas(*args, "--json", "backup", src, env=env)
    assert second.code == 0, second.err
    doc = second.json()
    counted = sum(doc["requests"][k] for k in ("PUT", "GET", "HEAD", "LIST", "DELETE"))
    seen, _ = _server_requests(log, s3_server, start)
    assert doc["summary"]["bytes_read"] == 0
    # Another process may touch /tmp meanwhile; then the snapshot's ancestor
    # directories really changed, and one tree pack plus its index is honest.
    allowance = 2 if _ancestor_times(src) != ancestors else 0
    # config, key listing, lock (list, put, list, delete), index listing (generation
    # records included), snapshot and generation record: issue 18 asks for at most 9
    assert counted <= 9 + allowance, (doc["requests"], doc["summary"])
    if not allowance:
        assert doc["summary"]["data_added_stored"] == 0
    assert seen == counted, (seen, doc["requests"])
    assert doc["requests"]["GET"] <= 1  # the config; keys, snapshots, index and trees are cached


@pytest.mark.parametrize("command", ["backup", "restore", "check"])
def test_helper_processes_requests_are_counted(
    s3_server: str,
    s3_bucket: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    command: str,
) -> None:
    """Backup's workers store packs, restore's writers and check's verifiers read, on
    backends of their own: the cost report adds their requests, and the total is what
    the server saw."""
    env, args = _s3(s3_server, s3_bucket, command, tmp_path_factory)
    src = tmp_path / "src"
    _tree(src, 4, 10, 300_000)
    assert run_cas(*args, "init", "--pack-size", str(1 << 20), env=env).code == 0
    log = _moto_log(tmp_path_factory)
    _, start = _server_requests(log, s3_server, 0)
    if command == "backup":
        done = run_cas(*args, "--json", "backup", src, "--workers", "2", env=env)
        helpers = done.json()["summary"]["workers"] if done.code == 0 else None
    else:
        assert run_cas(*args, "backup", src, env=env).code == 0
        _, start = _server_requests(log, s3_server, 0)
    if command == "restore":
        done = run_cas(
            *args, "--json", "restore", "latest", "-t", tmp_path / "out", "--workers", "2", env=env
        )
        helpers = done.json()["summary"]["writers"] if done.code == 0 else None
    elif command == "check":
        done = run_cas(*args, "--json", "check", "--read-data", "--workers", "2", env=env)
        helpers = done.json()["summary"]["processes"] if done.code == 0 else None
    assert done.code == 0, done.err
    assert helpers == 2
    doc = done.json()
    counted = sum(doc["requests"][k] for k in ("PUT", "GET", "HEAD", "LIST", "DELETE"))
    seen, _ = _server_requests(log, s3_server, start)
    assert seen == counted, (seen, doc["requests"])
    if command == "backup":
        assert doc["requests"]["PUT"] >= 10  # the data packs were stored, by the helpers
    else:
        assert doc["requests"]["GET"] >= 10  # the data packs were read, by the helpers


def _restore_counting_units(
    s3_server: str, args: list[str], env: dict[str, str], out: Path, workers: str
) -> tuple[Counter[tuple[str, int]], dict[str, object]]:
    """Restore through a counting proxy: how often each 64 KiB unit of a data pack
    was asked for (every range must be whole units), and the ``--json`` summary."""
    proxy = CountingProxy(s3_server)
    try:
        at_proxy = [*args[:2], "--s3-endpoint", proxy.endpoint, "--s3-path-style"]
        done = run_cas(
            *at_proxy, "--json", "restore", "latest", "-t", out, "--workers", workers, env=env
        )
        assert done.code == 0, done.err
        ranges = [(path, rng) for path, rng in proxy.ranges if "/data/" in path]
    finally:
        proxy.close()
    unit = 64 << 10
    seen: Counter[tuple[str, int]] = Counter()
    for path, rng in ranges:
        first, last = map(int, rng.removeprefix("bytes=").split("-"))
        assert first % unit == 0, (path, rng)
        for k in range(first // unit, last // unit + 1):
            seen[(path, k)] += 1
    assert ranges
    return seen, json.loads(done.out)


def test_a_restore_reads_each_unit_of_a_pack_at_most_once(
    s3_server: str, s3_bucket: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Blobs of neighbouring files share 64 KiB read units (spec §9.6); a restore takes
    a unit it read already from the reader's unit cache (cas/repo/unitcache.py) instead
    of asking for it again, and every range the store sees is still whole units."""
    env, args = _s3(s3_server, s3_bucket, "units", tmp_path_factory)
    src = tmp_path / "src"
    _tree(src, 6, 20, 3000)
    assert run_cas(*args, "init", env=env).code == 0
    assert run_cas(*args, "backup", src, "--workers", "0", env=env).code == 0
    out = tmp_path / "out"
    seen, _ = _restore_counting_units(s3_server, args, env, out, "0")
    assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1]
    assert compare_trees(src, out / src.relative_to("/")) == []


def test_two_restore_writers_read_each_unit_of_a_pack_at_most_once(
    s3_server: str, s3_bucket: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With writer processes, the files of consecutive directories share units too;
    each writer walks its own part of the tree (a lane) and gets that part's files,
    so a unit is not read by two writers (cas/restore/restorer.py, spec §15)."""
    env, args = _s3(s3_server, s3_bucket, "units2", tmp_path_factory)
    src = tmp_path / "src"
    for top in ("a", "b", "c"):
        _tree(src / top, 5, 12, 2000)
    assert run_cas(*args, "init", env=env).code == 0
    assert run_cas(*args, "backup", src, "--workers", "0", env=env).code == 0
    out = tmp_path / "out"
    seen, doc = _restore_counting_units(s3_server, args, env, out, "2")
    assert doc["summary"]["writers"] == 2, doc["summary"]  # type: ignore[index]
    assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1]
    assert compare_trees(src, out / src.relative_to("/")) == []
