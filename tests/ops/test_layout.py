"""The layout shows the architecture (docs/design.md), and stays that way.

* nothing but ``__init__``/``__main__`` at the ``kingest/`` root: every module belongs to
  a package named after its concern;
* every package has a front (``__init__``) with a docstring stating its contract and an
  ``__all__`` naming what other packages may use;
* a package imports another only through that front (the layers themselves, and the
  absence of import cycles, are import-linter's contracts in pyproject.toml, run by
  ``make lint``);
* no module over :data:`MAX_LINES` lines, and no public name defined twice.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kingest"
#: "No module over ~600 lines": a module that grows past this is split by concern.
MAX_LINES = 650
#: Generated code, imported directly (its module is the Protobuf package's name).
GENERATED = ("kingest.schema.v1", "kingest.options.v1")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "v1" not in p.relative_to(PACKAGE).parts)


def _is_all(target: ast.expr) -> bool:
    return isinstance(target, ast.Name) and target.id == "__all__"


def _package_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def test_only_the_entry_points_stay_at_the_root() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"]


@pytest.mark.parametrize(
    "package", sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
)
def test_every_package_has_a_front_with_its_contract(package: str) -> None:
    front = ast.parse((PACKAGE / package / "__init__.py").read_text())
    docstring = ast.get_docstring(front)
    assert docstring, f"kingest.{package}: no docstring"
    assert len(docstring.split()) >= 20, f"kingest.{package}: no contract in its docstring"
    names = [
        node
        for node in front.body
        if (isinstance(node, ast.Assign) and any(_is_all(t) for t in node.targets))
        or (isinstance(node, ast.AnnAssign) and _is_all(node.target))
    ]
    assert names, f"kingest.{package} has no __all__"


def test_packages_import_each_other_only_through_their_fronts() -> None:
    offending: list[str] = []
    for path in _modules():
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        own = _package_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            parts = node.module.split(".")
            if parts[0] != "kingest" or len(parts) < 3 or parts[1] == own or own == "__main__.py":
                continue
            if node.module.startswith(GENERATED):
                continue
            offending.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
    assert not offending, "\n".join(offending)


def test_no_module_is_over_the_limit() -> None:
    sizes = {p: len(p.read_text().splitlines()) for p in _modules()}
    sizes |= {p: len(p.read_text().splitlines()) for p in (ROOT / "actors").glob("*.py")}
    over = {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > MAX_LINES}
    assert not over, over


def test_no_public_name_is_defined_twice() -> None:
    where: defaultdict[str, list[str]] = defaultdict(list)
    for path in [*_modules(), *(ROOT / "actors").glob("*.py")]:
        if path.name == "__init__.py":
            continue  # fronts re-export; they define nothing
        for node in ast.parse(path.read_text()).body:
            names: list[str] = []
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                names = [node.name]
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                value = node.value
                if (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Name)
                    and value.func.id == "TypeVar"
                ):
                    names = []  # a type variable is a local device, not a name offered
            for name in names:
                if not name.startswith("_") and name not in {"log", "logger", "main"}:
                    where[name].append(str(path.relative_to(ROOT)))
    twice = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not twice, twice


def test_the_layers_are_checked_by_make_lint_and_pre_commit() -> None:
    assert "lint-imports" in (ROOT / "Makefile").read_text()
    assert "lint-imports" in (ROOT / ".pre-commit-config.yaml").read_text()
    assert "[tool.importlinter]" in (ROOT / "pyproject.toml").read_text()
