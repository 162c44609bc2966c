"""What ``balanced-l1 tune`` costs beside a grid of full runs: printed ratios measured in one run (not a test).

1. Intermediate validation: one validation of the whole held-out split and of the first ``--validation-images``
   images, against one trial (``--iters`` training iterations, timed on ``--time-iters`` of them), for the
   intermediate points a trial with ``--eval-every`` makes.
2. Study overhead per trial: claiming a queued trial, heartbeats, reporting the intermediate APs, telling the result,
   on SQLite, against one trial's time.
3. Iterations to the verdict: with ``--tune-json OUT/tune.json`` of a finished tune, the iterations its trials
   trained (a pruned trial counts up to its last point) against a grid of full runs of the same settings and seeds.

Usage (small version; the default model and data, as ``compare`` runs them, when the flags are left out)::

    python benchmarks/tune_cost.py --val-images 200 --time-iters 20 --iters 1600 --eval-every 400
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from balanced_l1.experiments.arm_specs import parse_arm
from balanced_l1.experiments.config import CompareConfig
from balanced_l1.experiments.run.distributed import DistContext
from balanced_l1.experiments.run.evaluate import evaluate_detector
from balanced_l1.experiments.run.runner import build_arm_model, load_data, train_config
from balanced_l1.experiments.run.train import train
from balanced_l1.experiments.tune.trial import first_images


def _validation(args: argparse.Namespace) -> float:
    config = CompareConfig(val_images=args.val_images, iters=args.time_iters, checkpoint_every=10**6)
    splits = load_data(config)
    arm = parse_arm("smooth_l1")[0]
    torch.manual_seed(0)
    model = build_arm_model(config, len(splits["train"].category_ids), arm)
    ctx = DistContext(0, 1, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        begun = time.perf_counter()
        train(model, splits["train"], train_config(config, len(splits["train"])), seed=0, ctx=ctx,
              checkpoint_path=Path(folder) / "c.pt", fingerprint={}, resume=False, desc="time")  # fmt: skip
        per_iteration = (time.perf_counter() - begun) / args.time_iters
    timed = {}
    for name, split in (("whole", splits["val"]), ("subset", first_images(splits["val"], args.validation_images))):
        begun = time.perf_counter()
        evaluate_detector(model, split, ctx=ctx, show_progress=False)
        timed[name] = time.perf_counter() - begun
    trial = per_iteration * args.iters
    points = args.iters // args.eval_every - 1  # the last point is the final evaluation, which a trial makes anyway
    print(f"one training iteration: {per_iteration:.3f} s; a trial of {args.iters} iterations: {trial:.0f} s")
    for name, seconds in timed.items():
        share = points * seconds / trial
        print(f"validation on the {name} held-out images: {seconds:.2f} s; {points} intermediate points = "
              f"{100 * share:.1f}% of a trial")  # fmt: skip
    return trial


def _overhead(trial_seconds: float, trials: int) -> None:
    import optuna

    from balanced_l1.experiments.tune.study import (
        StudyPlan,
        claim_trial,
        fail_stale_trials,
        heartbeat,
        open_storage,
        open_study,
    )

    with tempfile.TemporaryDirectory() as folder:
        storage = open_storage(f"sqlite:///{folder}/study.db", 60)
        plan = StudyPlan("smooth_l1", 0, trials, (), ())
        study = open_study(storage, "bench", {}, plan, sampler=optuna.samplers.TPESampler(seed=0),
                           pruner=optuna.pruners.SuccessiveHalvingPruner())  # fmt: skip
        begun = time.perf_counter()
        for _ in range(trials + 1):
            fail_stale_trials(study)
            frozen = claim_trial(study, ("baseline", "search"))
            assert frozen is not None
            trial = optuna.Trial(study, frozen._trial_id)
            with heartbeat(study, frozen._trial_id, 60):
                trial.suggest_float("x", 0.1, 1.0, log=True)
                for step in (400, 800, 1200):
                    trial.report(0.1, step)
                    trial.should_prune()
            study.tell(trial, 0.2)
        per_trial = (time.perf_counter() - begun) / (trials + 1)
    print(f"study overhead per trial (SQLite): {1000 * per_trial:.1f} ms = {100 * per_trial / trial_seconds:.3f}% "
          "of a trial")  # fmt: skip


def _iterations(path: Path, iters: int, arms: int, seeds: int) -> None:
    trials = json.loads(path.read_text())["trials"]
    spent = sum(iters if t["state"] == "complete" else max(map(int, t["intermediate_AP"]), default=0) for t in trials)
    grid = arms * seeds * iters
    print(f"tune: {len(trials)} trials, {spent} iterations; grid of {arms} arms x {seeds} seeds: {grid} iterations; "
          f"ratio {spent / grid:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--validation-images", type=int, default=50)
    parser.add_argument("--time-iters", type=int, default=20)
    parser.add_argument("--iters", type=int, default=1600)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--tune-json", type=Path, default=None)
    parser.add_argument("--grid-arms", type=int, default=14)
    parser.add_argument("--grid-seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    trial = _validation(args)
    _overhead(trial, args.trials)
    if args.tune_json is not None:
        _iterations(args.tune_json, args.iters, args.grid_arms, args.grid_seeds)


if __name__ == "__main__":
    main()
