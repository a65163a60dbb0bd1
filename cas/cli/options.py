"""Option groups: options declared once and applied to every command that takes them.

As restic's commands embed ``filter.ExcludePatternOptions`` and borg's share
``define_exclusion_group``: a group is a decorator that adds its options to
a command and hands the command one value built from them (a ``Globals``,
an :class:`ExcludeOptions`, a :class:`~cas.manage.policy.SnapshotFilter`)
in place of the separate parameters.  The decorator goes where the options
are to appear in ``--help``, like a ``click.option`` would.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from cas.cli.common import Globals
from cas.errors import UsageError
from cas.fs.patterns import PatternSet, read_pattern_file
from cas.selection import SnapshotFilter

if TYPE_CHECKING:  # imported by backup_options: only backup needs the archiver
    from cas.backup.archiver import BackupOptions

F = TypeVar("F", bound=Callable[..., Any])
_Decorator = Callable[[Any], Any]


def option_group(
    dest: str, build: Callable[..., Any], options: Sequence[_Decorator]
) -> Callable[[F], F]:
    """A decorator adding ``options`` (in this order) to a command, whose callback then
    gets ``dest=build(**values of those options)`` instead of the options themselves."""

    def decorate(f: F) -> F:
        names: list[str] = []

        @functools.wraps(f)
        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs[dest] = build(**{name: kwargs.pop(name) for name in names})
            return f(*args, **kwargs)

        # The parameters of the decorators below this one, and then this group's.
        params: list[click.Parameter] = list(getattr(f, "__click_params__", ()))
        setattr(call, "__click_params__", params)  # noqa: B010 (not a plain attribute to mypy)
        below = len(params)
        for option in reversed(options):  # click lists parameters in reverse order of adding
            option(call)
        names.extend(p.name for p in params[below:] if p.name)
        return cast(F, call)

    return decorate


# -- global options (the ``cas`` group) ---------------------------------------------

# Each global option: its flags, its click settings, and the Globals field it sets.
_GLOBAL_SPECS: tuple[tuple[tuple[str, ...], dict[str, Any], str], ...] = (
    (
        ("-r", "--repo"),
        {"envvar": "CAS_REPOSITORY", "help": "Repository: a path or s3://bucket/prefix."},
        "repo",
    ),
    (
        ("--password-file",),
        {"envvar": "CAS_PASSWORD_FILE", "help": "Read the password from this file."},
        "password_file",
    ),
    (
        ("--password-command",),
        {
            "envvar": "CAS_PASSWORD_COMMAND",
            "help": "Run this command and use its output as the password.",
        },
        "password_command",
    ),
    (
        ("--json", "json_"),
        {"is_flag": True, "envvar": "CAS_JSON", "help": "Machine-readable output on stdout."},
        "json",
    ),
    (
        ("-q", "--quiet"),
        {"is_flag": True, "envvar": "CAS_QUIET", "help": "No progress and no human summary."},
        "quiet",
    ),
    (
        ("-v", "--verbose"),
        {
            "count": True,
            "envvar": "CAS_VERBOSE",
            "help": "More output: storage retries and lock waits as they happen, also off "
            "a terminal (with --json: retry and lock_wait lines); backup -v lists new and "
            "changed entries (-vv: all, with --json as verbose_status lines).",
        },
        "verbose",
    ),
    (
        ("--s3-endpoint",),
        {
            "envvar": ["CAS_S3_ENDPOINT", "AWS_ENDPOINT_URL"],
            "help": "S3 endpoint URL (S3-compatible stores).",
        },
        "s3_endpoint",
    ),
    (
        ("--s3-path-style",),
        {"is_flag": True, "envvar": "CAS_S3_PATH_STYLE", "help": "Path-style S3 addressing."},
        "s3_path_style",
    ),
    (
        ("--storage-class",),
        {
            "envvar": "CAS_S3_STORAGE_CLASS",
            "metavar": "CLASS",
            "help": "S3 storage class of data packs (e.g. STANDARD_IA, GLACIER_IR); "
            "the rest stays STANDARD.",
        },
        "s3_storage_class",
    ),
    (
        ("--connections",),
        {
            "type": click.IntRange(1, 64),
            "envvar": "CAS_CONNECTIONS",
            "help": "Parallel uploads (default: CPU count) and restore reads (default: 4).",
        },
        "connections",
    ),
    (
        ("--no-lock",),
        {
            "is_flag": True,
            "envvar": "CAS_NO_LOCK",
            "help": "Do not lock the repository (read-only use only).",
        },
        "no_lock",
    ),
    (
        ("--retry-lock",),
        {
            "type": float,
            "default": 0.0,
            "envvar": "CAS_RETRY_LOCK",
            "metavar": "SECONDS",
            "help": "Wait for a lock.",
        },
        "lock_wait",
    ),
    (
        ("--no-cache",),
        {"is_flag": True, "envvar": "CAS_NO_CACHE", "help": "Do not use the local cache."},
        "no_cache",
    ),
    (
        ("--cache-dir",),
        {"envvar": "CAS_CACHE_DIR", "help": "Local cache directory (default ~/.cache/cas)."},
        "cache_dir",
    ),
)
GLOBAL_OPTIONS: tuple[_Decorator, ...] = tuple(
    click.option(*decls, **settings) for decls, settings, _ in _GLOBAL_SPECS
)


def accept_global_options(command: click.Command) -> None:
    """Let the global options also follow the command name (``cas snapshots --json``,
    ``cas backup SRC -r REPO``), as restic does, for ``command`` and every command
    of a group.

    Given after the name, an option overrides the same option given before it or
    in the environment.  A command's own option of the same name (``check``'s
    hidden ``--cache-dir``) keeps its meaning there.
    """
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_global_options(sub)
        return
    taken = {flag for p in command.params for flag in [*p.opts, *p.secondary_opts]}
    added: dict[str, str] = {}  # parameter name -> Globals field
    for decls, settings, target in _GLOBAL_SPECS:
        if any(d in taken for d in decls if d.startswith("-")):
            continue
        # No environment variable and no default here: only what is typed after the
        # command name may override the value the group already took.
        here = {k: v for k, v in settings.items() if k not in ("envvar", "default")}
        option = click.Option(list(decls), default=None, **here)
        assert option.name is not None
        command.params.append(option)
        added[option.name] = target
    inner = command.callback
    if inner is None or not added:
        return

    @functools.wraps(inner)
    def callback(*args: Any, **kwargs: Any) -> Any:
        g = click.get_current_context().find_object(Globals)
        for name, target in added.items():
            value = kwargs.pop(name)
            # A flag not given is False and a count (-v) not given the int 0: neither
            # overrides what came before the command name.
            not_given = value is None or value is False or (type(value) is int and value == 0)
            if not not_given and g is not None:
                setattr(g, target, value)
        return inner(*args, **kwargs)

    command.callback = callback


def _globals(
    repo: str | None,
    password_file: str | None,
    password_command: str | None,
    json_: bool,
    quiet: bool,
    verbose: int,
    s3_endpoint: str | None,
    s3_path_style: bool,
    storage_class: str | None,
    connections: int | None,
    no_lock: bool,
    retry_lock: float,
    no_cache: bool,
    cache_dir: str | None,
) -> Globals:
    return Globals(
        repo,
        password_file,
        password_command,
        json_,
        quiet,
        s3_endpoint,
        s3_path_style,
        no_lock,
        retry_lock,
        no_cache,
        cache_dir,
        s3_storage_class=storage_class,
        connections=connections,
        verbose=verbose,
    )


global_options = option_group("g", _globals, GLOBAL_OPTIONS)
"""The options given before the command name; the callback gets ``g: Globals``."""


# -- exclude options (backup) --------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``500k``, ``10M``, ``2G`` -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise UsageError(f"not a size: {text!r} (examples: 500k, 10M, 2G)") from None


EXCLUDE_OPTIONS: tuple[_Decorator, ...] = (
    click.option("--exclude", "-e", multiple=True, help="Exclude a pattern (repeatable)."),
    click.option("--iexclude", multiple=True, help="Like --exclude, ignoring case."),
    click.option("--exclude-file", multiple=True, help="Read exclude patterns from a file."),
    click.option("--iexclude-file", multiple=True, help="Like --exclude-file, ignoring case."),
    click.option(
        "--exclude-if-present",
        multiple=True,
        help="Skip the contents of directories holding this file.",
    ),
    click.option(
        "--exclude-caches",
        is_flag=True,
        help="Skip the contents of directories with a valid CACHEDIR.TAG.",
    ),
    click.option(
        "--one-file-system", "-x", is_flag=True, help="Do not cross filesystem boundaries."
    ),
    click.option(
        "--exclude-larger-than", metavar="SIZE", help="Skip files larger than SIZE (e.g. 2G)."
    ),
)


@dataclass(frozen=True)
class ExcludeOptions:
    """What the exclude options say, as given (files unread, sizes unparsed)."""

    exclude: tuple[str, ...] = ()
    iexclude: tuple[str, ...] = ()
    exclude_file: tuple[str, ...] = ()
    iexclude_file: tuple[str, ...] = ()
    exclude_if_present: tuple[str, ...] = ()
    exclude_caches: bool = False
    one_file_system: bool = False
    exclude_larger_than: str | None = None

    def backup_options(self, *, force: bool = False) -> BackupOptions:
        """The archiver's rules: pattern files read, the size parsed (UsageError if not)."""
        return self.backup_options_later(force=force)()

    def backup_options_later(self, *, force: bool = False) -> Callable[[], BackupOptions]:
        """``backup_options`` in two steps: the pattern files are read and the size parsed
        now (UsageError if not), the rules made (importing the archiver) when the
        function returned is called: ``cas backup`` imports the archiver once the
        repository is unlocked, not before its key derivation."""
        pats = [os.fsencode(p) for p in self.exclude]
        ipats = [os.fsencode(p) for p in self.iexclude]
        try:
            for f in self.exclude_file:
                pats += read_pattern_file(f)
            for f in self.iexclude_file:
                ipats += read_pattern_file(f)
        except OSError as e:
            raise UsageError(f"cannot read exclude file {e.filename}: {e.strerror}") from None
        larger = self.exclude_larger_than
        larger_than = parse_size(larger) if larger else None

        def build() -> BackupOptions:
            from cas.backup.archiver import BackupOptions

            return BackupOptions(
                excludes=PatternSet(pats),
                iexcludes=PatternSet(ipats, ignore_case=True),
                exclude_if_present=[os.fsencode(n) for n in self.exclude_if_present],
                exclude_caches=self.exclude_caches,
                one_file_system=self.one_file_system,
                exclude_larger_than=larger_than,
                force=force,
            )

        return build


