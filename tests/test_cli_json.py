"""Every command's ``--json`` output against docs/json.schema.json, the schema that
docs/json.md describes (issue 15 item 6).

The rules the schema and this test hold every command to: stdout is JSON lines (one
object per line), every object says its ``message_type``, and the last line, and only
the last, is the command's summary (``message_type: "summary"``).  Snapshot IDs are
``id`` and times are RFC 3339 UTC strings with integer nanoseconds beside them.

Every command of ``cas --help`` (and every subcommand, ``key list``, ``repair packs``
...) runs here on a real repository, and the examples of docs/json.md are checked
against the same schema, so neither the doc nor the code can drift from it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import click
import pytest
from jsonschema import Draft202012Validator

from cas.cli.main import cli
from tests.support.cli import Result, run_cas

ROOT = Path(__file__).resolve().parent.parent
SCHEMA: dict[str, Any] = json.loads((ROOT / "docs" / "json.schema.json").read_text())
COMMANDS: dict[str, dict[str, Any]] = SCHEMA["x-commands"]
DOC = (ROOT / "docs" / "json.md").read_text()


def leaf_commands(group: click.Group = cli, prefix: str = "") -> set[str]:
    """Every command ``cas --help`` offers, subcommands of groups as ``key list``."""
    names: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names |= leaf_commands(command, f"{prefix}{name} ")
        else:
            names.add(prefix + name)
    return names


def _validator(definition: str) -> Draft202012Validator:
    return Draft202012Validator(
        {**SCHEMA, "$ref": f"#/$defs/{definition}"},
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def check_lines(command: str, lines: list[dict[str, Any]]) -> None:
    """The lines of one run of ``command``: each of a kind the command may print, each
    valid against its definition, and exactly one summary, the last line."""
    spec = COMMANDS[command]
    assert lines, f"{command}: no output"
    *messages, summary = lines
    assert summary.get("message_type") == "summary", f"{command}: last line {summary}"
    errors = [str(e.message) for e in _validator(spec["summary"]).iter_errors(summary)]
    assert not errors, f"{command} summary: {errors}"
    for line in messages:
        kind = line.get("message_type")
        allowed = [*spec["messages"], *SCHEMA["x-anywhere"]]
        assert kind in allowed, f"{command}: unexpected line {line}"
        check_message(kind, line)


def check_message(kind: str, line: dict[str, Any]) -> None:
    """One line of kind ``kind`` (not a summary), valid against its definition."""
    errors = [str(e.message) for e in _validator(kind).iter_errors(line)]
    assert not errors, f"{kind} line: {errors}"


def parse(command: str, r: Result) -> list[dict[str, Any]]:
    """Every line of stdout as a JSON object, validated; stderr free of tracebacks."""
    assert r.code in (0, 3), f"{command}: exit {r.code}: {r.err}"
    assert "Traceback" not in r.err
    lines = [json.loads(line) for line in r.out.splitlines()]
    check_lines(command, lines)
    return lines


def test_the_schema_names_every_command() -> None:
    assert set(COMMANDS) == leaf_commands()
    # ... which are the commands ``cas --help`` lists, and their subcommands.
    listed = run_cas("--help", password=None).out.split("Commands:\n", 1)[1]
    names = {line.split()[0] for line in listed.splitlines() if line.startswith("  ")}
    assert names == {c.split()[0] for c in COMMANDS}


def test_the_doc_shows_every_command_and_its_examples_are_valid() -> None:
    """docs/json.md: a section per command (``### `cas NAME` ``) whose ``json`` blocks
    are one run's lines, valid against the schema."""
    sections = re.split(r"^### `cas ([a-z ]+)`", DOC, flags=re.M)
    shown: dict[str, str] = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert set(shown) == set(COMMANDS)
    for command, text in shown.items():
        blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
        assert blocks, f"docs/json.md shows no example of cas {command}"
        for block in blocks:
            check_lines(command, [json.loads(line) for line in block.splitlines()])


def test_a_line_of_another_shape_is_refused() -> None:
    """The schema is strict: a misnamed field (the old ``snapshot_id``) fails."""
    with pytest.raises(AssertionError):
        check_lines("restore", [{"message_type": "summary", "snapshot_id": "ab" * 32}])


def _fuse_usable() -> bool:
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError:
        return False
    return True


def test_every_command_prints_what_the_schema_says(tmp_path: Path) -> None:
    src, repo, other = tmp_path / "src", tmp_path / "repo", tmp_path / "other"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a" * 5000)
    (src / "sub" / "b.txt").write_bytes(b"b" * 3000)
    (src / "link").symlink_to("a.txt")
    env = {
        "CAS_REPOSITORY": str(repo),
        "CAS_PASSWORD": "test-password",
        "CAS_OTHER_PASSWORD": "test-password",
    }
    ran: set[str] = set()

    def cas(*args: str | Path) -> list[dict[str, Any]]:
        words = [str(a) for a in args]
        command = words[0] if words[0] not in ("key", "repair") else " ".join(words[:2])
        ran.add(command)
        return parse(command, run_cas(*words, "--json", password=None, env=env))

    init = cas("init")[-1]
    first = cas("backup", src)[-1]["id"]
    (src / "a.txt").write_bytes(b"changed")
    second = cas("backup", src, "-v", "--tag", "t")[-1]["id"]
    cas("backup", src, "--dry-run")
    cas("snapshots")
    cas("snapshots", "--group-by", "host,tags")
    cas("ls", "latest")
    cas("find", "*.txt")
    cas("diff", first, second)
    cas("stats")
    cas("stats", first)
    first = cas("tag", "--add", "x", first)[-1]["changed"][0]["new_id"]
    cas("check")
    cas("check", "--read-data")
    cas("check", "--against", src, "--snapshot", second)
    cas("cat", "config")
    cas("cat", "key", init["key"])
    index = next(p.name for p in (repo / "index").iterdir() if not p.name.startswith("gen-"))
    cas("cat", "index", index)
    packs = [p.name for p in (repo / "data").rglob("*") if p.is_file()]
    blobs = [b for p in packs for b in cas("cat", "pack", p)[-1]["object"]["blobs"]]
    snap = cas("cat", "snapshot", second)[-1]["object"]
    cas("cat", "tree", snap["tree"])
    cas("cat", "blob", next(b["id"] for b in blobs if b["type"] == "data"))
    (tmp_path / "pw2").write_text("second")
    (tmp_path / "pw3").write_text("third")
    added = cas("key", "add", "--new-password-file", tmp_path / "pw2")[-1]["id"]
    cas("key", "list")
    cas("key", "remove", added)
    cas("restore", "latest", "--target", tmp_path / "restored")
    cas("restore", "latest", "--target", tmp_path / "restored", "--dry-run")
    cas("dump", f"latest:{src}", "--target", tmp_path / "src.tar")
    parse("init", run_cas("init", "-r", other, "--copy-keys-from", repo, "--json", env=env))
    cas("copy", "--to", other)
    cas("forget", "--keep-last", "1", "--dry-run")
    cas("forget", first)
    cas("backup", src)
    cas("forget", "--keep-last", "1", "--prune")
    cas("prune", "--dry-run")
    cas("prune")
    cas("repair", "index")
    pack = next(p for p in (repo / "data").rglob("*") if p.is_file())
    cas("repair", "packs", pack.name[:12])
    cas("repair", "snapshots", "--dry-run")
    cas("unlock")
    cas("trust")
    cas("trust", "--accept")
    fuse = _fuse_usable()
    if fuse:
        _mount(tmp_path / "mnt", env)
        ran.add("mount")
    cas("key", "passwd", "--new-password-file", tmp_path / "pw3")
    assert ran == leaf_commands() - (set() if fuse else {"mount"})
    if not fuse:
        pytest.skip("no /dev/fuse: cas mount --json not run (all the others were)")


def _mount(mnt: Path, env: dict[str, str]) -> None:
    from tests.test_mount import WAIT, Mount

    mnt.mkdir()
    m = Mount(Path(env["CAS_REPOSITORY"]), mnt, "--json")
    try:
        # The mountpoint shows in the mount table before libfuse has started the
        # filesystem (a signal then ends it as a failed mount): wait for its line.
        hang = time.monotonic() + WAIT
        while '"mounted"' not in m.stdout() and m.proc.poll() is None:
            assert time.monotonic() < hang, "no mounted line"
            time.sleep(0.05)
        assert m.stop(signal.SIGTERM) == 0, m.stderr()
        lines = [json.loads(line) for line in m.stdout().splitlines()]
        check_lines("mount", lines)
        assert [d["message_type"] for d in lines] == ["mounted", "summary"]
    finally:
        m.close()
