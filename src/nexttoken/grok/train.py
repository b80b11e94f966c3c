"""A grokking run: its config and presets, and ``train``, which trains one run in its folder and writes its summary;
starting, resuming and reading those folders.

    nexttoken grok train --op x/y --p 97 --frac 0.5            # Power et al.'s model and optimiser
    nexttoken grok train --preset nanda                         # Nanda et al.'s 1-layer, full-batch x+y mod 113

The model and the vmapped optimiser are in ``ensemble.py``, the loop with its evaluation schedule and checkpoints in
``loop.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from nexttoken import config
from nexttoken.config import option
from nexttoken.errors import Interrupted, UserError
from nexttoken.grok.data import OPERATIONS, check_op, vocab_size
from nexttoken.grok.ensemble import Ensemble
from nexttoken.grok.loop import default_eval_ratio, saved_progress, snapshot_schedule, train_ensemble
from nexttoken.grok.memory import check_memory
from nexttoken.files import read_json
from nexttoken.runs import Run, wrong_kind

KIND = "grok.train"  # the run folders `grok train` writes
GROUP_KIND = "grok.sweep-group"  # an ensemble of a sweep, in its own run folder


@dataclass
class GrokConfig:
    """One grokking run. Defaults are Power et al.'s model (as their released code builds it) and optimiser."""

    op: str = option("x/y", "operation", choices=tuple(OPERATIONS))
    p: int = option(97, "modulus (a prime for division; the s5 operations ignore it)", ge=2, le=10**6)
    frac: float = option(0.5, "fraction of all equations used for training", gt=0, lt=1)
    seed: int = option(0, "seed of the split and the initial weights", ge=0, le=2**32 - 1)
    # model: decoder-only transformer, 2 layers, width 128, 4 heads, MLP 512
    n_layer: int = option(2, "transformer blocks", ge=1, le=64)
    n_embd: int = option(128, "width", ge=1, le=2**16)
    n_head: int = option(4, "attention heads", ge=1, le=2**10)
    mlp_hidden: int = option(512, "MLP hidden width (0: 4 x width)", ge=0, le=2**18)
    # As the paper's released code: LayerNorm after each residual sum, ReLU, no biases, PyTorch's default init.
    norm: str = option("post", "LayerNorm placement (none: Nanda et al.)", choices=("post", "pre", "none"))
    activation: str = option("relu", "MLP nonlinearity", choices=("relu", "gelu"))
    bias: bool = option(False, "biases in every linear layer and LayerNorm")
    init: str = option("torch", "torch: PyTorch's layer defaults, N(0, 1) embeddings; gpt2: N(0, init_std)",
                       choices=("torch", "gpt2"))
    init_std: float = option(0.02, "standard deviation of the gpt2 init", gt=0, le=10)
    dropout: float = option(0.0, "dropout probability", ge=0, lt=1)
    # optimiser: AdamW lr 1e-3, betas (0.9, 0.98), weight decay 1 on every tensor, 10 warm-up steps, batch 512
    lr: float = option(1e-3, "peak learning rate", gt=0, le=100)
    beta1: float = option(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = option(0.98, "AdamW beta2", ge=0, lt=1)
    weight_decay: float = option(1.0, "AdamW decoupled weight decay (0: Adam without decay)", ge=0, le=1e4)
    decay_to_init: bool = option(False, "decay toward the initial weights instead of toward zero")
    # Coupled L2 penalty: l2 * w added to the gradient before Adam normalises it (torch.optim.Adam's weight_decay, as
    # Grokfast's published runs use it: Adam with weight_decay 0.005). Unlike decoupled decay, it is rescaled by Adam.
    l2: float = option(0.0, "coupled L2 penalty added to the gradient (torch.optim.Adam's weight_decay; Grokfast's "
                            "runs use 0.005)", ge=0, le=1e4)
    warmup_steps: int = option(10, "linear learning-rate warm-up steps", ge=0, le=10**9)
    batch_size: int = option(512, "rows per step, capped at half the training set; 0 = full batch", ge=0, le=10**9)
    grad_noise: float = option(0.0, "std of Gaussian noise added to the gradient", ge=0, le=1e4)
    weight_noise: float = option(0.0, "std of Gaussian noise added to the weights for each forward pass", ge=0, le=1e4)
    grokfast: str = option("none", "Grokfast gradient filter", choices=("none", "ema", "ma"))
    grokfast_alpha: float = option(0.98, "Grokfast EMA momentum", ge=0, le=1)
    grokfast_lambda: float = option(2.0, "Grokfast amplification of the slow gradient", ge=0, le=1e4)
    grokfast_window: int = option(100, "Grokfast MA window", ge=1, le=10**5)
    loss: str = option("softmax", "cross-entropy over softmax or StableMax", choices=("softmax", "stablemax"))
    perp_grad: bool = option(False, "drop the gradient component along the weights (perpendicular gradient)")
    precision: str = option("fp32", "fp32, or bf16 autocast of the forward pass (weights and optimiser stay fp32)",
                            choices=("fp32", "bf16"))
    steps: int = option(10_000, "budget in optimiser steps", ge=1, le=10**9)
    stop_at: float = option(0.0, "stop once validation accuracy reaches this (0 = use the whole budget)", ge=0, le=1)

    def validate(self) -> "GrokConfig":
        """Every field in its declared range, and the settings that only make sense together."""
        config.check(self)
        check_op(self.op, self.p)
        if self.n_embd % self.n_head:
            raise UserError(f"--n-embd {self.n_embd} is not divisible by --n-head {self.n_head}")
        return self

    def shape_key(self) -> tuple:
        """Members of one ensemble must share everything that changes the model's shape or the step's structure."""
        vocab = vocab_size(self.op, self.p)
        return (vocab, self.n_layer, self.n_embd, self.n_head, self.mlp_hidden, self.norm, self.activation, self.bias,
                self.dropout, self.grokfast_window if self.grokfast == "ma" else 0, self.precision)


PRESETS: dict[str, dict] = {
    "paper": {},
    # The same sizes as a GPT-2-style block: pre-LayerNorm, GELU, biases, N(0, 0.04) init. Generalises several times
    # sooner than the paper's model on the same task and optimiser. GPT-2's own N(0, 0.02) generalises as fast at 50%
    # data, but most runs given 80-95% of the table stall far below 99% training accuracy; larger inits grok later.
    "modern": dict(norm="pre", activation="gelu", bias=True, init="gpt2", init_std=0.04),
    # Nanda et al. 2023: x+y mod 113, 1 layer, width 128, 4 heads, ReLU MLP 512, no LayerNorm, 30% data, full batch,
    # weights initialised at 1/sqrt(width).
    "nanda": dict(op="x+y", p=113, frac=0.3, n_layer=1, norm="none", activation="relu", bias=True, init="gpt2",
                  init_std=128**-0.5, batch_size=0, steps=40_000),
}


@dataclass
class TrainOptions:
    """How a run is trained beyond its model and optimiser; saved in config.json with the members, since all but the
    checkpoint intervals decide the run's course."""

    eval_ratio: float | None = option(None, "evaluate when the step grows by this factor (default 1.1 on CPU; on "
                                            "CUDA 1.02, or 1.05 for ensembles of more than 16 runs)", ge=1, le=100)
    snapshots: int = option(0, "keep the weights at this many log-spaced steps (for `grok analyze` progress measures)",
                            ge=0, le=10_000)
    cuda_graph: bool = option(True, "capture the step as a CUDA graph on CUDA (--no-cuda-graph: every step eagerly)")
    tf32: bool = option(True, "TF32 matrix products on CUDA (--no-tf32: full fp32)")
    checkpoint_seconds: float = option(60.0, "seconds between checkpoints (also one after the first evaluation, one "
                                             "at the end and one on Ctrl-C)", gt=0, le=10**6)
    checkpoint_steps: int = option(0, "also checkpoint once this many steps have passed since the last checkpoint "
                                      "(checked at evaluations and every 64 steps; 0: by time only)", ge=0, le=10**9)


ADJUSTABLE = ("checkpoint_seconds", "checkpoint_steps")  # may change on resume: they do not change the results


# ---- run folders ------------------------------------------------------------------------------------------------
def run_config(configs: list[GrokConfig], options: TrainOptions) -> dict:
    """config.json of an ensemble's run folder: its members and how they are trained."""
    return {"members": [asdict(c) for c in configs], **asdict(options)}


def open_run(path: Path, kinds: tuple[str, ...] = (KIND,), resume: bool = False, hints: dict | None = None) -> Run:
    """A grok run folder of one of ``kinds``, claimed when ``resume``. Runs saved before run folders named their kind
    are recognised by their members. ``hints``: what to do instead with a folder of another kind, by kind."""
    run = Run.resume(path) if resume else Run.open(path)
    found = run.config.get("kind")
    if found not in kinds and not (found is None and "members" in run.config):
        run.close()
        hint = (hints or {}).get(found)
        error = wrong_kind(path, found, kinds)
        raise UserError(f"{error}; {hint}") if hint else error
    return run


def member_configs(run: Run) -> list[GrokConfig]:
    source = str(run.path / "config.json")
    members = run.config.get("members")
    if not isinstance(members, list) or not members:
        raise UserError(f"{source} is damaged: it lists no members")
    return [config.load(GrokConfig, m, source).validate() for m in members]


def saved_options(run: Run, device: torch.device) -> TrainOptions:
    """How the run in ``run`` is trained; an evaluation ratio that older runs did not save is the device's default."""
    options = config.load(TrainOptions, run.config, str(run.path / "config.json"))
    if options.eval_ratio is None:
        options.eval_ratio = default_eval_ratio(device, len(run.config["members"]))
    return options


def start(cfg: GrokConfig, options: TrainOptions, out: Path, device: torch.device) -> Run:
    """Claim a new run folder for ``cfg`` once it is known to fit in memory; use it as a context manager, so a start
    that fails leaves nothing behind."""
    check_memory([cfg], device)
    options = replace(options, eval_ratio=options.eval_ratio or default_eval_ratio(device))
    return Run.create(out, run_config([cfg], options), kind=KIND)


@dataclass
class Resumed:
    run: Run
    config: GrokConfig
    options: TrainOptions
    finished: bool  # it had already finished: `train` writes what is missing and trains nothing


def check_preset(saved: GrokConfig, preset: tuple[str, dict] | None, skip=()) -> None:
    """A preset given again on resume must agree with the resumed run in the settings it sets (``preset``: its name
    and the settings no typed flag overrides), so that a refusal names the flag the user typed."""
    name, settings = preset or ("", {})
    for k, v in settings.items():
        if k not in skip and getattr(saved, k) != v:
            raise UserError(f"--preset {name} differs from the resumed run (it sets {config.flag_name(k)} {v}, the "
                            f"run has {getattr(saved, k)}); a resumed run keeps its settings (start a new run to "
                            f"change it)")


def resume(path: Path, device: torch.device, requested: dict, requested_options: dict,
           preset: tuple[str, dict] | None = None) -> Resumed:
    """Claim a killed or finished `grok train` run. A requested setting that differs from the saved run is refused,
    except more (or fewer, not below the steps taken) ``steps`` and the checkpoint intervals, which are saved."""
    run = open_run(path, resume=True)
    try:
        saved = member_configs(run)
        if len(saved) != 1:
            raise UserError(f"{path} holds a sweep's ensemble of {len(saved)} runs; continue it with `grok sweep "
                            f"--resume` on the sweep's folder")
        check_preset(saved[0], preset, skip=("steps",))
        cfg = config.resumed(saved[0], requested, adjustable=("steps",)).validate()
        options = config.resumed(saved_options(run, device), requested_options, adjustable=ADJUSTABLE)
        taken, finished = saved_progress(run, [cfg])
        if taken > cfg.steps:
            raise UserError(f"--steps {cfg.steps:,} is fewer than the {taken:,} steps {path} has taken")
        check_memory([cfg], device)
        run.amend({"kind": KIND, **run_config([cfg], options)})
    except BaseException:
        run.close()
        raise
    return Resumed(run, cfg, options, finished)


def use_tf32(device: torch.device, on: bool) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on  # 10-bit mantissa inputs, fp32 accumulation: faster products


def train(cfg: GrokConfig, run: Run, device: torch.device, *, resume: bool = False,
          options: TrainOptions | None = None, progress: bool = True) -> dict:
    """One run: train (or continue) it, then write summary.json. Returns the summary."""
    options = options or TrainOptions()
    use_tf32(device, options.tf32)
    ens = Ensemble([cfg], device)
    try:
        result = train_ensemble(
            ens, run, resume=resume, snapshot_steps=snapshot_schedule(cfg.steps, options.snapshots),
            eval_ratio=options.eval_ratio or default_eval_ratio(device), checkpoint_every_s=options.checkpoint_seconds,
            checkpoint_every=options.checkpoint_steps, use_cuda_graph=options.cuda_graph, progress=progress)
    except Interrupted as e:
        raise e.resumed_by(f"nexttoken grok train --resume {run.path}") from None
    done = run.path / "summary.json"
    if result.finished_before and done.exists():
        saved = read_json(done)
        if isinstance(saved, dict) and "steps_to_val_99" in saved:  # a damaged one is written again below
            return saved  # a finished run keeps the summary (and timings) it ended with
    m = result.milestones
    summary = {
        "op": cfg.op, "p": cfg.p, "frac": cfg.frac, "seed": cfg.seed,
        "steps_to_train_99": m.steps_to_train_99[0],
        "steps_to_val_99": m.steps_to_val_99[0],
        "wall_s_to_val_99": m.wall_s_to_val_99[0],
        "final_train_acc": result.final.train_acc.item(),
        "final_val_acc": result.final.val_acc.item(),
        "best_val_acc": m.best_val_acc[0],
        "steps": result.steps,
        "wall_s": round(result.wall_s, 3),
        "capture_s": round(result.capture_s, 3),
        "eval_s": round(result.eval_s, 3),
        "device": device_name(device),
        "params": ens.skeleton.num_params(non_embedding=True),
    }
    run.write_summary(summary)
    return summary


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


# Names this module held before the split by job: importing one says where it went.
_MOVED = {
    **dict.fromkeys(["Ensemble", "model_config", "stablemax_cross_entropy", "softmax_cross_entropy"],
                    "nexttoken.grok.ensemble"),
    **dict.fromkeys(["eval_steps", "default_eval_ratio", "snapshot_schedule", "train_ensemble", "TrainResult",
                     "EVAL_KEYS"], "nexttoken.grok.loop"),
    "Evaluation": "nexttoken.grok.ensemble.SplitScores", "Progress": "nexttoken.grok.loop.Milestones",
    "load_member": "nexttoken.grok.evaluate", "config_from_dict": "nexttoken.config.load(GrokConfig, ...)",
}


def __getattr__(name: str):
    if name in _MOVED:
        raise ImportError(f"nexttoken.grok.train.{name} moved to {_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
