"""``cas init``: create a repository."""

from __future__ import annotations

import os
import sys

import click

from cas.backend import create_bucket as make_bucket
from cas.chunking.chunker import ALGORITHMS, ChunkerParams
from cas.cli.common import Globals, Output, kdf_options, kdf_params, new_password, pass_globals
from cas.format.config import DEFAULT_PACK_SIZE
from cas.repo import init_repository


@click.command()
@click.option("--new-password-file", help="Read the new repository password from this file.")
@click.option(
    "--pack-size",
    type=int,
    default=DEFAULT_PACK_SIZE,
    show_default=True,
    help="Target pack size in bytes.",
)
@click.option("--chunk-min", type=int, default=ChunkerParams.min_size, hidden=True)
@click.option("--chunk-avg", type=int, default=ChunkerParams.avg_size, hidden=True)
@click.option("--chunk-max", type=int, default=ChunkerParams.max_size, hidden=True)
# The older, chosen-file-breakable algorithm: for tests and tools/chunk_attack.py's control.
@click.option(
    "--chunker", type=click.Choice(ALGORITHMS), default=ChunkerParams.algorithm, hidden=True
)
@click.option(
    "--copy-keys-from",
    metavar="REPO",
    help="Share blob IDs and chunking with REPO, so 'cas copy' moves only missing data.",
)
@click.option("--from-password-file", help="Password file for --copy-keys-from.")
@click.option(
    "--padding",
    type=click.Choice(["none", "padme"]),
    default="none",
    show_default=True,
    help="Pad every stored blob (Padmé: at most 12% larger) so its size tells the "
    "storage provider less.",
)
# Test-only: a version 1 repository as cas 0.1 made it (exact ranged reads: the
# chosen-file attack harness, tools/chunk_attack.py, models that worst case).
@click.option("--format-version", type=click.IntRange(1, 2), default=2, hidden=True)
@click.option("--create-bucket", is_flag=True, help="Create the S3 bucket if it does not exist.")
@click.option(
    "--force", is_flag=True, help="Create the repository even where other files are stored."
)
@kdf_options
@pass_globals
def init(
    g: Globals,
    new_password_file: str | None,
    copy_keys_from: str | None,
    from_password_file: str | None,
    create_bucket: bool,
    padding: str,
    format_version: int,
    force: bool,
    pack_size: int,
    chunk_min: int,
    chunk_avg: int,
    chunk_max: int,
    chunker: str,
    kdf_opslimit: int | None,
    kdf_memlimit: int | None,
    test_weak_kdf: bool,
) -> None:
    """Create a new repository at -r/--repo.

    The password comes from --new-password-file, CAS_PASSWORD, --password-file,
    --password-command or a prompt.
    """
    out = Output(g)
    kdf = kdf_params(kdf_opslimit, kdf_memlimit, test_weak_kdf)  # refused before anything else
    backend = g.backend()
    g.cleanups.append(backend.close)
    if create_bucket:
        make_bucket(backend)
    password = _init_password(g, new_password_file)
    params = ChunkerParams(chunk_min, chunk_avg, chunk_max, chunker)
    params.validate()
    source = g.open_other(copy_keys_from, from_password_file) if copy_keys_from else None
    repo = init_repository(
        backend,
        password,
        chunker=params,
        pack_size=pack_size,
        kdf=kdf,
        share_ids_with=source,
        among_other_files=force,
        padding=None if padding == "none" else padding,
        version=format_version,
    )
    repo.generations.client = g.options().state()
    repo.generations.bind()  # this client created it: the location is now bound to it
    doc = {
        "repository": backend.location,
        "id": repo.config.repo_id.hex(),
        "key": repo.key_id.hex(),
        "version": repo.config.version,
        "padding": repo.config.padding or "none",
    }
    short = repo.config.repo_id.hex()[:8]
    out.emit(doc, lambda: out.line(f"created repository {short} at {backend.location}"))


LOST_PASSWORD = (
    "cas cannot recover a lost password: without it (or another key file's password, see "
    "'cas key add'), the data in this repository cannot be read. Keep it safe."
)


def _init_password(g: Globals, new_password_file: str | None) -> bytes:
    """The new repository's password; typed twice when it comes from the terminal."""
    if new_password_file:
        return new_password(new_password_file)
    given = g.password_file or g.password_command or "CAS_PASSWORD" in os.environ
    if given or not sys.stdin.isatty():
        return g.password("new password")
    click.echo(LOST_PASSWORD, err=True)
    return new_password(None)
