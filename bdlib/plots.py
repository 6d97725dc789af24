"""Figure helpers for the notebooks: waveform + spectrogram panels, MFCC maps, saving.

Why a helper for saving: every figure must land in ``figures/`` under a stable name, but
only runs of the ``default`` profile (the committed results) may overwrite those;
smoke/paper runs write to ``data/figures/<profile>/`` instead. Figures whose data is a
table are drawn by :mod:`bdlib.figures` from the CSV saved next to them (so ``python -m
bdlib figures`` can redraw them); the audio figures here are saved as pictures only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from .paths import REPO_ROOT, figure_path

if TYPE_CHECKING:  # a tensor is drawn through numpy: no torch import for the figures
    import torch


def save_figure(fig, name: str, profile: str, dataset: str = "embedded") -> None:
    """Save ``fig`` as ``<name>.png`` (see :func:`figure_path`) and say where."""
    path = figure_path(name, profile, dataset)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"figure saved: {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")


def wave_and_spectrogram(axes, wave: np.ndarray, sr: int, title: str, max_hz: float | None = None) -> None:
    """Top: the waveform; bottom: a log-power spectrogram (dB)."""
    t = np.arange(len(wave)) / sr
    axes[0].plot(t, wave, lw=0.6)
    axes[0].set(title=title, xlabel="time (s)", ylim=(-1, 1))
    with np.errstate(divide="ignore"):  # a silent stretch has -inf dB; it is drawn at vmin
        axes[1].specgram(wave, NFFT=512, Fs=sr, noverlap=384, cmap="magma", vmin=-140)
    axes[1].set(xlabel="time (s)", ylabel="Hz")
    if max_hz:
        axes[1].set_ylim(0, max_hz)


def mfcc_map(ax, feats: torch.Tensor | np.ndarray, title: str) -> None:
    """An MFCC map (frames × coefficients) drawn coefficients-up, time-right."""
    im = ax.imshow(np.asarray(feats).squeeze().T, origin="lower", aspect="auto", cmap="viridis")
    ax.set(title=title, xlabel="frame", ylabel="MFCC coefficient")
    plt.colorbar(im, ax=ax)


def trigger_panels(clean: np.ndarray, triggered: np.ndarray, sr: int, trigger: np.ndarray | None = None,
                   max_hz: float | None = None):
    """Clean | trigger alone | triggered, each as waveform over spectrogram. Attacks with no
    additive trigger (styles, voice conversion) show the difference triggered − clean."""
    fig, axes = plt.subplots(2, 3, figsize=(16, 5), sharex=True)
    middle = (trigger, "trigger alone") if trigger is not None else (triggered - clean, "difference (triggered − clean)")
    for col, (wave, title) in enumerate([(clean, "clean"), middle, (triggered, "triggered")]):
        wave_and_spectrogram(axes[:, col], np.asarray(wave, dtype=np.float32), sr, title, max_hz)
    fig.tight_layout()
    return fig


def asr_before_after(table, name: str, profile: str, dataset: str = "embedded"):
    """Bar chart of ASR before → after per attack (one panel per defense), as every defense
    notebook shows it: its columns saved as ``<name>.csv`` and drawn from that file by
    :func:`bdlib.figures.asr_before_after` (``<name>.png`` and ``.pdf``, see :func:`figure_path`).
    Returns the figure."""
    from . import figures

    cols = [c for c in ("attack", "model", "defense", "acc_before", "asr_before", "acc_after", "asr_after")
            if c in table.columns]
    return figures.publish(name, table[cols], profile, dataset)
