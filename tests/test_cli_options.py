"""The option groups of ``cas.cli.options``: each declared once, each on every command
that had its options before, with the same spellings, help, envvars and defaults."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import click
import pytest

from cas.backend.local import LocalBackend
from cas.cli import options
from cas.cli.common import Globals
from cas.cli.main import cli
from cas.cli.options import ExcludeOptions
from cas.format.snapshot import Snapshot
from cas.manage.policy import SnapshotRef
from cas.selection import SnapshotFilter
from tests.support.cli import run_cas
from tests.support.damaged import healthy

CLI_DIR = Path(options.__file__).parent

# (option strings, envvar, metavar, help) as before the groups; defaults not listed
# are None, or () for a repeatable option.
Row = tuple[tuple[str, ...], str | list[str] | None, str | None, str]
GLOBAL: list[Row] = [
    (("-r", "--repo"), "CAS_REPOSITORY", None, "Repository: a path or s3://bucket/prefix."),
    (("--password-file",), "CAS_PASSWORD_FILE", None, "Read the password from this file."),
    (
        ("--password-command",),
        "CAS_PASSWORD_COMMAND",
        None,
        "Run this command and use its output as the password.",
    ),
    (("--json",), "CAS_JSON", None, "Machine-readable output on stdout."),
    (("-q", "--quiet"), "CAS_QUIET", None, "No progress and no human summary."),
    (
        ("-v", "--verbose"),
        "CAS_VERBOSE",
        None,
        "More output: storage retries and lock waits as they happen, also off a terminal "
        "(with --json: retry and lock_wait lines); backup -v lists new and changed entries "
        "(-vv: all, with --json as verbose_status lines).",
    ),
    (
        ("--s3-endpoint",),
        ["CAS_S3_ENDPOINT", "AWS_ENDPOINT_URL"],
        None,
        "S3 endpoint URL (S3-compatible stores).",
    ),
    (("--s3-path-style",), "CAS_S3_PATH_STYLE", None, "Path-style S3 addressing."),
    (
        ("--storage-class",),
        "CAS_S3_STORAGE_CLASS",
        "CLASS",
        "S3 storage class of data packs (e.g. STANDARD_IA, GLACIER_IR); the rest stays STANDARD.",
    ),
    (
        ("--connections",),
        "CAS_CONNECTIONS",
        None,
        "Parallel uploads (default: CPU count) and restore reads (default: 4).",
    ),
    (("--no-lock",), "CAS_NO_LOCK", None, "Do not lock the repository (read-only use only)."),
    (("--retry-lock",), "CAS_RETRY_LOCK", "SECONDS", "Wait for a lock."),
    (("--no-cache",), "CAS_NO_CACHE", None, "Do not use the local cache."),
    (("--cache-dir",), "CAS_CACHE_DIR", None, "Local cache directory (default ~/.cache/cas)."),
]
GLOBAL_DEFAULTS = {
    "json_": False,
    "quiet": False,
    "verbose": 0,
    "s3_path_style": False,
    "no_lock": False,
    "retry_lock": 0.0,
    "no_cache": False,
}

EXCLUDE: list[Row] = [
    (("--exclude", "-e"), None, None, "Exclude a pattern (repeatable)."),
    (("--iexclude",), None, None, "Like --exclude, ignoring case."),
    (("--exclude-file",), None, None, "Read exclude patterns from a file."),
    (("--iexclude-file",), None, None, "Like --exclude-file, ignoring case."),
    (
        ("--exclude-if-present",),
        None,
        None,
        "Skip the contents of directories holding this file.",
    ),
    (
        ("--exclude-caches",),
        None,
        None,
        "Skip the contents of directories with a valid CACHEDIR.TAG.",
    ),
    (("--one-file-system", "-x"), None, None, "Do not cross filesystem boundaries."),
    (("--exclude-larger-than",), None, "SIZE", "Skip files larger than SIZE (e.g. 2G)."),
]
EXCLUDE_DEFAULTS = {"exclude_caches": False, "one_file_system": False, "exclude_larger_than": None}


def _filter(only: str, paths: bool = True) -> list[Row]:
    rows: list[Row] = [
        (("--host",), None, None, f"{only} snapshots of this host."),
        (
            ("--tag",),
            None,
            None,
            f"{only} snapshots with this tag (a,b: with both; repeated: with either).",
        ),
        (("--path",), None, None, f"{only} snapshots that include this path."),
    ]
    return rows if paths else rows[:2]


# Which commands take which group (and the arguments a context needs).
USES = [
    ((), GLOBAL, GLOBAL_DEFAULTS, ["snapshots"]),
    (("backup",), EXCLUDE, EXCLUDE_DEFAULTS, []),
    (("snapshots",), _filter("Only"), {}, []),
    (("forget",), _filter("Only consider"), {}, []),
    (("tag",), _filter("Only"), {}, []),
    (("stats",), _filter("Only"), {}, []),
    (("mount",), _filter("Only"), {}, ["/mnt"]),
    # one snapshot: the filter narrows 'latest' (issue 15, item 3)
    (("restore",), _filter("'latest' among"), {}, ["latest", "--target", "/t"]),
    (("ls",), _filter("'latest' among"), {}, ["latest"]),
    (("dump",), _filter("'latest' among"), {}, ["latest", "/f"]),
    (("diff",), _filter("'latest' among"), {}, ["latest", "latest"]),
]


def _command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = cli
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


def _options_of(cmd: click.Command) -> dict[tuple[str, ...], click.Option]:
    return {tuple(p.opts): p for p in cmd.params if isinstance(p, click.Option)}


@pytest.mark.parametrize(
    ("path", "rows", "defaults", "args"), USES, ids=[" ".join(u[0]) or "cas" for u in USES]
)
def test_each_command_has_its_groups_as_before(
    path: tuple[str, ...],
    rows: list[Row],
    defaults: dict[str, Any],
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _, envvar, _, _ in rows:
        for name in [envvar] if isinstance(envvar, str) else envvar or []:
            monkeypatch.delenv(name, raising=False)
    cmd = _command(path)
    declared = _options_of(cmd)
    for opts, envvar, metavar, help_text in rows:
        assert opts in declared, (path, opts)
        option = declared[opts]
        assert (option.envvar, option.metavar, option.help) == (envvar, metavar, help_text)
        assert not option.hidden and not option.required
    # The values a command gets when none of its options is given.
    ctx = cmd.make_context("cas", list(args))
    for opts, _, _, _ in rows:
        option = declared[opts]
        assert option.name is not None
        default = () if option.multiple else None
        assert ctx.params[option.name] == defaults.get(option.name, default), opts


def test_the_options_in_help_come_in_the_same_order() -> None:
    def order(path: tuple[str, ...]) -> list[str]:
        return [p.opts[0] for p in _command(path).params if isinstance(p, click.Option)]

    assert order(()) == ["--version", *(o[0][0] for o in GLOBAL)]
    backup = order(("backup",))
    assert backup[: len(EXCLUDE)] == [o[0][0] for o in EXCLUDE]
    assert backup[len(EXCLUDE)] == "--stdin"
    for name in ("snapshots", "tag", "stats"):
        opts = order((name,))
        start = opts.index("--host")
        assert opts[start : start + 3] == ["--host", "--tag", "--path"], name


def _declarations() -> dict[str, list[tuple[str, str | None]]]:
    """Option string -> (module, help text) of every click.option call in cas/cli."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    for source in sorted(CLI_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            _global_specs(node, source.name, found)
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "click.option"):
                continue
            helps = [k.value for k in node.keywords if k.arg == "help"]
            help_text = None
            if helps:
                h = helps[0]
                help_text = str(h.value) if isinstance(h, ast.Constant) else ast.unparse(h)
            for arg in node.args:
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and arg.value[:1] == "-"
                ):
                    found.setdefault(arg.value, []).append((source.name, help_text))
    return found


