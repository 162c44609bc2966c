"""Cost of the training loop's reporting on the default run: log lines, TensorBoard, validation.

Trains the default run's small detector on the default embedded data with the default settings, in rounds of
``--iters`` iterations, alternately through :func:`balanced_l1.experiments.run.train.train` without an observer (the
loop as it was before ``log.txt``: a tqdm bar only) and with the observer the default ``compare`` run builds
(``log.txt`` every ``--log-every`` iterations; with ``--tensorboard``, event files too), and prints the median time
per iteration of each and their ratio, all measured in one process. Both start from the same weights and data
order, so the work is the same. It also times one validation on the default held-out split (200 images), the
cost of each ``--eval-every`` point.

    PYTHONPATH=src python benchmarks/bench_train_loop.py [--iters 30] [--rounds 3] [--tensorboard]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from balanced_l1.detection import GradientBalanceMonitor
from balanced_l1.experiments.arm_specs import ArmSpec
from balanced_l1.experiments.config import DEFAULTS
from balanced_l1.experiments.run.distributed import DistContext
from balanced_l1.experiments.run.evaluate import evaluate_detector
from balanced_l1.experiments.run.runlog import LogFile, RunObserver
from balanced_l1.experiments.run.runner import build_arm_model, load_data, train_config
from balanced_l1.experiments.run.train import LoopParts, Observers, TrainingRun, train


def _seconds_per_iteration(
    splits: dict, spec: ArmSpec, iters: int, folder: Path, observed: bool, tensorboard: bool
) -> float:
    config = DEFAULTS
    tc = train_config(config, len(splits["train"]))
    tc = type(tc)(**{**tc.__dict__, "iters": iters, "checkpoint_every": 10**8})
    torch.manual_seed(0)
    model = build_arm_model(config, len(splits["train"].category_ids), spec)
    monitor = GradientBalanceMonitor(model, task_balance_every=config.balance_every)
    observer = None
    if observed:
        board = folder / "tensorboard" / f"run{time.perf_counter_ns()}" if tensorboard else None
        log = LogFile(folder / "log.txt", echo=False)
        observer = RunObserver("bench", log, config.log_every, tensorboard=board, bars=True)  # as on a terminal
    run = TrainingRun("bench", 0, {}, folder / "ckpt.pt", resume=False)
    device = torch.device("cpu")
    parts = LoopParts.sgd(model, tc, device)
    started = time.perf_counter()
    train(parts, splits["train"], tc, run, DistContext(0, 1, device), Observers(monitor=monitor, observer=observer))
    elapsed = time.perf_counter() - started
    if observer is not None:
        observer.end()
    monitor.remove()
    return elapsed / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tensorboard", action="store_true", help="the observer also writes TensorBoard events")
    parser.add_argument("--threads", type=int, default=DEFAULTS.threads)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_data(DEFAULTS)
    specs = DEFAULTS.arm_specs()
    plain: list[float] = []
    observed: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            plain.append(_seconds_per_iteration(splits, specs[1], args.iters, Path(tmp), False, False))
            observed.append(_seconds_per_iteration(splits, specs[1], args.iters, Path(tmp), True, args.tensorboard))
        model = build_arm_model(DEFAULTS, len(splits["train"].category_ids), specs[0])
        started = time.perf_counter()
        evaluate_detector(model, splits["val"], show_progress=False)
        validation = time.perf_counter() - started
    a, b = statistics.median(plain), statistics.median(observed)
    what = "log.txt + TensorBoard" if args.tensorboard else "log.txt (the default run)"
    print(f"per iteration, median of {args.rounds} rounds of {args.iters}: without observer {1000 * a:.1f} ms, "
          f"with {what} {1000 * b:.1f} ms, ratio {b / a:.3f}")  # fmt: skip
    print(f"rounds without: {[round(1000 * x, 1) for x in plain]} ms; with: {[round(1000 * x, 1) for x in observed]}")
    tc = train_config(DEFAULTS, len(splits["train"]))
    print(
        f"one validation on the default held-out split ({len(splits['val'])} images): {validation:.1f} s, "
        f"{validation / (b * tc.iters):.1%} of a default run's {tc.iters} iterations"
    )


if __name__ == "__main__":
    main()
