"""The package's shape: no import cycles, and the layer contracts of setup.cfg hold (docs/architecture.md).

Imports are counted wherever they are written: under ``TYPE_CHECKING`` and inside functions too, because
a type-only or deferred import is a design dependency all the same.
"""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "aviso_workflows"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(name: str, path: Path) -> Iterator[str]:
    """Every dotted name ``path`` imports, relative imports made absolute (``from . import x`` gives ``pkg.x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name is resolved to its longest module prefix)."""
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target in imported_names(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a package's own __init__ is imported by every module under it: not a dependency of design
            if target and target != name and not name.startswith(f"{target}."):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_counts_type_checking_and_function_level_imports() -> None:
    graph = import_graph()
    assert "aviso_workflows.notification" in graph["aviso_workflows.store"]  # at module level
    assert "aviso_workflows.store" in graph["aviso_workflows.serve.auth"]  # under TYPE_CHECKING
    assert "aviso_workflows.expect" in graph["aviso_workflows.cli"]  # inside a function


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" · ".join(cycle) for cycle in found)


def test_layer_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail(f"{lint} is missing: install the test extra (pip install -e '.[test]')")
    result = subprocess.run([str(lint), "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout, result.stdout


ADAPTERS = ("airflow", "cylc", "ecflow", "serve")


def test_the_no_scheduler_contract_covers_every_core_module() -> None:
    """A new core module must be named in setup.cfg's core-no-scheduler contract, or it is not checked."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    named = set(config["importlinter:contract:core-no-scheduler"]["source_modules"].split())
    top_level = {".".join(name.split(".")[:2]) for name in import_graph() if name.count(".") >= 1}
    core = {name for name in top_level if name.split(".")[1] not in ADAPTERS}
    assert core == named, f"missing: {sorted(core - named)}, gone: {sorted(named - core)}"


def test_the_architecture_page_draws_the_layers_contract() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    contract = config["importlinter:contract:layers"]["layers"].split("\n")
    page = (ROOT / "docs" / "architecture.md").read_text()
    diagram = page.split("```\n", 2)[1].split("```")[0]
    drawn = [line[14:].strip() for line in diagram.splitlines()]  # a 14-character label column, then the layer
    assert drawn == [layer.strip() for layer in contract if layer.strip()]
