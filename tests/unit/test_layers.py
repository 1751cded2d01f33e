"""The README's dependency rule, on the source: schemas <- features <- {streaming, batch}."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# package -> packages it must never import
FORBIDDEN = {
    "schemas": {"features", "streaming", "batch", "serving"},
    "features": {"streaming", "batch", "serving"},
    "streaming": {"batch", "serving"},
    "batch": {"streaming", "serving"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_the_dependency_rule(package: str) -> None:
    files = sorted((REPO / package).glob("*.py"))
    assert files, f"no modules in {package}/"
    broken = {
        f"{path.relative_to(REPO)} imports {bad}"
        for path in files
        for bad in _imported_packages(path) & FORBIDDEN[package]
    }
    assert not broken, sorted(broken)
