"""``cas key list|add|remove|passwd``: manage the key files that open a repository."""

from __future__ import annotations

from typing import Any

import click

from cas.cli.common import (
    Globals,
    Output,
    kdf_options,
    kdf_params,
    new_password,
    one_line,
    pass_globals,
)
from cas.errors import UsageError


@click.group()
def key() -> None:
    """Manage key files (each opens the repository with its own password)."""


@key.command("list")
@pass_globals
def key_list(g: Globals) -> None:
    """List key files; the one that opened the repository is marked."""
    out = Output(g)
    repo = g.open(write_only=True)  # key files are not sealed under the data key
    keys = repo.list_keys()
    docs: list[dict[str, Any]] = [
        {
            "id": k.key_id.hex(),
            "created": k.created,
            "hostname": k.hostname,
            "username": k.username,
            "type": k.type,
            "current": k.current,
        }
        for k in keys
    ]

    def human() -> None:
        out.line(f"{'':1} {'ID':8}  {'created':20}  {'user@host'}")
        for d in docs:
            mark = "*" if d["current"] else " "
            who = f"{one_line(d['username'])}@{one_line(d['hostname'])}"
            kind = "" if d["type"] == "full" else f"  ({one_line(d['type'])})"
            out.line(f"{mark} {d['id'][:8]}  {d['created']:20}  {who}{kind}")

    out.emit({"keys": docs}, human, answer=True)


@key.command("add")
@click.option("--new-password-file", help="Read the new key's password from this file.")
@click.option(
    "--write-only",
    is_flag=True,
    help="A key that can back up but not read, list contents, delete or add keys "
    "(spec §4.4); only a full key adds one.",
)
@kdf_options
@pass_globals
def key_add(
    g: Globals,
    new_password_file: str | None,
    write_only: bool,
    kdf_opslimit: int | None,
    kdf_memlimit: int | None,
    test_weak_kdf: bool,
) -> None:
    """Add a key file with a new password (--write-only: a key that backs up only)."""
    out = Output(g)
    kdf = kdf_params(kdf_opslimit, kdf_memlimit, test_weak_kdf)
    repo = g.open()
    kid = repo.add_key(new_password(new_password_file), kdf, write_only=write_only)
    kind = "write-only" if write_only else "full"
    out.emit(
        {"id": kid.hex(), "type": kind},
        lambda: out.line(f"added {'write-only ' if write_only else ''}key {kid.hex()[:8]}"),
    )


@key.command("remove")
@click.argument("key_id")
@pass_globals
def key_remove(g: Globals, key_id: str) -> None:
    """Remove the key file KEY_ID (a unique prefix is enough)."""
    out = Output(g)
    repo = g.open()
    # Every key file by name, readable or not: a damaged one must be removable too.
    matches = [k for k in repo.key_ids() if k.hex().startswith(key_id.lower())]
    if len(matches) != 1:
        raise UsageError(f"{key_id!r} matches {len(matches)} key files; give a unique prefix")
    repo.remove_key(matches[0])
    out.emit(
        {"id": matches[0].hex()},
        lambda: out.line(f"removed key {matches[0].hex()[:8]}"),
    )


@key.command("passwd")
@click.option("--new-password-file", help="Read the new password from this file.")
@kdf_options
@pass_globals
def key_passwd(
    g: Globals,
    new_password_file: str | None,
    kdf_opslimit: int | None,
    kdf_memlimit: int | None,
    test_weak_kdf: bool,
) -> None:
    """Change the password of the key file in use (writes the new one, then removes the old)."""
    out = Output(g)
    kdf = kdf_params(kdf_opslimit, kdf_memlimit, test_weak_kdf)
    repo = g.open(write_only=True)  # a key file of the same kind, under a new password
    old = repo.key_id
    kid = repo.change_password(new_password(new_password_file), kdf)
    out.emit(
        {"old": old.hex(), "id": kid.hex()},
        lambda: out.line(f"changed password: key {old.hex()[:8]} replaced by {kid.hex()[:8]}"),
    )
