"""How well a codec rebuilds held-out audio from its codes, and how much of its codebook it uses, level by level.

Jukebox (Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341) judges its VQ-VAE by the spectral convergence of each
level's reconstruction and by how many codes stay in use. The metrics here, each a pure function of (B, T) audio or
of codes:

- spectral convergence in dB, 20 log10(||S - S_hat|| / ||S||) over the three STFT resolutions of the spectral loss;
- the multi-resolution STFT distance (the spectral loss itself);
- the L1 distance of log-mel spectrograms (64 bands);
- SI-SDR, the scale-invariant signal-to-distortion ratio (Le Roux et al. 2019, https://arxiv.org/abs/1811.02508);
- codebook usage (the fraction of codes used at least once) and perplexity (exp of the entropy of the code histogram).

``evaluate_codec`` computes all of them per level for any model whose forward returns a ``VQVAEOutput``: the VQ-VAE,
and the baseline below, EnCodec's architecture (Défossez et al. 2022, https://arxiv.org/abs/2210.13438): its SEANet
encoder and decoder as ``transformers`` builds them from a config with random weights (nothing is downloaded), around
a residual VQ of the same EMA codebooks the VQ-VAE uses, with as many stages as give the bitrate of a chosen VQ-VAE
level. Trained with the same loss for the same steps, it tells what Jukebox's layout buys at that bitrate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from nexttoken.jukebox.spectral import log_mel, spectral_convergence, stft_distance
from nexttoken.jukebox.vqvae import Codebook, Quantized, VQVAEConfig, VQVAEOutput, pad_to
from nexttoken.runs import unwrap


# ---- metrics ---------------------------------------------------------------------------------------------------------
def spectral_convergence_db(estimate: Tensor, reference: Tensor, sample_rate: int) -> Tensor:
    """(B,) spectral convergence in dB: -20 dB means the spectrogram error is a tenth of the spectrogram.

    >>> x = torch.randn(1, 8000)
    >>> [round(v, 2) for v in spectral_convergence_db(0.9 * x, x, 16000).tolist()]
    [-20.0]
    """
    return 20 * torch.log10(spectral_convergence(estimate, reference, sample_rate).clamp_min(1e-10))


def log_mel_l1(estimate: Tensor, reference: Tensor, sample_rate: int, n_mels: int = 64) -> Tensor:
    """(B,) mean absolute difference of the natural-log mel spectrograms.

    >>> x = torch.randn(2, 8000)
    >>> log_mel_l1(x, x, 16000).tolist()
    [0.0, 0.0]
    """
    return (log_mel(estimate, sample_rate, n_mels) - log_mel(reference, sample_rate, n_mels)).abs().mean(dim=(1, 2))


def si_sdr(estimate: Tensor, reference: Tensor) -> Tensor:
    """(B,) scale-invariant SDR in dB: the energy of the reference's share of the estimate over the rest.

    >>> x, noise = torch.randn(1, 8000), torch.randn(1, 8000)
    >>> round(float(si_sdr(3 * x, x)), 1) > 100, round(float(si_sdr(x + 0.1 * noise, x)))
    (True, 20)
    """
    estimate = estimate.double() - estimate.double().mean(-1, keepdim=True)
    reference = reference.double() - reference.double().mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / reference.square().sum(-1, keepdim=True).clamp_min(1e-20)
    target = scale * reference
    ratio = target.square().sum(-1) / (estimate - target).square().sum(-1).clamp_min(1e-20)
    return (10 * torch.log10(ratio.clamp_min(1e-20))).float()


def _books(codes: Tensor) -> Tensor:
    """(N, T) or, for a residual VQ, (N, Q, T) codes -> (Q, N*T), one row per codebook."""
    return codes.reshape(1, -1) if codes.dim() == 2 else codes.transpose(0, 1).reshape(codes.shape[1], -1)


def codebook_usage(codes: Tensor, size: int) -> float:
    """Fraction of the ``size`` codes used at least once (averaged over the codebooks of a residual VQ).

    >>> codebook_usage(torch.tensor([[0, 1, 1, 3]]), 8)
    0.375
    """
    return sum(len(torch.unique(book)) for book in _books(codes)) / (size * len(_books(codes)))


def perplexity(codes: Tensor, size: int) -> float:
    """exp(entropy) of the code histogram: the number of equally used codes it is worth (averaged per codebook).

    >>> perplexity(torch.tensor([[0, 1, 2, 3]]), 8), perplexity(torch.tensor([[5, 5, 5, 5]]), 8)
    (4.0, 1.0)
    """
    values = []
    for book in _books(codes):
        p = torch.bincount(book, minlength=size).double() / book.numel()
        values.append(math.exp(-float((p * torch.log(p.clamp_min(1e-30))).sum())))
    return round(sum(values) / len(values), 6)


RECONSTRUCTION = {  # name -> (estimate, reference, sample_rate) -> (B,) per clip
    "spectral_convergence_db": spectral_convergence_db,
    "stft_distance": stft_distance,
    "log_mel_l1": log_mel_l1,
    "si_sdr_db": lambda estimate, reference, sample_rate: si_sdr(estimate, reference),
}


@torch.no_grad()
def evaluate_codec(model: nn.Module, audio: Tensor, batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Per level: every metric above, averaged over the (N, T) clips of ``audio`` (usage and perplexity over all
    their codes together), and the level's bitrate. The model is run in eval mode: its codebooks do not move."""
    model = unwrap(model)
    cfg = model.config
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_clip: dict[tuple[int, str], list[Tensor]] = {}
    codes: dict[int, list[Tensor]] = {}
    try:
        for batch in audio.split(batch_size):
            batch = batch.to(device).float()
            out = model(batch)
            for i, (recon, q) in enumerate(zip(out.recons, out.levels)):
                for name, metric in RECONSTRUCTION.items():
                    per_clip.setdefault((i, name), []).append(metric(recon.float(), batch, cfg.sample_rate).cpu())
                codes.setdefault(i, []).append(q.codes.cpu())
    finally:
        model.train(was_training)
    result = {}
    for i, level in enumerate(cfg.levels):
        metrics = {name: float(torch.cat(per_clip[(i, name)]).mean()) for name in RECONSTRUCTION}
        level_codes = torch.cat(codes[i])
        metrics.update(usage=codebook_usage(level_codes, cfg.codebook_size),
                       perplexity=perplexity(level_codes, cfg.codebook_size), bits_per_second=cfg.bits_per_second(i))
        result[level] = metrics
    return result


