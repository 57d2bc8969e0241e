"""The public API: one documented path per name, a pinned top level, no import cycle."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import transferkit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "transferkit"
NAMESPACES = ("transferkit.backbones", "transferkit.data", "transferkit.hub", "transferkit.report",
              "transferkit.imagenet", "transferkit.export")

TOP_LEVEL = {
    # the facade and its recipe
    "FineTuner", "Phase", "HEAD_PHASE", "FINE_TUNE_PHASE", "Evaluation", "Predictions", "BestEpoch", "Refit",
    "Calibration",
    "LearningRateSweep",
    # models, heads, freezing
    "build_model", "Head", "FreezePolicy", "FreezeSummary", "FreezeAll", "UnfreezeTop", "UnfreezeFrom",
    "UnfreezeAll",
    # backbones
    "BackboneSpec", "get_backbone", "list_backbones", "register_backbone",
    # data
    "load_folder", "load_csv", "from_arrays", "from_files", "scan_folder", "read_csv", "stratified_split",
    "ImageData", "ImageFiles", "PipelineSettings", "Augment", "SkippedFilesWarning",
    # reviewing the data
    "review", "Review", "plan_decisions", "apply_plan", "undo_decisions",
    # speed and search
    "FeatureCache", "search", "SearchResult",
    # a run folder's whole life, as `transferkit train` lives it
    "train_run", "RunFolder", "TrainedRun",
    # errors
    "TransferkitError", "BackboneExistsError", "ConfigError", "DataError", "MissingDependencyError",
    "NotFittedError", "UnknownBackboneError", "WeightsUnavailableError", "RunInUseError", "ClusterError",
    "TrainingDivergedError",
    "__version__",
}


def test_top_level_is_pinned():
    assert set(transferkit.__all__) == TOP_LEVEL
    assert len(transferkit.__all__) == len(set(transferkit.__all__))
    for internal in ("GroupRule", "layer_groups", "make_dataset", "build_backbone", "Preprocess"):
        assert not hasattr(transferkit, internal), internal


def test_exported_members_are_listed():
    for name in dir(transferkit):  # bind every name first: most are imported on first use
        getattr(transferkit, name)
    public = {
        name
        for name, value in vars(transferkit).items()
        if not name.startswith("_") and not getattr(value, "__name__", "").startswith("transferkit.")
    }
    # the public namespaces are reachable as attributes but are not part of the flat API
    assert public - set(transferkit.__all__) == set()


def test_every_public_name_reports_the_path_it_is_documented_under():
    for namespace in ("transferkit", *NAMESPACES):
        module = importlib.import_module(namespace)
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) or callable(value):
                owner = value.__module__
                if owner.startswith("transferkit"):
                    assert owner == namespace, f"{namespace}.{name} says it lives in {owner}"


def test_public_namespaces_define_all():
    for namespace in ("transferkit", *NAMESPACES):
        module = importlib.import_module(namespace)
        assert all(hasattr(module, name) for name in module.__all__)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_at_import_time(path: Path) -> set[str]:
    """transferkit modules imported when ``path`` is imported (not inside functions or TYPE_CHECKING)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("transferkit"):
                for alias in child.names:
                    candidate = f"{child.module}.{alias.name}"
                    found.add(candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                              or (PACKAGE.parent / candidate.replace(".", "/")).is_dir() else child.module)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("transferkit"))
    return found


def test_import_graph_has_no_cycle():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports_at_import_time(path) if m in modules and m != name}
             for name, path in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle between modules
    for name in graph:
        graph[name] = {m for m in graph[name] if not (modules[name].name == "__init__" and m.startswith(name + "."))}
        graph[name] = {m for m in graph[name] if not (name.startswith(m + ".") and modules[m].name == "__init__")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_registry_imports_no_hub_code():
    registry = (PACKAGE / "backbones" / "_registry.py").read_text()
    imported = re.findall(r"^\s*(?:from|import)\s+(\S+)", registry, flags=re.M)
    assert imported and not any("hub" in module for module in imported)


def test_docs_cite_only_public_paths():
    api = (ROOT / "docs" / "api.md").read_text()
    cited = re.findall(r"^::: (\S+)$", api, flags=re.M)
    assert cited
    for path in cited:
        assert not any(part.startswith("_") for part in path.split(".")), path
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), path
    for name in set(transferkit.__all__) - {"__version__"}:
        assert f"::: transferkit.{name}\n" in api + "\n", f"docs/api.md does not document transferkit.{name}"


def test_import_does_not_pull_optional_dependencies():
    code = (
        "import sys, transferkit; transferkit.FineTuner; "
        "print(','.join(m for m in ('tensorflow_hub', 'keras_tuner') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_tensorflow_is_imported_on_first_use_of_a_name_that_needs_it():
    code = (
        "import sys, transferkit; "
        "before = 'tensorflow' in sys.modules; "
        "error = transferkit.ConfigError; "  # the errors need nothing
        "still = 'tensorflow' in sys.modules; "
        "from transferkit import FineTuner; "
        "print(before, still, 'tensorflow' in sys.modules, FineTuner.__module__, transferkit.Phase.__module__, "
        "len(transferkit.list_backbones()) > 30)"  # the keras.applications backbones are registered
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True", "transferkit", "transferkit", "True"]


def _type_checking_imports() -> dict[str, set[str]]:
    """Module → names imported under ``if TYPE_CHECKING`` in transferkit/__init__.py."""
    found: dict[str, set[str]] = {}
    for node in ast.parse((PACKAGE / "__init__.py").read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                if isinstance(child, ast.ImportFrom) and child.module:
                    found.setdefault(child.module, set()).update(alias.name for alias in child.names)
    return found


def test_names_imported_on_first_use_are_those_type_checkers_see():
    # the runtime table and the imports type checkers read must name the same things
    lazy: dict[str, set[str]] = {}
    for node in ast.parse((PACKAGE / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_LAZY" for t in node.targets):
            lazy = {module: set(names) for module, names in ast.literal_eval(node.value).items()}
    seen = _type_checking_imports()
    namespaces = seen.pop("transferkit")
    assert lazy and seen == lazy
    assert namespaces == {"backbones", "hub"}
    eager = {alias.name for node in ast.parse((PACKAGE / "__init__.py").read_text()).body
             if isinstance(node, ast.ImportFrom) and node.module == "transferkit._errors" for alias in node.names}
    assert set(transferkit.__all__) == eager | {"__version__"} | {name for names in lazy.values() for name in names}
