"""The ``cas`` command group and the error boundary that turns exceptions into exit codes."""

from __future__ import annotations

import gc
import os
import sys
import traceback

import click

from cas import __version__
from cas.cli.common import Globals, Output
from cas.cli.lazy import LazyCommand, LazyGroup
from cas.cli.options import accept_global_options, global_options
from cas.errors import EXIT_ERROR, EXIT_UNTRUSTED, EXIT_USAGE, EXIT_WARNINGS, CasError

# The Globals of each invocation of the group (one per main()): read after the command
# returns, to turn skipped damaged objects into exit code 3.
_runs: list[Globals] = []


# Every command: its name, where it is defined, and its short help for ``cas --help``
# (click's own short help of the command; tests/test_cli_lazy.py checks they agree).
# A command's module is imported only when the command is used.
COMMANDS: dict[str, LazyCommand] = {
    "backup": LazyCommand(
        "cas.cli.cmd_backup",
        "backup",
        "Back up PATHs into a new snapshot; only data the repository lacks is uploaded.",
    ),
    "cat": LazyCommand(
        "cas.cli.cmd_cat",
        "cat",
        "Print one object: config, or key|index|pack|blob|tree|snapshot ID (unique prefix).",
    ),
    "check": LazyCommand(
        "cas.cli.cmd_check",
        "check_cmd",
        "Check the repository's structure and, optionally, its data.",
    ),
    "copy": LazyCommand(
        "cas.cli.cmd_copy",
        "copy",
        "Copy SNAPSHOTS (default: all) to the repository --to, sending only blobs it lacks.",
    ),
    "diff": LazyCommand(
        "cas.cli.cmd_diff",
        "diff",
        "List what changed from SNAPSHOT1 to SNAPSHOT2, restic's way: + added, - removed, "
        "M content modified, T type changed, U metadata only (with --metadata), then a "
        "summary of counts and bytes added and removed.",
    ),
    "dump": LazyCommand(
        "cas.cli.cmd_dump",
        "dump",
        "Write PATH of a snapshot to stdout: a file's bytes as they are (also the /stdin "
        "file of a `backup --stdin`), a directory (or a symlink, device, fifo) as a tar or "
        "zip archive.",
    ),
    "find": LazyCommand(
        "cas.cli.cmd_find",
        "find",
        "Find entries in all snapshots (or --snapshot ..., --host/--tag/--path) whose name "
        "matches a PATTERN, grouped per snapshot, oldest first.",
    ),
    "forget": LazyCommand(
        "cas.cli.cmd_forget",
        "forget",
        "Remove snapshots: those no --keep-* rule keeps, or the IDs given.",
    ),
    "init": LazyCommand("cas.cli.cmd_init", "init", "Create a new repository at -r/--repo."),
    "key": LazyCommand(
        "cas.cli.cmd_key",
        "key",
        "Manage key files (each opens the repository with its own password).",
    ),
    "ls": LazyCommand(
        "cas.cli.cmd_ls",
        "ls",
        "List the entries at and below PATHs of a snapshot (default: all of it, or of "
        "SNAPSHOT:/path).",
    ),
    "mount": LazyCommand(
        "cas.cli.cmd_mount",
        "mount",
        "Browse snapshots read-only at MOUNTPOINT until Ctrl-C, SIGTERM or `fusermount3 -u`.",
    ),
    "prune": LazyCommand(
        "cas.cli.cmd_prune",
        "prune",
        "Delete data that no snapshot needs, safely beside running backups.",
    ),
    "repair": LazyCommand(
        "cas.cli.cmd_repair",
        "repair",
        "Repair a damaged repository (run 'cas check' first).",
    ),
    "restore": LazyCommand(
        "cas.cli.cmd_restore",
        "restore",
        "Restore SNAPSHOT into --target: a snapshot of /a/b lands in TARGET/a/b.",
    ),
    "snapshots": LazyCommand("cas.cli.cmd_snapshots", "snapshots", "List snapshots, oldest first."),
    "stats": LazyCommand(
        "cas.cli.cmd_stats",
        "stats",
        "Sizes of the snapshots given (default: the whole repository).",
    ),
    "tag": LazyCommand(
        "cas.cli.cmd_tag",
        "tag",
        "Add, remove or set tags of the snapshots given (all that match the filters if none).",
    ),
    "trust": LazyCommand(
        "cas.cli.cmd_trust",
        "trust",
        "Show what changed in the storage behind this client's back, or accept it.",
    ),
    "unlock": LazyCommand(
        "cas.cli.cmd_repair",
        "unlock",
        "Remove stale locks (those of dead or silent processes); rarely needed.",
    ),
}


@click.group(
    cls=LazyGroup,
    table=COMMANDS,
    prepare=accept_global_options,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="cas")
@global_options
@click.pass_context
def cli(ctx: click.Context, g: Globals) -> None:
    """cas: deduplicating, encrypted snapshot backups to a local directory or S3.

    Exit codes: 0 ok, 1 error, 2 usage, 3 finished with warnings, 10 no repository,
    11 repository locked, 12 wrong password, 13 the storage changed behind this
    client's back (cas trust), 14 the key is write-only, 130 interrupted.
    """
    ctx.obj = g
    _runs.append(g)

    def cleanup() -> None:
        for fn in reversed(g.cleanups):
            fn()

    ctx.call_on_close(cleanup)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group and map every failure to one line and an exit code."""
    # A backup or restore makes millions of short-lived, acyclic objects (stat
    # results, nodes, decoded trees); the default threshold (700) runs the cycle
    # collector every few directories for nothing.  Objects from the imports are
    # moved out of its way once.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    _runs.clear()
    try:
        cli.main(args=argv, prog_name="cas", standalone_mode=False)
        for g in _runs:
            out = Output(g)  # a command that printed nothing still warns
            g.warn_damaged(out)
            g.warn_not_deleted(out)
            g.warn_untrusted(out)
        if any(g.untrusted for g in _runs):
            sys.exit(EXIT_UNTRUSTED)
        if any(g.degraded for g in _runs):
            sys.exit(EXIT_WARNINGS)
    except click.exceptions.Abort:
        click.echo("cas: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if e.exit_code == 2 else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except CasError as e:
        for g in _runs:  # what the storage changed may be why it failed: said first
            g.warn_untrusted(Output(g))
        click.echo(f"cas: {e}", err=True)
        sys.exit(EXIT_UNTRUSTED if any(g.untrusted for g in _runs) else e.exit_code)
    except KeyboardInterrupt:
        click.echo("cas: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except OSError as e:
        click.echo(f"cas: {_describe_os_error(e)}", err=True)
        sys.exit(EXIT_ERROR)
    except Exception as e:  # the last line of defence: one line, never a traceback
        if os.environ.get("CAS_DEBUG"):
            traceback.print_exc()
        click.echo(
            f"cas: internal error: {type(e).__name__}: {e} (set CAS_DEBUG=1 for details)",
            err=True,
        )
        sys.exit(EXIT_ERROR)
    sys.exit(0)


def _describe_os_error(e: OSError) -> str:
    where = f": {os.fsdecode(e.filename)}" if e.filename else ""
    return f"{e.strerror or e}{where}"
