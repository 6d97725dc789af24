"""What a defense may ask of a model: the declared parts of :class:`DefendableModel`.

Why a contract: several defenses act on a named part of the network — Fine-Pruning prunes
the units of a late layer, NAD distils feature maps, ANP masks normalisation channels, CLP
bounds conv→norm channels. A defense that *guessed* those parts (``getattr`` with a
default, "every BatchNorm2d in module order") silently did something else, or nothing, on
an architecture it was not written for. Here every model states each part, and states a
part it lacks as absent (``None`` or ``()``), so a defense either finds what it needs or
refuses at once with :class:`DefenseNotApplicable`, naming the model, itself and the part.

Parts are module names as ``model.get_submodule`` takes them. The contract is structural
(a ``typing.Protocol``): a model declares the class attributes below and imports nothing,
so its code fingerprint (``bdlib.keys``) does not depend on this module.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


class DefenseNotApplicable(ValueError):
    """A defense cannot act on this model (it lacks a part the defense works on).

    The message names the defense, the model class and the missing part; a study can
    catch this one error to record "not applicable" instead of a failure."""


class InvalidModelContract(TypeError):
    """A model's declaration is wrong (a named part does not exist or has the wrong type): a bug
    in the model, not a property of the defense."""


@runtime_checkable
class DefendableModel(Protocol):
    """The parts a defense may ask for; every model declares all of them (absent: None / ())."""

    #: the last nn.Conv2d; Fine-Pruning (``layer="last_conv"``, Liu et al. 2018) prunes its output channels
    last_conv: str | None
    #: the BatchNorm right after ``last_conv`` whose affine parameters are zeroed with a pruned channel
    last_conv_norm: str | None
    #: modules with (N, C, H, W) outputs, shallow to deep, whose attention maps NAD distils
    attention_layers: tuple[str, ...]
    #: BatchNorm layers (affine) whose channels ANP masks and perturbs
    norm_layers: tuple[str, ...]
    #: (nn.Conv2d, BatchNorm) pairs whose channel Lipschitz bounds CLP computes
    conv_norm_pairs: tuple[tuple[str, str], ...]
    #: the final nn.Linear (logits); Fine-Pruning's default layer prunes its inputs
    classifier: str | None


#: each part: (expected module type(s), what it is, for messages)
PARTS: dict[str, tuple[tuple[type, ...], str]] = {
    "last_conv": ((nn.Conv2d,), "convolution"),
    "last_conv_norm": ((_BatchNorm,), "BatchNorm after the last convolution"),
    "attention_layers": ((nn.Module,), "convolutional feature maps"),
    "norm_layers": ((_BatchNorm,), "BatchNorm layers"),
    "conv_norm_pairs": ((nn.Conv2d, _BatchNorm), "convolution→BatchNorm pairs"),
    "classifier": ((nn.Linear,), "final linear layer"),
}


def declares_parts(model: nn.Module) -> bool:
    return isinstance(model, DefendableModel)


def _refuse(model: nn.Module, defense: str, part: str, why: str, declared: bool) -> DefenseNotApplicable:
    name = type(model).__name__
    if not declared:
        return DefenseNotApplicable(
            f"{defense} cannot defend {name}: it does not declare its parts (the DefendableModel contract in "
            f"bdlib.models.contract); {defense} needs its {part} ({why})")
    return DefenseNotApplicable(f"{defense} cannot defend {name}: it has no {part} ({PARTS[part][1]}; {why})")


def _module(model: nn.Module, part: str, name: str, kind: tuple[type, ...]) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise InvalidModelContract(f"{type(model).__name__} declares {part}={name!r}, which is not a submodule") from None
    if not isinstance(module, kind):
        raise InvalidModelContract(f"{type(model).__name__} declares {part}={name!r}, a {type(module).__name__}; "
                                   f"expected {' or '.join(k.__name__ for k in kind)}")
    return module


def layer(model: nn.Module, part: str, defense: str, why: str) -> tuple[str, nn.Module]:
    """(name, module) of a single-module part (``last_conv``, ``last_conv_norm``, ``classifier``);
    refuses with :class:`DefenseNotApplicable` if the model lacks it."""
    name = getattr(model, part, None) if declares_parts(model) else None
    if not name:
        raise _refuse(model, defense, part, why, declares_parts(model))
    return name, _module(model, part, name, PARTS[part][0])


def optional_layer(model: nn.Module, part: str) -> tuple[str, nn.Module] | None:
    """A single-module part, or None where the model declares it absent."""
    name = getattr(model, part, None) if declares_parts(model) else None
    return (name, _module(model, part, name, PARTS[part][0])) if name else None


def layers(model: nn.Module, part: str, defense: str, why: str) -> dict[str, nn.Module]:
    """{name: module} of a tuple part (``attention_layers``, ``norm_layers``), in declared order;
    refuses if the model declares none."""
    names = tuple(getattr(model, part, ())) if declares_parts(model) else ()
    if not names:
        raise _refuse(model, defense, part, why, declares_parts(model))
    return {n: _module(model, part, n, PARTS[part][0]) for n in names}


def conv_norm_pairs(model: nn.Module, defense: str, why: str) -> list[tuple[str, nn.Conv2d, _BatchNorm]]:
    """(conv name, conv, norm) for each declared pair; refuses if the model declares none."""
    pairs = tuple(getattr(model, "conv_norm_pairs", ())) if declares_parts(model) else ()
    if not pairs:
        raise _refuse(model, defense, "conv_norm_pairs", why, declares_parts(model))
    out = []
    for conv_name, norm_name in pairs:
        conv = _module(model, "conv_norm_pairs", conv_name, (nn.Conv2d,))
        norm = _module(model, "conv_norm_pairs", norm_name, (_BatchNorm,))
        if norm.num_features != conv.out_channels:
            raise InvalidModelContract(f"{type(model).__name__} pairs {conv_name} ({conv.out_channels} channels) with "
                                       f"{norm_name} ({norm.num_features} features)")
        out.append((conv_name, conv, norm))
    return out


def check_contract(model: nn.Module) -> None:
    """Every part is declared, and every declared name resolves to a module of its type.

    Raises :class:`InvalidModelContract`; used by the model tests (and cheap enough for any caller)."""
    missing = [p for p in PARTS if not hasattr(model, p)]
    if missing:
        raise InvalidModelContract(f"{type(model).__name__} does not declare {', '.join(missing)} "
                                   "(declare an absent part as None or ())")
    for part in ("last_conv", "last_conv_norm", "classifier"):
        optional_layer(model, part)
    if model.last_conv_norm and not model.last_conv:
        raise InvalidModelContract(f"{type(model).__name__} declares last_conv_norm without last_conv")
    for part in ("attention_layers", "norm_layers"):
        for n in getattr(model, part):
            _module(model, part, n, PARTS[part][0])
    if model.conv_norm_pairs:
        conv_norm_pairs(model, "check_contract", "")
