"""Forward + backward time and saved-for-backward bytes of balanced_l1_loss, as ratios measured in one run.

Baselines: (a) the naive formula most code uses (``torch.where`` over both branches, everything through
autograd) and (b) ``F.smooth_l1_loss``. float32, reduction "sum", 2 threads unless ``--threads``.
Also: an op-by-op breakdown of the eager loss (torch.profiler), and the goals checked in this run.

    .venv/bin/python benchmarks/bench_loss.py [--sizes 4096,65536,4194304] [--device cpu] [--no-compile]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812

from balanced_l1 import balanced_l1_loss

ALPHA, GAMMA, BETA = 0.5, 1.5, 1.0
B = math.expm1(GAMMA / ALPHA)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def naive_balanced_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The formula as most code writes it: both branches everywhere, selected by torch.where."""
    diff = torch.abs(pred - target)
    loss = torch.where(
        diff < BETA,
        ALPHA / B * (B * diff + 1) * torch.log(B * diff / BETA + 1) - ALPHA * diff,
        GAMMA * diff + GAMMA / B - ALPHA * BETA,
    )
    return loss.sum()


def ours(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return balanced_l1_loss(pred, target, alpha=ALPHA, gamma=GAMMA, beta=BETA, reduction="sum")


def smooth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(pred, target, reduction="sum", beta=BETA)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fwd_bwd(fns: dict[str, LossFn], pred: torch.Tensor, target: torch.Tensor, budget_s: float) -> dict[str, float]:
    """Median seconds of forward + backward per function, the functions interleaved round by round."""

    def once(fn: LossFn) -> float:
        pred.grad = None
        _sync(pred.device)
        start = time.perf_counter()
        fn(pred, target).backward()
        _sync(pred.device)
        return time.perf_counter() - start

    for fn in fns.values():  # warm-up (and compilation)
        for _ in range(3):
            once(fn)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or min(len(s) for s in samples.values()) < 5:
        for name, fn in fns.items():
            samples[name].append(once(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


def saved_bytes(fn: LossFn, pred: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """Number and total bytes of the tensors autograd saves for backward."""
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(pred, target)
    return len(sizes), sum(sizes)


def op_breakdown(pred: torch.Tensor, target: torch.Tensor, calls: int) -> list[tuple[str, int, float]]:
    """(op, calls per forward + backward, self ms per forward + backward) of the eager loss, slowest first."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if pred.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    ours(pred, target).backward()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            pred.grad = None
            ours(pred, target).backward()
        _sync(pred.device)
    rows = []
    for event in prof.key_averages():
        self_us = event.self_device_time_total if pred.device.type == "cuda" else event.self_cpu_time_total
        if self_us > 0:
            rows.append((event.key, event.count // calls, self_us / calls / 1e3))
    return sorted(rows, key=lambda row: -row[2])


def _goal(text: str, value: float, limit: float) -> None:
    print(f"- {text}: {value:.2f}x (goal <= {limit:g}x) {'met' if value <= limit else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4096,65536,4194304")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per size and table")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, float32, reduction='sum'")

    print("\nEager forward + backward (median ms) and ratios")
    print("| N | naive ms | ours ms | smooth L1 ms | ours / naive | ours / smooth L1 |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator(device="cpu").manual_seed(0)
    eager: dict[int, dict[str, float]] = {}
    for n in sizes:
        pred = (torch.randn(n, generator=gen) * 2).to(device).requires_grad_(True)
        target = torch.randn(n, generator=gen).to(device)
        t = time_fwd_bwd({"naive": naive_balanced_l1, "ours": ours, "smooth_l1": smooth_l1}, pred, target, args.budget)
        eager[n] = t
        print(
            f"| {n} | {t['naive'] * 1e3:.3f} | {t['ours'] * 1e3:.3f} | {t['smooth_l1'] * 1e3:.3f} "
            f"| {t['ours'] / t['naive']:.2f}x | {t['ours'] / t['smooth_l1']:.2f}x |"
        )

    for n in (min(sizes), max(sizes)):
        pred = (torch.randn(n, generator=gen) * 2).to(device).requires_grad_(True)
        target = torch.randn(n, generator=gen).to(device)
        rows = op_breakdown(pred, target, calls=max(1, 2_000_000 // n))
        total = sum(ms for _, _, ms in rows)
        print(f"\nEager balanced_l1_loss, op by op (self time per forward + backward, N = {n}, total {total:.3f} ms)")
        print("| op | calls | ms | share |")
        print("|---|---|---|---|")
        for name, count, ms in rows[:14]:
            print(f"| {name} | {count} | {ms:.3f} | {ms / total:.0%} |")

    print("\nTensors saved for backward (N = 65536)")
    print("| implementation | tensors | bytes | N-element float32 tensors |")
    print("|---|---|---|---|")
    n = 65536
    pred = torch.randn(n, device=device, requires_grad=True)
    target = torch.randn(n, device=device)
    for name, fn in (("naive", naive_balanced_l1), ("ours", ours), ("smooth L1", smooth_l1)):
        count, total = saved_bytes(fn, pred, target)
        print(f"| {name} | {count} | {total} | {total / (4 * n):.2f} |")

    print("\nGoals (this run)")
    big, small = max(sizes), min(sizes)
    _goal(f"eager ours / naive at N = {big}", eager[big]["ours"] / eager[big]["naive"], 0.25)
    _goal(f"eager ours / smooth L1 at N = {big}", eager[big]["ours"] / eager[big]["smooth_l1"], 5.0)
    _goal(f"eager ours / smooth L1 at N = {small}", eager[small]["ours"] / eager[small]["smooth_l1"], 3.0)
    if args.no_compile:
        return
    n = max(sizes)
    print(f"\ntorch.compile forward + backward at N = {n} (median ms) and ratios")
    print("| compiled ours ms | eager smooth L1 ms | compiled smooth L1 ms | ours / eager sL1 | ours / compiled sL1 |")
    print("|---|---|---|---|---|")
    pred = (torch.randn(n, generator=gen) * 2).to(device).requires_grad_(True)
    target = torch.randn(n, generator=gen).to(device)
    fns = {
        "ours": torch.compile(ours, fullgraph=True),
        "smooth_l1": smooth_l1,
        "smooth_l1_compiled": torch.compile(smooth_l1, fullgraph=True),
    }
    t = time_fwd_bwd(fns, pred, target, args.budget)
    print(
        f"| {t['ours'] * 1e3:.3f} | {t['smooth_l1'] * 1e3:.3f} | {t['smooth_l1_compiled'] * 1e3:.3f} "
        f"| {t['ours'] / t['smooth_l1']:.2f}x | {t['ours'] / t['smooth_l1_compiled']:.2f}x |"
    )
    _goal(f"compiled ours / compiled smooth L1 at N = {n}", t["ours"] / t["smooth_l1_compiled"], 1.3)


if __name__ == "__main__":
    main()
