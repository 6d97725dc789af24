"""Per-step cost of FT, GN-FT (approx) and every GN-FT (exact) implementation on the same model and batch.

Why a script and not a test: timings depend on the machine. Issue 4's target is approx
<= 2.1x FT (two forward-backward passes; paper Sec. 3.2); issue 12's is exact at a fair
cost, ~3-4x FT (one forward-backward for g, one Hessian-vector product). Each entry of
``bdlib.defenses.gnft.EXACT_GRADIENTS`` is timed as ``gnft-exact-<name>``; the one
``mode="exact"`` uses is marked ``*``. Measured on a shared 2-core CPU under heavy load (batch
80, 3-4 rounds, issue 12): forward_hvp 5.4-7.0x FT, double_backward 7.6-13x, reverse_hvp
10-13x, approx 1.9x (paired); peak memory above the model: FT 0.6 GB, approx 0.7 GB,
double_backward 1.9 GB, reverse_hvp 2.0 GB, forward_hvp 4.0 GB.

Time: the modes run in one process, interleaved step by step (the order rotates each
round), each on its own copy of the same initial model, so machine drift and ordering hit
them alike; the median over ``--steps`` rounds is reported, with the inter-quartile range,
and "paired" is the median over rounds of (mode's time / FT's time in the same round), the
ratio least disturbed by other load on a shared machine.
Memory: each mode then runs alone in a fresh subprocess, and ``bdlib.memory.PeakRSS`` gives
its peak resident memory during the steps and the growth above the model + batch.

    python benchmarks/gnft_cost.py [--batch 256] [--steps 20] [--threads N] [--skip-memory]

The malloc settings in effect are printed (``make`` and ``python -m bdlib run`` use
``bdlib.allocator.ALLOCATOR_ENV``; run under ``make bench`` or export them to match).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

from bdlib.defenses.gnft import EXACT_DEFAULT, EXACT_GRADIENTS

MODES = ("ft", "gnft-approx") + tuple(f"gnft-exact-{name}" for name in EXACT_GRADIENTS)
DEFAULT_EXACT = f"gnft-exact-{EXACT_DEFAULT}"


def _setup(batch: int, threads: int | None):
    import torch

    from bdlib.models import build_model

    if threads:
        torch.set_num_threads(threads)
    x = torch.randn(batch, 1, 101, 40, generator=torch.Generator().manual_seed(1)) * 50
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    return build_model("smallcnn", (101, 40), 10, seed=0).train(), x, y


def _stepper(mode: str, net):
    """One optimiser step of ``mode`` on ``net`` (SGD lr 1e-3, momentum 0.9: the GN-FT defaults)."""
    import torch

    from bdlib.defenses.finetune import plain_gradient, trainable
    from bdlib.defenses.gnft import approx_gradient

    if mode.startswith("gnft-exact-"):
        exact = EXACT_GRADIENTS[mode.removeprefix("gnft-exact-")]
        fn = lambda m, a, b: exact(m, a, b, lam=0.05 * 0.7)  # noqa: E731
    else:
        fn = {"ft": plain_gradient,
              "gnft-approx": lambda m, a, b: approx_gradient(m, a, b, r=0.05, alpha=0.7)}[mode]
    params = trainable(net)
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step(x, y):
        _, grads = fn(net, x, y)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timings(batch: int, steps: int, threads: int | None) -> dict[str, list[float]]:
    net, x, y = _setup(batch, threads)
    steppers = {m: _stepper(m, copy.deepcopy(net)) for m in MODES}
    for m in MODES:  # warm-up
        steppers[m](x, y)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(steps):
        for m in MODES[i % len(MODES):] + MODES[: i % len(MODES)]:
            t0 = time.perf_counter()
            steppers[m](x, y)
            times[m].append(time.perf_counter() - t0)
    return times


def memory(mode: str, batch: int, steps: int, threads: int | None) -> dict:
    from bdlib.memory import PeakRSS

    net, x, y = _setup(batch, threads)
    step = _stepper(mode, net)
    with PeakRSS() as mem:
        for _ in range(steps):
            step(x, y)
    return {"mode": mode, "peak_mb": mem.peak_mb, "extra_mb": mem.extra_mb, "scope": mem.scope}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--skip-memory", action="store_true", help="time only (a shared machine: less load, sooner)")
    ap.add_argument("--memory-of", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_of:
        print(json.dumps(memory(a.memory_of, a.batch, min(a.steps, 3), a.threads)))
        return
    import torch

    from bdlib.allocator import allocator_settings

    # time first and print it before the (slower) memory runs, so a run cut short still reports
    times = timings(a.batch, a.steps, a.threads)
    med = {m: statistics.median(t) for m, t in times.items()}
    paired = {m: statistics.median(a / b for a, b in zip(t, times["ft"])) for m, t in times.items()}
    print(f"SmallCNN, batch {a.batch} x 101x40 MFCC, {torch.get_num_threads()} CPU threads, {a.steps} interleaved "
          f"steps per mode; malloc: {allocator_settings()}")
    print(f"{'mode':29s} {'ms/step':>8s} {'IQR':>15s} {'x FT':>6s} {'paired':>7s}")
    for m in MODES:
        q = statistics.quantiles(times[m], n=4) if len(times[m]) > 1 else [med[m]] * 3
        name = m + (" *" if m == DEFAULT_EXACT else "")
        print(f"{name:29s} {med[m] * 1e3:8.1f} {q[0] * 1e3:6.1f}-{q[2] * 1e3:6.1f} ms {med[m] / med['ft']:5.2f}x "
              f"{paired[m]:6.2f}x", flush=True)
    print("* what GN-FT mode='exact' uses", flush=True)
    if a.skip_memory:
        return
    print(f"\n{'mode':29s} {'peak RSS':>9s} {'+ over model':>12s}  (each alone, {min(a.steps, 3)} steps)")
    for m in MODES:
        cmd = [sys.executable, __file__, "--memory-of", m, "--batch", str(a.batch), "--steps", str(a.steps)]
        cmd += ["--threads", str(a.threads)] if a.threads else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        mem = json.loads(out.strip().splitlines()[-1])
        print(f"{m:29s} {mem['peak_mb']:6.0f} MB {mem['extra_mb']:9.0f} MB", flush=True)


if __name__ == "__main__":
    main()
