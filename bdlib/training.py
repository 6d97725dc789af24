"""Supervised training and batched inference on feature tensors.

The victim is trained the way the GN-FT authors train theirs (Adam, cross-entropy on
the poisoned training set; their code: ``badnets.py``), with epochs, batch size and
learning rate taken from the profile. Seeds are passed in explicitly; each call seeds
torch's generator for dropout and its own generator for shuffling.

Device: the model's (:func:`bdlib.device.model_device`). Features and labels stay where
they are (the CPU) and each batch is moved to the model; the shuffling generator stays on
the CPU, so the batch order is the same on every device.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm  # text bars: readable in papermill outputs too

from .device import model_device


def batches(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Yield index tensors covering ``range(n)``; shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def train_model(model: nn.Module, feats: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int,
                lr: float, seed: int, weight_decay: float = 0.0, val: tuple[torch.Tensor, np.ndarray] | None = None,
                progress: bool = True, desc: str = "training") -> list[dict]:
    """Adam (cosine-annealed) + cross-entropy for ``epochs``; returns per-epoch loss and accuracies.

    With ``val`` = (features, labels) of a held-out clean split, the weights of the epoch
    with the best validation accuracy are kept (the authors early-stop on a held-out
    loss; selecting on the *test* set, as their script does, would leak it).
    """
    if len(feats) == 0:
        raise ValueError("cannot train on an empty training set")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    # cosine decay to zero: the last epochs settle instead of bouncing between minima
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    labels = torch.as_tensor(labels, dtype=torch.long)
    device = model_device(model)
    history = []
    best_acc, best_state = -1.0, None
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for epoch in bar:
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for idx in batches(len(feats), batch_size, gen):
            x, y = feats[idx].to(device), labels[idx].to(device)
            if len(idx) < 2:  # BatchNorm cannot train on a single clip
                continue
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == y).sum().item()
            total += len(idx)
        sched.step()
        record = {"epoch": epoch + 1, "loss": loss_sum / max(total, 1), "train_acc": correct / max(total, 1)}
        if val is not None:
            record["val_acc"] = float(np.mean(predict(model, val[0]) == np.asarray(val[1])))
            if record["val_acc"] > best_acc:
                best_acc, best_state = record["val_acc"], copy.deepcopy(model.state_dict())
        history.append(record)
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


@torch.no_grad()
def _eval_logits(model: nn.Module, feats: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Logits per batch in eval mode (BatchNorm running stats, no dropout); the model's mode is restored.
    Batches are moved to the model's device, the logits back to the CPU."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = [model(feats[i : i + batch_size].to(device)).cpu() for i in range(0, len(feats), batch_size)]
    model.train(was_training)
    return out


def predict(model: nn.Module, feats: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Class predictions in eval mode."""
    preds = [z.argmax(1) for z in _eval_logits(model, feats, batch_size)]
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def predict_proba(model: nn.Module, feats: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Softmax class probabilities in eval mode, (N, classes)."""
    probs = [F.softmax(z, 1) for z in _eval_logits(model, feats, batch_size)]
    return torch.cat(probs).numpy() if probs else np.zeros((0, 0), dtype=np.float32)
