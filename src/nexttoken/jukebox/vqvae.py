"""Jukebox's VQ-VAE: raw audio compressed into levels of discrete codes, each level with its own encoder, codebook and
decoder back to audio.

Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341 (section 3 and appendix B.1). Per level, hop lengths 8, 32 and
128 by default:

- encoder: log2(hop) downsampling blocks, each a strided Conv1d (kernel 4, stride 2) followed by non-causal residual
  blocks whose dilation grows x3 per block; a last Conv1d to the code width. No normalisation layers.
- codebook: nearest neighbour, straight-through gradient, updated by exponential moving averages (decay 0.99) of the
  count and sum of the encoder outputs assigned to each code, initialised from encoder outputs, and any code whose EMA
  count falls below a threshold (1) restarted to a random encoder output of the batch.
- decoder: the mirror image, transposed convolutions back to audio.
- loss: L2 on samples + the multi-resolution STFT magnitude loss (``spectral.py``) + 0.02 x commitment, summed over
  the levels (whose parameters are disjoint).

The bottleneck is written here rather than taken from ``vector-quantize-pytorch``, whose EMA codebook with dead-code
replacement follows the same idea: it is 60 lines against a dependency with many options this model does not use;
the paper's rule is stated exactly and tested against hand-computed values; under DDP the statistics are summed with
``torch.distributed`` alone and the restart points come from rank 0, so every process holds the same codebook; and
the EMA state is plain buffers, saved in the run's checkpoint as they are. When a code is restarted its EMA count is
reset to the threshold and its EMA sum to the new vector times the threshold, so from the next step it moves with its
own assignments, and it stays alive while it takes at least ``threshold`` vectors a batch on average.

Run ``python -m nexttoken.jukebox.vqvae`` to print the presets' sizes and bitrates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nexttoken.jukebox.spectral import stft_loss
from nexttoken.runs import unwrap


def level_names(n: int) -> tuple[str, ...]:
    """
    >>> level_names(3), level_names(2)
    (('bottom', 'middle', 'top'), ('bottom', 'top'))
    """
    return {1: ("bottom",), 2: ("bottom", "top"), 3: ("bottom", "middle", "top")}.get(
        n, tuple(f"level{i}" for i in range(n)))


@dataclass
class VQVAEConfig:
    sample_rate: int = 16000
    clip_seconds: float = 1.0  # length of a training example
    hops: tuple[int, ...] = (8, 32, 128)  # bottom to top, powers of two
    widths: tuple[int, ...] = (32, 32, 32)  # conv channels of each level
    depths: tuple[int, ...] = (2, 2, 2)  # residual blocks after each 2x downsampling
    dilation_growth: int = 3
    dilation_cycle: int = 0  # the dilation starts again at 1 after this many blocks; 0: never
    codebook_size: int = 256
    code_dim: int = 32
    ema_decay: float = 0.99
    restart_threshold: float = 1.0  # EMA count below which a code is restarted
    restarts: bool = True  # False is the paper's ablation: dead codes stay dead
    commit_weight: float = 0.02
    spectral_weight: float = 1.0

    def __post_init__(self) -> None:
        self.hops, self.widths, self.depths = tuple(self.hops), tuple(self.widths), tuple(self.depths)
        if not (len(self.hops) == len(self.widths) == len(self.depths) >= 1):
            raise ValueError("hops, widths and depths need one entry per level")
        if any(h < 2 or h & (h - 1) for h in self.hops) or list(self.hops) != sorted(set(self.hops)):
            raise ValueError(f"hop lengths must be increasing powers of two, not {self.hops}")
        if self.codebook_size < 2 or self.code_dim < 1 or min(self.widths) < 1 or min(self.depths) < 0:
            raise ValueError("codebook size, code width, conv widths and depths must be positive")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in (0, 1), not {self.ema_decay}")

    @property
    def levels(self) -> tuple[str, ...]:
        return level_names(len(self.hops))

    @property
    def clip_samples(self) -> int:
        """Samples per training example: ``clip_seconds`` rounded to a whole number of top-level codes."""
        top = self.hops[-1]
        return max(1, round(self.clip_seconds * self.sample_rate / top)) * top

    def bits_per_second(self, level: int) -> float:
        return self.sample_rate / self.hops[level] * math.log2(self.codebook_size)


PRESETS = {
    # the 2-core CPU's default: 16 kHz, narrow convs, 256 codes of 32 dims, 1 s clips (its cost and reconstruction:
    # docs/jukebox.md)
    "cpu": VQVAEConfig(),
    # The paper's layout (appendix B.1: widths 64/32/32, 8/4/4 residual blocks, 2048 codes of 64 dims) at 22.05 kHz,
    # 3 s clips.
    "gpu": VQVAEConfig(sample_rate=22050, clip_seconds=3.0, widths=(64, 32, 32), depths=(8, 4, 4),
                       codebook_size=2048, code_dim=64),
    # A smoke test of every command in seconds (the tests use it): 8 kHz, convs 8 wide, 32 codes of 8 dims.
    "tiny": VQVAEConfig(sample_rate=8000, clip_seconds=0.256, widths=(8, 8, 8), depths=(1, 1, 1), codebook_size=32,
                        code_dim=8),
}


# ---- encoder and decoder ---------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """x + Conv1x1(ReLU(Conv3_dilated(ReLU(x)))): non-causal, length-preserving."""

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.proj = nn.Conv1d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(F.relu(self.conv(F.relu(x))))


def _dilations(cfg: VQVAEConfig, depth: int) -> list[int]:
    return [cfg.dilation_growth ** (i % cfg.dilation_cycle if cfg.dilation_cycle else i) for i in range(depth)]


def encoder(cfg: VQVAEConfig, level: int) -> nn.Sequential:
    """(B, 1, T) audio -> (B, code_dim, T / hop) vectors."""
    width, depth = cfg.widths[level], cfg.depths[level]
    layers: list[nn.Module] = []
    for i in range(int(math.log2(cfg.hops[level]))):
        layers.append(nn.Conv1d(1 if i == 0 else width, width, 4, stride=2, padding=1))  # halves the length
        layers += [ResBlock(width, d) for d in _dilations(cfg, depth)]
    layers.append(nn.Conv1d(width, cfg.code_dim, 3, padding=1))
    return nn.Sequential(*layers)


def decoder(cfg: VQVAEConfig, level: int) -> nn.Sequential:
    """(B, code_dim, T / hop) vectors -> (B, 1, T) audio: the encoder's mirror image."""
    width, depth = cfg.widths[level], cfg.depths[level]
    layers: list[nn.Module] = [nn.Conv1d(cfg.code_dim, width, 3, padding=1)]
    for _ in range(int(math.log2(cfg.hops[level]))):
        layers += [ResBlock(width, d) for d in reversed(_dilations(cfg, depth))]
        layers.append(nn.ConvTranspose1d(width, width, 4, stride=2, padding=1))  # doubles the length
    layers.append(nn.Conv1d(width, 1, 3, padding=1))
    return nn.Sequential(*layers)


