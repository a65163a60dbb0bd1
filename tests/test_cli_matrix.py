"""Every command with every global option, given before the command name, after it and
through its environment variable: the same exit code and the same output (issue 15,
acceptance).  And no "1 packs" in what any command prints.

One repository is built per module; each case runs one cheap command three times.
What differs between runs by nature (snapshot and key IDs, times, the scratch
directory of each run) is masked before the outputs are compared.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from cas.cli.main import cli
from tests.support.cli import Result, cas_env, finish, run_cas, start_cas
from tests.support.mounts import fuse_usable

PASSWORD = "test-password"


@dataclass
class World:
    """The module's repository and what the commands refer to."""

    tmp: Path
    repo: Path
    src: Path
    pwfile: Path
    runs: int = 0

    def scratch(self) -> Path:
        """A new empty directory for one run."""
        self.runs += 1
        d = self.tmp / "runs" / f"{self.runs}"  # not beside src: its parents stay unchanged
        d.mkdir(parents=True)
        return d


Setup = Callable[[World, Path], dict[str, str]]


@dataclass(frozen=True)
class Command:
    """A command line (``{src}``, ``{scratch}``, ``{pwfile}`` and what ``setup``
    returns are filled in) and the repository it runs on (``{repo}`` by default)."""

    words: tuple[str, ...]
    setup: Setup | None = None
    repo: str = "{repo}"
    locks: bool = True  # --no-lock means something to it
    alone: bool = False  # its three runs must not overlap (they change the same thing)
    counts_vary: bool = False  # what it stores depends on the clock: numbers not compared


def _added_key(w: World, scratch: Path) -> dict[str, str]:
    """A key of another password (the repository's would open it, and the key in use
    cannot be removed)."""
    other = scratch / "other-password"
    other.write_text("another password")
    r = run_cas("-r", w.repo, "--json", "key", "add", "--new-password-file", other)
    assert r.code == 0, r.err
    return {"key": r.json()["id"]}


def _copy_target(w: World, scratch: Path) -> dict[str, str]:
    target = scratch / "target"
    r = run_cas("-r", target, "init", "--copy-keys-from", w.repo, "--from-password-file", w.pwfile)
    assert r.code == 0, r.err
    return {}


def _untagged(w: World, scratch: Path) -> dict[str, str]:
    assert run_cas("-r", w.repo, "tag", "--remove", "matrix").code == 0
    return {}


def _a_pack(w: World, scratch: Path) -> dict[str, str]:
    return {"pack": sorted(p.name for p in (w.repo / "data").glob("*/*"))[0]}


def _reindexed(w: World, scratch: Path) -> dict[str, str]:
    assert run_cas("-r", w.repo, "repair", "index").code == 0
    return {}


def _pruned(w: World, scratch: Path) -> dict[str, str]:
    assert run_cas("-r", w.repo, "prune").code == 0
    return {}


# Every command of `cas --help` (test_every_command_is_in_the_matrix checks it).
COMMANDS: dict[str, Command] = {
    "init": Command(("init",), repo="{scratch}/new", locks=False),
    "key list": Command(("key", "list"), locks=False),
    "key add": Command(("key", "add", "--new-password-file", "{pwfile}"), locks=False),
    "key passwd": Command(
        ("key", "passwd", "--new-password-file", "{pwfile}"), locks=False, alone=True
    ),
    "key remove": Command(("key", "remove", "{key}"), setup=_added_key, locks=False),
    # standard input: a backup of a path under /tmp records /tmp, which other programs
    # change between two runs; each backup is the next one's parent, so one at a time
    # (the file's mtime is the time of the backup, so its tree is new or not by the second)
    "backup": Command(("backup", "--stdin", "--stdin-filename", "f"), alone=True, counts_vary=True),
    "restore": Command(("restore", "latest", "--path", "{src}", "--target", "{scratch}/out")),
    "snapshots": Command(("snapshots",), locks=False),
    "cat": Command(("cat", "config"), locks=False),
    "prune": Command(("prune",), setup=_pruned, alone=True),
    "repair index": Command(("repair", "index"), setup=_reindexed, alone=True),
    # (a pack of whatever the runs before left: how many blobs it holds varies)
    "repair packs": Command(
        ("repair", "packs", "{pack}"), setup=_a_pack, alone=True, counts_vary=True
    ),
    "repair snapshots": Command(("repair", "snapshots"), alone=True),
    "unlock": Command(("unlock",), locks=False),
    "trust": Command(("trust",)),
    "copy": Command(("copy", "--to", "{scratch}/target"), setup=_copy_target),
    "forget": Command(("forget", "--keep-last", "1000")),
    "tag": Command(("tag", "--add", "matrix"), setup=_untagged, alone=True),
    "stats": Command(("stats",)),
    "check": Command(("check",)),
    "mount": Command(("mount", "{scratch}/mnt"), alone=True),
    "ls": Command(("ls", "latest", "--path", "{src}")),
    "diff": Command(("diff", "latest", "latest", "--path", "{src}")),
    "dump": Command(("dump", "latest:{src}", "d/f", "--path", "{src}", "--target", "{scratch}/f")),
    "find": Command(("find", "f")),
}


