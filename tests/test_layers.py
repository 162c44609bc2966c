"""The architecture, read from the imports: no import loop, and no module imports a layer above its own.

Every ``import`` and ``from ... import`` of ``src/balanced_l1`` counts, those inside functions too (a lazy
import is still a dependency). The layers, lowest first (the design page's "Where things are"):

    params, _files                  numbers, choices, files: no framework
    reference                       the float64 NumPy oracle
    functional, modules             the PyTorch loss
    balanced_l1, jax, keras, plots  the package's front, the other frameworks, the figure
    detection, mmdet                torchvision adapters, the mmdetection plugin
    experiments                     the comparison
    cli                             the command line (cli, _cli_args: argument types, _cli_tune: the tune command)

Inside ``experiments`` the folders follow the flow, and none imports a later one:

    config, arms, arm_specs, output_folder, metric_names   what every step uses: settings, arms, OUT, metric names
    data                            what a run trains and is scored on
    run                             one run: train, evaluate, record, load a trained model
    report                          tables, figures and words over finished runs
    compare, evaluate_out           the commands, which put the steps together
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {
    "balanced_l1.params": 0,
    "balanced_l1._files": 0,
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
    "balanced_l1._cli_args": 7,
    "balanced_l1._cli_tune": 7,
}


EXPERIMENTS = "balanced_l1.experiments"
EXPERIMENT_LAYERS = {
    **{f"{EXPERIMENTS}.{name}": 0 for name in ("config", "arms", "arm_specs", "output_folder", "metric_names")},
    f"{EXPERIMENTS}.data": 1,
    f"{EXPERIMENTS}.run": 2,
    f"{EXPERIMENTS}.report": 3,
    **{f"{EXPERIMENTS}.{name}": 4 for name in ("compare", "evaluate_out")},
    EXPERIMENTS: 4,  # the package's lazy load_trained_model
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


def _experiment_layer(name: str) -> int:
    while name not in EXPERIMENT_LAYERS:
        name = name.rsplit(".", 1)[0]
    return EXPERIMENT_LAYERS[name]


def _upward_in_experiments(graph: dict[str, set[str]]) -> list[str]:
    inside = {
        a: {b for b in deps if b.startswith(EXPERIMENTS)} for a, deps in graph.items() if a.startswith(EXPERIMENTS)
    }
    return [f"{a} -> {b}" for a, deps in inside.items() for b in deps if _experiment_layer(b) > _experiment_layer(a)]


def test_every_module_of_experiments_has_a_place_in_the_flow() -> None:
    assert all(_experiment_layer(name) >= 0 for name in _graph() if name.startswith(EXPERIMENTS))


def test_no_folder_of_experiments_imports_a_later_step_of_the_flow() -> None:
    assert not _upward_in_experiments(_graph())


def test_one_run_never_imports_the_report() -> None:
    graph = _graph()
    run = f"{EXPERIMENTS}.run"
    report = f"{EXPERIMENTS}.report"
    assert not [f"{a} -> {b}" for a, deps in graph.items() if a.startswith(run) for b in deps if b.startswith(report)]


def test_the_checks_see_a_loop_and_an_upward_import() -> None:
    loop = {"balanced_l1.experiments.run.runner": {"balanced_l1.experiments.run.trained_model"},
            "balanced_l1.experiments.run.trained_model": {"balanced_l1.experiments.run.runner"}}  # fmt: skip
    assert _loop(loop) == [
        "balanced_l1.experiments.run.runner",
        "balanced_l1.experiments.run.trained_model",
        "balanced_l1.experiments.run.runner",
    ]
    upward = {"balanced_l1.experiments.run.trained_model": {"balanced_l1.experiments.report.summary"},
              "balanced_l1.experiments.config": {"balanced_l1.experiments.run.runlog"}}  # fmt: skip
    assert _upward_in_experiments(upward) == [
        "balanced_l1.experiments.run.trained_model -> balanced_l1.experiments.report.summary",
        "balanced_l1.experiments.config -> balanced_l1.experiments.run.runlog",
    ]
    assert _upward({"balanced_l1.detection.losses": {"balanced_l1.experiments.arms"}}) == [
        "balanced_l1.detection.losses -> balanced_l1.experiments.arms"
    ]
    assert "balanced_l1.experiments.run.parallel" in _graph()["balanced_l1.experiments.compare"]  # a lazy import counts
