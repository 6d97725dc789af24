"""Where the tensors of a run live: one device setting, the same code on the CPU or a GPU.

The pipeline takes a device *spec* — ``"auto"`` (CUDA when present, else the CPU),
``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` — from ``Experiment(device=...)``,
``Study(device=...)``, ``python -m bdlib run|study --device`` or, when none is given, the
``BDLIB_DEVICE`` environment variable; :func:`resolve_device` turns it into a
``torch.device`` and refuses, rather than silently falls back from, a device that is not
there. Models are moved to it; data stays on the CPU (in the store and in memory) and each
batch is moved to the model's device where it is used (``x.to(model_device(model))``). The device is
recorded in every stored entry's metrics, next to ``torch_threads``, but never enters a
store key: an artifact is the same artifact whichever device computed it.

Determinism — what is and is not bit-identical:

* **CPU, same thread count**: bit-identical run to run (seeded generators, fixed batch
  order). The intra-op thread count changes float summation order, hence ``torch_threads``
  in the provenance. Passing ``device="cpu"`` gives exactly the numbers of not passing one
  on a machine without a GPU: moving a CPU tensor to the CPU is a no-op, dtypes are kept,
  and every random draw that orders or selects data comes from a CPU generator.
* **CUDA, run to run**: not bit-identical by default. cuDNN picks convolution algorithms
  by benchmarking and some of them (and ``index_add``/scatter-style backward kernels)
  accumulate with atomics in a nondeterministic order. ``torch.use_deterministic_algorithms(True)``
  (with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set before CUDA starts) and
  ``torch.backends.cudnn.benchmark = False`` make repeated runs on the same GPU, driver and
  library versions identical, at some speed cost; ops without a deterministic kernel then
  raise. TF32 (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``,
  on for cuDNN convolutions by default) rounds matmul/conv inputs to a 10-bit mantissa: faster,
  and further from the CPU's float32 results. This module changes none of these global
  switches; a run that needs them sets them itself.
* **CPU vs CUDA**: agree within a tolerance only. Different kernels sum in different orders,
  and dropout on CUDA draws from the CUDA generator (``torch.manual_seed`` seeds both, but
  the streams differ), so trained weights differ slightly and a metric on a small test set
  can move by a few clips. ``tests/test_device.py`` states the tolerance it checks.
"""
from __future__ import annotations

import os

import torch

ENV_VAR = "BDLIB_DEVICE"
CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` a spec names; ``None`` reads ``$BDLIB_DEVICE`` (default ``"auto"``).

    ``"auto"`` is CUDA (the current CUDA device) when available, else the CPU; MPS is used
    only when asked for by name. An unknown spec raises naming it and the valid choices; a
    device that exists in name but not on this machine ("cuda" without CUDA, "cuda:3" on a
    two-GPU machine, "mps" off Apple silicon) raises saying so — no silent fallback, since a
    run meant for a GPU that quietly takes the CPU costs hours before anyone notices.
    """
    source = ""
    if spec is None:
        spec = os.environ.get(ENV_VAR) or "auto"
        source = f" (from ${ENV_VAR})" if os.environ.get(ENV_VAR) else ""
    device = _parse(spec, source)
    if isinstance(device, str):  # "auto"
        return _current_cuda() if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}{source} asked for CUDA, but CUDA is not available here (torch "
                             f"{torch.__version__}, built with CUDA {torch.version.cuda}); use 'cpu' or 'auto'")
        if device.index is None:
            return _current_cuda()
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}{source}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {spec!r}{source} asked for MPS, which is not available here; use 'cpu' or 'auto'")
        return torch.device("mps")
    raise AssertionError(device)  # _parse admits no other type


def check_spec(spec: str | torch.device) -> str:
    """``spec`` as a normalised string, checked for its form only, not for the device's
    presence: what a :class:`bdlib.study.Study` hands to the workers that resolve it (the
    machine that builds the study may have no GPU; a typo still fails at once)."""
    device = _parse(spec, "")
    return device if isinstance(device, str) else str(device)


def _parse(spec: str | torch.device, source: str) -> torch.device | str:
    """``"auto"`` or a ``torch.device`` of a supported type; unknown specs raise."""
    if isinstance(spec, torch.device):
        device = spec
    elif isinstance(spec, str):
        text = spec.strip().lower()
        if text == "auto":
            return "auto"
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown device {spec!r}{source}; valid: {', '.join(CHOICES)}") from None
    else:
        raise TypeError(f"device must be a string, a torch.device or None, got {type(spec).__name__} {spec!r}")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {spec!r}{source}; valid: {', '.join(CHOICES)}")
    return device


def _current_cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any): where its
    batches must be moved and where the tensors a defense creates for it must live."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def rng_state(device: torch.device) -> tuple:
    """The generator states a forward pass on ``device`` draws from (dropout): the CPU's, and
    the CUDA device's when it is one — replayed by :func:`set_rng_state` so that two passes
    see the same dropout mask on either device (GN-FT's two-pass gradient)."""
    if device.type == "cuda":
        return torch.get_rng_state(), torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.get_rng_state(), torch.mps.get_rng_state()
    return torch.get_rng_state(), None


def set_rng_state(state: tuple, device: torch.device) -> None:
    cpu, accelerator = state
    torch.set_rng_state(cpu)
    if device.type == "cuda":
        torch.cuda.set_rng_state(accelerator, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(accelerator)


__all__ = ["CHOICES", "ENV_VAR", "check_spec", "model_device", "resolve_device", "rng_state", "set_rng_state"]
