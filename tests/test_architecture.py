"""The package map's rules, checked on the source (so a change that breaks them fails here, not in review):
no import cycles between hybridc's modules at import time; `hybridc.energy` (where EP lives) never imports the
runtime, the trainer, the CLI or the exporter, even lazily; and a module over 400 lines says why in its
docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "hybridc"
LONG = 400
#: what the energy package may not import: the layers built on top of it
ABOVE_ENERGY = ("runtime", "train", "cli", "export")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(modules imported at import time, modules imported inside functions) by module `name`, hybridc's only.
    `from pkg import submodule` depends on the submodule (and on the package only for names that are not
    submodules), as Python resolves it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    at_import = {id(n) for stmt in tree.body if not _is_type_checking(stmt) for n in ast.walk(stmt)}
    at_import -= {
        id(n)
        for stmt in ast.walk(tree)
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(stmt)
    }
    eager: set[str] = set()
    lazy: set[str] = set()
    for node in ast.walk(tree):
        found: set[str] = set()
        if isinstance(node, ast.Import):
            found = {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
            found = subs | ({base} if len(subs) < len(node.names) else set())
        found = {m for m in found if m in MODULES and m != name}
        (eager if id(node) in at_import else lazy).update(found)
    return eager, lazy - eager


def _is_type_checking(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_no_import_cycles() -> None:
    g = nx.DiGraph([(a, b) for a, (eager, _) in GRAPH.items() for b in eager])
    assert list(nx.simple_cycles(g)) == []


def test_energy_never_imports_the_layers_above_it() -> None:
    bad = sorted(
        f"{a} -> {b}"
        for a, (eager, lazy) in GRAPH.items()
        if a.startswith("hybridc.energy")
        for b in eager | lazy
        if b.split(".")[1] in ABOVE_ENERGY
    )
    assert bad == []


def test_long_modules_say_why() -> None:
    """ "No module over ~400 lines without a reason stated in its docstring" (the architecture issue)."""
    silent = []
    for name, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") <= LONG:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if f"over {LONG} lines" not in doc:
            silent.append(f"{name} ({text.count(chr(10))} lines)")
    assert silent == [], f"say in the docstring why these are over {LONG} lines, or split them: {silent}"
