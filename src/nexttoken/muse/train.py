"""Train a MuseNet-style model: the shared GPT on composer-conditioned token streams, scored in bits per note.

    nexttoken muse train                                   # CPU-sized default on the music21 subset
    nexttoken muse train --corpus music21 --n-layer 12 --n-embd 768 --context 2048 --device cuda
    nexttoken muse train --encoding remi                   # MidiTok's REMI instead, same model, same budget
    nexttoken muse train --resume runs/muse-train-...      # continue a killed run (--steps N: train further)

The rows are the pieces' headers followed by windows of their events (``data.py``); the model is the core GPT with
MuseNet's timing and structural embeddings (``model.py``): ``--no-timing-embedding``, ``--no-structure-embedding``
and ``--no-countdown-embedding`` drop them.

Bits per note = the validation pieces' total negative log2-likelihood (every token after the composer token, each
counted once) divided by their number of notes: it does not depend on the vocabulary, so encodings compare fairly.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from nexttoken.config import check, load, option, resumed
from nexttoken.distributed import Dist, init_distributed, main_first
from nexttoken.errors import UserError, continue_with
from nexttoken.midi.corpus import Corpus, corpus_source, load_corpus
from nexttoken.model import GPTConfig
from nexttoken.muse.data import Batches, tokens_per_second, validation_set
from nexttoken.muse.encoding import ENCODINGS, Encoded, make_encoding
from nexttoken.muse.evaluate import score_pieces
from nexttoken.muse.model import MuseModel, build_model
from nexttoken.plots import plot_metrics
from nexttoken.runs import Run, default_run_dir
from nexttoken.training import LoopConfig, OptimConfig, fit, nothing_to_train, seed_everything

KIND = "muse.train"


@dataclass
class MuseConfig:
    corpus: str = option("music21-small", "music21-small (default subset), music21 (all), a folder of MIDI files, "
                         "a CSV, or a note table that prepare printed")
    encoding: str = option("musenet", "the token language", choices=ENCODINGS)
    composers: list[str] = option(default_factory=list, help="the composer tokens (from the corpus)", flag=False)
    families: list[str] = option(default_factory=list, help="the instruments with note tokens (from the corpus)",
                                 flag=False)
    context: int = option(256, "tokens per training window", ge=16, le=65536)
    n_layer: int = option(4, "transformer blocks", ge=1, le=256)
    n_head: int = option(4, "attention heads", ge=1, le=256)
    n_embd: int = option(128, "width of the residual stream", ge=1, le=65536)
    # CPU-minute runs underfit and dropout only slows them; the GPU script uses 0.1.
    dropout: float = option(0.0, "dropout probability", ge=0, lt=1)
    timing_embedding: bool = option(True, "MuseNet's timing embedding (time and index within a chord)")
    structure_embedding: bool = option(True, "MuseNet's structural embedding (position within the piece in 128 "
                                       "parts)")
    countdown_embedding: bool = option(True, "MuseNet's countdown embedding (time left to the end of the piece)")
    transpose: int = option(5, "augmentation: transpose up to this many semitones", ge=0, le=127)
    stretch: float = option(0.1, "augmentation: tempo stretch up to this fraction", ge=0, le=1)
    velocity_shift: int = option(12, "augmentation: velocity shift", ge=0, le=127)
    val_pieces: int = option(40, "validation pieces scored per evaluation (0: all)", ge=0, le=10**6)
    tokens_per_second: float = option(0.0, "95th percentile over the training pieces: sizes the generation budget",
                                      ge=0, flag=False)

    def validate(self) -> "MuseConfig":
        check(self)
        self.corpus = corpus_source(self.corpus)
        if self.n_embd % self.n_head:
            raise UserError(f"--n-embd {self.n_embd} must be a multiple of --n-head {self.n_head}")
        return self

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.context, n_layer=self.n_layer, n_head=self.n_head,
                         n_embd=self.n_embd, dropout=self.dropout)


@dataclass(frozen=True)
class Preset:
    """A size of the whole training (``--preset``): the model settings it changes, the optimiser and the loop."""

    model: dict
    optim: OptimConfig
    loop: LoopConfig

    def model_config(self) -> MuseConfig:
        return replace(MuseConfig(), **self.model)


PRESETS = {
    # A small model on a CPU takes a high LR and a short warm-up, and evaluates and saves often over its few hundred
    # steps.
    "cpu": Preset({}, OptimConfig(lr=3e-3, warmup_steps=30),
                  LoopConfig(steps=600, batch_size=16, eval_every=100, ckpt_every=100)),
    # The model one H200 trained to 4.45 bits per note on the whole music21 corpus in 4.5 minutes (docs/muse.md),
    # given 30 (its bf16 weights, 7 layers x 512, fit the 64 MiB that run could bring back).
    "gpu": Preset({"context": 2048, "n_layer": 7, "n_head": 8, "n_embd": 512, "dropout": 0.1, "val_pieces": 200},
                  OptimConfig(lr=6e-4, warmup_steps=100),
                  LoopConfig(steps=20_000, batch_size=32, eval_every=250, ckpt_every=250, max_seconds=30 * 60)),
}


@dataclass
class TimeBudget:
    """``--max-minutes``: the loop's time budget (``LoopConfig.max_seconds``) in the unit people plan in."""

    max_minutes: float | None = option(None, "train as many of --steps as fit in this many minutes (the LR schedule "
                                       "follows; the gpu preset: 30)", gt=0, le=10**7)