def _global_specs(node: ast.AST, module: str, found: dict[str, list[Any]]) -> None:
    """The global options, declared as data (``_GLOBAL_SPECS``: flags, settings, field)."""
    if not (
        isinstance(node, ast.AnnAssign)
        and ast.unparse(node.target) == "_GLOBAL_SPECS"
        and isinstance(node.value, ast.Tuple)
    ):
        return
    for spec in node.value.elts:
        assert isinstance(spec, ast.Tuple)
        flags, settings = spec.elts[0], spec.elts[1]
        assert isinstance(flags, ast.Tuple) and isinstance(settings, ast.Dict)
        helps = [
            ast.literal_eval(v)
            for k, v in zip(settings.keys, settings.values, strict=True)
            if isinstance(k, ast.Constant) and k.value == "help"
        ]
        for flag in flags.elts:
            if isinstance(flag, ast.Constant) and str(flag.value)[:1] == "-":
                found.setdefault(flag.value, []).append((module, helps[0] if helps else None))


# Other options spelt like a group's, with another meaning.
HOMONYMS = {
    "--exclude": {"cmd_restore.py"},  # restore's own patterns
    "-e": {"cmd_restore.py"},
    "--cache-dir": {"cmd_check.py"},  # hidden, the old name of check --state-dir
    "--host": {"cmd_backup.py"},  # the host a backup records
    "--tag": {"cmd_backup.py"},  # the tags a backup records
}


