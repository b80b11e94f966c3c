"""Spectrograms at the resolutions of Jukebox's spectral loss, the multi-resolution STFT loss, and log-mel features.

Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341, section 3.3 and table 4 of appendix B.1) adds to the
L2 loss on samples the distance between magnitude spectrograms at three resolutions: FFT sizes 2048/1024/512, hops
240/120/50 and windows 1200/600/240 samples at 44.1 kHz. At other sample rates the windows and hops keep their length
in seconds and the FFT size is the power of two nearest the scaled one.

Magnitudes are divided by half the window's sum, so a sinusoid of amplitude A peaks at A whatever the resolution and
the sample rate: the loss weight means the same at 16 and 44.1 kHz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

PAPER_RATE = 44100
PAPER_RESOLUTIONS = ((2048, 240, 1200), (1024, 120, 600), (512, 50, 240))  # (n_fft, hop, window) at 44.1 kHz


@dataclass(frozen=True)
class Resolution:
    n_fft: int
    hop: int
    win: int


def resolutions(sample_rate: int) -> tuple[Resolution, ...]:
    """The paper's three STFT resolutions at ``sample_rate``.

    >>> [(r.n_fft, r.hop, r.win) for r in resolutions(22050)]
    [(1024, 120, 600), (512, 60, 300), (256, 25, 120)]
    """
    scale = sample_rate / PAPER_RATE
    out = []
    for n_fft, hop, win in PAPER_RESOLUTIONS:
        n = 2 ** round(math.log2(n_fft * scale))
        out.append(Resolution(n, max(1, round(hop * scale)), min(n, max(2, round(win * scale)))))
    return tuple(out)


def magnitude(audio: Tensor, res: Resolution) -> Tensor:
    """(B, n_fft // 2 + 1, frames) magnitude spectrogram of (B, T) audio, in units of sinusoid amplitude.

    >>> tone = torch.sin(2 * math.pi * 1000 * torch.arange(16000) / 16000)[None]  # amplitude 1, 1 kHz
    >>> [round(float(magnitude(tone, r).max()), 3) for r in resolutions(16000)]
    [1.0, 1.0, 1.0]
    """
    window = torch.hann_window(res.win, device=audio.device)
    spec = torch.stft(audio.float(), res.n_fft, res.hop, res.win, window, center=True, pad_mode="constant",
                      return_complex=True)
    # sqrt(re^2 + im^2 + eps) rather than abs(): abs has no gradient where a bin is exactly zero (digital silence)
    return (spec.real.square() + spec.imag.square() + 1e-12).sqrt() / (window.sum() / 2)


def stft_distance(estimate: Tensor, reference: Tensor, sample_rate: int) -> Tensor:
    """(B,) multi-resolution STFT distance of (B, T) audio: per resolution the RMS of the difference of magnitudes
    (the paper's L2 norm of it, divided by the square root of the number of bins), averaged over resolutions.

    >>> x = torch.sin(torch.arange(4000) / 5.0)[None]
    >>> float(stft_distance(x, x, 16000)) < 1e-5
    True
    >>> float(stft_distance(0.5 * x, x, 16000) / stft_distance(0 * x, x, 16000))  # magnitudes are linear
    0.5
    """
    total = estimate.new_zeros(estimate.shape[0], dtype=torch.float32)
    for res in resolutions(sample_rate):
        diff = magnitude(estimate, res) - magnitude(reference, res)  # (B, F, frames)
        total = total + (diff.square().mean(dim=(1, 2)) + 1e-12).sqrt()
    return total / len(PAPER_RESOLUTIONS)


def stft_loss(estimate: Tensor, reference: Tensor, sample_rate: int) -> Tensor:
    """The multi-resolution STFT magnitude loss: ``stft_distance`` averaged over the batch."""
    return stft_distance(estimate, reference, sample_rate).mean()


def spectral_convergence(estimate: Tensor, reference: Tensor, sample_rate: int) -> Tensor:
    """(B,) ||S_ref - S_est|| / ||S_ref|| over the three resolutions' magnitudes together (a ratio, not dB).

    >>> x = torch.randn(2, 4000)
    >>> [round(v, 4) for v in spectral_convergence(0.9 * x, x, 16000).tolist()]
    [0.1, 0.1]
    """
    num = estimate.new_zeros(estimate.shape[0], dtype=torch.float32)
    den = torch.zeros_like(num)
    for res in resolutions(sample_rate):
        ref = magnitude(reference, res)
        num = num + (ref - magnitude(estimate, res)).square().sum(dim=(1, 2))
        den = den + ref.square().sum(dim=(1, 2))
    return (num / den.clamp_min(1e-20)).sqrt()


@lru_cache(maxsize=8)
def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int) -> Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the HTK mel scale, 0 Hz to Nyquist, peak 1."""
    def mel(f):
        return 2595 * math.log10(1 + f / 700)

    edges_mel = torch.linspace(0, mel(sample_rate / 2), n_mels + 2, dtype=torch.float64)
    edges = 700 * (10 ** (edges_mel / 2595) - 1)  # (n_mels + 2,) Hz
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    rising = (freqs - lo) / (mid - lo)
    falling = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(rising, falling), min=0).float()


def log_mel(audio: Tensor, sample_rate: int, n_mels: int = 64) -> Tensor:
    """(B, n_mels, frames) log mel spectrogram at the paper's finest-frequency resolution (the first)."""
    res = resolutions(sample_rate)[0]
    mel = mel_filterbank(res.n_fft, sample_rate, n_mels).to(audio.device)
    spectrogram = magnitude(audio, res)
    # in fp32 whatever the autocast: a bf16 product rounds every band's energy (the metrics compare two of them)
    with torch.autocast(audio.device.type, enabled=False):
        return torch.log(mel @ spectrogram + 1e-5)
