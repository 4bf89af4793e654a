"""The package's import structure: every module imports on its own, and no two modules import each other.

The graph is read statically (ast), function-level imports included: a cycle hidden behind a local import
still couples the two modules, and breaks as soon as someone moves the import to the top.
"""

import ast
import importlib.util
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGES = ("prumux_deploy", "prumux_deploy.train", "prumux_deploy.export")


def package_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for the three installed packages (train/ and export/ are mapped
    into prumux_deploy by pyproject's package-dir, so their files do not live under prumux_deploy/)."""
    roots = {name: Path(importlib.util.find_spec(name).submodule_search_locations[0]) for name in PACKAGES}
    modules = {}
    for package, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            name = ".".join([package, *parts])
            if not any(other != package and name.startswith(other + ".") and other.startswith(package)
                       for other in roots):
                modules[name] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """Every module name `module` imports anywhere in its file (absolute, relative resolved), plus the
    `package.name` form of each `from package import name` (name may be a submodule)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {m: {n for n in imported_names(m, p) if n in modules and n != m} for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm), sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_module_list_covers_all_three_packages():
    modules = package_modules()
    assert {"prumux_deploy.model", "prumux_deploy.cli", "prumux_deploy.commands.train",
            "prumux_deploy.train.stages", "prumux_deploy.export.optimize"} <= set(modules)
    assert not any(name.startswith("prumux_deploy.prumux_deploy") for name in modules)


def test_the_cycle_finder_finds_a_cycle_and_only_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_two_modules_import_each_other():
    assert cycles(import_graph()) == []


def _import_alone(module: str) -> tuple[str, int, str]:
    """(module, exit code, last line of stderr) of `python -c "import module"`."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    last_line = (done.stderr.strip().splitlines() or [""])[-1]
    return module, done.returncode, last_line


def test_every_module_imports_in_a_fresh_interpreter():
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_import_alone, sorted(package_modules())))
    failures = {module: error for module, rc, error in results if rc != 0}
    assert failures == {}
    assert len(results) >= 40