# ---- the EnCodec-architecture baseline -------------------------------------------------------------------------------
@dataclass
class EncodecBaselineConfig:
    sample_rate: int = 16000
    num_quantizers: int = 2  # stages of the residual VQ
    codebook_size: int = 1024
    code_dim: int = 128
    num_filters: int = 32  # EnCodec's base width; it doubles at each downsampling
    ratios: tuple[int, ...] = (8, 5, 4, 2)  # EnCodec's strides, decoder order; their product is the hop
    ema_decay: float = 0.99
    restart_threshold: float = 1.0
    revive_count: float = 1.0  # the EMA count a new or restarted code starts from
    commit_weight: float = 0.02  # the loss terms and weights of the VQ-VAE, for a like-for-like comparison
    spectral_weight: float = 1.0

    def __post_init__(self) -> None:
        self.ratios = tuple(self.ratios)
        if self.num_quantizers < 1 or self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError("the baseline needs at least one stage and a power-of-two codebook size")

    @property
    def levels(self) -> tuple[str, ...]:
        return ("encodec",)

    @property
    def hop(self) -> int:
        return math.prod(self.ratios)

    def bits_per_second(self, level: int = 0) -> float:
        return self.sample_rate / self.hop * math.log2(self.codebook_size) * self.num_quantizers


def matching_baseline(vq: VQVAEConfig, level: int, **overrides) -> EncodecBaselineConfig:
    """A baseline config whose bitrate is the nearest whole number of RVQ stages to that of ``level`` of ``vq``.

    >>> from nexttoken.jukebox.vqvae import PRESETS
    >>> [matching_baseline(PRESETS["cpu"], i).num_quantizers for i in range(3)]  # 16, 4 and 1 kbit/s at 500 each
    [32, 8, 2]
    """
    base = EncodecBaselineConfig(sample_rate=vq.sample_rate, **overrides)
    per_stage = base.bits_per_second() / base.num_quantizers
    n = max(1, round(vq.bits_per_second(level) / per_stage))
    return EncodecBaselineConfig(**{**base.__dict__, "num_quantizers": n})


