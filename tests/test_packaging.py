"""The release artefacts: sdist and wheel build, pass ``twine check``, and the bare wheel works alone.

The slow test builds both from this checkout, checks them, creates a fresh virtual environment
(without system site packages), installs the wheel there with pip's own dependency resolution and
no extras, and computes a loss with the installed package. A CPU-only torch is enough for that;
where pip's ``find-links`` offers a CPU torch wheel for this Python, it is pinned (about 1 GB
installed instead of about 5 GB for a CUDA build).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK_INSTALLED = """
import importlib.util, sys
import torch
import balanced_l1
from balanced_l1 import balanced_l1_loss
assert balanced_l1.__file__.startswith(sys.prefix), balanced_l1.__file__
for optional in ("torchvision", "matplotlib", "pycocotools", "mmdet", "jax", "keras"):
    assert importlib.util.find_spec(optional) is None, optional
loss = balanced_l1_loss(torch.tensor([0.5, -3.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
print(repr(loss.item()))
"""


def _run(*command: str | Path, cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _cpu_torch_pin(python: Path, cwd: Path) -> list[str]:
    """``["torch==<version>"]`` for a CPU torch wheel in pip's find-links for this Python, else ``[]``."""
    config = _run(python, "-m", "pip", "config", "list", cwd=cwd)
    places = re.findall(r"find-links='([^']*)'", config) + os.environ.get("PIP_FIND_LINKS", "").split()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for place in places:
        for wheel in sorted(Path(place).glob(f"torch-*+cpu-{tag}-{tag}-*.whl")) if Path(place).is_dir() else []:
            return [f"torch=={wheel.name.split('-')[1]}"]
    return []


def test_the_version_is_written_once_and_read_from_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import importlib.metadata

    import balanced_l1

    pyproject = (ROOT / "pyproject.toml").read_text()
    written = re.search(r'^version = "([^"]+)"$', pyproject, flags=re.M)
    assert written and balanced_l1.__version__ == importlib.metadata.version("balanced-l1") == written.group(1)
    assert written.group(1) not in (ROOT / "src" / "balanced_l1" / "__init__.py").read_text()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: f"9.9.9+{name}")
    try:
        assert importlib.reload(balanced_l1).__version__ == "9.9.9+balanced-l1"
    finally:
        monkeypatch.undo()
        importlib.reload(balanced_l1)


def test_bare_requirements_are_torch_and_numpy_only() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dependencies = \["torch>=[\d.]+", "numpy>=[\d.]+"\]$', pyproject, flags=re.M)
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert 'license = "Apache-2.0"' in pyproject


@pytest.mark.slow
def test_sdist_and_wheel_build_pass_twine_and_the_bare_wheel_computes_a_loss(tmp_path: Path) -> None:
    pytest.importorskip("build")
    pytest.importorskip("twine")
    started = time.perf_counter()
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT, cwd=tmp_path)
    sdist, wheel = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    assert len(sdist) == len(wheel) == 1
    assert "PASSED" in _run(sys.executable, "-m", "twine", "check", "--strict", sdist[0], wheel[0], cwd=tmp_path)
    with tarfile.open(sdist[0]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/balanced_l1/py.typed"} <= names
    with zipfile.ZipFile(wheel[0]) as archive:
        files = set(archive.namelist())
        metadata = archive.read(next(name for name in files if name.endswith(".dist-info/METADATA"))).decode()
    assert {"balanced_l1/py.typed", "balanced_l1/mmdet.py", "balanced_l1-0.1.0.dist-info/licenses/LICENSE"} <= files
    required = re.findall(r"^Requires-Dist: ([^;\n]+)$", metadata, flags=re.M)
    assert sorted(required) == ["numpy>=1.24", "torch>=2.2"]
    built = time.perf_counter()

    venv = tmp_path / "fresh"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", wheel[0], *_cpu_torch_pin(python, tmp_path), cwd=tmp_path)
    installed = time.perf_counter()
    loss = float(_run(python, "-c", CHECK_INSTALLED, cwd=tmp_path))
    assert loss == pytest.approx((0.4005675069053246 + 4.078593544736884) / 2, rel=1e-12)
    print(f"build + checks {built - started:.1f} s, fresh venv + install {installed - built:.1f} s")
