"""Content-addressed artifact store: every trained model and metric set, keyed by config.

Why: notebooks are re-run constantly (papermill, nbval, by hand). A notebook that finds
the artifact of its exact configuration reuses it; change one knob and the key changes.
Each artifact is a directory ``<root>/<kind>/<hash>/`` holding ``config.json``,
``metrics.json`` and, for models, ``weights.safetensors``. It is written into a
temporary directory and renamed into place in one step, so an interrupted run never
leaves a half-written artifact that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def config_key(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def provenance() -> dict:
    """Git commit (and whether the tree was dirty), time and library versions."""
    here = Path(__file__).resolve().parent
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(git("status", "--porcelain", "--", ".")),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
    }


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, kind: str, config: dict) -> Path:
        return self.root / kind / config_key(config)

    def has(self, kind: str, config: dict) -> bool:
        return (self.path(kind, config) / "metrics.json").exists()

    def save(self, kind: str, config: dict, metrics: dict, tensors: dict[str, torch.Tensor] | None = None) -> Path:
        final = self.path(kind, config)
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=_json_default))
        if tensors is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_default))
        if final.exists():  # a concurrent/earlier identical run: replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        return final

    def load_metrics(self, kind: str, config: dict) -> dict:
        return json.loads((self.path(kind, config) / "metrics.json").read_text())

    def load_tensors(self, kind: str, config: dict) -> dict[str, torch.Tensor]:
        return load_file(str(self.path(kind, config) / "weights.safetensors"))

    def save_model(self, kind: str, config: dict, model: torch.nn.Module, metrics: dict) -> Path:
        return self.save(kind, config, metrics, model.state_dict())

    def load_model_into(self, kind: str, config: dict, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.load_tensors(kind, config))
        return model.eval()

    def records(self, kind: str) -> list[dict[str, Any]]:
        """All complete artifacts of a kind as {"config": ..., "metrics": ..., "path": ...}."""
        out = []
        for d in sorted((self.root / kind).glob("[!.]*")):
            if (d / "metrics.json").exists():
                out.append({"config": json.loads((d / "config.json").read_text()),
                            "metrics": json.loads((d / "metrics.json").read_text()), "path": str(d)})
        return out
