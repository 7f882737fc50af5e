"""No import cycle in fusedbn: each module imports the ones below it, never the reverse (the compile gate
imports its report, say, and the report never the gate)."""

import ast
from pathlib import Path

import fusedbn
import fusedbn.kernels

# Where each package's modules are: fusedbn's source folder and its kernels folder (setup.py's package_dir).
FOLDERS = {
    "fusedbn": Path(fusedbn.__file__).resolve().parent,
    "fusedbn.kernels": Path(fusedbn.kernels.__file__).resolve().parent,
}


def import_graph() -> dict[str, set[str]]:
    """Each module of fusedbn and the fusedbn modules it imports anywhere in its code (functions too)."""
    graph = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = (*package.split("."), *path.relative_to(folder).with_suffix("").parts)
            graph[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = _imports(path)
    return {name: _resolve(imported, graph) - {name} for name, imported in graph.items()}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import: ``import a.b`` is ("a.b", []), ``from a import b`` ("a", ["b"])."""
    imported = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append((node.module, [alias.name for alias in node.names]))
    return imported


def _resolve(imported: list[tuple[str, list[str]]], modules: dict) -> set[str]:
    """The modules of fusedbn that ``imported`` needs: ``from a import b`` needs the module a.b where
    there is one (a submodule imports without the rest of its package), else a."""
    wanted = {module for module, names in imported if not names}
    wanted |= {f"{m}.{n}" if f"{m}.{n}" in modules else m for m, names in imported for n in names}
    return wanted & modules.keys()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (each once, from the module where the search met it)."""
    found, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            found.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_a_submodule_imported_from_its_package_needs_the_submodule_only():
    modules = dict.fromkeys(["p", "p.a", "p.b"])
    assert _resolve([("p", ["a", "helper"]), ("p.b", [])], modules) == {"p.a", "p", "p.b"}
    assert _resolve([("p", ["a"])], modules) == {"p.a"}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_part_of_an_import_cycle():
    graph = import_graph()
    assert "fusedbn.bench.kernel_report" in graph["fusedbn.bench.compile_check"]
    assert "fusedbn.kernels.launcher" in graph["fusedbn.bench.core"] and "fusedbn.records" in graph
    assert cycles(graph) == []
