"""An output folder is data: reading it never imports or runs what it names (issue 27, R1).

``OUT/config.toml`` records the ``arm_modules`` of the comparison that wrote it. ``balanced-l1 evaluate`` and
``load_trained_model`` import none of them: the caller gives the modules it trusts (``--arm-modules``), and a
folder that names others is refused with exit status 2, naming them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from balanced_l1.experiments.config import CompareConfig
from balanced_l1.experiments.config.toml_files import to_toml
from balanced_l1.experiments.output_folder.errors import ArmModulesNotGivenError
from balanced_l1.experiments.output_folder.files import saved_config
from balanced_l1.experiments.run.trained_model import load_trained_model

_EVIL = "import pathlib\npathlib.Path(__file__).with_name('IMPORTED').write_text('ran')\n"


def _hostile_out(tmp_path: Path, modules: tuple[str, ...]) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.toml").write_text(to_toml(CompareConfig(out=str(out), arm_modules=modules)))
    (out / "evilmod.py").write_text(_EVIL)
    return out


def _evaluate_inside(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, "-m", "balanced_l1.cli", "evaluate", ".", *args],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("modules", [("evilmod",), ("this",), ("venv.__main__",), ("evilmod", "this")])
def test_evaluate_imports_nothing_that_the_folder_names(tmp_path: Path, modules: tuple[str, ...]) -> None:
    out = _hostile_out(tmp_path, modules)
    before = sorted(p.name for p in out.iterdir())
    done = _evaluate_inside(out)
    assert done.returncode == 2, done.stderr
    assert "names arm modules that were not given" in done.stderr
    assert all(repr(name) in done.stderr for name in modules)
    assert f"--arm-modules {','.join(modules)}" in done.stderr
    assert "Traceback" not in done.stderr
    assert "Beautiful is better than ugly" not in done.stdout  # `this` was not imported
    assert not (out / "IMPORTED").exists()
    assert sorted(p.name for p in out.iterdir()) == before  # no venv, no lock, nothing written


def test_a_module_given_on_the_command_line_is_imported(tmp_path: Path) -> None:
    out = _hostile_out(tmp_path, ("evilmod",))
    done = _evaluate_inside(out, "--arm-modules", "evilmod")
    assert (out / "IMPORTED").exists()  # the caller vouched for it
    assert done.returncode == 2 and "no finished run" in done.stderr, done.stderr


def test_load_trained_model_and_saved_config_refuse_modules_not_given(tmp_path: Path) -> None:
    out = _hostile_out(tmp_path, ("evilmod",))
    with pytest.raises(ArmModulesNotGivenError, match="'evilmod'"):
        load_trained_model(out, "smooth_l1", 0)
    with pytest.raises(ArmModulesNotGivenError, match="'evilmod'"):
        saved_config(out, ("other",))
    assert "evilmod" not in sys.modules
    assert not (out / "IMPORTED").exists()
