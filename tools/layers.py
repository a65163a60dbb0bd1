#!/usr/bin/env python3
"""Print cas's import graph between packages and check it against the layers.

    python tools/layers.py          # the graph, then "layers ok" or each violation

A unit is a package under cas/ (cas/repo/, cas/cli/...) or a module directly in cas/.
Every unit sits on one layer of LAYERS (docs/architecture.md); a unit may import units on
lower layers only (never a sibling on its own layer, never upward).  Exits 1 on a violation.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Top to bottom; units on one line are siblings.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"backup", "restore", "check", "manage", "mount", "browse"},
    {"repo"},
    {"walker", "fs", "sparse"},
    {"protocols", "selection"},
    {"format"},
    {"chunking"},
    {"backend", "crypto"},
    {"errors", "ids", "failpoints", "progress", "ipc", "wording"},
]


def unit_of(module: str) -> str | None:
    """The unit a dotted module name belongs to ("cas.repo.prune" -> "repo")."""
    parts = module.split(".")
    if parts[0] != "cas" or len(parts) < 2:
        return None
    return parts[1]


def _is_unit(name: str) -> bool:
    return (ROOT / "cas" / name).is_dir() or (ROOT / "cas" / f"{name}.py").is_file()


def graph() -> dict[str, set[str]]:
    """unit -> the units its modules import (itself left out)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in sorted((ROOT / "cas").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        mine = unit_of(".".join(parts))
        if mine is None or mine == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
                if node.module == "cas":  # modules by name, or the package's own face
                    names = [f"cas.{a.name}" for a in node.names if _is_unit(a.name)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                other = unit_of(name)
                if other is not None and other != mine:
                    edges[mine].add(other)
    return edges


def layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise KeyError(f"cas/{unit} is on no layer: add it to LAYERS in tools/layers.py")


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Each import of a unit on the same or a higher layer."""
    return [
        f"cas/{a} imports cas/{b} ({'a sibling' if layer(a) == layer(b) else 'upward'})"
        for a in sorted(edges)
        for b in sorted(edges[a])
        if layer(b) <= layer(a)
    ]


def main() -> int:
    edges = graph()
    for a in sorted(edges, key=lambda u: (layer(u), u)):
        print(f"{a:10} -> {' '.join(sorted(edges[a], key=lambda u: (layer(u), u)))}")
    bad = violations(edges)
    for line in bad:
        print(line)
    print("layers ok" if not bad else f"{len(bad)} imports break the layers")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
