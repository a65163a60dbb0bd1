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
    cmd_forget,
    cmd_init,
    cmd_key,
    cmd_mount,
    cmd_prune,
    cmd_repair,
    cmd_restore,
    cmd_snapshots,
    cmd_stats,
    cmd_tag,
)
from cas.cli.common import Globals
from cas.errors import EXIT_ERROR, EXIT_USAGE, CasError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cas")
@click.option(
    "-r", "--repo", envvar="CAS_REPOSITORY", help="Repository: a path or s3://bucket/prefix."
)
@click.option(
    "--password-file", envvar="CAS_PASSWORD_FILE", help="Read the password from this file."
)
@click.option(
    "--password-command",
    envvar="CAS_PASSWORD_COMMAND",
    help="Run this command and use its output as the password.",
)
@click.option("--json", "json_", is_flag=True, help="Machine-readable output on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no human summary.")
@click.option(
    "--s3-endpoint", envvar="AWS_ENDPOINT_URL", help="S3 endpoint URL (S3-compatible stores)."
)
@click.option(
    "--s3-path-style", is_flag=True, envvar="CAS_S3_PATH_STYLE", help="Path-style S3 addressing."
)
@click.option(
    "--storage-class",
    envvar="CAS_S3_STORAGE_CLASS",
    metavar="CLASS",
    help="S3 storage class of data packs (e.g. STANDARD_IA, GLACIER_IR); the rest stays STANDARD.",
)
@click.option(
    "--connections",
    type=click.IntRange(1, 64),
    envvar="CAS_CONNECTIONS",
    help="Parallel uploads (default: CPU count) and restore reads (default: 4).",
)
@click.option("--no-lock", is_flag=True, help="Do not lock the repository (read-only use only).")
@click.option("--retry-lock", type=float, default=0.0, metavar="SECONDS", help="Wait for a lock.")
@click.option("--no-cache", is_flag=True, envvar="CAS_NO_CACHE", help="Do not use the local cache.")
@click.option(
    "--cache-dir", envvar="CAS_CACHE_DIR", help="Local cache directory (default ~/.cache/cas)."
)
@click.pass_context
def cli(
    ctx: click.Context,
    repo: str | None,
    password_file: str | None,
    password_command: str | None,
    json_: bool,
    quiet: bool,
    s3_endpoint: str | None,
    s3_path_style: bool,
    storage_class: str | None,
    connections: int | None,
    no_lock: bool,
    retry_lock: float,
    no_cache: bool,
    cache_dir: str | None,
) -> None:
    """cas: deduplicating, encrypted snapshot backups to a local directory or S3.

    Exit codes: 0 ok, 1 error, 2 usage, 3 finished with warnings, 10 no repository,
    11 repository locked, 12 wrong password.
    """
    g = Globals(
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
    )
    ctx.obj = g

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
):
    module.register(cli)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group and map every failure to one line and an exit code."""
    # A backup or restore makes millions of short-lived, acyclic objects (stat
    # results, nodes, decoded trees); the default threshold (700) runs the cycle
    # collector every few directories for nothing.  Objects from the imports are
    # moved out of its way once.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        cli.main(args=argv, prog_name="cas", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("cas: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if e.exit_code == 2 else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except CasError as e:
        click.echo(f"cas: {e}", err=True)
        sys.exit(e.exit_code)
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
