"""Training throughput (optimiser steps per second) of FT, GN-FT approx and GN-FT exact for
every registered model, on whatever device is present (or ``--device``).

Why: the paper profile (GN-FT, arXiv 2502.01152, Sec. 4.1: batch 256, 300 epochs) is meant
for a GPU; this says what a step costs per architecture and device before a grid is
planned. Each step is exactly what the defenses run — the update direction from the
defense's own ``grad_fn`` (``bdlib.defenses.gnft.GNFT.grad_fn``; FT: ``plain_gradient``) and
one SGD step — on a fixed random batch of 256 MFCC maps (1 × 101 × 40), the model in train
mode. ``--warmup`` steps are run and discarded first (cuDNN autotuning, allocator growth); on
CUDA the clock is read after ``torch.cuda.synchronize()``. The rate is ``steps / elapsed``
over the timed steps; modes run one after another, each on its own copy of the model.

    python benchmarks/throughput.py [--device auto|cpu|cuda|cuda:N] [--steps 20] [--models smallcnn ...]

Timings depend on the machine and on anything else it runs: quote them with the header line.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from bdlib.defenses import make_defense
from bdlib.defenses.finetune import plain_gradient, trainable
from bdlib.device import resolve_device
from bdlib.models import MODELS, build_model

BATCH, INPUT_SHAPE, CLASSES = 256, (101, 40), 10


def grad_fns() -> dict:
    """mode -> grad_fn(model, x, y), as the defenses build them (GN-FT at its defaults)."""
    return {"ft": plain_gradient,
            "gnft-approx": make_defense("gnft", mode="approx").grad_fn(),
            "gnft-exact": make_defense("gnft", mode="exact").grad_fn()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(model: torch.nn.Module, grad_fn, x: torch.Tensor, y: torch.Tensor, steps: int,
                     warmup: int) -> float:
    """Optimiser steps per second of ``grad_fn`` + SGD (lr 1e-3, momentum 0.9) on one batch."""
    params = trainable(model)
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    device = x.device

    def step():
        _, grads = grad_fn(model, x, y)
        for p, g in zip(params, grads):
            p.grad = g.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N, mps (default $BDLIB_DEVICE, else auto)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model and mode")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--models", nargs="+", default=None, help=f"default: every registered model ({', '.join(MODELS)})")
    ap.add_argument("--modes", nargs="+", default=list(grad_fns()), choices=list(grad_fns()))
    a = ap.parse_args(argv)
    device = resolve_device(a.device)
    models = a.models or list(MODELS)
    for m in models:
        MODELS.get(m)  # an unknown name fails here, listing the registered ones
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"batch {BATCH} x 1x{INPUT_SHAPE[0]}x{INPUT_SHAPE[1]} MFCC, {a.steps} timed steps after {a.warmup} warm-up")
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(BATCH, 1, *INPUT_SHAPE, generator=gen) * 50).to(device)  # MFCC-scale values
    y = torch.randint(0, CLASSES, (BATCH,), generator=gen).to(device)
    fns = grad_fns()
    print(f"{'model':16s} {'params':>9s} " + " ".join(f"{m + ' steps/s':>20s}" for m in a.modes)
          + f" {'clips/s (ft)':>13s}")
    for model_name in models:
        base = build_model(model_name, INPUT_SHAPE, CLASSES, seed=0).to(device).train()
        n_params = sum(p.numel() for p in base.parameters())
        rates = {}
        for mode in a.modes:
            try:
                rates[mode] = steps_per_second(copy.deepcopy(base), fns[mode], x, y, a.steps, a.warmup)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # e.g. out of memory: report, go on
                print(f"  {model_name} {mode}: failed: {str(exc).splitlines()[0]}")
                rates[mode] = float("nan")
        clips = rates.get("ft", float("nan")) * BATCH
        print(f"{model_name:16s} {n_params:9d} " + " ".join(f"{rates[m]:20.2f}" for m in a.modes)
              + f" {clips:13.0f}", flush=True)


if __name__ == "__main__":
    main()