def restart_rule(vectors_per_batch: float, codebook_size: int) -> tuple[float, float]:
    """(threshold, revive): a code is restarted when its EMA count falls below the threshold, and a new or restarted
    code starts from the revive count. The paper's rule (1, 1) holds when a batch gives every code at least 4 vectors;
    below that, a code is dead under a quarter of its fair share of the batch and starts from its fair share. An
    EnCodec frame is 320 samples, so a batch of four 1-second clips at 16 kHz holds 200 vectors per stage for 1,024
    codes: under the paper's rule nearly every code was restarted at every step (measured: over 28,000 of 32,768 per
    step at the bottom level's bitrate, 5% of the codes in use after 200 steps) and the codebooks never settled.

    >>> restart_rule(200, 1024), restart_rule(8000, 256)
    ((0.048828125, 0.1953125), (1.0, 1.0))
    """
    share = vectors_per_batch / codebook_size
    return (1.0, 1.0) if share >= 4 else (share / 4, share)


class EncodecBaseline(nn.Module):
    """EnCodec's SEANet encoder and decoder (``transformers``, random weights) around a residual VQ of EMA codebooks;
    forward returns a one-level ``VQVAEOutput``, so ``vqvae_loss`` and ``evaluate_codec`` take it as they are."""

    def __init__(self, config: EncodecBaselineConfig) -> None:
        super().__init__()
        from transformers import EncodecConfig, EncodecModel

        self.config = config
        hf = EncodecModel(EncodecConfig(
            sampling_rate=config.sample_rate, audio_channels=1, num_filters=config.num_filters,
            upsampling_ratios=list(config.ratios), hidden_size=config.code_dim, codebook_dim=config.code_dim,
            codebook_size=config.codebook_size, target_bandwidths=[config.bits_per_second() / 1000]))
        self.encoder, self.decoder = hf.encoder, hf.decoder  # its own quantiser only encodes; ours also learns
        self.codebooks = nn.ModuleList(
            Codebook(config.codebook_size, config.code_dim, config.ema_decay, config.restart_threshold, True,
                     config.revive_count)
            for _ in range(config.num_quantizers))

    def _quantize(self, z: Tensor) -> Quantized:
        residual, total, stages = z, torch.zeros_like(z), []
        for codebook in self.codebooks:  # each stage codes what the stages before it left over
            q = codebook(residual)
            stages.append(q)
            total = total + q.z_q.detach()
            residual = residual - q.z_q.detach()
        return Quantized(z + (total - z).detach(), torch.stack([q.codes for q in stages], dim=1),  # (B, Q, frames)
                         torch.stack([q.commit for q in stages]).mean(), torch.stack([q.usage for q in stages]).mean(),
                         torch.stack([q.perplexity for q in stages]).mean(),
                         torch.stack([torch.as_tensor(q.restarted) for q in stages]).sum())

    def forward(self, audio: Tensor) -> VQVAEOutput:
        """(B, T) audio -> its reconstruction (B, T) and quantisation (codes (B, Q, ceil(T / hop)))."""
        T = audio.shape[-1]
        q = self._quantize(self.encoder(pad_to(audio, self.config.hop)[:, None]))  # (B, code_dim, frames)
        return VQVAEOutput([self.decoder(q.z_q)[:, 0, :T]], [q])

    @torch.no_grad()
    def encode(self, audio: Tensor) -> list[Tensor]:
        z = self.encoder(pad_to(audio, self.config.hop)[:, None])
        codes = []
        for codebook in self.codebooks:
            codes.append(codebook.encode(z))
            z = z - codebook.lookup(codes[-1])
        return [torch.stack(codes, dim=1)]  # (B, Q, frames)

    @torch.no_grad()
    def decode(self, codes: Tensor, level: int = 0) -> Tensor:
        """(B, Q, frames) codes -> (B, frames * hop) audio."""
        z = sum(codebook.lookup(codes[:, i]) for i, codebook in enumerate(self.codebooks))
        return self.decoder(z)[:, 0]

