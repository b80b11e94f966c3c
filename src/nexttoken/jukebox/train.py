"""Train Jukebox's stages through the core loop (``nexttoken.training.fit``): the VQ-VAE on clips of audio, then each
prior on windows of the cached codes, each stage in its own run folder inside the pipeline folder (``pipeline.py``).

Dhariwal et al. 2020, https://arxiv.org/abs/2005.00341. The VQ-VAE's loss is ``vqvae.vqvae_loss``; each evaluation
scores held-out clips level by level (``evaluate.evaluate_codec``). A prior's loss is the next-code cross-entropy;
each evaluation scores the held-out segments in bits per second of audio, beside a unigram model of the training
codes (what a prior that ignores context would score).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from nexttoken.config import option
from nexttoken.distributed import Dist
from nexttoken.errors import warn
from nexttoken.jukebox.audio import ClipSet, clip_summary
from nexttoken.jukebox.codes import CodeSet
from nexttoken.jukebox.evaluate import evaluate_codec
from nexttoken.jukebox.prior import Prior, PriorConfig, chars_batch, position_seconds, window_tokens
from nexttoken.jukebox.vqvae import PRESETS, VQVAE, VQVAEConfig, vqvae_loss
from nexttoken.plots import plot_metrics
from nexttoken.files import load_meta
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, OptimConfig, count_rows, count_targets, fit, nothing_to_train

VQVAE_KIND, PRIOR_KIND = "jukebox.vqvae", "jukebox.prior"



@dataclass(frozen=True)
class Recipe:
    """What a preset trains on top of its VQ-VAE layout (``vqvae.PRESETS``): each stage's optimiser and loop, and
    each level's prior. ``--preset`` picks one for the whole pipeline; ``train-prior`` takes its VQ-VAE's."""

    vq_optim: OptimConfig
    vq_loop: LoopConfig
    prior_optim: OptimConfig
    prior_loop: LoopConfig
    priors: dict[str, PriorConfig]


RECIPES = {
    # The VQ-VAE learns fast at a higher LR than the paper's 3e-4 over the few hundred steps a CPU affords; small
    # priors take a high LR and a short warm-up (as muse's do). The top prior sees 2 s at 16 kHz; the upsamplers are
    # smaller, for their many codes.
    "cpu": Recipe(
        vq_optim=OptimConfig(lr=1e-3, warmup_steps=10, weight_decay=0.0),
        vq_loop=LoopConfig(steps=200, batch_size=4, eval_every=50, ckpt_every=50),
        prior_optim=OptimConfig(lr=3e-3, warmup_steps=30),
        prior_loop=LoopConfig(steps=300, batch_size=16, eval_every=100, ckpt_every=100),
        priors={"top": PriorConfig(level="top", context=256, n_layer=4, n_head=4, n_embd=128),
                "middle": PriorConfig(level="middle", context=256, n_layer=3, n_head=4, n_embd=96),
                "bottom": PriorConfig(level="bottom", context=256, n_layer=2, n_head=4, n_embd=96)}),
    # One GPU, each stage for a time budget (the LR schedule follows it): the paper's LR for the VQ-VAE, trained in
    # fp32 (its codebook distances and EMA statistics), and priors that see 6 s at the top (1,024 codes of 172 a
    # second at 22.05 kHz).
    "gpu": Recipe(
        vq_optim=OptimConfig(lr=3e-4, warmup_steps=100, weight_decay=0.0),
        vq_loop=LoopConfig(steps=100_000, batch_size=16, eval_every=500, ckpt_every=2000, precision="fp32",
                           max_seconds=30 * 60),
        prior_optim=OptimConfig(lr=6e-4, warmup_steps=100),
        prior_loop=LoopConfig(steps=100_000, batch_size=32, eval_every=500, ckpt_every=2000, max_seconds=20 * 60),
        priors={"top": PriorConfig(level="top", context=1024, n_layer=8, n_head=8, n_embd=512, dropout=0.1,
                                   lyrics_width=256, lyrics_layers=4),
                "middle": PriorConfig(level="middle", context=1024, n_layer=6, n_head=8, n_embd=384,
                                      conditioner_width=256, conditioner_depth=4),
                "bottom": PriorConfig(level="bottom", context=1024, n_layer=6, n_head=8, n_embd=384,
                                      conditioner_width=256, conditioner_depth=4)}),
    # A smoke test of every stage in seconds on small audio.
    "tiny": Recipe(
        vq_optim=OptimConfig(lr=1e-3, warmup_steps=2, weight_decay=0.0),
        vq_loop=LoopConfig(steps=20, batch_size=4, eval_every=10, ckpt_every=10),
        prior_optim=OptimConfig(lr=3e-3, warmup_steps=2),
        prior_loop=LoopConfig(steps=20, batch_size=4, eval_every=10, ckpt_every=10),
        priors={level: PriorConfig(level=level, context=32, n_layer=2, n_head=2, n_embd=16, lyrics_width=8,
                                   lyrics_layers=1, cross_every=1, conditioner_width=8)
                for level in ("top", "middle", "bottom")}),
}


@dataclass
class VQVAEOptions:
    preset: str = option("cpu", "the size of every stage. cpu: 16 kHz, narrow convs, 256 codes, small priors (the "
                         "whole train about 8 minutes on 2 cores); gpu: the paper's VQ-VAE layout at 22.05 kHz and "
                         "larger priors (30 minutes and 3 x 20 minutes of one GPU); tiny: a smoke test in seconds",
                         choices=tuple(PRESETS))
    restarts: bool = option(True, "restart dead codes (--no-restarts: the paper's ablation)")
    commit_weight: float | None = option(None, "weight of the commitment loss beside the L2 and STFT losses "
                                         "(default: the preset's, the paper's 0.02)", ge=0, le=100)
    val_clips: int = option(32, "held-out clips scored at each evaluation", ge=1, le=10**6)

    def vqvae_config(self) -> VQVAEConfig:
        cfg = replace(PRESETS[self.preset], restarts=self.restarts)
        return cfg if self.commit_weight is None else replace(cfg, commit_weight=self.commit_weight)


@dataclass
class TimeBudget:
    max_minutes: float | None = option(None, "train as many of --steps as fit in this many minutes (the LR schedule "
                                       "follows; the gpu preset: 30 for the VQ-VAE, 20 for a prior)", gt=0,
                                       le=10**7)

    def apply(self, loop: LoopConfig) -> LoopConfig:
        return loop if self.max_minutes is None else replace(loop, max_seconds=60 * self.max_minutes)


def trained_seconds(run: Run) -> float:
    """The training time of every stretch of a run (a resumed run's included), as its last checkpoint counts it."""
    return float(load_meta(run.checkpoint_path)["loop_state"]["elapsed_s"])


# ---- the VQ-VAE ------------------------------------------------------------------------------------------------------
def scored_split(clips: ClipSet) -> str:
    """The clips a stage is scored on: the held-out ones ('val'), or the training ones ('train') when no track is
    held out (one track per artist, or --val-fraction 0): a set that small is scored on what it has."""
    return "val" if len(clips.rows("val")) else "train"


def held_out(clips: ClipSet, n: int) -> torch.Tensor:
    """Up to ``n`` clips of the ``scored_split`` spread evenly over its tracks (all of them when fewer), as audio."""
    rows = clips.rows(scored_split(clips))
    pick = rows[torch.linspace(0, len(rows) - 1, min(n, len(rows))).round().long()]
    return clips.audio(pick)


def scored_word(split: str | None) -> str:
    """How a measure names the clips it scored: 'held-out', or 'training' when none was held out (``split`` 'train';
    None: a summary or evaluation saved without saying, which held clips out)."""
    return "training" if split == "train" else "held-out"


def warn_unheld() -> None:
    """Said once per command: the VQ-VAE, every prior and the evaluation would each say it."""
    warn("no track is held out (each artist has one, or --val-fraction is 0): reconstruction, codebook use and bits "
         "per second are measured on training clips, not on audio the model has not heard", once="unheld")


def clip_batches(clips: ClipSet, batch_size: int, seed: int):
    rows = clips.rows("train")

    def batch_fn(step: int) -> dict:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # a step's batch depends on the step alone
        return {"audio": clips.audio(rows[torch.randint(len(rows), (batch_size,), generator=g)])}

    return batch_fn


def summed_vqvae_loss(model, batch: dict):
    """``vqvae_loss`` is a batch mean; the loop wants the sum over rows (it divides by the global batch's rows)."""
    loss, logs = vqvae_loss(model, batch)
    rows = len(batch["audio"])
    return loss * rows, {k: v * rows for k, v in logs.items()}


def flat_levels(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{level}_{k}": v for level, m in metrics.items() for k, v in m.items()}


def train_vqvae(stage: Path, clips: ClipSet, opts: VQVAEOptions, optim: OptimConfig, loop: LoopConfig, dist: Dist,
                resume: bool) -> Path:
    """Train (or continue) the VQ-VAE in ``stage``; held-out metrics per level in metrics.jsonl and summary.json."""
    if resume and nothing_to_train(stage, loop):
        return stage
    cfg = opts.vqvae_config()
    model = VQVAE(cfg).to(dist.device)
    val, split = held_out(clips, opts.val_clips), scored_split(clips)
    if split == "train" and dist.is_main:
        warn_unheld()
    settings = {"vqvae": asdict(cfg), "options": asdict(opts), "optim": asdict(optim), "loop": asdict(loop)}
    run = Run.resume(stage, VQVAE_KIND, dist.is_main) if resume else \
        Run.create(stage, settings, VQVAE_KIND, dist.is_main)
    run.amend({"loop": settings["loop"]})
    with run:
        result = fit(model, clip_batches(clips, loop.batch_size, loop.seed), optim, loop, run, dist=dist,
                     eval_fn=lambda m: flat_levels(evaluate_codec(m, val)), resume=resume, loss_fn=summed_vqvae_loss,
                     weight_fn=count_rows)
        if dist.is_main:
            levels = cfg.levels
            on = scored_word(split)
            plot_metrics(run.metrics(), [f"{n}_spectral_convergence_db" for n in levels],
                         run.path / "spectral_convergence.png", ylabel="dB (lower is better)",
                         title=f"{on} spectral convergence")
            plot_metrics(run.metrics(), [f"{n}_usage" for n in levels], run.path / "usage.png",
                         ylabel="fraction of codes used", title=f"{on} codebook usage")
            record = result.record  # the last evaluation: the held-out metrics of the final weights
            held = {n: {k[len(n) + 1 :]: v for k, v in record.items() if k.startswith(n + "_")} for n in levels}
            run.write_summary({"levels": held, "steps": result.steps, "restarts": cfg.restarts, "preset": opts.preset,
                               "train_seconds": trained_seconds(run), "device": str(dist.device),
                               "params": sum(p.numel() for p in model.parameters()), "val_clips": len(val),
                               "data": {k: v for k, v in clip_summary(clips).items()}, **scored_on(split)})
    return stage


def scored_on(split: str) -> dict:
    """What a summary adds when its scores are not held-out ones (a held-out summary stays as it always was)."""
    return {} if split == "val" else {"scored_on": "train"}


# ---- the priors ------------------------------------------------------------------------------------------------------
def window_rows(codes: CodeSet, cfg: PriorConfig, segments: list[int], starts: list[int]) -> dict:
    """A batch of windows: for each (segment, first code), the start token and codes with their targets (padded
    past the segment's end with targets of -1) and the prior's conditioning."""
    level = codes.level(cfg.level)
    T = cfg.context
    windows, uppers, first, totals, texts, cond = [], [], [], [], [], []
    for s, start in zip(segments, starts):
        seg = codes.segment(level, s)[start : start + T]
        windows.append(torch.cat([seg, seg.new_full((T - len(seg),), -1)]))
        track = codes.tracks[int(codes.segment_track[s])]
        cond.append([codes.artists.index(track["artist"]), len(codes.artists) + codes.genres.index(track["genre"])])
        if cfg.is_top:
            first.append(int(codes.segment_start[s]) + start * cfg.hop)
            totals.append(track["seconds"])
            texts.append(track["lyrics"])
        else:
            up = codes.segment(level + 1, s)[start // cfg.ratio : (start + T) // cfg.ratio]
            uppers.append(torch.cat([up, up.new_zeros(T // cfg.ratio - len(up))]))
    window = torch.stack(windows)  # (B, T), -1 past the end
    idx, targets = window_tokens(window.clamp_min(0), cfg.start_token)
    batch = {"idx": idx, "targets": targets.masked_fill(window < 0, -1), "cond": torch.tensor(cond)}
    if cfg.is_top:
        batch.update(seconds=position_seconds(torch.tensor(first), T, cfg.hop, cfg.sample_rate),
                     total=torch.tensor(totals, dtype=torch.float32), chars=chars_batch(texts, cfg.max_chars))
    else:
        batch["upper"] = torch.stack(uppers)
    return batch


class Windows:
    """The loop's ``batch_fn``: windows of training segments, drawn by a generator seeded with the step alone."""

    def __init__(self, codes: CodeSet, cfg: PriorConfig, batch_size: int, seed: int) -> None:
        self.codes, self.cfg, self.batch_size, self.seed = codes, cfg, batch_size, seed
        self.level = codes.level(cfg.level)
        self.segments = codes.segments("train")
        self.lengths = [len(codes.segment(self.level, s)) for s in self.segments]

    def __call__(self, step: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        picks = torch.randint(len(self.segments), (self.batch_size,), generator=g).tolist()
        starts = []
        for k in picks:  # a window anywhere in the segment, on a code the level above has a code for
            room = max(0, self.lengths[k] - self.cfg.context) // self.cfg.ratio
            starts.append(int(torch.randint(room + 1, (1,), generator=g)) * self.cfg.ratio)
        return window_rows(self.codes, self.cfg, [self.segments[k] for k in picks], starts)


def prior_loss(model, batch: dict) -> torch.Tensor:
    """The next-code cross-entropy summed over the batch's targets."""
    _, token_loss = model(**batch)
    return token_loss.sum()


@dataclass
class LevelScore:
    nats_per_code: float
    bits_per_second: float
    unigram_bits_per_second: float
    codes: int  # held-out codes scored
    split: str = "val"  # 'train' when no segment is held out, so the training codes were scored


def tiled_windows(codes: CodeSet, cfg: PriorConfig, split: str, most: int) -> list[tuple[int, int]]:
    """(segment, first code) of back-to-back windows over the ``split``'s segments, at most ``most`` of them, spread
    evenly over the list when there are more."""
    level = codes.level(cfg.level)
    all_windows = [(s, a) for s in codes.segments(split) for a in range(0, len(codes.segment(level, s)), cfg.context)]
    if len(all_windows) > most:
        all_windows = [all_windows[i] for i in np.linspace(0, len(all_windows) - 1, most).round().astype(int)]
    return all_windows


@torch.no_grad()
def score_level(model: Prior, codes: CodeSet, split: str = "val", most: int = 64, batch_size: int = 16) -> LevelScore:
    """Held-out nats per code and bits per second of the prior, and of a unigram model of the training codes."""
    cfg = model.cfg
    windows = tiled_windows(codes, cfg, split, most)
    if not windows:  # nothing held out: scored on what there is
        split, windows = "train", tiled_windows(codes, cfg, "train", most)
    device = next(model.parameters()).device
    total, count, unigram = 0.0, 0, 0.0
    log_p = unigram_log_probs(codes, cfg.level)
    for i in range(0, len(windows), batch_size):
        part = windows[i : i + batch_size]
        batch = window_rows(codes, cfg, [s for s, _ in part], [a for _, a in part])
        targets = batch["targets"]
        _, token_loss = model(**{k: v.to(device) for k, v in batch.items()})
        total += float(token_loss.sum())
        count += int((targets >= 0).sum())
        unigram -= float(log_p[targets[targets >= 0]].sum())
    per_second = cfg.sample_rate / cfg.hop / math.log(2)
    return LevelScore(total / max(count, 1), total / max(count, 1) * per_second,
                      unigram / max(count, 1) * per_second, count, split)


def unigram_log_probs(codes: CodeSet, level: str) -> torch.Tensor:
    """(codebook,) natural-log frequencies of the training codes, add-one smoothed."""
    i = codes.level(level)
    train = torch.cat([codes.segment(i, s) for s in codes.segments("train")])
    counts = torch.bincount(train, minlength=codes.codebook_size).double() + 1
    return (counts / counts.sum()).log()


def train_prior(stage: Path, codes: CodeSet, cfg: PriorConfig, optim: OptimConfig, loop: LoopConfig, dist: Dist,
                resume: bool, val_windows: int = 64) -> Path:
    """Train (or continue) one level's prior in ``stage`` on the cached codes; bits per second in its metrics."""
    if resume and nothing_to_train(stage, loop):
        return stage
    model = Prior(cfg.validate()).to(dist.device)
    settings = {"prior": cfg.to_dict(), "gpt": model.gpt.cfg.to_dict(), "optim": asdict(optim), "loop": asdict(loop),
                "codes_step": codes.step}
    run = Run.resume(stage, PRIOR_KIND, dist.is_main) if resume else \
        Run.create(stage, settings, PRIOR_KIND, dist.is_main)
    run.amend({"loop": settings["loop"]})
    split = "val" if tiled_windows(codes, cfg, "val", 1) else "train"
    if split == "train" and dist.is_main:
        warn_unheld()
    long = sum(len(t["lyrics"]) > cfg.max_chars for t in codes.tracks) if cfg.is_top and cfg.lyrics else 0
    if long and dist.is_main:  # the prior reads the first max_chars characters of a piece's words, as in sampling
        warn(f"{long} track(s) have lyrics longer than --max-chars {cfg.max_chars}: the top prior reads only their "
             f"first {cfg.max_chars} characters")

    def eval_fn(m: Prior) -> dict:
        s = score_level(m, codes, most=val_windows)
        return {"val_loss": s.nats_per_code, "val_bits_per_second": s.bits_per_second,
                "unigram_bits_per_second": s.unigram_bits_per_second}

    with run:
        result = fit(model, Windows(codes, cfg, loop.batch_size, loop.seed), optim, loop, run, dist=dist,
                     eval_fn=eval_fn, resume=resume, loss_fn=prior_loss, weight_fn=count_targets)
        if dist.is_main:
            plot_metrics(run.metrics(), ["train_loss", "val_loss"], run.path / "loss.png", ylabel="nats per code",
                         title=f"{cfg.level} prior")
            record = result.record
            run.write_summary({"level": cfg.level, "steps": result.steps, "val_loss": record.get("val_loss"),
                               "bits_per_second": record.get("val_bits_per_second"),
                               "unigram_bits_per_second": record.get("unigram_bits_per_second"),
                               "train_loss": record.get("train_loss"), "train_seconds": trained_seconds(run),
                               "params": sum(p.numel() for p in model.parameters()), "device": str(dist.device),
                               "train_codes": sum(len(codes.segment(codes.level(cfg.level), s))
                                                  for s in codes.segments("train")), **scored_on(split)})
    return stage