# ---- the codebook ----------------------------------------------------------------------------------------------------
DEAD_COUNT = 1e-6  # an EMA count below this (about 1,400 unused steps at decay 0.99) no longer moves its code


@dataclass
class Quantized:
    z_q: Tensor  # (B, D, T) the codes' vectors, with the straight-through gradient to the encoder output
    codes: Tensor  # (B, T) int64
    commit: Tensor  # scalar, mean squared distance of the encoder output to its code (grad to the encoder only)
    usage: Tensor  # scalar, fraction of the codebook used in this batch
    perplexity: Tensor  # scalar, exp(entropy) of the batch's code histogram
    restarted: Tensor  # scalar, codes restarted by this step's update


def _distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def _forget_ready(codebook: "Codebook", keys) -> None:
    codebook._ready = False


class Codebook(nn.Module):
    """``size`` codes of ``dim`` numbers, learned by EMA (no gradient) with dead-code restarts; see the module doc."""

    CHUNK = 65536  # rows of distances computed at once: at most CHUNK x size floats in memory

    def __init__(self, size: int, dim: int, decay: float = 0.99, threshold: float = 1.0, restarts: bool = True,
                 revive: float | None = None):
        super().__init__()
        self.size, self.dim, self.decay, self.threshold, self.restarts = size, dim, decay, threshold, restarts
        self.revive = threshold if revive is None else revive  # the EMA count a new or restarted code starts from
        self.register_buffer("embed", torch.zeros(size, dim))  # (K, D) the codes
        self.register_buffer("count", torch.zeros(size))  # (K,) EMA of how many vectors each code took per batch
        self.register_buffer("total", torch.zeros(size, dim))  # (K, D) EMA of their sum
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        # Reading a GPU value waits for the GPU, so the flag is read once and remembered (forgotten when loaded).
        self._ready = False
        self.register_load_state_dict_post_hook(_forget_ready)

    def nearest(self, x: Tensor) -> Tensor:
        """(N, D) vectors -> (N,) index of the nearest code (Euclidean), in fp32 whatever the autocast."""
        with torch.autocast(x.device.type, enabled=False):
            x, e = x.float(), self.embed.float()
            e_sq = e.square().sum(1)  # (K,); |x|^2 is the same for every code, so it is left out
            return torch.cat([(e_sq - 2 * chunk @ e.T).argmin(1) for chunk in x.split(self.CHUNK)])

    def encode(self, z: Tensor) -> Tensor:
        """(B, D, T) encoder output -> (B, T) codes."""
        B, D, T = z.shape
        return self.nearest(z.transpose(1, 2).reshape(B * T, D)).view(B, T)

    def lookup(self, codes: Tensor) -> Tensor:
        """(B, T) codes -> (B, D, T) their vectors."""
        return self.embed[codes].transpose(1, 2)

    def forward(self, z: Tensor) -> Quantized:
        B, D, T = z.shape
        x = z.detach().transpose(1, 2).reshape(B * T, D).float()  # (B*T, D) one row per position
        if self.training and not self._ready:
            self._ready = bool(self.initialised)
            if not self._ready:
                self._initialise(x)
        codes = self.nearest(x)
        q = self.embed[codes].view(B, T, D).transpose(1, 2).to(z.dtype)  # (B, D, T), before this step's update
        commit = F.mse_loss(z, q)
        counts = x.new_zeros(self.size).index_add_(0, codes, x.new_ones(len(codes)))  # (K,); bincount would sync
        restarted = self._update(x, codes, counts) if self.training else torch.zeros((), device=z.device)
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        return Quantized(z + (q - z).detach(), codes.view(B, T), commit, (counts > 0).float().mean(), perplexity,
                         restarted)

    @torch.no_grad()
    def _initialise(self, x: Tensor) -> None:
        rows = x[torch.randint(len(x), (self.size,), device=x.device)]  # (K, D) random encoder outputs
        if _distributed():
            torch_dist.broadcast(rows, 0)  # every process starts from the same codebook
        self.embed.copy_(rows)
        self.count.fill_(self.revive)
        self.total.copy_(rows * self.revive)
        self.initialised.fill_(True)
        self._ready = True

    @torch.no_grad()
    def _update(self, x: Tensor, codes: Tensor, counts: Tensor) -> Tensor:
        sums = torch.zeros_like(self.total).index_add_(0, codes, x)  # (K, D) sum of the vectors each code took
        candidates = x[torch.randint(len(x), (self.size,), device=x.device)]  # (K, D) restart points
        if _distributed():  # the statistics of the global batch, and one set of restart points for all
            torch_dist.all_reduce(counts)
            torch_dist.all_reduce(sums)
            torch_dist.broadcast(candidates, 0)
        self.count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.total.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # A code unused for long has a count and sum decayed towards 0 together; past a floor their ratio is rounding
        # noise, so it stays where it was (dead, for the --no-restarts ablation) instead of sliding to the origin.
        alive = self.count[:, None] > DEAD_COUNT
        self.embed.copy_(torch.where(alive, self.total / self.count.clamp_min(DEAD_COUNT)[:, None], self.embed))
        if not self.restarts:
            return torch.zeros((), device=x.device)
        dead = self.count < self.threshold  # (K,); where() rather than indexing by it, which would sync
        self.embed.copy_(torch.where(dead[:, None], candidates, self.embed))
        self.count.masked_fill_(dead, self.revive)
        self.total.copy_(torch.where(dead[:, None], candidates * self.revive, self.total))
        return dead.sum()