def batch_workers(device: str) -> int:
    """Processes building batches ahead: none on a CPU (its cores are the model's), half the cores (at most 8) of
    each process on a GPU."""
    from nexttoken.training import pick_device

    per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return 0 if pick_device(device).type == "cpu" else min(8, per_process // 2)


# ---- the run folder --------------------------------------------------------------------------------------------------
def open_run(path: Path) -> Run:
    """A muse training run, to read; a folder of another command is refused by name. A config.json that names no
    kind is accepted when it holds muse settings."""
    run = Run.open(path)
    kind = run.config.get("kind")
    if kind == KIND or (kind is None and isinstance(run.config.get("muse"), dict)):
        return run
    if kind:
        raise UserError(f"{path} is a {kind} run, not a muse training run ({KIND})")
    raise UserError(f"{path} is not a muse training run (its config.json holds no muse settings)")


def check_out(out: Path | None) -> None:
    """Refuse an ``--out`` that cannot become a writable folder (a file, a path under a file, a folder this user
    cannot write), before any work is done for it."""
    if out is None:
        return
    for place in (out, *out.parents):
        if place.exists():
            if not place.is_dir():
                raise UserError(f"{place} is a file, not a folder; choose another --out")
            if not os.access(place, os.W_OK | os.X_OK):
                raise UserError(f"{place} is not writable; choose another --out")
            return


def saved_configs(run: Run, changes: dict | None = None) -> tuple[MuseConfig, OptimConfig, LoopConfig]:
    """The settings a run was started with, and the ``changes`` (flag name -> value) a resume may make: more steps,
    or another number of batch workers; any other change is refused."""
    source = str(run.path / "config.json")
    saved = run.config
    if not isinstance(saved.get("muse"), dict):
        raise UserError(f"{source} is damaged: it holds no muse settings")
    # A run saved without a countdown field was trained without the countdown embedding.
    cfg = load(MuseConfig, {"countdown_embedding": False, **saved["muse"]}, source)
    if cfg.n_embd % cfg.n_head:  # a config.json edited by hand: no model can be built from it
        raise UserError(f"{source}: n_embd {cfg.n_embd} is not a multiple of n_head {cfg.n_head}")
    optim, loop = load(OptimConfig, saved.get("optim"), source), load(LoopConfig, saved.get("loop"), source)
    changes = dict(changes or {})
    if "corpus" in changes:
        # A path typed relative to the working folder is the run's corpus when both name the same folder (a saved
        # path may itself be relative: it is read from the working folder, as the run reads it).
        typed = changes["corpus"]
        same = typed == cfg.corpus or corpus_source(typed) == corpus_source(cfg.corpus)
        changes["corpus"] = cfg.corpus if same else corpus_source(typed)

    def of(cls) -> dict:
        return {k: v for k, v in changes.items() if k in {f.name for f in fields(cls)}}

    return (resumed(cfg, of(MuseConfig)), resumed(optim, of(OptimConfig)),
            resumed(loop, of(LoopConfig), adjustable=("steps", "workers"), trained=run.trained_steps()))


def load_run(path: Path, device: torch.device) -> tuple[MuseModel, object, MuseConfig, Run]:
    """The trained model of a run folder, its encoding and config (for generate, evaluate, embeddings)."""
    run = open_run(path)
    if not run.has_checkpoint():
        raise UserError(f"{path} has no checkpoint yet")
    cfg, _, _ = saved_configs(run)
    encoding = make_encoding(cfg.encoding, cfg.composers, cfg.families)
    model = build_model(cfg, encoding.vocab_size)
    run.load_checkpoint(model, restore_rng_state=False)
    return model.to(device).eval(), encoding, cfg, run


# ---- training --------------------------------------------------------------------------------------------------------
def train(cfg: MuseConfig, optim: OptimConfig, loop: LoopConfig, out: Path | None = None, device: str = "auto",
          jobs: int = 2) -> Path:
    """Train a new run and write its folder; returns its path. Every setting is checked before the folder is made."""
    cfg = replace(cfg).validate()
    check(loop)
    dist = init_distributed(device)
    loop.validate(dist.world_size)
    seed_everything(loop.seed)
    with main_first(dist):  # rank 0 prepares the cache, the others read it
        corpus = load_corpus(cfg.corpus, jobs)
    if len(corpus.indices("train")) == 0:
        raise UserError(f"{cfg.corpus}: no training pieces")
    cfg.composers = cfg.composers or corpus.composers()
    cfg.families = cfg.families or corpus.families()
    encoding = make_encoding(cfg.encoding, cfg.composers, cfg.families)
    cfg.tokens_per_second = cfg.tokens_per_second or tokens_per_second(corpus, encoding)
    model = build_model(cfg, encoding.vocab_size).to(dist.device)
    settings = {"muse": asdict(cfg), "gpt": model.cfg.to_dict(), "optim": asdict(optim), "loop": asdict(loop)}
    with Run.create(out or default_run_dir("muse", "train"), settings, kind=KIND, enabled=dist.is_main) as run:
        _fit(model, encoding, corpus, cfg, optim, loop, run, dist, resume=False)
    return run.path


def resume(path: Path, device: str = "auto", jobs: int = 2, changes: dict | None = None) -> Path:
    """Continue a run from its last checkpoint with its own settings; ``changes`` (flag name -> value) may only ask
    for more steps (or another number of batch workers). A finished run is left as it is."""
    run = open_run(path)
    cfg, optim, loop = saved_configs(run, changes)
    if nothing_to_train(path, loop):
        return Path(path)
    dist = init_distributed(device)
    loop.validate(dist.world_size)
    seed_everything(loop.seed)
    with main_first(dist):  # rank 0 prepares the cache, the others read it
        corpus = load_corpus(cfg.corpus, jobs)
    encoding = make_encoding(cfg.encoding, cfg.composers, cfg.families)
    model = build_model(cfg, encoding.vocab_size).to(dist.device)
    with Run.resume(path, enabled=dist.is_main) as run:
        run.amend({"loop": asdict(loop)})
        _fit(model, encoding, corpus, cfg, optim, loop, run, dist, resume=True)
    return run.path


def _fit(model: MuseModel, encoding, corpus: Corpus, cfg: MuseConfig, optim: OptimConfig, loop: LoopConfig,
         run: Run, dist: Dist, resume: bool) -> None:
    """``fit`` with bits per note at every evaluation, then the curves and the summary."""
    val_encoded, val_notes = validation_set(corpus, encoding, cfg.val_pieces)
    kinds = encoding.token_kinds()
    rules = getattr(encoding, "allowed_next", None)
    by_kind: dict[str, float] = {}

    def eval_fn(m: MuseModel) -> dict:
        if not val_encoded:  # nothing held out: no validation metrics, rather than a 0 that reads as perfect
            return {}
        s = score_pieces(m, val_encoded, val_notes, cfg.context, kinds=kinds, allowed_next=rules)
        by_kind.clear()
        by_kind.update(s.by_kind)
        out = {"val_loss": s.nats_per_token, "bits_per_note": s.bits_per_note}
        return out if s.masked_bits_per_note is None else {**out, "masked_bits_per_note": s.masked_bits_per_note}

    batches = Batches(corpus, encoding, cfg, loop.batch_size, loop.seed)
    with continue_with(f"nexttoken muse train --resume {run.path}"):
        result = fit(model, batches, optim, loop, run, dist=dist, eval_fn=eval_fn, resume=resume)
    record = result.record
    if not dist.is_main:
        return
    plot_metrics(run.metrics(), ["train_loss", "val_loss"], run.path / "loss.png", ylabel="nats per token",
                 title=f"{cfg.encoding}: loss")
    plot_metrics(run.metrics(), ["bits_per_note"], run.path / "bits_per_note.png", ylabel="bits per note",
                 title="validation bits per note")
    run.write_summary({
        "bits_per_note": record.get("bits_per_note"), "bits_per_note_by_kind": by_kind,
        "masked_bits_per_note": record.get("masked_bits_per_note"),
        "val_loss": record.get("val_loss"),
        "train_loss": record.get("train_loss"), "steps": result.steps, "encoding": cfg.encoding,
        "params": sum(p.numel() for p in model.parameters()), "vocab_size": encoding.vocab_size,
        "tokens_per_note": score_tokens_per_note(val_encoded, val_notes) if val_encoded else None,
        "train_seconds": result.seconds,  # every stretch of a resumed run
        "device": str(dist.device), "corpus": cfg.corpus, "composers": cfg.composers,
        "train_pieces": len(corpus.indices("train")), "val_pieces": len(corpus.indices("val")),
        "skipped_files": corpus.skipped,
    })


def score_tokens_per_note(encoded: list[Encoded], n_notes: list[int]) -> float:
    return sum(len(e.ids) for e in encoded) / max(sum(n_notes), 1)

