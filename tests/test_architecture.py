"""The layers of reserve/ (docs/ARCHITECTURE.md): each module imports only from its own layer or from below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

BASE = {"reserve", "reserve.db", "reserve.report", "reserve.stats", "reserve.sql"}
# layer -> the layers (by package prefix) it may import from, besides the base and itself.
ALLOWED = {
    "reserve.schema": set(),
    "reserve.capacity": set(),
    "reserve.rollout": {"reserve.schema"},
    "reserve.operations": {"reserve.schema", "reserve.capacity"},
    "alembic": {"reserve.schema"},
}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _reserve_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reserve"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("reserve")}
    return found


def _layer(module: str) -> str | None:
    return next((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), None)


def _modules() -> list[Path]:
    return sorted([*(ROOT / "reserve").rglob("*.py"), *(ROOT / "alembic").rglob("*.py")])


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_from_its_layer_or_below(path: Path):
    module = _module(path)
    layer = _layer(module) or ("base" if module in BASE or module.startswith("reserve.sql") else "top")
    if layer == "top":  # reserve.cli: the one shell over every wing
        return
    for imported in _reserve_imports(path):
        target = _layer(imported)
        if target is None:
            assert any(imported == b or imported.startswith(b + ".") for b in BASE), (module, imported)
            continue
        assert layer != "base", f"{module} (base) imports {imported}"
        assert target == layer or target in ALLOWED[layer], f"{module} ({layer}) imports {imported} ({target})"


MAX_MODULE_LINES = 420  # docs/ARCHITECTURE.md says the same number


def test_no_module_of_the_package_is_over_the_line_limit_architecture_states():
    assert f"grows past {MAX_MODULE_LINES} lines" in (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for p in (ROOT / "reserve").rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES} == {}