exclude_options = option_group("excludes", ExcludeOptions, EXCLUDE_OPTIONS)
"""--exclude ... --exclude-larger-than; the callback gets ``excludes: ExcludeOptions``."""


# -- snapshot filter (snapshots, forget, tag, stats, mount) --------------------------


LATEST_AMONG = "'latest' among"
"""``only`` for commands given one snapshot: the options narrow 'latest'."""


def snapshot_filter_options(*, only: str = "Only", paths: bool = True) -> Callable[[F], F]:
    """--host, --tag and (unless ``paths`` is false) --path, each repeatable; the
    callback gets ``selection: SnapshotFilter``.  ``only`` starts the help texts
    ("Only consider" where other options pick among the snapshots chosen)."""
    options = [
        click.option("--host", multiple=True, help=f"{only} snapshots of this host."),
        click.option(
            "--tag",
            multiple=True,
            help=f"{only} snapshots with this tag (a,b: with both; repeated: with either).",
        ),
    ]
    if paths:
        options.append(
            click.option(
                "--path",
                "snapshot_path",  # not "path": dump has an argument of that name
                multiple=True,
                help=f"{only} snapshots that include this path.",
            )
        )
    return option_group("selection", _selection, options)


def _selection(
    host: tuple[str, ...], tag: tuple[str, ...], snapshot_path: tuple[str, ...] = ()
) -> SnapshotFilter:
    return SnapshotFilter.of(host, tag, snapshot_path)


# -- helper processes (restore's writers, check's verifiers) ---------------------------


@dataclass(frozen=True)
class Workers:
    """``--workers``: how many helper processes, and whether the user chose."""

    count: int | None  # None: one per usable core

    @property
    def explicit(self) -> bool:
        """Given on the command line or in CAS_WORKERS: used whatever the job's size."""
        return self.count is not None


def _workers(workers: int | None) -> Workers:
    return Workers(workers)


def workers_option(
    what: str, default: str = "one per usable core, when there are two or more"
) -> Callable[[F], F]:
    """``--workers N`` (CAS_WORKERS): ``what`` runs in N helper processes (``default``:
    how many without the option)."""
    return option_group(
        "workers",
        _workers,
        [
            click.option(
                "--workers",
                type=click.IntRange(min=0),
                default=None,
                envvar="CAS_WORKERS",
                help=f"Processes that {what} (default: {default}; 0: all in this "
                "process). Env: CAS_WORKERS.",
            )
        ],
    )
