"""The ``cas`` command group and the error boundary that turns exceptions into exit codes."""

from __future__ import annotations

import gc
import os
import sys
import traceback

import click

from cas import __version__
from cas.cli import (
    cmd_backup,
    cmd_cat,
    cmd_check,
    cmd_copy,
    cmd_diff,
    cmd_dump,
    cmd_find,
    cmd_forget,
    cmd_init,
    cmd_key,
    cmd_ls,
    cmd_mount,
    cmd_prune,
    cmd_repair,
    cmd_restore,
    cmd_snapshots,
    cmd_stats,
    cmd_tag,
    cmd_trust,
)
from cas.cli.common import Globals, Output
from cas.cli.options import accept_global_options, global_options
from cas.errors import EXIT_ERROR, EXIT_UNTRUSTED, EXIT_USAGE, EXIT_WARNINGS, CasError

# The Globals of each invocation of the group (one per main()): read after the command
# returns, to turn skipped damaged objects into exit code 3.
_runs: list[Globals] = []


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


for module in (
    cmd_init,
    cmd_key,
    cmd_backup,
    cmd_restore,
    cmd_snapshots,
    cmd_cat,
    cmd_prune,
    cmd_repair,
    cmd_copy,
    cmd_forget,
    cmd_tag,
    cmd_stats,
    cmd_check,
    cmd_mount,
    cmd_ls,
    cmd_diff,
    cmd_dump,
    cmd_find,
    cmd_trust,
):
    module.register(cli)
accept_global_options(cli)


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
