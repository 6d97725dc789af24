"""Wall time and peak memory of every registered defense, alone, on the same model and data.

Why: the defense notebooks time each run inside a long-lived kernel, sometimes on a shared
CPU; this script gives the uncontended, like-for-like cost. Every defense runs in a fresh
subprocess on the same SmallCNN (trained for a few steps on a synthetic 10-class task with
101x40 inputs, so pruning and unlearning defenses see a working model) and the same clean
set (default: 80 clips, the default profile's 5 % subset), with the same epoch budget.
Peak memory is ``bdlib.memory.PeakRSS`` over the defense's runs (and growth above model + data).

    python benchmarks/defense_cost.py [--clean 80] [--epochs 20] [--repeats 3] [--defenses ft gnft-exact ...]
                                      [--set knob=value ...]

GN-FT is run in both modes. CLP is data-free and has no epochs. I-BAU's epochs are rounds.
``--set`` gives further knobs (JSON values) to the defenses that have them, e.g. ANP at
BackdoorBench's mask-step count: ``--defenses anp --set iterations=2000 batch_size=256``
(the "per epoch" column is then per mask step).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE, CLASSES = (101, 40), 10


def _data(n: int, seed: int):
    """Ten classes at MFCC scale (values in the tens)."""
    from bdlib.synthetic_task import template_task

    return template_task(n, SHAPE, CLASSES, seed, scale=30.0, noise=20.0)


def _victim(path: Path) -> None:
    import torch

    from bdlib.models import build_model
    from bdlib.synthetic_task import fit

    torch.save(fit(build_model("smallcnn", SHAPE, CLASSES, seed=0), _data(200, seed=1), steps=15).state_dict(), path)


def _load_victim(weights: Path):
    import torch

    from bdlib.models import build_model

    net = build_model("smallcnn", SHAPE, CLASSES)
    net.load_state_dict(torch.load(weights))
    return net


def _knob_values(pairs: list[str]) -> dict:
    """``["iterations=2000", "selection=sweep"]`` -> {"iterations": 2000, "selection": "sweep"}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes knob=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _run(label: str, weights: Path, clean: int, epochs: int, repeats: int, extra: dict | None = None) -> dict:
    from bdlib.defenses import DEFENSES, make_defense
    from bdlib.memory import PeakRSS
    from bdlib.metrics import accuracy

    net = _load_victim(weights)
    name, _, mode = label.partition("-")
    accepted = set(DEFENSES.get(name).Config.__dataclass_fields__)
    knobs = {k: v for k, v in {"epochs": epochs, "mode": mode or None}.items() if k in accepted and v}
    knobs.update({k: v for k, v in (extra or {}).items() if k in accepted})
    steps = knobs.get("iterations") or knobs.get("epochs")
    data, test = _data(clean, seed=2), _data(200, seed=3)
    times = []
    # one PeakRSS over warm-up and timed runs: it starts with model + data resident, and a
    # warm-up's heap kept by the allocator (bdlib.allocator) still counts as the defense's
    with PeakRSS() as mem:
        # untimed warm-up: the same defense for one epoch on a copy (a fresh process's first
        # passes build oneDNN kernels and optimiser paths, about a second)
        warm = {**knobs, "epochs": 1} if "epochs" in knobs else dict(knobs)
        if knobs.get("iterations"):
            warm["iterations"] = 1
        make_defense(name, seed=0, **warm).defend(copy.deepcopy(net), data, progress=False)
        for _ in range(repeats):  # each on a fresh copy
            victim = copy.deepcopy(net)
            t0 = time.perf_counter()
            defended = make_defense(name, seed=0, **knobs).defend(victim, data, progress=False)
            times.append(time.perf_counter() - t0)
    return {"defense": label, "time_s": statistics.median(times), "peak_mb": mem.peak_mb, "extra_mb": mem.extra_mb,
            "acc_after": accuracy(defended, test.features, test.labels.numpy()), "epochs": steps,
            "knobs": knobs}


def main() -> None:
    from bdlib.defenses import DEFENSES

    labels = [lab for n in DEFENSES for lab in ((f"{n}-approx", f"{n}-exact") if n == "gnft" else (n,))]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per defense (median reported)")
    ap.add_argument("--defenses", nargs="+", default=labels, choices=labels, metavar="NAME",
                    help=f"any of: {', '.join(labels)}")
    ap.add_argument("--set", nargs="+", default=[], metavar="KNOB=VALUE",
                    help="further knobs (JSON values) for the defenses that have them")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(_run(a.one, a.weights, a.clean, a.epochs, a.repeats, _knob_values(a.set))))
        return
    import torch

    from bdlib.allocator import allocator_settings
    from bdlib.metrics import accuracy

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "victim.pt"
        _victim(weights)
        net = _load_victim(weights)
        test = _data(200, seed=3)
        print(f"SmallCNN on synthetic 101x40 maps, {a.clean} clean clips, {a.epochs} epochs (I-BAU: rounds), "
              f"median of {a.repeats} runs, "
              f"{torch.get_num_threads()} CPU threads; malloc: {allocator_settings()}; "
              f"{'knobs: ' + ' '.join(a.set) + '; ' if a.set else ''}"
              f"model accuracy before: {accuracy(net, test.features, test.labels.numpy()):.2f}")
        print(f"{'defense':12s} {'time':>8s} {'per epoch':>10s} {'peak RSS':>9s} {'+ over model':>12s} {'acc after':>9s}")
        for label in a.defenses:
            cmd = [sys.executable, __file__, "--one", label, "--weights", str(weights), "--clean", str(a.clean),
                   "--epochs", str(a.epochs), "--repeats", str(a.repeats)] + (["--set", *a.set] if a.set else [])
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            per = f"{r['time_s'] / r['epochs']:8.2f} s" if r["epochs"] else f"{'-':>10s}"
            print(f"{label:12s} {r['time_s']:7.2f}s {per} {r['peak_mb']:6.0f} MB {r['extra_mb']:9.0f} MB "
                  f"{r['acc_after']:9.2f}", flush=True)


if __name__ == "__main__":
    main()
