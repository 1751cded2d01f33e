"""The dependency rule, checked on the source of every package and subpackage.

    schemas <- {features, scoring} <- runtime <- storage
            <- {producers, streaming, batch, serving} <- pulse

A package may import its own modules and those of packages *below* it, never one
above it, and the four layers (same rank) never import each other: they meet
through files, stores and the registry. ``pulse`` (the application) is on top, so
nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

# Rank of each first-party package: an import must point to a strictly lower rank.
RANK = {
    "schemas": 0,  # contracts
    "features": 1,  # pure feature logic and time semantics
    "scoring": 1,  # the served models' maths in NumPy (exported parameters)
    "runtime": 2,  # settings, errors, Spark session, JVM jars, broker, Kafka admin
    "storage": 3,  # lake, snapshots, registry
    "producers": 4,
    "streaming": 4,
    "batch": 4,
    "serving": 4,
    "pulse": 5,  # the application: CLI, commands, demo, benchmarks
}


def imported_packages(source: str, filename: str = "<src>") -> set[str]:
    """First-party top-level packages that ``source`` imports (absolute imports)."""
    found = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(RANK)


def violations(package: str, files: dict[str, str]) -> list[str]:
    """``path imports pkg`` for every import in ``files`` (path -> source) that breaks the rule."""
    return sorted(
        f"{path} imports {target}"
        for path, source in files.items()
        for target in imported_packages(source, path)
        if target != package and RANK[target] >= RANK[package]
    )


def package_sources(package: str) -> dict[str, str]:
    """Every module of ``package``, subpackages included: relative path -> source."""
    return {
        str(p.relative_to(REPO)): p.read_text()
        for p in sorted((REPO / package).rglob("*.py"))
        if ".venv" not in p.parts
    }


def test_every_python_package_has_a_rank() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(RANK), "give each top-level package a rank in RANK"


@pytest.mark.parametrize("package", sorted(RANK))
def test_package_respects_the_dependency_rule(package: str) -> None:
    files = package_sources(package)
    assert files, f"no modules in {package}/"
    assert not violations(package, files)


@pytest.mark.parametrize(
    ("package", "source", "bad"),
    [
        ("features", "from storage.lake import read_lake", "storage"),
        ("streaming", "import batch.retrain", "batch"),  # a layer importing a layer
        ("serving", "    from streaming.state import merge_state", "streaming"),
        ("runtime", "from storage import registry", "storage"),
        ("batch", "from pulse.cli import main", "pulse"),
        ("schemas", "from features.time import as_of_for", "features"),
    ],
)
def test_the_rule_catches_a_broken_import(package: str, source: str, bad: str) -> None:
    # A nested module, to show subpackages are checked too.
    files = {f"{package}/sub/module.py": "def f():\n" + source.strip().join(["    ", "\n"])}
    assert violations(package, files) == [f"{package}/sub/module.py imports {bad}"]
