"""``cas trust``: what the storage changed behind this client's back, and accepting it.

The client state (spec §13.6) finds a snapshot this client saw that is gone
without a tombstone, a repository older than a generation it saw, a replayed
index file, or another repository at a known location.  Every command stops
on such a finding (exit 13) and prune and forget delete nothing; this command
lists them, and ``--accept`` takes the repository as it now is (a bucket
restored from a backup, a repository moved on purpose) and records that in a
new generation, so other clients accept it too.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from cas.cli.common import Globals, Output, pass_globals
from cas.errors import EXIT_UNTRUSTED


@click.command()
@click.option(
    "--accept",
    is_flag=True,
    help="Accept the repository as it is now (a legitimate change, e.g. a restored bucket).",
)
@pass_globals
def trust(g: Globals, accept: bool) -> None:
    """Show what changed in the storage behind this client's back, or accept it.

    Exit 13 when something did and --accept was not given.
    """
    out = Output(g)
    repo = g.open()
    repo.generations.strict = False
    with g.locked(repo, exclusive=False, command="trust"):
        found = [f.as_dict() for f in repo.check_trust()]
        if accept:
            repo.accept_changes()
    doc: dict[str, Any] = {
        "findings": found,
        "accepted": accept,
        "generation": repo.generations.state.generation,
    }
    # The findings are the answer (-q does not hide them); "nothing changed" is not.
    out.emit(doc, lambda: _human(out, doc), answer=bool(found))
    if found and not accept:
        sys.exit(EXIT_UNTRUSTED)


def _human(out: Output, doc: dict[str, Any]) -> None:
    for f in doc["findings"]:
        out.line(f"{f['kind']}: {f['message']}")
    if doc["accepted"]:
        out.line(f"accepted: generation {doc['generation']} records the repository as it is")
    elif not doc["findings"]:
        out.line(f"nothing changed behind this client's back (generation {doc['generation']})")
