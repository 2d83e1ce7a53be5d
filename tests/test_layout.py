"""The package's shape: size limits, layers that import downwards only, no hidden imports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tuner"
# Lower layers first: a module may import its own layer and the layers below it, never above.
LAYERS = ("errors", "text", "config", "progress", "space", "training", "search", "service", "shipping", "cli")
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 450, 200, 60


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_of(module: str) -> str | None:
    """`tuner.search._study` -> `search`; the top-level package and __main__ sit above all layers."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def dotted(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def tuner_imports(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tuner":
            found.append((node, node.module))
        elif isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names if alias.name.split(".")[0] == "tuner"]
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_class_and_function_sizes(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        length = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
        if isinstance(node, ast.ClassDef):
            assert length <= MAX_CLASS_LINES, f"class {node.name}: {length} lines"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert length <= MAX_FUNCTION_LINES, f"function {node.name}: {length} lines"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downwards(path):
    own = layer_of(dotted(path))
    if own is None:
        return
    for _, module in tuner_imports(ast.parse(path.read_text())):
        target = layer_of(module)
        if target is not None:
            assert LAYERS.index(target) <= LAYERS.index(own), f"{dotted(path)} imports {module} (a higher layer)"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_local_imports_of_tuner_outside_cli_and_inits(path):
    """Local imports hid which layer imports which; the CLI and package __init__s keep them for start-up time."""
    if layer_of(dotted(path)) == "cli" or path.name in ("__init__.py", "__main__.py"):
        return
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    local = [module for node, module in tuner_imports(tree) if id(node) not in top
             and not _under_type_checking(tree, node)]
    assert not local, f"{dotted(path)} imports {local} inside a function"


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
               and any(child is node for child in ast.walk(block)) for block in tree.body)


def test_training_imports_no_optuna():
    """The trainer knows nothing of studies: Optuna is the search layer's."""
    for path in (PACKAGE / "training").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "optuna" for n in names), f"{path.name} imports optuna"


def test_only_one_module_creates_or_loads_studies():
    callers = {name: sorted(dotted(p) for p in modules() if f"optuna.{name}(" in p.read_text())
               for name in ("load_study", "create_study")}
    assert all(len(found) == 1 for found in callers.values()), callers


# The packages whose __init__ is their public API (the Optuna style): private modules start with `_`.
API_PACKAGES = ("space", "training", "search", "service", "shipping")


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_other_packages_are_reached_through_their_api(path):
    """`from tuner.training import load_data`, not `from tuner.training._data import ...`,
    outside tuner.training; the CLI is left as it is for its start-up time."""
    own = layer_of(dotted(path))
    if own == "cli":
        return
    private = [module for _, module in tuner_imports(ast.parse(path.read_text()))
               if layer_of(module) in API_PACKAGES and layer_of(module) != own
               and any(part.startswith("_") for part in module.split(".")[2:])]
    assert not private, f"{dotted(path)} imports private modules of other packages: {private}"


@pytest.mark.parametrize("name", API_PACKAGES)
def test_every_name_of_a_package_api_resolves(name):
    package = importlib.import_module(f"tuner.{name}")
    assert package.__doc__ and "\n" not in package.__doc__.strip(), "a one-line docstring says what the layer is"
    assert package.__all__, f"tuner.{name} exports nothing"
    missing = [export for export in package.__all__ if getattr(package, export, None) is None]
    assert not missing, f"tuner.{name}.__all__ names what it cannot give: {missing}"
    assert set(package.__all__) <= set(dir(package))