# ---- the model -------------------------------------------------------------------------------------------------------
@dataclass
class VQVAEOutput:
    recons: list[Tensor]  # per level, (B, T) the audio decoded from that level's codes alone
    levels: list[Quantized]  # per level


def pad_to(audio: Tensor, multiple: int) -> Tensor:
    """(..., T) -> (..., T') with silence appended up to a multiple of ``multiple`` samples."""
    return F.pad(audio, (0, -audio.shape[-1] % multiple))


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        n = len(config.hops)
        self.encoders = nn.ModuleList(encoder(config, i) for i in range(n))
        self.decoders = nn.ModuleList(decoder(config, i) for i in range(n))
        self.codebooks = nn.ModuleList(
            Codebook(config.codebook_size, config.code_dim, config.ema_decay, config.restart_threshold,
                     config.restarts) for _ in range(n))

    def forward(self, audio: Tensor) -> VQVAEOutput:
        """(B, T) audio -> every level's reconstruction (B, T) and quantisation; T need not be a multiple of a hop."""
        T = audio.shape[-1]
        recons, levels = [], []
        for enc, codebook, dec, hop in zip(self.encoders, self.codebooks, self.decoders, self.config.hops):
            q = codebook(enc(pad_to(audio, hop)[:, None]))  # (B, 1, T') -> (B, D, T' / hop)
            recons.append(dec(q.z_q)[:, 0, :T])
            levels.append(q)
        return VQVAEOutput(recons, levels)

    @torch.no_grad()
    def encode(self, audio: Tensor) -> list[Tensor]:
        """(B, T) audio -> per level (B, ceil(T / hop)) codes (the audio is padded with silence to whole codes)."""
        return [codebook.encode(enc(pad_to(audio, hop)[:, None]))
                for enc, codebook, hop in zip(self.encoders, self.codebooks, self.config.hops)]

    @torch.no_grad()
    def decode(self, codes: Tensor, level: int) -> Tensor:
        """(B, N) codes of ``level`` -> (B, N * hop) audio."""
        return self.decoders[level](self.codebooks[level].lookup(codes))[:, 0]


