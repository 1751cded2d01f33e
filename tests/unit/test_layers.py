"""The dependency rule, checked on the source of every package and subpackage.

    schemas <- {features, scoring} <- runtime <- storage
            <- {producers, streaming, batch, serving} <- pulse

A package may import its own modules and those of packages *below* it, never one
above it, and the four layers (same rank) never import each other: they meet
through files, stores and the registry. ``pulse`` (the application) is on top, so
nothing imports it. Inside a package the modules' imports form no cycle (imports for
type checking included): each module can be read after the ones it imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Rank of each first-party package: an import must point to a strictly lower rank.
RANK = {
    "schemas": 0,  # contracts
    "features": 1,  # pure feature logic and time semantics
    "scoring": 1,  # the served models' maths in NumPy (exported parameters)
    "runtime": 2,  # settings, errors, Spark session, JVM jars, Kafka admin
    "storage": 3,  # lake, snapshots, registry
    "producers": 4,
    "streaming": 4,
    "batch": 4,
    "serving": 4,
    "pulse": 5,  # the application: CLI, commands, demo, benchmarks, chaos, local broker
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


def module_imports(package: str, files: dict[str, str]) -> dict[str, set[str]]:
    """Module (dotted) -> the modules of the same package it imports, from ``files``.

    Subpackages' modules are modules of the package too (``pulse.chaos.cases.common``),
    and a subpackage's ``__init__`` is one under the subpackage's name; relative imports
    are resolved against the importing module's package.
    """
    modules = {path.removesuffix(".py").replace("/", ".").removesuffix(".__init__"): source
               for path, source in files.items()}  # fmt: skip
    packages = {path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
                for path in files if path.endswith("/__init__.py")}  # fmt: skip
    graph: dict[str, set[str]] = {}
    for name, source in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(source, name)):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
                module = node.module or ""
                if node.level:  # relative: from the importing module's package
                    base = name if name in packages else name.rpartition(".")[0]
                    for _ in range(node.level - 1):  # one package up per further dot
                        base = base.rpartition(".")[0]
                    module = f"{base}.{module}" if module else base
                targets.add(module)
                targets |= {f"{module}.{a.name}" for a in node.names}  # from pkg import mod
        graph[name] = {t for t in targets if t in modules and t != name and t != package}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of two or more
    modules (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


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


@pytest.mark.parametrize("package", sorted(RANK))
def test_no_import_cycle_inside_a_package(package: str) -> None:
    assert cycles(module_imports(package, package_sources(package))) == []


def test_the_cycle_check_finds_a_cycle_through_a_type_checking_import() -> None:
    files = {
        "batch/context.py": "from batch.churn import ChurnParams\n",
        "batch/churn.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from batch.context import RetrainContext\n",
        "batch/retrain.py": "from batch import churn, context\n",  # imports both, no cycle
        "batch/publish.py": "import batch.retrain\n",
    }
    graph = module_imports("batch", files)
    assert graph["batch.retrain"] == {"batch.churn", "batch.context"}
    assert cycles(graph) == [["batch.churn", "batch.context"]]
    del files["batch/churn.py"]
    assert cycles(module_imports("batch", files)) == []


def test_the_cycle_check_covers_subpackages() -> None:
    graph = module_imports("pulse", package_sources("pulse"))
    # every module of a subpackage is a node, with its imports inside ``pulse``
    assert "pulse.local.process" in graph["pulse.local.cluster"]
    assert "pulse.chaos.cases.common" in graph["pulse.chaos.cases.case1_stream_kills"]
    assert "pulse.chaos.cases.case1_stream_kills" in graph["pulse.chaos.cases"]
    # a case importing its package's registry (the __init__ importing it): a cycle
    init, case = "pulse/chaos/cases/__init__.py", "pulse/chaos/cases/case1.py"
    files = {
        init: "from pulse.chaos.cases.case1 import run\n",
        case: "from pulse.chaos.cases import common\n",
        "pulse/chaos/cases/common.py": "",
        "pulse/chaos/lab.py": "",
    }
    cycle = [["pulse.chaos.cases", "pulse.chaos.cases.case1"]]
    assert cycles(module_imports("pulse", files)) == cycle
    files[case] = "from pulse.chaos.cases.common import WAIT_S\n"
    assert cycles(module_imports("pulse", files)) == []
    # the same through relative imports
    files[case] = "from . import common\n"
    assert cycles(module_imports("pulse", files)) == cycle
    files[case] = "from .common import WAIT_S\nfrom ..lab import free_port\n"
    graph = module_imports("pulse", files)
    assert graph["pulse.chaos.cases.case1"] == {"pulse.chaos.cases.common", "pulse.chaos.lab"}
    assert cycles(graph) == []


@pytest.mark.parametrize(
    ("package", "source", "bad"),
    [
        ("features", "from storage.lake import read_lake", "storage"),
        ("streaming", "import batch.retrain", "batch"),  # a layer importing a layer
        ("serving", "    from streaming.seed import open_store", "streaming"),
        ("runtime", "from storage import registry", "storage"),
        ("batch", "from pulse.cli import main", "pulse"),
        ("schemas", "from features.time import as_of_for", "features"),
    ],
)
def test_the_rule_catches_a_broken_import(package: str, source: str, bad: str) -> None:
    # A nested module, to show subpackages are checked too.
    files = {f"{package}/sub/module.py": "def f():\n" + source.strip().join(["    ", "\n"])}
    assert violations(package, files) == [f"{package}/sub/module.py imports {bad}"]


def draw() -> str:
    """The structure as the checks above see it: packages by rank, each with its modules
    in an order where every module comes after the ones it imports, and its cycles."""
    lines = []
    for rank in sorted(set(RANK.values())):
        for package in sorted(p for p, r in RANK.items() if r == rank):
            files = package_sources(package)
            graph = module_imports(package, files)
            below = sorted({t for path, src in files.items() for t in imported_packages(src, path)}
                           - {package})  # fmt: skip
            order: list[str] = []
            while len(order) < len(graph):  # modules whose imports are all placed already
                ready = sorted(m for m in graph if m not in order and graph[m] <= set(order))
                if not ready:
                    break
                order += ready
            found = cycles(graph)
            verdict = f"cycles: {found}" if found else "no cycle"
            imports = ", ".join(below) or "nothing"
            lines.append(f"{rank} {package} (imports {imports}) - {len(graph)} modules, {verdict}")
            lines.append("    " + " < ".join(m.removeprefix(package + ".") for m in order))
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/unit/test_layers.py
    print(draw())
