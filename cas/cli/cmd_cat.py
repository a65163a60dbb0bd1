"""``cas cat``: print repository objects as JSON, for debugging and for other implementations."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from cas.cli.common import Globals, Output, json_default, pass_globals
from cas.crypto import BlobType
from cas.errors import CasError, IntegrityError, UsageError
from cas.format import keyfile as keyfmt
from cas.repo import Repository, layout, read_verified
from cas.walker import load_tree

KINDS = ("config", "key", "index", "pack", "blob", "tree", "snapshot")


@click.command()
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("object_id", required=False)
@pass_globals
def cat(g: Globals, kind: str, object_id: str | None) -> None:
    """Print one object: config, or key|index|pack|blob|tree|snapshot ID (unique prefix).

    Blobs print their raw plaintext; everything else prints JSON on one line, bytes
    as hex.  With --json a blob is a JSON object too (its plaintext as hex).
    """
    out = Output(g)

    def _print(doc: dict[str, Any]) -> None:
        if out.json:
            out.emit({"kind": kind, "object": doc})
        else:  # the object is the answer, whatever -q says
            click.echo(json.dumps(doc, sort_keys=True, default=json_default))

    # A write-only key reads what is under the index key (key files are not sealed at
    # all) and knows the config's document; blobs, trees and snapshots it cannot open.
    repo = g.open(reading=True, write_only=kind in ("config", "key", "index", "pack"))
    if kind == "config":
        c = repo.config
        _print(
            {
                "version": c.version,
                "padding": c.padding or "none",
                "id": c.repo_id.hex(),
                "pack_size": c.pack_size,
                "chunker": dataclasses.asdict(c.chunker),
            }
        )
        return
    if not object_id:
        raise UsageError(f"cat {kind} needs an ID")
    if kind == "snapshot":
        sid, snap = repo.find_snapshot(object_id)
        _print({"id": sid, **dataclasses.asdict(snap)})
    elif kind == "key":
        name = _resolve(repo, layout.KEYS, object_id)
        kf = keyfmt.decode_keyfile(read_verified(repo.backend, name, "key file"))
        _print(
            {
                "id": name.rsplit("/", 1)[1],
                "type": kf.type,
                "created": kf.created,
                "hostname": kf.hostname,
                "username": kf.username,
                "kdf": {
                    "algorithm": "argon2id",
                    "opslimit": kf.kdf.opslimit,
                    "memlimit": kf.kdf.memlimit,
                    "salt": kf.kdf.salt,
                },
            }
        )
    elif kind == "index":
        name = _resolve(repo, layout.INDEX, object_id)
        idx = repo.read_index_file(bytes.fromhex(name.rsplit("/", 1)[1]))
        _print(
            {
                "supersedes": idx.supersedes,
                "packs": [
                    {"id": p, "blobs": [_entry(e) for e in es]} for p, es in idx.packs.items()
                ],
            }
        )
    elif kind == "pack":
        name = _resolve(repo, layout.DATA, object_id)
        pid = bytes.fromhex(name.rsplit("/", 1)[1])
        _print({"id": pid, "blobs": [_entry(e) for e in repo.read_pack_header(pid)]})
    else:
        bid = _blob_id(object_id)
        if kind == "tree":
            nodes = load_tree(repo, bid)
            _print({"nodes": [n.to_doc() for n in nodes]})
        else:
            data = _load_any(repo, bid)
            if out.json:
                _print({"id": bid, "length": len(data), "data_hex": data})
            else:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()


def _entry(e: Any) -> dict[str, Any]:
    return {
        "id": e.blob_id,
        "type": e.type.name.lower(),
        "offset": e.offset,
        "length": e.length,
        "raw_length": e.raw_length,
    }


def _load_any(repo: Repository, bid: bytes) -> bytes:
    try:
        return repo.load_blob(BlobType.DATA, bid)
    except IntegrityError:
        return repo.load_blob(BlobType.TREE, bid)


def _blob_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a hex blob ID") from None
    if len(raw) != 32:
        raise UsageError("blob IDs must be given in full (64 hex digits)")
    return raw


def _resolve(repo: Repository, directory: str, prefix: str) -> str:
    p = prefix.lower()
    names = [
        o.name for o in repo.backend.list(directory) if o.name.rsplit("/", 1)[-1].startswith(p)
    ]
    if len(names) != 1:
        raise CasError(f"{prefix!r} matches {len(names)} objects in {directory}/")
    return names[0]
