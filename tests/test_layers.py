"""Imports point down only (docs/architecture.md): base ← ingest ← lake ← queries ← api/cli.

Every import of every module, at the top or inside a function, is read from its source (ast),
so a new upward import fails here, whatever path it takes at run time.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ingest", "lake", "queries", "pushlake")
# the lowest layer: what every layer may use (files, SQLite, settings, the stores of team keys)
BASE = {"pushlake", "pushlake.location", "pushlake.config", "pushlake.failpoints", "pushlake.procs", "pushlake.fsutil",
        "pushlake.sqlite", "pushlake.db", "pushlake.teams", "pushlake.tokens", "pushlake.hyperadmins",
        "pushlake.metrics", "pushlake.logs"}
LAYERS = ["base", "ingest", "lake", "queries", "top"]


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    top = module.split(".")[0]
    return top if top in ("ingest", "lake", "queries") else "top"


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import of a project package in ``path``."""
    out = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module
            # "from pushlake import failpoints" imports the module pushlake.failpoints
            out += [(node.lineno, f"{name}.{a.name}" if f"{name}.{a.name}" in MODULES else name)
                    for a in node.names]
    return [(n, m) for n, m in out if m.split(".")[0] in PACKAGES]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = p
    return out


MODULES = modules()


def test_no_module_imports_upward():
    wrong = []
    for module, path in sorted(MODULES.items()):
        own = LAYERS.index(layer(module))
        for line, target in imports(path, module):
            if LAYERS.index(layer(target)) > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({layer(module)}) imports {target} ({layer(target)})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_receiver_reads_no_lake_and_the_lake_no_queries():
    """The two rules the layers exist for, spelled out: the hot path (ingest) never reaches the
    catalog or Parquet, and the compactor never depends on how it is read."""
    for module, path in MODULES.items():
        targets = {t.split(".")[0] for _, t in imports(path, module)}
        if module.startswith("ingest"):
            assert not targets & {"lake", "queries"}, module
        if module.startswith("lake"):
            assert "queries" not in targets, module


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself: a base module importing the lake is caught."""
    p = tmp_path / "teams.py"
    p.write_text("from lake.catalog import Catalog\n\ndef f():\n    from queries import connect\n")
    found = imports(p, "pushlake.teams")
    assert [t for _, t in found] == ["lake.catalog", "queries"]
    assert all(LAYERS.index(layer(t)) > LAYERS.index(layer("pushlake.teams")) for _, t in found)
