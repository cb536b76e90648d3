"""The package's import layout, checked statically (stdlib `ast`; nothing from hf_modular is imported).

The layout follows the data: lower layers (config, model, data) never import higher ones (decompose, compose, hub,
commands), so the modules form an acyclic graph and any of them can be imported first. A function-level import hides an
edge from that graph (and from readers): it is how cycles get papered over, so it is allowed only for optional
dependencies. The one deliberate exception is the light front (`hf_modular/__init__.py`, `cli.py`): it loads the
rest on first use with `importlib.import_module`, so that `import hf_modular` and `hf-modular --help` load no torch
(`tests/test_lazy_import.py` runs that); no other module may. The checks take the package root as an argument so
they can be run on any tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "hf_modular"

# The packages of the `demo` and `emissions` extras in pyproject.toml: imported where used, so that the package
# works without them. Every other import sits at the top of its module.
OPTIONAL_DEPENDENCIES = {"codecarbon", "sklearn", "matplotlib"}

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the first such import}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file; a package is named by its `__init__.py`."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`: imports for annotations only, never run."""
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _import_time_imports(statements):
    """Imports that run when the module is imported: any depth, except in functions and `if TYPE_CHECKING:`."""
    for node in statements:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time_imports(node.orelse)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _import_time_imports(ast.iter_child_nodes(node))


def import_graph(root: Path) -> Graph:
    """Import-time edges between the package's own modules. Importing `a.b.c` also runs the `__init__` of `a.b` and
    `a`, so those are edges too, except where the importer sits inside them (they are already loading)."""
    files = modules(root)
    graph: Graph = {name: {} for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        already_loading = {name, *_ancestors(name)}
        for node in _import_time_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = [package.rsplit(".", node.level - 1)[0]] if node.level else []
                source = ".".join([*base, *([node.module] if node.module else [])])
                submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in files]
                # `from pkg import module` needs only the module; `from pkg import name` needs pkg's `__init__`.
                targets = submodules + ([source] if len(submodules) < len(node.names) else [])
            for target in targets:
                implied = [ancestor for ancestor in _ancestors(target) if ancestor not in already_loading]
                for module in (target, *implied):
                    if module in files and module != name:  # a module importing from itself is no cycle
                        graph[name].setdefault(module, node.lineno)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self-loop (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(found)


def function_level_imports(root: Path) -> list[str]:
    """`path:line: import` for each import inside a function (any depth) that is not of an optional dependency."""
    found = set()
    for path in modules(root).values():
        for function in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    packages = {alias.name.partition(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    packages = {None if node.level else node.module.partition(".")[0]}
                else:
                    continue
                if not packages <= OPTIONAL_DEPENDENCIES:
                    relative = path.relative_to(root.parent).as_posix()
                    found.add((relative, node.lineno, ast.unparse(node)))
    return [f"{path}:{line}: {text}" for path, line, text in sorted(found)]


LIGHT_FRONT = {"hf_modular", "hf_modular.cli"}


def deferred_imports(root: Path) -> list[str]:
    """`path:line: call` for each `importlib.import_module(...)` outside the light front."""
    found = []
    for name, path in modules(root).items():
        if name.replace(root.name, "hf_modular", 1) in LIGHT_FRONT:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and "import_module" in ast.unparse(node.func):
                found.append(f"{path.relative_to(root.parent).as_posix()}:{node.lineno}: {ast.unparse(node)}")
    return found


def unreachable_files(root: Path) -> list[str]:
    """Files that are no importable module: a folder on the way lacks `__init__.py`, or a name is no identifier."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        folders = [root / Path(*relative.parts[:i]) for i in range(len(relative.parts))]
        names = [*relative.parent.parts, path.stem]
        if not all((folder / "__init__.py").is_file() for folder in folders) or not all(map(str.isidentifier, names)):
            found.append(path.relative_to(root.parent).as_posix())
    return found


def test_no_import_cycles():
    """Lower layers never import higher ones: a cycle means some module can only be imported after another."""
    graph = import_graph(PACKAGE_ROOT)
    report = []
    for component in cycles(graph):
        edges = [f"    {a} -> {b} (line {graph[a][b]})" for a in component for b in component if b in graph[a]]
        report.append(f"cycle of {len(component)}: {', '.join(component)}\n" + "\n".join(edges))
    assert not report, "import cycles between hf_modular's modules:\n" + "\n".join(report)


def test_no_function_level_imports():
    """Imports go at the top, where the graph above sees them; move the code or the import, don't hide the edge."""
    found = function_level_imports(PACKAGE_ROOT)
    assert not found, f"imports inside functions (only {sorted(OPTIONAL_DEPENDENCIES)} may be):\n" + "\n".join(found)


def test_only_the_light_front_defers_imports():
    """Loading on first use is how the package stays light to import; anywhere else it would hide an edge."""
    found = deferred_imports(PACKAGE_ROOT)
    assert not found, f"import_module outside {sorted(LIGHT_FRONT)}:\n" + "\n".join(found)


def test_every_file_is_a_module():
    """Every file is a module of the graph: each folder on its way has an `__init__.py`."""
    found = unreachable_files(PACKAGE_ROOT)
    assert not found, "files outside the import graph (a folder lacks __init__.py?):\n" + "\n".join(found)


def test_a_deferred_import_outside_the_light_front_is_reported(tmp_path):
    package = tmp_path / "hf_modular"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("import importlib\nimportlib.import_module('hf_modular.models')\n")
    (package / "models" / "__init__.py").write_text("import importlib\n\ndef f():\n    importlib.import_module('x')\n")
    assert deferred_imports(package) == ["hf_modular/models/__init__.py:4: importlib.import_module('x')"]
