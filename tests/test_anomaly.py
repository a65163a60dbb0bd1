"""Anomaly warnings (issue 19, Deliver 3): a backup far outside the host's recent history
is flagged (exit 3, ``anomalies`` in --json, the flag in the snapshot), and forget keeps
the last snapshot before it.  Real trees, the real CLI, a local repository."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from cas.backup import anomaly
from cas.errors import EXIT_WARNINGS, FormatError, UsageError
from cas.format.snapshot import Snapshot, decode_snapshot, encode_snapshot
from cas.format.tree import Node
from tests.independent.compare import read_local
from tests.support.cli import Result, run_cas
from tests.support.hometree import edit_day, make_home, ransomware


class Home:
    """A generated home tree and a repository it is backed up to."""

    def __init__(self, tmp: Path) -> None:
        self.src = tmp / "home"
        self.repo = tmp / "repo"
        make_home(self.src)
        assert run_cas("init", "-r", self.repo).code == 0

    def cas(self, *args: str | Path, env: dict[str, str] | None = None) -> Result:
        return run_cas("-r", self.repo, *args, env=env)

    def backup(self, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
        r = self.cas("backup", self.src, "--json", env=env)
        return r.code, json.loads(r.out.splitlines()[-1]), r.err

    def week(self) -> None:
        """The first backup and seven days of ordinary edits: none is flagged."""
        rng = random.Random(7)
        code, doc, _ = self.backup()
        assert (code, doc["anomalies"]) == (0, [])
        for day in range(1, 8):
            edit_day(self.src, rng, day)
            code, doc, err = self.backup()
            assert (code, doc["anomalies"]) == (0, []), (day, err)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)


def test_a_normal_week_is_not_flagged_and_ransomware_is(home: Home) -> None:
    home.week()
    hit = ransomware(home.src, random.Random(3), share=0.8, rename=True)
    code, doc, err = home.backup()
    assert code == EXIT_WARNINGS
    kinds = {a["kind"]: a for a in doc["anomalies"]}
    assert {"removed", "renamed"} <= set(kinds)
    assert kinds["renamed"]["count"] == hit
    assert kinds["renamed"]["extension"] == "locked"
    assert all(a["message"] and 0 < a["share"] <= 1 for a in doc["anomalies"])
    assert doc["id"] and doc["warnings"] == []  # the backup completed; nothing was skipped
    assert err.count("warning: unusual backup:") == len(doc["anomalies"])
    assert f"{hit} of the parent's" in err

    # The flag is in the snapshot: snapshots shows it, human and --json.
    listed = home.cas("snapshots", "--json").json()["snapshots"]
    assert [bool(s["anomalies"]) for s in listed] == [False] * 8 + [True]
    assert {a["kind"] for a in listed[-1]["anomalies"]} == set(kinds)
    human = home.cas("snapshots").out
    assert "!unusual (" in human and "*.locked" in human

    # A reader written from the spec alone reads the flag and the figures.
    view = read_local(home.repo)
    stored = view.snapshots[listed[-1]["id"]].doc
    assert {a["kind"] for a in stored["anomalies"]} == set(kinds)
    assert stored["changes"]["renamed"] == hit and stored["changes"]["renamed_to"] == "locked"
    assert "anomalies" not in view.snapshots[listed[0]["id"]].doc

    # The next backup compares with the encrypted parent: nothing unusual any more.
    code, doc, _ = home.backup()
    assert (code, doc["anomalies"]) == (0, [])


def test_ransomware_in_place_is_flagged_as_modified(home: Home) -> None:
    home.week()
    ransomware(home.src, random.Random(4), share=0.8, rename=False)
    code, doc, _ = home.backup()
    assert code == EXIT_WARNINGS
    # Incompressible new data is usual here (photos, a browser cache): not a sign.
    assert [a["kind"] for a in doc["anomalies"]] == ["modified"]


def test_thresholds_are_configurable_and_off_turns_the_check_off(home: Home) -> None:
    home.backup()
    ransomware(home.src, random.Random(5), share=0.8)
    code, doc, _ = home.backup(env={"CAS_ANOMALY_THRESHOLDS": "off"})
    assert (code, doc["anomalies"]) == (0, [])
    ransomware(home.src, random.Random(6), share=0.3, rename=False)
    r = home.cas(
        "backup", home.src, "--json", "--anomaly-thresholds", "modified=0.2,margin=0.1,min-files=10"
    )
    assert r.code == EXIT_WARNINGS
    assert [a["kind"] for a in json.loads(r.out.splitlines()[-1])["anomalies"]] == ["modified"]
    bad = home.cas("backup", home.src, "--anomaly-thresholds", "modified=2")
    assert bad.code == 2 and "anomaly threshold" in bad.err and "Traceback" not in bad.err


def test_forget_keeps_the_last_snapshot_before_a_flagged_one(home: Home) -> None:
    rng = random.Random(8)
    ids = []
    for day in range(3):
        if day:
            edit_day(home.src, rng, day)
        ids.append(home.backup()[1]["id"])
    ransomware(home.src, rng)
    flagged = home.backup()[1]["id"]
    for day in range(3):  # the encrypted files are backed up, unremarkably, for days
        (home.src / f"after{day}").write_text("x")
        assert home.backup()[0] == 0
    r = home.cas("forget", "--keep-last", "2", "--json")
    assert r.code == 0, r.err
    left = {s["id"] for s in home.cas("snapshots", "--json").json()["snapshots"]}
    assert {ids[-1], flagged} <= left and ids[0] not in left and len(left) == 4
    reasons = {s["id"]: s["reasons"] for g in r.json()["groups"] for s in g["keep"]}
    assert reasons[ids[-1]] == ["before anomaly"] and reasons[flagged] == ["anomaly"]

    refused = home.cas("forget", ids[-1])
    assert refused.code == 1 and "--allow-anomalous" in refused.err
    assert ids[-1] in {s["id"] for s in home.cas("snapshots", "--json").json()["snapshots"]}
    assert home.cas("forget", "--allow-anomalous", flagged).code == 0
    assert home.cas("forget", "--keep-last", "2").code == 0  # no flag left: the policy rules
    left = {s["id"] for s in home.cas("snapshots", "--json").json()["snapshots"]}
    assert len(left) == 2 and ids[-1] not in left


# -- the pure parts ------------------------------------------------------------------------


def _file(name: bytes, content: bytes, size: int = 10) -> Node:
    return Node(name=name, type="file", size=size, content=[content])


def test_changes_count_modified_emptied_and_renamed_in_place() -> None:
    parent = {
        b"a.txt": _file(b"a.txt", b"A"),
        b"b.txt": _file(b"b.txt", b"B"),
        b"c.doc": _file(b"c.doc", b"C"),
        b"d.log": _file(b"d.log", b"D"),
        b"e.jpeg": _file(b"e.jpeg", b"E"),
    }
    now = [
        _file(b"a.txt", b"A"),  # unchanged
        _file(b"b.txt", b"B2"),  # modified
        _file(b"c.doc.locked", b"X"),  # renamed, new content
        _file(b"d.log", b"", size=0),  # emptied (and modified)
        _file(b"e.jpg", b"E"),  # renamed with the same content: the user's doing
    ]
    c = anomaly.Changes(parent_files=5)
    c.directory(now, parent)
    assert (c.files, c.matched, c.modified, c.emptied, c.renamed) == (5, 3, 2, 1, 1)
    assert c.removed == 2
    assert c.as_doc()["renamed_to"] == "locked"


def test_detect_needs_counts_shares_and_a_margin_over_the_history() -> None:
    t = anomaly.Thresholds()
    big = {"files": 1000, "parent_files": 1000, "modified": 700, "new_bytes": 0}
    assert [a.kind for a in anomaly.detect(big, [], t)] == ["modified"]
    small = {"files": 60, "parent_files": 60, "modified": 40}  # under min-files
    assert anomaly.detect(small, [], t) == []
    busy = [{"parent_files": 1000, "modified": 500}] * 3  # this host rewrites half daily
    assert anomaly.detect(big, busy, t) == []
    # A first backup of random data is its baseline, never an anomaly.
    first = {"files": 100, "new_bytes": 1 << 30, "incompressible_bytes": 1 << 30}
    assert anomaly.detect(first, [], t) == []
    assert anomaly.detect(big, [], anomaly.Thresholds.parse("off")) == []


def test_incompressible_data_counts_only_where_it_is_unusual_and_replaces_files() -> None:
    t = anomaly.Thresholds()
    text_days = [{"new_bytes": 100 << 20, "incompressible_bytes": 5 << 20}] * 5
    photos = {"parent_files": 1000, "modified": 10, "new_bytes": 1 << 30}
    photos["incompressible_bytes"] = 1 << 30  # a photo import: new files, none rewritten
    assert anomaly.detect(photos, text_days, t) == []
    attack = {**photos, "modified": 300}  # a third of the files rewritten, mid-attack
    assert [a.kind for a in anomaly.detect(attack, text_days, t)] == ["incompressible"]
    assert anomaly.detect(attack, [photos] * 5, t) == []  # random data is this host's usual


def test_a_kind_of_a_newer_cas_is_shown_not_refused() -> None:
    a = anomaly.stored({"kind": "future\x1b", "count": 3, "total": 0})
    assert a.share == 0 and a.message.startswith("future")


def test_threshold_text() -> None:
    t = anomaly.Thresholds.parse("modified=0.7, min-bytes=4M,history=3")
    assert (t.modified, t.min_bytes, t.history) == (0.7, 4 << 20, 3)
    for bad in ("modified", "speed=3", "removed=-1", "min-files=x"):
        with pytest.raises(UsageError):
            anomaly.Thresholds.parse(bad)


def _snap(**extra: Any) -> Snapshot:
    return Snapshot(1, bytes(32), [b"/x"], "h", "u", extra=extra)


def test_snapshot_fields_round_trip_and_malformed_ones_are_refused() -> None:
    key = bytes(range(32))
    changes = {"files": 3, "parent_files": 2, "renamed_to": "locked"}
    flags = [{"kind": "renamed", "count": 2, "total": 2, "extension": "locked"}]
    back = decode_snapshot(encode_snapshot(_snap(changes=changes, anomalies=flags), key), key)
    assert back.changes == changes and back.anomalies == flags
    assert decode_snapshot(encode_snapshot(_snap(), key), key).anomalies == []
    for bad in (
        {"changes": [1]},
        {"changes": {"files": 1.5}},
        {"changes": {"files": -1}},
        {"anomalies": [{"kind": "x", "count": 1, "total": 1, "extension": b"x"}]},
        {"anomalies": {}},
        {"anomalies": [{"kind": "x", "count": -1, "total": 1}]},
        {"anomalies": [{"kind": 1, "count": 1, "total": 1}]},
    ):
        with pytest.raises(FormatError):
            decode_snapshot(encode_snapshot(_snap(**bad), key), key)
