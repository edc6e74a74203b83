"""The packages depend one way only (docs/design.md): edge_agent <- export <- central."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the project packages it must never import
FORBIDDEN = {"edge_agent": {"export", "central"}, "export": {"central"}}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every import in ``path``, lazy imports inside functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, a.name.split(".")[0]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add((node.lineno, arg.value.split(".")[0]))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_the_walk_sees_every_package():
    assert all(len(_modules(p)) > 5 for p in FORBIDDEN)
    # The parser sees lazy imports: central's CLI imports export inside a function body.
    assert any(pkg == "export" for p in _modules("central") for _, pkg in imported_packages(p))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_direction(package):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {pkg}"
        for path in _modules(package)
        for line, pkg in sorted(imported_packages(path))
        if pkg in FORBIDDEN[package]
    ]
    assert not wrong, "; ".join(wrong)


def test_register_optional_strings_follow_the_direction():
    # register_optional takes module names as strings: the edge agent may list only its own.
    tree = ast.parse((ROOT / "edge_agent" / "cli.py").read_text())
    names = [
        n.value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "register_optional"
        for n in ast.walk(call)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    assert names and all(n.split(".")[0] == "edge_agent" for n in names), names
