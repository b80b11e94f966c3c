"""Jukebox's pictures: log-magnitude spectrograms of audio, one row per clip, as PNG files.

Dhariwal et al. 2020 (https://arxiv.org/abs/2005.00341) compare the levels' reconstructions by their spectrograms: the
top level keeps the notes and loses the timbre's detail, the bottom level keeps nearly everything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nexttoken.jukebox.spectral import magnitude, resolutions


def log_spectrogram(audio: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
    """(frequencies, frames) magnitude in dB of (samples,) audio, at the spectral loss's finest-frequency resolution."""
    res = resolutions(sample_rate)[0]
    mag = magnitude(torch.as_tensor(np.asarray(audio, dtype=np.float32))[None], res)[0]
    return (20 * torch.log10(mag.clamp_min(1e-5))).numpy()


def spectrogram_png(clips: list[np.ndarray], sample_rate: int, path: str | Path, titles: list[str]) -> Path:
    """One spectrogram per clip, stacked, 0 Hz at the bottom and -100 to 0 dB."""
    from nexttoken import plots

    fig, axes = plots.pyplot().subplots(len(clips), 1, figsize=(8, 2.2 * len(clips)), dpi=100, squeeze=False)
    for ax, audio, title in zip(axes[:, 0], clips, titles):
        spec = log_spectrogram(audio, sample_rate)
        ax.imshow(spec, aspect="auto", origin="lower", cmap="magma", vmin=-100, vmax=0,
                  extent=(0, len(audio) / sample_rate, 0, sample_rate / 2000))
        ax.set_ylabel("kHz")
        ax.set_title(title, fontsize=9)
    axes[-1, 0].set_xlabel("seconds")
    return plots.save(fig, path)
