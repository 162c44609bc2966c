"""Build mmcv (with its compiled ops, CPU only) against the torch of the running interpreter.

mmdetection 3.3 trains only with a full mmcv (``mmcv._ext``, its compiled ops), and mmcv 2.1.0, the
newest release that mmdetection 3.3 accepts (``mmcv >= 2.0.0rc4, < 2.2.0``), has no wheel for recent
torch releases. Its source builds against them with one change: its ``setup.py`` compiles with
``-std=c++17``, and the ATen headers of recent torch releases (2.14 here) require C++20
(``#error C++20 or later compatible compiler is required``). This script:

1. downloads the mmcv sdist from PyPI with pip (``pip download --no-binary :all:``);
2. replaces every ``-std=c++17`` in its ``setup.py`` by ``-std=c++20`` (the one patch; see ``PATCHES``);
3. builds a wheel with ``MMCV_WITH_OPS=1``, CUDA hidden (the ops are compiled for the CPU), and
   ``--no-build-isolation`` so the extension is compiled against the torch installed here;
4. keeps the wheel in a cache outside the repository, keyed by mmcv version, torch version, Python
   tag and machine, so the build (31 CPU-minutes; 41 minutes of wall time on 2 busy cores here) runs
   once per machine.

Usage::

    python tools/build_mmcv.py              # build (or find) the wheel, print its path
    python tools/build_mmcv.py --install    # and replace mmcv-lite by it in this environment

The cache is ``$BALANCED_L1_CACHE``, else ``$XDG_CACHE_HOME/balanced-l1``, else ``~/.cache/balanced-l1``.
``tests/test_mmdet_training.py`` imports this file; it uses the wheel unpacked (``unpacked_site``)
on ``PYTHONPATH`` of a subprocess rather than installing it (see that test's docstring for why).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: The mmcv release built by default: the newest that mmdetection 3.3's import-time check accepts.
MMCV_VERSION = "2.1.0"

#: sha256 of the sdists this script was checked with (PyPI's ``mmcv-<version>.tar.gz``).
SDIST_SHA256 = {"2.1.0": "d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f"}

#: The patch applied to mmcv's setup.py: (old, new) text, every occurrence replaced.
PATCHES = (("-std=c++17", "-std=c++20"),)


def cache_root() -> Path:
    """The cache directory for built wheels (created on first use)."""
    if os.environ.get("BALANCED_L1_CACHE"):
        return Path(os.environ["BALANCED_L1_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "balanced-l1"


def build_key(mmcv_version: str = MMCV_VERSION) -> str:
    """``mmcv-<version>-torch<torch version>-<python tag>-<machine>``: what the compiled ops depend on."""
    import torch

    torch_version = torch.__version__.replace("+", "_")
    python_tag = f"{sys.implementation.name[:2]}{sys.version_info.major}{sys.version_info.minor}"
    return f"mmcv-{mmcv_version}-torch{torch_version}-{python_tag}-{platform.machine()}"


def build_dir(mmcv_version: str = MMCV_VERSION) -> Path:
    """The cache entry of this mmcv version for the running torch and Python."""
    return cache_root() / build_key(mmcv_version)


def cached_wheel(mmcv_version: str = MMCV_VERSION) -> Path | None:
    """The cached wheel, or ``None`` when it has not been built on this machine."""
    wheels = sorted(build_dir(mmcv_version).glob(f"mmcv-{mmcv_version}-*.whl"))
    return wheels[0] if wheels else None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (two processes asking at once build once)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def patch_setup_py(path: Path) -> int:
    """Apply ``PATCHES`` to mmcv's ``setup.py``; return how many replacements were made (must be > 0)."""
    text = path.read_text()
    count = 0
    for old, new in PATCHES:
        count += text.count(old)
        text = text.replace(old, new)
    if count == 0:
        raise RuntimeError(f"{path}: none of {PATCHES} found; this mmcv source is not the one the patch was made for")
    path.write_text(text)
    return count


#: pip options of both steps. --no-build-isolation: mmcv's setup.py imports pkg_resources (setuptools
#: < 81) and torch, both from this environment; pip's isolated build environment would have neither,
#: and the ops must be compiled against this environment's torch.
PIP_OPTIONS = ("--no-build-isolation", "--disable-pip-version-check")


#: Seconds between two "still building" lines.
REPORT_EVERY = 60.0


def run_logged(
    command: list[str],
    log: Path,
    *,
    doing: str,
    report: Callable[[str], None] | None = None,
    every: float = REPORT_EVERY,
    **kwargs: Any,
) -> None:
    """Run ``command`` with its output appended to ``log``, reporting every ``every`` seconds that it still runs.

    Args:
        command: the command.
        log: the log file its output is appended to.
        doing: what it does, for the report (``"building mmcv 2.1.0"``).
        report: where the lines go (``None``: nowhere).
        every: seconds between two lines.
        **kwargs: passed to :class:`subprocess.Popen` (``env``, ``cwd``).

    Raises:
        RuntimeError: when the command fails, with the log's tail.
    """
    start = time.monotonic()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        with subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **kwargs) as process:
            while True:
                try:
                    returncode = process.wait(timeout=every)
                    break
                except subprocess.TimeoutExpired:
                    if report is not None:
                        minutes = (time.monotonic() - start) / 60
                        report(f"{doing}: still running after {minutes:.0f} min (log: {log})")
    if returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({returncode}); log {log}:\n{tail}")


