"""Per-step cost of FT, GN-FT (approx) and GN-FT (exact) on the same model and batch.

Why a script and not a test: timings depend on the machine. Each mode runs in its own
subprocess so that the reported peak resident memory (ru_maxrss) belongs to that mode.

    python benchmarks/gnft_cost.py [--batch 256] [--steps 20] [--threads N]

Prints one line per mode: median seconds per optimiser step, ratio to FT, peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODES = ("ft", "gnft-approx", "gnft-exact")


def one(mode: str, batch: int, steps: int, threads: int | None) -> dict:
    import torch

    from bdlib.defenses.finetune import plain_gradient, trainable
    from bdlib.defenses.gnft import approx_gradient, exact_gradient
    from bdlib.models import build_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_model("smallcnn", (101, 40), 10).train()
    x, y = torch.randn(batch, 1, 101, 40) * 50, torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(trainable(net), lr=1e-3, momentum=0.9)
    fn = {"ft": plain_gradient,
          "gnft-approx": lambda m, a, b: approx_gradient(m, a, b, r=0.05, alpha=0.7),
          "gnft-exact": lambda m, a, b: exact_gradient(m, a, b, lam=0.035)}[mode]
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        _, grads = fn(net, x, y)
        for p, g in zip(trainable(net), grads):
            p.grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t0)
    return {"mode": mode, "step_s": statistics.median(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "device": "cpu",
            "threads": torch.get_num_threads(), "batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(one(a.mode, a.batch, a.steps, a.threads)))
        return
    rows = []
    for mode in MODES:
        cmd = [sys.executable, __file__, "--mode", mode, "--batch", str(a.batch), "--steps", str(a.steps)]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]))
    base = rows[0]["step_s"]
    print(f"SmallCNN, batch {a.batch} × 101×40 MFCC, {rows[0]['threads']} CPU threads, median of {a.steps} steps")
    for r in rows:
        print(f"{r['mode']:12s} {r['step_s'] * 1000:8.1f} ms/step  {r['step_s'] / base:5.2f}× FT  peak RSS {r['peak_rss_mb']:7.0f} MB")


if __name__ == "__main__":
    main()
