"""Clean ACC, victim ASR/ACC, parameters and train time per model: the README's model table (issue 13).

Why a script: training the large models takes tens of minutes per victim on a CPU, so the table
is made once and quoted; the victims land in the store, where notebook 10 and every later run
read them. ``--train-lr`` and ``--train-epochs`` override the profile's victim learning rate and
epoch count (both part of the store key):
LargeCNN (no normalisation layer, no activation after its first two convolutions) stays at
chance at the default profile's Adam 1e-3 and is trained at the GN-FT authors' 1e-4
(quantum-bitss/Audio-Backdoor-Attack, badnets.py ``--learning_rate``).

    python benchmarks/model_victims.py [--profile default] [--seed 0] [--threads 2]
        [--train-lr 1e-4] [--train-epochs 100] [--attacks badnets] models ...
    python benchmarks/model_victims.py --from-store --csv benchmarks/model_victims.csv largecnn rnn lstmatt

``--from-store`` trains nothing: it lists every victim of those models that the store holds,
whatever its recipe (the probes of other learning rates and epoch counts included), with its
training history's best validation and last training accuracy: the committed record of the
README's *Models* section.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def stored_victims(store_root: Path, models: list[str]):
    """One row per stored victim (clean model or backdoored) of ``models``, any data set, recipe,
    attack setting and seed (``--profile``, ``--seed`` and the recipe options do not filter it)."""
    import pandas as pd

    from bdlib.store import Store

    rows = []
    for rec in Store(store_root).records("models"):
        c, m = rec["config"], rec["metrics"]
        if c["model"] not in models:
            continue
        history = m.get("history") or [{}]
        rows.append({"model": c["model"], "dataset": c["dataset"], "seed": c["seed"], "train_lr": c["train_lr"],
                     "train_epochs": c["train_epochs"], "train_batch_size": c["train_batch_size"],
                     "attack": c["attack"] or "none (clean)", "attack_knobs": json.dumps(c.get("attack_knobs") or {}),
                     "poison_rate": c.get("poison_rate"), "target": c.get("target"), "acc": m["acc"], "asr": m["asr"],
                     "best_epoch": m.get("best_epoch"), "best_val_acc": max(h.get("val_acc", float("nan")) for h in history),
                     "last_train_acc": history[-1].get("train_acc"), "train_time_s": m["train_time_s"],
                     "torch_threads": m.get("torch_threads"), "git_commit": m.get("git_commit")})
    if not rows:
        raise SystemExit(f"no stored victim of {models} under {store_root}")
    table = pd.DataFrame(rows).astype({"target": "Int64"})  # the clean model has none
    return table.sort_values(["model", "dataset", "train_lr", "train_epochs", "attack"], ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-lr", type=float, help="victim learning rate (default: the profile's)")
    ap.add_argument("--train-epochs", type=int, help="victim epochs (default: the profile's)")
    ap.add_argument("--attacks", nargs="+", default=["badnets"])
    ap.add_argument("--from-store", action="store_true", help="train nothing: list the stored victims of these models")
    ap.add_argument("--csv", type=Path, help="with --from-store: also write the rows here")
    a = ap.parse_args()
    if a.from_store:
        from bdlib.paths import data_root

        table = stored_victims(data_root() / "store", a.models)
        print(table.drop(columns=["git_commit"]).round(4).to_string(index=False))
        if a.csv:
            table.to_csv(a.csv, index=False)
        return
    import torch

    from bdlib.allocator import allocator_settings
    from bdlib.pipeline import load_experiment
    from bdlib.victims import victim_table

    torch.set_num_threads(a.threads)
    over = {k: v for k, v in (("train_lr", a.train_lr), ("train_epochs", a.train_epochs)) if v is not None}
    exp = load_experiment(a.profile, a.seed, **over)
    table, _ = victim_table(exp, a.models, a.attacks)
    print(f"profile {a.profile}, seed {a.seed}, victim lr {exp.profile.train_lr:g}, {exp.profile.train_epochs} epochs, "
          f"{a.threads} threads asked "
          f"(a stored victim keeps the threads it was trained with); malloc: {allocator_settings()}")
    print(table.drop(columns=["ra"], errors="ignore").round(4).to_string(index=False))


if __name__ == "__main__":
    main()
