"""The victims table: per model its clean reference and one victim per attack, side by side.

Why one function: notebook 10 shows it and ``benchmarks/model_victims.py`` prints it for the
README's model table (issue 13: clean ACC, BadNets ASR, parameter count and train time per
architecture), so both read the same rows. Each victim is trained or loaded through
:meth:`bdlib.pipeline.Experiment.backdoored_model`, so the rows are the store's records;
``train_time_s`` and ``torch_threads`` are those of the run that trained the victim.
"""
from __future__ import annotations

import pandas as pd


def victim_table(exp, models, attacks) -> tuple[pd.DataFrame, dict]:
    """(rows, records): one row per model for its clean model and one per (model, attack)
    victim, with ACC, ASR, the ACC drop from the clean model, the victim training recipe
    (``train_lr``) and its cost; ``records`` maps (model, attack) to the store record."""
    records, rows = {}, []
    for model in models:
        clean_net, clean_rec = exp.backdoored_model(None, model)
        clean = clean_rec["metrics"]
        base = {"model": model, "parameters": sum(p.numel() for p in clean_net.parameters()),
                "train_lr": exp.profile.train_lr}
        rows.append({**base, "attack": "none (clean)", "acc": clean["acc"], "asr": clean["asr"],
                     "train_time_s": clean["train_time_s"], "torch_threads": clean.get("torch_threads")})
        for attack in attacks:
            _, rec = exp.backdoored_model(attack, model)
            records[(model, attack)] = rec
            m = rec["metrics"]
            rows.append({**base, "attack": attack, "acc": m["acc"], "asr": m["asr"], "ra": m["ra"],
                         "acc_drop": clean["acc"] - m["acc"], "n_poisoned": m["n_poisoned"],
                         "train_time_s": m["train_time_s"], "torch_threads": m.get("torch_threads")})
    return pd.DataFrame(rows), records


__all__ = ["victim_table"]
