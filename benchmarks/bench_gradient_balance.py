"""Overhead of the gradient-balance measurement on the default run's training step.

Trains the default run's small detector on the default embedded data, with the default settings, in
rounds of ``--iters`` iterations, alternately without and with a
:class:`~balanced_l1.detection.GradientBalanceMonitor` (``task_balance_every`` from ``--balance-every``,
default: the ``compare`` default), and prints the median time per iteration of each and their ratio,
all measured in one run. Both start from the same weights and data order, so the work is the same.

    PYTHONPATH=src python benchmarks/bench_gradient_balance.py [--iters 40] [--rounds 3] [--arm balanced_l1]

With ``--profile`` it instead prints where the time of that training step goes: ``torch.profiler``'s
self CPU time per op over ``--iters`` iterations without the monitor, the slowest ops first.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from balanced_l1.detection import GradientBalanceMonitor
from balanced_l1.detection.models import build_detector
from balanced_l1.experiments.arms import get_arm
from balanced_l1.experiments.config import DEFAULTS
from balanced_l1.experiments.data.loader import DataOrder, training_loader, unpack
from balanced_l1.experiments.data.split import DetectionSplit
from balanced_l1.experiments.run.runner import load_data, train_config


def _seconds_per_iteration(
    splits: dict[str, DetectionSplit],
    monitor_every: int | None,
    iters: int,
    arm: str,
    profiler: torch.profiler.profile | None = None,
) -> float:
    config = DEFAULTS
    tc = train_config(config, len(splits["train"]))
    torch.manual_seed(0)
    min_size, max_size = config.resize()
    model = build_detector(
        config.model, len(splits["train"].category_ids), weights_backbone="none", min_size=min_size, max_size=max_size
    )
    get_arm(arm).apply(model, {})
    monitor = GradientBalanceMonitor(model, task_balance_every=monitor_every) if monitor_every else None
    optimizer = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    loader = training_loader(
        splits["train"],
        DataOrder(0, len(splits["train"]), 0.0),
        batch_size=tc.batch_size,
        start=0,
        stop=iters,
        rank=0,
        world_size=1,
        workers=0,
        device=torch.device("cpu"),
    )
    times = []
    for batch in loader:
        if len(times) == 2 and profiler is not None:  # after two warm-up iterations
            profiler.start()
        images, targets = unpack(batch)
        started = time.perf_counter()
        losses = model([image.float().div_(255.0) for image in images], targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        if monitor is not None:
            monitor.step()
        optimizer.step()
        times.append(time.perf_counter() - started)
    if profiler is not None:
        profiler.stop()
    return statistics.median(times[2:])


def _print_profile(splits: dict[str, DetectionSplit], iters: int, arm: str) -> None:
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    _seconds_per_iteration(splits, None, iters, arm, profiler)
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    print(f"| op (self CPU time, {iters - 2} iterations, arm {arm}) | calls | ms per iteration | share |")
    print("|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]:
        per_iter = e.self_cpu_time_total / 1000 / (iters - 2)
        print(f"| {e.key} | {e.count} | {per_iter:.2f} | {100 * e.self_cpu_time_total / total:.0f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each without and then with the monitor")
    parser.add_argument("--balance-every", type=int, default=DEFAULTS.balance_every)
    parser.add_argument("--arm", default="balanced_l1")
    parser.add_argument("--threads", type=int, default=DEFAULTS.threads)
    parser.add_argument("--profile", action="store_true", help="print the op-by-op profile of the step instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_data(DEFAULTS)
    if args.profile:
        _print_profile(splits, args.iters + 2, args.arm)
        return
    off, on = [], []
    for _ in range(args.rounds):
        off.append(_seconds_per_iteration(splits, None, args.iters, args.arm))
        on.append(_seconds_per_iteration(splits, args.balance_every, args.iters, args.arm))
    t_off, t_on = statistics.median(off), statistics.median(on)
    print("| training step of the default run | ms per iteration |")
    print("|---|---|")
    print(f"| without the monitor | {1000 * t_off:.1f} |")
    print(f"| with the monitor (box/cls every {args.balance_every}) | {1000 * t_on:.1f} |")
    rounds = f"{args.rounds} rounds of {args.iters} iterations, arm {args.arm}"
    print(f"\noverhead: {100 * (t_on / t_off - 1):+.1f}% ({rounds})")


if __name__ == "__main__":
    main()
