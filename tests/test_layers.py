"""The import graph keeps to the layers of docs/architecture.md (tools/layers.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

TOOL = Path(__file__).resolve().parent.parent / "tools" / "layers.py"


def _layers() -> Any:
    spec = importlib.util.spec_from_file_location("cas_layers_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_no_package_imports_a_sibling_or_upward() -> None:
    layers = _layers()
    assert layers.violations(layers.graph()) == []


def test_every_package_is_on_a_layer_and_few_modules_sit_in_cas() -> None:
    layers = _layers()
    root = TOOL.parent.parent / "cas"
    units = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    for unit in units | modules:
        layers.layer(unit)  # raises for a unit on no layer
    assert len(modules) + 1 <= 12, sorted(modules)  # + __init__.py


def test_only_the_repository_and_backends_write_or_delete_objects() -> None:
    root = TOOL.parent.parent / "cas"
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.parent.name not in ("repo", "backend")
        and any(f"backend.{verb}(" in p.read_text() for verb in ("write", "delete"))
    ]
    assert offenders == []


def test_the_graph_in_the_architecture_page_is_the_code_s() -> None:
    """docs/architecture.md shows the import graph as tools/layers.py prints it; a new
    import between packages updates the page (paste the tool's output)."""
    layers = _layers()
    edges = layers.graph()
    page = (TOOL.parent.parent / "docs" / "architecture.md").read_text()
    for a in sorted(edges, key=lambda u: -layers.layer(u)):
        line = f"{a:10} -> {' '.join(sorted(edges[a], key=lambda u: (layers.layer(u), u)))}"
        assert line in page.splitlines(), line
