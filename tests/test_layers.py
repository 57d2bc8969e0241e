"""The package's modules form layers (docs/architecture.md): a module imports only from its own
layer and the layers below it, and the import graph has no cycle.

Every import counts: at the top of a module, inside a function, and under ``if TYPE_CHECKING:``
(a type checker follows those too, and a cycle there is a cycle in the design). The modules are
read with ``ast``, not imported, so this runs in a moment.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "transferkit"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first. A name is a module of the package without the "transferkit." prefix; a package
# (data, backbones, export, cli …) stands for all of its submodules; "__init__" is the package's
# own __init__.py (``import transferkit``).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shared by everything", ("_errors", "_types", "_public", "_defaults")),
    ("images, networks and files", ("data", "backbones", "_heads", "_atomic", "_html")),
    ("the parts of a model, put together", ("_model",)),
    ("Hub modules as backbones", ("hub",)),
    ("the pieces a training run is made of", (
        "_freezing", "_features", "_metrics", "_saving", "_inference", "_selection", "_calibration", "_solve",
        "_checkpoint", "_members", "_multiworker", "_search_state", "_distributed_search")),
    ("phases and their data", ("_phases", "_cache_plan", "_lr_find")),
    ("a FineTuner's settings and its trained result", ("_settings", "_run")),
    ("data meets model; the validation pass after training", ("_binding", "_held_out")),
    ("one phase's run, as named steps", ("_stage",)),
    ("the refit on all images", ("_refit",)),
    # report takes plain data; FineTuner.write_report gathers it and hands it over
    ("plots and reports", ("report", "_report_page")),
    ("the facade", ("_finetuner",)),
    ("what runs FineTuners", ("_tuning", "imagenet", "_demo", "export", "_run_folder", "_review")),
    ("the command and the public API", ("cli", "__init__")),
)


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def package_modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by its dotted name."""
    return {_module_name(path, root, package): path for path in sorted(root.rglob("*.py"))}


def imported_modules(name: str, path: Path, modules: dict[str, Path], package: str = PACKAGE) -> Iterator[str]:
    """The package's modules that ``path`` (module ``name``) imports, wherever the import statement is."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    yield _existing(alias.name, modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: counted from the module's own package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source != package and not source.startswith(package + "."):
                continue
            for alias in node.names:  # `from transferkit.data import _loaders` imports a submodule
                submodule = f"{source}.{alias.name}"
                yield submodule if submodule in modules else _existing(source, modules)


def _existing(name: str, modules: dict[str, Path]) -> str:
    """``name``, or its nearest enclosing package when it is not a module of the package (a name
    imported from it)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module → the package's modules it imports (itself left out)."""
    modules = package_modules(root, package)
    return {name: {m for m in imported_modules(name, path, modules, package) if m != name}
            for name, path in modules.items()}


def layer_key(module: str, package: str = PACKAGE) -> str | None:
    """The name in LAYERS that ``module`` falls under: itself, else the package that holds it."""
    listed = {name for _, names in LAYERS for name in names}
    if module == package:
        return "__init__"
    name = module.removeprefix(package + ".")
    while name not in listed:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


LAYER_OF = {name: number for number, (_, names) in enumerate(LAYERS, start=1) for name in names}


def _layer(module: str) -> int | None:
    key = layer_key(module)
    return None if key is None else LAYER_OF[key]


def _describe(number: int) -> str:
    return f"layer {number}, {LAYERS[number - 1][0]}"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each group of modules that import each other (Tarjan's strongly connected
    components), as a path that ends where it starts."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    start = min(group)
    path, seen = [start], {start}
    while True:  # every member imports another member: walk until a module comes round again
        node = min(graph[path[-1]] & group)
        if node in seen:
            return [*path[path.index(node):], node]
        path.append(node)
        seen.add(node)


def _placement_hint(module: str, graph: dict[str, set[str]]) -> str:
    """Where an unlisted module fits: above every module it imports, below every module importing it."""
    below = {m: _layer(m) for m in graph[module]}
    above = {m: _layer(m) for m, targets in graph.items() if module in targets}
    lowest = max((n for n in below.values() if n is not None), default=1)
    highest = min((n for n in above.values() if n is not None), default=len(LAYERS))
    imports = ", ".join(f"{m} ({n})" for m, n in sorted(below.items()) if n is not None) or "nothing in a layer"
    importers = ", ".join(f"{m} ({n})" for m, n in sorted(above.items()) if n is not None) or "nothing in a layer"
    if lowest > highest:
        where = "no layer fits it yet: it imports a higher layer than a module that imports it"
    elif lowest == highest:
        where = f"list {layer_key_name(module)!r} in {_describe(lowest)}"
    else:
        where = f"list {layer_key_name(module)!r} in {_describe(lowest)}, or a layer up to {_describe(highest)}"
    return f"{module}: {where}. It imports: {imports}; it is imported by: {importers}"


def layer_key_name(module: str) -> str:
    """The name to list for an unlisted module: a subpackage's top package, else the module itself."""
    return module.removeprefix(PACKAGE + ".").split(".")[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_is_in_exactly_one_layer(graph):
    listed = [name for _, names in LAYERS for name in names]
    twice = sorted({name for name in listed if listed.count(name) > 1})
    assert not twice, f"listed in more than one place in LAYERS (tests/test_layers.py): {twice}"
    unlisted = sorted(m for m in graph if layer_key(m) is None)
    assert not unlisted, ("modules in no layer: list each in LAYERS (tests/test_layers.py), in the layer its "
                          "imports put it in:\n" + "\n".join(_placement_hint(m, graph) for m in unlisted))
    present = {layer_key(m) for m in graph}
    stale = sorted(name for name in listed if name not in present)
    assert not stale, f"listed in LAYERS but not in {ROOT}: {stale}; remove them from LAYERS (tests/test_layers.py)"


def test_no_module_imports_a_higher_layer(graph):
    violations = []
    for module, targets in sorted(graph.items()):
        own = _layer(module)
        for target in sorted(targets):
            theirs = _layer(target)
            if own is not None and theirs is not None and theirs > own:
                violations.append(f"{module} ({_describe(own)}) imports {target} ({_describe(theirs)})")
    assert not violations, ("imports of a higher layer (move the shared piece down, or pass plain data "
                            "instead):\n" + "\n".join(violations))


def test_the_import_graph_has_no_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "modules that import each other, directly or round a circle:\n" + "\n".join(
        " → ".join(cycle) for cycle in cycles)


def test_imports_are_found_inside_functions_under_type_checking_and_relative(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.sub import b\n",
        "a.py": "def f():\n    import pkg.d\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n",
        "c.py": "import os\nfrom . import a\nfrom .sub.b import name\n",
        "d.py": "",
        "sub/__init__.py": "from . import b\nfrom .. import d\n",
        "sub/b.py": "from pkg import sub\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    found = import_graph(root, "pkg")
    assert found == {"pkg": {"pkg.sub.b"}, "pkg.a": {"pkg.d"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a", "pkg.sub.b"},
                     "pkg.d": set(), "pkg.sub": {"pkg.sub.b", "pkg.d"}, "pkg.sub.b": {"pkg.sub"}}
    assert find_cycles(found) == [["pkg.sub", "pkg.sub.b", "pkg.sub"]]
    del found["pkg.sub.b"]
    found["pkg.sub"] = {"pkg.d"}
    assert find_cycles(found) == []