def _option_forms(w: World, option: str, location: str) -> tuple[list[str], dict[str, str]]:
    """``option``'s words on the command line and its environment variable."""
    cache = str(w.tmp / "other-cache")
    return {
        "-r": (["-r", location], {"CAS_REPOSITORY": location}),
        "--password-file": (
            ["--password-file", str(w.pwfile)],
            {"CAS_PASSWORD_FILE": str(w.pwfile)},
        ),
        "--json": (["--json"], {"CAS_JSON": "1"}),
        "-q": (["-q"], {"CAS_QUIET": "1"}),
        "--no-lock": (["--no-lock"], {"CAS_NO_LOCK": "1"}),
        "--cache-dir": (["--cache-dir", cache], {"CAS_CACHE_DIR": cache}),
    }[option]


OPTIONS = ["-r", "--password-file", "--json", "-q", "--no-lock", "--cache-dir"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("matrix")
    src, repo, pwfile = tmp / "data" / "src", tmp / "repo", tmp / "pw"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"content\n")
    pwfile.write_text(PASSWORD + "\n")
    assert run_cas("-r", repo, "init").code == 0
    assert run_cas("-r", repo, "backup", src).code == 0
    assert (
        run_cas("-r", repo, "backup", "--stdin", "--stdin-filename", "f", input=b"data\n").code == 0
    )
    return World(tmp, repo, src, pwfile)