def test_each_group_is_declared_once() -> None:
    found = _declarations()
    rows = GLOBAL + EXCLUDE + _filter("Only") + _filter("Only consider")
    for opts, _, _, _ in rows:
        for name in opts:
            modules = [m for m, _ in found[name]]
            assert modules.count("options.py") == 1, (name, modules)
            assert set(modules) - {"options.py"} <= HOMONYMS.get(name, set()), (name, modules)
    for name, others in HOMONYMS.items():
        group_helps = [r[3] for r in rows if name in r[0]]
        for module, help_text in found[name]:
            if module in others:
                assert help_text not in group_helps, (name, module)


def test_groups_hand_over_one_value() -> None:
    seen: dict[str, Any] = {}

    @click.command()
    @options.exclude_options
    @options.snapshot_filter_options()
    def probe(excludes: ExcludeOptions, selection: SnapshotFilter) -> None:
        seen.update(excludes=excludes, selection=selection)

    @click.group()
    @options.global_options
    def root(g: Globals) -> None:
        seen["g"] = g

    @root.command()
    def sub() -> None:
        pass

    args = ["-e", "*.o", "-x", "--exclude-larger-than", "2G", "--host", "h", "--path", "/a"]
    probe.main(args, standalone_mode=False)
    assert seen["excludes"] == ExcludeOptions(
        exclude=("*.o",), one_file_system=True, exclude_larger_than="2G"
    )
    rules = seen["excludes"].backup_options(force=True)
    assert (rules.exclude_larger_than, rules.one_file_system, rules.force) == (2 << 30, True, True)
    assert seen["selection"] == SnapshotFilter(frozenset({"h"}), paths=frozenset({b"/a"}))

    root.main(
        ["-r", "/r", "--json", "--storage-class", "GLACIER_IR", "--retry-lock", "2", "sub"],
        standalone_mode=False,
    )
    g = seen["g"]
    assert (g.repo, g.json, g.s3_storage_class, g.lock_wait, g.quiet) == (
        "/r",
        True,
        "GLACIER_IR",
        2.0,
        False,
    )


def test_the_filter_matches_snapshots_and_refs_alike() -> None:
    snap = Snapshot(1, b"t" * 32, [b"/data", b"/\xff"], "a", "u", tags=["x", "y"])
    ref = SnapshotRef.of(b"i" * 32, snap)
    cases = [
        (SnapshotFilter(), True),
        (SnapshotFilter.of(["a", "b"], ["y"]), True),
        (SnapshotFilter.of(["b"]), False),
        (SnapshotFilter.of(tags=["z"]), False),
        (SnapshotFilter.of(paths=["/data", "/x"]), True),
        (SnapshotFilter.of(paths=["/x"]), False),
        # Command-line text of an undecodable path stands for its bytes.
        (SnapshotFilter.of(paths=["/\udcff"]), True),
    ]
    for selection, expected in cases:
        assert selection.matches(snap) is expected, selection
        assert selection.matches(ref) is expected, selection


def test_check_state_dir_and_its_old_name(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    backend = LocalBackend(root)
    backend.create()
    repo_id = healthy(backend).open().config.repo_id.hex()

    def check(*args: str | Path) -> tuple[int, str]:
        r = run_cas("-r", root, "--json", "check", "--read-data", *args)
        assert "Traceback" not in r.err
        return r.code, r.err

    code, err = check("--state-dir", tmp_path / "new")
    assert code == 0 and "deprecated" not in err, err
    state = json.loads((tmp_path / "new" / repo_id / "check-state.json").read_text())
    assert len(state["packs"]) == 2
    code, err = check("--cache-dir", tmp_path / "old")
    assert code == 0 and "check --cache-dir is deprecated: use check --state-dir" in err
    assert (tmp_path / "old" / repo_id / "check-state.json").is_file()
    code, err = check("--cache-dir", tmp_path / "old", "--state-dir", tmp_path / "new")
    assert code == 2 and "give only --state-dir" in err
    assert "--state-dir" in run_cas("check", "--help").out
    assert "--cache-dir" not in run_cas("check", "--help").out
