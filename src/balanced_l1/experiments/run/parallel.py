"""Run several (arm, seed) trainings side by side, each in its own process (``--jobs N``).

Every run is independent of the others: it builds its model under its own seed, reads the data in its
own order and writes its own checkpoint and run record. So running ``N`` of them at once, each in a
fresh (spawned) process with ``--threads`` threads, gives exactly the results of running them one
after another, in about ``1/N`` of the time on a machine with ``N`` idle cores. The parent process
holds the lock on ``--out``, waits, and reads the run records back. The first run that fails stops the
others and its error is raised in the parent, with its own type and message; a process that dies without a report
(killed, or stopped while Python started it) becomes a :class:`RunFailedError` naming the run and what to do.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from typing import Any

from balanced_l1.experiments.config import CompareConfig


class RunFailedError(RuntimeError):
    """A run in a child process died without a report, or failed with an error that cannot be sent back whole;
    the message names the run (arm and seed), how it ended and what to do."""


def _exit_with_parent(parent: int) -> None:
    """End this process soon after its parent dies (SIGKILL included), so no run outlives the lock on --out."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _child(config: CompareConfig, arm: str, seed: int, position: int, errors: Any, parent: int) -> None:
    _exit_with_parent(parent)
    try:
        import torch

        from balanced_l1.experiments.run.runner import run_single

        torch.set_num_threads(config.threads)
        run_single(config, arm, seed, position=position)
    except BaseException as err:  # every failure goes back to the parent, which decides what it means
        try:
            errors.put((arm, seed, err))
        except Exception:  # an exception that does not pickle: send its text
            text = "".join(traceback.format_exception_only(err)).strip()
            errors.put((arm, seed, RunFailedError(f"the run {arm} seed {seed} failed: {text}")))
        raise SystemExit(1) from None


def run_in_processes(config: CompareConfig, tasks: list[tuple[str, int]], jobs: int) -> None:
    """Run ``tasks`` (``(arm, seed)`` pairs) with at most ``jobs`` at once, each in a spawned process.

    Args:
        config: the settings (each child loads the data and trains as one process would).
        tasks: the runs to do, in order.
        jobs: the most runs at once.

    Raises:
        Exception: the error of the first run that failed (a documented error keeps its type), or
            :class:`RunFailedError` for a child that died without a report.
    """
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    pending = list(tasks)
    running: dict[Any, tuple[str, int, int]] = {}
    free_positions = list(range(jobs))
    try:
        while pending or running:
            while pending and len(running) < jobs:
                arm, seed = pending.pop(0)
                position = free_positions.pop(0)
                process = context.Process(
                    target=_child,
                    args=(config, arm, seed, position, errors, os.getpid()),
                    name=f"{arm}_seed{seed}",
                    daemon=False,
                )
                process.start()
                running[process] = (arm, seed, position)
            multiprocessing.connection.wait([p.sentinel for p in running])
            for process in [p for p in running if not p.is_alive()]:
                process.join()
                arm, seed, position = running.pop(process)
                free_positions.append(position)
                if process.exitcode != 0:
                    raise _reported_error(errors, arm, seed, process.exitcode)
    finally:
        for process in running:
            process.terminate()
        for process in running:
            process.join()
        errors.close()


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"stopped with exit code {exitcode}"


def _reported_error(errors: Any, arm: str, seed: int, exitcode: int | None) -> BaseException:
    try:
        _, _, err = errors.get(timeout=10)
    except Exception:
        return RunFailedError(
            f"the run {arm} seed {seed} {_how_it_ended(exitcode)} before it could report why; the checkpoints "
            "written so far are kept: run the same command with --resume to go on (if you start compare from a "
            'Python script, guard its code with `if __name__ == "__main__":`, since each run of --jobs N starts a '
            "fresh Python process that imports the script again)"
        )
    return err if isinstance(err, BaseException) else RunFailedError(str(err))