def _is_mount(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def _mount(args: list[str], env: dict[str, str], password: str | None, mnt: Path) -> Result:
    """Run ``cas mount`` until it is up (and has said so, when it speaks to people),
    then unmount it as a user would."""
    mnt.mkdir()
    # What it says once the kernel's INIT reached it (the mount shows in mountinfo
    # before that: unmounted then, it never says it was mounted).
    said = b'"mounted"' if {"--json"} & set(args) or {"CAS_JSON"} & set(env) else b"mounted at"
    quiet = {"-q"} & set(args) or {"CAS_QUIET"} & set(env)
    out_file, err_file = mnt.parent / "mount.out", mnt.parent / "mount.err"
    with open(out_file, "wb") as out, open(err_file, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cas", *args],
            env=cas_env(password, env),
            stdout=out,
            stderr=err,
        )
    try:
        while proc.poll() is None and not (
            _is_mount(mnt) and (quiet or said in out_file.read_bytes())
        ):
            time.sleep(0.05)
        if proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Result(proc.returncode, out_file.read_text(), err_file.read_text())


@dataclass
class Run:
    """One prepared run: its command line, environment and scratch directory."""

    name: str
    args: list[str]
    env: dict[str, str]
    password: str | None
    scratch: Path

    def start(self) -> subprocess.Popen[bytes]:
        return start_cas(*self.args, password=self.password, env=self.env)

    def run(self) -> Result:
        if self.name == "mount":
            return _mount(self.args, self.env, self.password, self.scratch / "mnt")
        if self.name == "backup":
            return run_cas(*self.args, password=self.password, env=self.env, input=b"data\n")
        return finish(self.start())


def _prepare(w: World, name: str, option: str, form: str) -> Run:
    """Command ``name`` with ``option`` given in ``form`` (its setup done)."""
    cmd = COMMANDS[name]
    scratch = w.scratch()
    fill = {
        "src": str(w.src),
        "scratch": str(scratch),
        "pwfile": str(w.pwfile),
        "repo": str(w.repo),
    }
    if cmd.setup is not None:
        fill.update(cmd.setup(w, scratch))
    words = [x.format(**fill) for x in cmd.words]
    location = cmd.repo.format(**fill)
    given, option_env = _option_forms(w, option, location)
    env = {"CAS_OTHER_PASSWORD": PASSWORD}
    head = [] if option == "-r" else ["-r", location]  # -r itself is the option tested
    if form == "before":
        args = [*head, *given, *words]
    elif form == "after":
        args = [*words, *head, *given]
    else:
        args = [*head, *words]
        env.update(option_env)
    password = None if option == "--password-file" else PASSWORD
    return Run(name, args, env, password, scratch)


def _run_forms(w: World, name: str, option: str) -> dict[str, tuple[Result, Path]]:
    """The three forms; side by side unless the command must run alone."""
    forms = ("before", "after", "env")
    if COMMANDS[name].alone:
        done = {}
        for form in forms:
            run = _prepare(w, name, option, form)
            done[form] = (run.run(), run.scratch)
        return done
    runs = {form: _prepare(w, name, option, form) for form in forms}
    procs = {form: run.start() for form, run in runs.items()}
    return {form: (finish(procs[form]), runs[form].scratch) for form in forms}


_HEX = re.compile(r"\b[0-9a-f]{8,64}\b")
_TIMES = re.compile(r'"(duration|time|time_iso|time_ns|started|elapsed|age)": ("[^"]*"|[^,}]+)')


def _masked(r: Result, scratch: Path) -> tuple[int, str]:
    out = r.out.replace(str(scratch), "SCRATCH")
    out = _TIMES.sub(r'"\1": X', out)
    # how many requests a run makes depends on what the cache holds: runs side by side
    # fill it at once
    out = re.sub(r'"requests": \{[^}]*\}', '"requests": X', out)
    out = re.sub(r"\d+\.\d+ ?s\b", "Xs", out)
    out = re.sub(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?Z?", "TIME", out)
    return r.code, _HEX.sub("ID", out)


MOUNT_OK = fuse_usable()


def _cases() -> list[Any]:
    cases = []
    for name, cmd in COMMANDS.items():
        for option in OPTIONS:
            if option == "--no-lock" and not cmd.locks:
                continue
            marks = []
            if name == "mount" and not MOUNT_OK:
                marks.append(pytest.mark.skip(reason="no usable FUSE here"))
            cases.append(pytest.param(name, option, marks=marks, id=f"{name}-{option}"))
    return cases


@pytest.mark.parametrize(("name", "option"), _cases())
def test_before_after_and_from_the_environment_give_one_result(
    world: World, name: str, option: str
) -> None:
    results = _run_forms(world, name, option)
    for form, (r, _) in results.items():
        assert r.code == 0, (name, option, form, r.err)
        assert "Traceback" not in r.err
        if option == "--json":  # one document, or JSON lines
            try:
                json.loads(r.out)
            except ValueError:
                [json.loads(line) for line in r.out.splitlines()]
    masked = {form: _masked(r, scratch) for form, (r, scratch) in results.items()}
    if COMMANDS[name].counts_vary:
        masked = {
            form: (code, re.sub(r"\d+", "N", re.sub(r"\d+ ([a-z]+?)s?\b", r"N \1", out)))
            for form, (code, out) in masked.items()
        }
    assert masked["before"] == masked["after"] == masked["env"], (name, option, masked)
    if option == "-q" and name not in (
        "snapshots",
        "ls",
        "diff",
        "find",
        "key list",
        "cat",
        "stats",
    ):
        assert results["before"][0].out == "", (name, results["before"][0].out)


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> list[str]:
    found = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            found += _leaves(cmd, (*path, name))
        else:
            found.append(" ".join((*path, name)))
    return found


def test_every_command_is_in_the_matrix() -> None:
    assert sorted(_leaves(cli)) == sorted(COMMANDS)


# "1 packs", "1 errors", "1 files": a count of one with a plural noun
_ONE_PLURAL = re.compile(r"(?<![\w.,/-])1 ([a-z]+s)\b")


def test_no_command_says_1_packs(tmp_path: Path) -> None:
    """Each command, on a repository of one snapshot of one file (so most counts are 1)."""
    w = World(tmp_path, tmp_path / "repo", tmp_path / "src", tmp_path / "pw")
    (w.src / "d").mkdir(parents=True)
    (w.src / "d" / "f").write_bytes(b"content\n")
    w.pwfile.write_text(PASSWORD)
    assert run_cas("-r", w.repo, "init").code == 0
    assert run_cas("-r", w.repo, "backup", w.src).code == 0
    seen = []
    for name in COMMANDS:
        if name == "mount" and not MOUNT_OK:
            continue
        r = _prepare(w, name, "-r", "before").run()
        assert r.code == 0, (name, r.err)
        text = r.out + r.err
        seen.append(text)
        assert not _ONE_PLURAL.findall(text), (name, text)
    assert any(re.search(r"\b1 (snapshot|file|entry)\b", t) for t in seen)