def vqvae_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of a batch {"audio": (B, T)}: per level L2 + spectral_weight x multi-resolution STFT +
    commit_weight x commitment, summed over levels; and the per-level terms, codebook usage and perplexity as logs.

    Any model whose output is a ``VQVAEOutput`` and whose ``config`` has ``levels``, ``sample_rate`` and the two
    weights trains with it (the EnCodec baseline of ``evaluate.py`` does)."""
    audio = batch["audio"]
    cfg = unwrap(model).config
    out = model(audio)
    loss = audio.new_zeros((), dtype=torch.float32)
    logs: dict[str, Tensor] = {}
    for name, recon, q in zip(cfg.levels, out.recons, out.levels):
        l2 = F.mse_loss(recon.float(), audio.float())
        spectral = stft_loss(recon, audio, cfg.sample_rate)
        loss = loss + l2 + cfg.spectral_weight * spectral + cfg.commit_weight * q.commit.float()
        logs.update({f"{name}_l2": l2, f"{name}_spectral": spectral, f"{name}_commit": q.commit,
                     f"{name}_usage": q.usage, f"{name}_perplexity": q.perplexity, f"{name}_restarted": q.restarted})
    return loss, {k: v.detach().float() for k, v in logs.items()}  # tensors: the loop reads them when it logs


def describe(cfg: VQVAEConfig) -> list[str]:
    model = VQVAE(cfg)
    lines = []
    for i, name in enumerate(cfg.levels):
        params = sum(p.numel() for m in (model.encoders[i], model.decoders[i]) for p in m.parameters())
        lines.append(f"  {name:6s} hop {cfg.hops[i]:4d}  {cfg.sample_rate / cfg.hops[i]:7.1f} codes/s  "
                     f"{cfg.bits_per_second(i) / 1000:6.2f} kbit/s  {params / 1e6:5.2f} M parameters")
    return lines


if __name__ == "__main__":
    for preset, cfg in PRESETS.items():
        print(f"{preset}: {cfg.sample_rate} Hz, {cfg.codebook_size} x {cfg.code_dim} codebooks, "
              f"{cfg.clip_samples} samples per clip")
        print("\n".join(describe(cfg)))
