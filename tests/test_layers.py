"""The architecture, read from the imports: no import loop, and no module imports a layer above its own.

Every ``import`` and ``from ... import`` of ``src/balanced_l1`` counts, those inside functions too (a lazy
import is still a dependency). The layers, lowest first (the design page's "Where things are"):

    params, _files, _moved          numbers, choices, files, old module paths: no framework
    reference                       the float64 NumPy oracle
    functional, modules             the PyTorch loss
    balanced_l1, jax, keras, plots  the package's front, the other frameworks, the figure
    detection, mmdet                torchvision adapters, the mmdetection plugin
    experiments                     the comparison
    cli                             the command line
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {
    "balanced_l1.params": 0,
    "balanced_l1._files": 0,
    "balanced_l1._moved": 0,
    "balanced_l1.reference": 1,
    "balanced_l1.functional": 2,
    "balanced_l1.modules": 3,
    "balanced_l1": 4,
    "balanced_l1.jax": 4,
    "balanced_l1.keras": 4,
    "balanced_l1.plots": 4,
    "balanced_l1.detection": 5,
    "balanced_l1.mmdet": 5,
    "balanced_l1.experiments": 6,
    "balanced_l1.cli": 7,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "balanced_l1").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            candidates = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(name: str) -> int:
    while name not in LAYERS:
        name = name.rsplit(".", 1)[0]
    return LAYERS[name]


def test_every_module_has_a_layer() -> None:
    assert all(_layer(name) >= 0 for name in _graph())


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} -> {b}" for a, deps in graph.items() for b in deps if _layer(b) > _layer(a)]


def _loop(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import loop found, as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for dependency in sorted(graph.get(name, ())):
            if not dependency.startswith(name + "."):  # a package's __init__ re-exporting its own modules
                found = visit(dependency, [*path, name])
                if found:
                    return found
        done.add(name)
        return None

    return next((loop for module in sorted(graph) if (loop := visit(module, []))), None)


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert not _upward(_graph())


def test_there_is_no_import_loop() -> None:
    assert _loop(_graph()) is None


def test_the_checks_see_a_loop_and_an_upward_import() -> None:
    loop = {"balanced_l1.experiments.run.runner": {"balanced_l1.experiments.run.trained"},
            "balanced_l1.experiments.run.trained": {"balanced_l1.experiments.run.runner"}}  # fmt: skip
    assert _loop(loop) == [
        "balanced_l1.experiments.run.runner",
        "balanced_l1.experiments.run.trained",
        "balanced_l1.experiments.run.runner",
    ]
    assert _upward({"balanced_l1.detection.losses": {"balanced_l1.experiments.arms"}}) == [
        "balanced_l1.detection.losses -> balanced_l1.experiments.arms"
    ]
    assert "balanced_l1.experiments.run.parallel" in _graph()["balanced_l1.experiments.compare"]  # a lazy import counts
