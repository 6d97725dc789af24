"""Parameter count and seconds per training step of every registered model (issue 13).

Why a script and not a test: timings depend on the machine. One step is forward, cross-entropy,
backward and an Adam update on a batch of (N, 1, 101, 40) MFCC maps (the paper's 16 kHz
input) and 10 classes; the median over ``--steps`` steps after ``--warmup`` is reported, with the
malloc settings in effect (``bdlib.allocator``; here LargeCNN and the RNN step 1.1x and 1.3x slower
without them: run under ``make bench`` or export them).

    python benchmarks/model_cost.py [--batch 64] [--steps 5] [--warmup 1] [--threads 2] [models ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def step_seconds(name: str, batch: int, steps: int, warmup: int) -> dict:
    import torch
    import torch.nn.functional as F

    from bdlib.models import build_model

    net = build_model(name, (101, 40), 10, seed=0).train()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 1, 101, 40, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"model": name, "class": type(net).__name__, "parameters": sum(p.numel() for p in net.parameters()),
            "batch": batch, "s_per_step": round(statistics.median(times), 4),
            "s_min": round(min(times), 4), "s_max": round(max(times), 4)}


def main() -> None:
    import torch

    from bdlib.allocator import allocator_settings
    from bdlib.models import MODELS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for name in a.models:
        print(json.dumps({**step_seconds(name, a.batch, a.steps, a.warmup), "threads": a.threads,
                          "malloc": allocator_settings()}), flush=True)


if __name__ == "__main__":
    main()