def build_wheel(
    mmcv_version: str = MMCV_VERSION, jobs: int | None = None, report: Callable[[str], None] | None = print
) -> Path:
    """Return the cached wheel, building it first when this machine has none (15 to 40 minutes).

    Args:
        mmcv_version: the mmcv release to build.
        jobs: parallel compile jobs (default: every core).
        report: where a build says what it does: a line before it starts (what is built, about how long, the
            cache and the log), one every :data:`REPORT_EVERY` seconds while it runs, and one when it is done.
            ``None``: silent. Nothing is reported when the wheel is cached.

    Returns:
        The wheel's path in the cache.
    """
    target = build_dir(mmcv_version)
    wheel = cached_wheel(mmcv_version)
    if wheel is not None:
        return wheel
    with _locked(target):
        wheel = cached_wheel(mmcv_version)
        if wheel is not None:  # built by another process while this one waited
            return wheel
        for leftover in target.glob("mmcv-build-*"):  # from a build that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        log = target / "build.log"
        log.write_text(f"building mmcv {mmcv_version} for {build_key(mmcv_version)}\n")
        doing = f"building mmcv {mmcv_version}"
        if report is not None:
            report(
                f"{doing} with its CPU ops from source, once per machine: about 15 to 40 minutes (31 CPU-minutes); "
                f"cache {target}, log {log}"
            )
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mmcv-build-", dir=target) as tmp:
            work = Path(tmp)
            pip = [sys.executable, "-m", "pip"]
            run_logged(
                [
                    *pip,
                    "download",
                    f"mmcv=={mmcv_version}",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    *PIP_OPTIONS,
                    "-d",
                    str(work),
                ],
                log,
                doing=doing,
                report=report,
            )
            (sdist,) = work.glob("mmcv-*.tar.gz")
            digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
            if mmcv_version in SDIST_SHA256 and digest != SDIST_SHA256[mmcv_version]:
                raise RuntimeError(f"{sdist.name}: sha256 {digest}, expected {SDIST_SHA256[mmcv_version]}")
            with tarfile.open(sdist) as archive:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                    archive.extractall(work, filter="data")
                else:  # pragma: no cover
                    archive.extractall(work)
            source = work / f"mmcv-{mmcv_version}"
            replaced = patch_setup_py(source / "setup.py")
            env = dict(os.environ)
            env.update(
                MMCV_WITH_OPS="1",  # the full mmcv, not mmcv-lite
                FORCE_CUDA="0",
                CUDA_VISIBLE_DEVICES="",  # compile the CPU ops even on a machine with a GPU
                MAX_JOBS=str(jobs or os.cpu_count() or 1),  # ninja's parallel compile jobs
            )
            run_logged(
                [*pip, "wheel", "--no-deps", *PIP_OPTIONS, "-w", str(work / "dist"), str(source)],
                log,
                doing=doing,
                report=report,
                env=env,
            )
            (built,) = (work / "dist").glob("mmcv-*.whl")
            seconds = time.perf_counter() - start
            (target / "build.json").write_text(
                json.dumps(
                    {
                        "mmcv": mmcv_version,
                        "key": build_key(mmcv_version),
                        "patch": [list(p) for p in PATCHES],
                        "replacements": replaced,
                        "jobs": env["MAX_JOBS"],
                        "seconds": round(seconds, 1),
                    },
                    indent=2,
                )
            )
            partial = target / (built.name + ".partial")
            shutil.copyfile(built, partial)
            partial.replace(target / built.name)  # atomic: a reader sees the whole wheel or none
        if report is not None:
            report(f"built {target / built.name} in {seconds / 60:.0f} min")
        return target / built.name


def unpacked_site(wheel: Path) -> Path:
    """The wheel unpacked into a directory beside it, to put first on ``PYTHONPATH``.

    The directory holds ``mmcv/`` (with ``_ext*.so``) and ``mmcv-<version>.dist-info``: a process
    started with it on ``PYTHONPATH`` imports this mmcv ahead of any installed mmcv-lite.
    """
    site = wheel.parent / "site"
    if (site / "mmcv").is_dir():
        return site
    with _locked(wheel.parent):
        if not (site / "mmcv").is_dir():
            tmp = Path(tempfile.mkdtemp(prefix="site-", dir=wheel.parent))
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(tmp)
            tmp.replace(site)
    return site


def install(wheel: Path) -> None:
    """Replace mmcv-lite by the built mmcv in the running environment.

    mmcv-lite is removed first: both install the package directory ``mmcv/``, and removing mmcv-lite
    after mmcv would delete files the two share.
    """
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "uninstall", "-y", "mmcv-lite"], check=True)
    subprocess.run([*pip, "install", "--no-deps", "--force-reinstall", str(wheel)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mmcv-version", default=MMCV_VERSION)
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)")
    parser.add_argument("--install", action="store_true", help="replace mmcv-lite by the built wheel here")
    args = parser.parse_args(argv)
    wheel = build_wheel(args.mmcv_version, jobs=args.jobs)
    print(wheel)
    if args.install:
        install(wheel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
