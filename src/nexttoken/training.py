"""What every training loop shares: devices, seeding, AdamW parameter groups, the LR schedule, precision, DDP, stop
requests, and ``fit``, a plain training loop (next-token loss or any other) with gradient accumulation, evaluation,
atomic checkpoints and exact resume.

Distributed runs use PyTorch DDP as launched by torchrun (``torchrun --nproc_per_node N -m nexttoken ...``): the
environment variables it sets pick the rank; NCCL on CUDA, gloo on CPU (the process group and what lies around a
loop are in ``nexttoken.distributed``). Nothing here is home-made distribution.

The loop asks ``batch_fn(step)`` for the *global* batch of a step (a dict of tensors, rows first), so the data order
depends on the step alone: resuming at step N, or splitting the batch over processes and micro-batches, sees exactly
the rows an uninterrupted single-process run sees. The loss of every micro-batch is divided by the number of target
tokens of the whole global batch, so DDP and gradient accumulation give the single-process gradient exactly.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from nexttoken.config import check, option
from nexttoken.distributed import Dist, any_rank
from nexttoken.errors import Interrupted, UserError
from nexttoken.prefetch import Prefetch
from nexttoken.progress import Progress
from nexttoken.files import read_json
from nexttoken.runs import Run, unwrap

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA, then MPS, then the CPU; asking for a missing accelerator is a user error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU (is a CUDA build of torch installed?)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but this PyTorch has no MPS support")
    return torch.device(name)


def check_preset_device(preset: str | None, device: str) -> None:
    """A gpu preset asked of a machine that trains on its CPU: one warning before its hours of work, not after."""
    if preset == "gpu" and pick_device(device).type == "cpu":
        from nexttoken.errors import warn

        warn("--preset gpu on the CPU: its models are sized for a GPU, so each stage runs far slower than the preset "
             "plans (a time budget ends it at a fraction of its steps); --preset cpu is sized for this machine")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- optimisation -----------------------------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    lr: float = option(3e-4, "peak learning rate", gt=0, le=10)
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas", flag=False)
    eps: float = option(1e-8, "AdamW epsilon", gt=0, flag=False)
    weight_decay: float = option(0.1, "AdamW decoupled weight decay", ge=0)
    decay: str = option("matrices", "which tensors decay", choices=("matrices", "all", "none"), flag=False)
    warmup_steps: int = option(100, "linear LR warm-up steps", ge=0)
    schedule: str = option("cosine", "LR after warm-up: constant, or cosine to min_lr_ratio x lr at the last step",
                           choices=("constant", "cosine"), flag=False)
    min_lr_ratio: float = option(0.1, "the cosine's final LR as a fraction of the peak", ge=0, le=1, flag=False)
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: no clipping)", ge=0)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check(self)


def param_groups(model: torch.nn.Module, weight_decay: float, decay: str = "matrices") -> list[dict]:
    """AdamW groups. The grokking paper decays every tensor ('all'); GPT practice decays matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    if decay == "none":
        return [{"params": params, "weight_decay": 0.0}]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    device = next(model.parameters()).device
    groups = [g for g in param_groups(model, cfg.weight_decay, cfg.decay) if g["params"]]
    # The fused kernel is one launch for all parameters on CUDA; on the CPU the foreach path is the fast one.
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the base LR at ``step`` (0-based): linear warm-up, then constant or cosine decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA ('auto' or 'bf16'); full precision elsewhere or with 'fp32'."""
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- the loop -----------------------------------------------------------------------------------------------------------
@dataclass
class LoopConfig:
    steps: int = option(1000, "optimizer steps", ge=1, le=10**9)
    batch_size: int = option(32, "rows per optimizer step over all processes and micro-batches", ge=1, le=10**6)
    grad_accum: int = option(1, "micro-batches per step", ge=1, le=10**4)
    eval_every: int = option(100, "steps between evaluations", ge=1)
    ckpt_every: int = option(500, "steps between checkpoints (also one after the first step, one every "
                                  "ckpt_seconds, and one when stopped)", ge=1)
    ckpt_seconds: float = option(60.0, "seconds between checkpoints", gt=0, flag=False)
    seed: int = option(0, "seed of the data order and the initial weights", ge=0)
    precision: str = option("auto", "bf16 autocast on CUDA (auto), or fp32 / bf16 everywhere",
                            choices=("auto", "fp32", "bf16"))
    compile: bool = option(False, "torch.compile the model (GPU)")
    max_seconds: float = option(0.0, "train as many of the steps as fit in this many seconds (0: no budget)", ge=0,
                                flag=False)
    workers: int = option(0, "processes building batches ahead of the loop", ge=0, le=64, flag=False)

    def validate(self, world_size: int = 1) -> None:
        check(self)
        if self.batch_size % (world_size * self.grad_accum):
            parts = [f"{world_size} processes"] if world_size > 1 else []
            parts.append(f"--grad-accum {self.grad_accum}")
            raise UserError(f"--batch-size {self.batch_size} must divide evenly into {' x '.join(parts)} "
                            f"micro-batches")


BatchFn = Callable[[int], dict]  # step -> global batch {"idx": (B, T), "targets": (B, T), optional cond/x_add/...}
EvalFn = Callable[[torch.nn.Module], dict]
# (model, micro-batch on the device) -> the SUM of the loss over the micro-batch's examples (or tokens), optionally
# with a dict of other summed quantities to log; the loop divides both by ``WeightFn`` of the whole global batch.
LossFn = Callable[[torch.nn.Module, dict], "torch.Tensor | tuple[torch.Tensor, dict]"]
WeightFn = Callable[[dict], float]


def lm_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy summed over the target tokens (targets of -1 are ignored)."""
    batch = dict(batch)
    _, token_loss = model(batch.pop("idx"), batch.pop("targets"), reduction="none", **batch)
    return token_loss.sum()


def count_targets(batch: dict) -> float:
    return float((batch["targets"] != -1).sum())


def count_rows(batch: dict) -> float:
    return float(len(next(iter(batch.values()))))


class StopRequests:
    """While active, SIGINT and SIGTERM only set ``requested`` (and ``signum``, which one), so a loop can finish its
    step, write a checkpoint and stop cleanly; a second Ctrl-C interrupts at once. Outside the main thread (where
    Python cannot catch signals) nothing changes."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGINT
        self._saved: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()


def planned_steps(cap: int, done: int, timed_steps: int, timed_s: float, seconds_left: float) -> int:
    """The step count that fits a time budget: the steps done plus those the measured pace fits in the time left,
    at most ``cap`` and at least ``done``.

    >>> planned_steps(1000, done=20, timed_steps=10, timed_s=1.0, seconds_left=50)
    520
    >>> planned_steps(100, done=20, timed_steps=10, timed_s=1.0, seconds_left=50)
    100
    >>> planned_steps(100, done=20, timed_steps=10, timed_s=1.0, seconds_left=-3)
    20
    """
    pace = timed_s / max(timed_steps, 1)
    return max(done, min(cap, done + int(max(seconds_left, 0.0) / max(pace, 1e-9))))


def say_finished(path, steps: int, budgeted: bool = False, unit: str = "steps") -> None:
    """The line every resumed run that has nothing left to train prints (``unit``: what its loop counts)."""
    within = " (all its time budget allowed)" if budgeted else ""
    print(f"nexttoken: {path} has finished its {steps:,} {unit}{within}; nothing to train (pass --{unit} N to train "
          f"further)", file=sys.stderr)


def nothing_to_train(path, loop: "LoopConfig | int", unit: str = "steps") -> bool:
    """A finished run (its summary written) asked for no more steps than it trained: say so, so that it is left as
    it is. Under a time budget ``fit`` decides, from the checkpoint's plan. ``loop`` may be the count of ``unit``
    asked for instead, for a loop of its own (PPO's iterations), which the summary saves under that name."""
    asked, budget = (loop.steps, loop.max_seconds) if isinstance(loop, LoopConfig) else (loop, 0.0)
    summary = Path(path) / "summary.json"
    if summary.is_file() and budget <= 0:
        saved = read_json(summary)
        done = saved.get(unit, 0) if isinstance(saved, dict) else None
        if not isinstance(done, int):
            raise UserError(f"{summary} is damaged (no whole number of {unit}); delete it, and the resume writes it "
                            f"again")
        if done >= asked:
            say_finished(path, done, unit=unit)
            return True
        print(f"nexttoken: training {path} on to {asked:,} {unit}", file=sys.stderr)
    return False


@dataclass
class FitResult:
    record: dict  # the last evaluation record
    steps: int  # the steps the run was planned to (fewer than ``LoopConfig.steps`` under a time budget)
    seconds: float = 0.0  # training time of the whole run: a resumed run's earlier stretches count, pauses do not


def fit(
    model: torch.nn.Module,
    batch_fn: BatchFn,
    optim: OptimConfig,
    loop: LoopConfig,
    run: Run | None = None,
    *,
    dist: Dist | None = None,
    eval_fn: EvalFn | None = None,
    resume: bool = False,
    loss_fn: LossFn = lm_loss,
    weight_fn: WeightFn = count_targets,
    clock: Callable[[], float] = time.monotonic,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` (already on its device) for ``loop.steps`` optimizer steps, or as many as fit
    ``loop.max_seconds``; ``loss_fn`` and ``weight_fn`` define the objective (next-token loss by default).

    Checkpoints are written after the first step, every ``ckpt_every`` steps, every ``ckpt_seconds``, at the end, and
    when SIGINT or SIGTERM asks the run to stop (which then raises ``Interrupted``). A resumed run continues from its
    checkpoint with the metrics logged after it dropped, so it ends exactly as an uninterrupted run would; with no
    checkpoint it starts over.
    """
    dist = dist or Dist(device=next(model.parameters()).device)
    loop.validate(dist.world_size)
    optimizer = make_optimizer(model, optim)
    state = LoopState(planned=loop.steps)
    if resume and run is not None:
        if run.has_checkpoint():
            state.step, _, meta = run.load_checkpoint(model, optimizer)
            state = LoopState(**{**asdict(state), **meta.get("loop_state", {}), "step": state.step})
            # Without a time budget the plan is loop.steps, and a resume may ask for more. Under a budget the plan
            # stands, unless the resume asks for more steps than the run was capped at: then it is planned again
            # within what is left of the budget.
            if loop.max_seconds <= 0 or loop.steps > meta.get("loop", {}).get("steps", loop.steps):
                state.planned = loop.steps
        run.rewind_metrics(state.step)
    if state.step >= state.planned and run is not None:  # a finished run: nothing to train
        if resume and dist.is_main:
            say_finished(run.path, state.step, budgeted=loop.max_seconds > 0)
        return FitResult((run.metrics() or [{}])[-1], state.planned, state.elapsed_s)
    ddp = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None) \
        if dist.enabled else model
    forward = torch.compile(ddp) if loop.compile else ddp
    # named by its folder: a pipeline's stages (vqvae, top, sft-small...) train one after another in one terminal
    bar = Progress(state.planned, f"train {run.path.name}" if run is not None else "train", initial=state.step,
                   enabled=progress and dist.is_main, log=run.log_path if run is not None else None, clock=clock)
    prefetch = Prefetch(batch_fn, loop.workers) if loop.workers else None
    try:
        with StopRequests() as stop:
            record = _loop(model, ddp, forward, optimizer, prefetch or batch_fn, optim, loop, run, dist, eval_fn,
                           state, bar, loss_fn, weight_fn, clock, stop)
        return FitResult(record, state.planned, state.elapsed_s)  # the last save timed the end
    finally:
        if prefetch is not None:
            prefetch.close()
        bar.close()


@dataclass
class LoopState:
    """What a checkpoint must hold beyond weights and optimizer for a resumed loop to continue exactly."""

    step: int = 0
    planned: int = 0
    loss_sum: "float | torch.Tensor" = 0.0  # a tensor on the device between checkpoints
    loss_steps: int = 0
    logs: dict = field(default_factory=dict)  # the same
    elapsed_s: float = 0.0  # training time before this stretch (a time budget counts it)


def _detached(v: "torch.Tensor | float") -> "torch.Tensor | float":
    return v.detach().float() if isinstance(v, torch.Tensor) else float(v)


def _loop(model, ddp, forward, optimizer, batch_fn, optim, loop, run, dist, eval_fn, state, bar, loss_fn, weight_fn,
          clock, stop) -> dict:
    device = dist.device
    micro = loop.batch_size // (dist.world_size * loop.grad_accum)
    record: dict = {}
    start = state.step
    t0, tokens_seen = clock(), 0
    last_save = clock()
    # With a time budget, the step count is planned from the pace of the steps after the first (which pays for
    # warm-up and compilation): after each of the next 10 steps (a budget of a few slow steps still ends on time, with
    # the LR decayed), then after every evaluation, so that evaluations count too.
    deadline = clock() + loop.max_seconds - state.elapsed_s if loop.max_seconds > 0 else None
    t_begin = clock() - state.elapsed_s
    t_timed = clock()

    def replan(done: int) -> None:
        planned = planned_steps(loop.steps, done, done - start - 1, clock() - t_timed, deadline - clock())
        if dist.enabled:  # every process must stop at the same step: rank 0's plan is the plan
            t = torch.tensor([planned], device=device)
            torch_dist.broadcast(t, 0)
            planned = int(t.item())
        if dist.is_main and (done == start + 11 or done < start + 11 and planned == done):
            bar.write(f"nexttoken: {planned} steps fit the time budget of {loop.max_seconds:.0f} s "
                      f"({1e3 * (clock() - t_timed) / max(done - start - 1, 1):.0f} ms per step)")
        state.planned = planned
        bar.set_total(planned)

    def save(done: int) -> None:
        state.elapsed_s = clock() - t_begin
        state.loss_sum, state.logs = float(state.loss_sum), {k: float(v) for k, v in state.logs.items()}
        if run is not None:
            run.save_checkpoint(model, optimizer, done, extra_meta={"loop": asdict(loop), "loop_state": asdict(state)})

    while state.step < state.planned:
        step = state.step
        set_lr(optimizer, optim.lr * lr_factor(step, state.planned, optim))
        batch = batch_fn(step)
        weight = weight_fn(batch)
        mine = {k: v[dist.rank * loop.grad_accum * micro : (dist.rank + 1) * loop.grad_accum * micro]
                for k, v in batch.items()}
        step_loss, step_logs = 0.0, {}
        for i in range(loop.grad_accum):
            mb = {k: v[i * micro : (i + 1) * micro].to(device, non_blocking=True) for k, v in mine.items()}
            sync = i == loop.grad_accum - 1
            with (contextlib.nullcontext() if sync or not dist.enabled else ddp.no_sync()), autocast(device, loop.precision):
                out = loss_fn(forward, mb)
                total, logs = out if isinstance(out, tuple) else (out, {})
                # DDP averages gradients over processes, so scale the share of this process back up by world_size.
                loss = total * (dist.world_size / max(weight, 1e-12))
            loss.backward()
            # Sums stay on the device: reading a GPU value waits for the GPU, which would stall every step. They
            # are read at evaluations and checkpoints (and by the bar, a few times a second).
            step_loss = step_loss + loss.detach().float() / dist.world_size
            for k, v in logs.items():
                step_logs[k] = step_logs.get(k, 0.0) + _detached(v) / max(weight, 1e-12)
        if optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.loss_sum += step_loss
        state.loss_steps += 1
        for k, v in step_logs.items():
            state.logs[k] = state.logs.get(k, 0.0) + v
        tokens_seen += weight
        done = state.step = step + 1
        if deadline is not None and done == start + 1:  # a first estimate for the bar, from a step with the warm-up;
            # the next step runs whatever it says, since the plan is made from the pace of the steps after this one
            bar.set_total(min(loop.steps, max(done + 1, planned_steps(loop.steps, done, 1, clock() - t_timed,
                                                                       deadline - clock()))))
        bar.update(1, loss=step_loss)

        if deadline is not None and done == start + 1:
            t_timed = clock()
        elif deadline is not None and done <= start + 11:
            replan(done)
        if done % loop.eval_every == 0 or done == state.planned:
            elapsed = clock() - t0
            record = {"step": done, "train_loss": float(state.loss_sum) / state.loss_steps,
                      **{f"train_{k}": float(v) / state.loss_steps for k, v in state.logs.items()},
                      "lr": optimizer.param_groups[0]["lr"]}
            if eval_fn is not None:
                model.eval()
                with torch.no_grad(), autocast(device, loop.precision):
                    record.update(eval_fn(unwrap(model)))
                model.train()
            record["tokens_per_s"] = tokens_seen / max(elapsed, 1e-9)
            if deadline is not None and done > start + 11:
                replan(done)
            if run is not None:
                run.log(record)
            state.loss_sum, state.loss_steps, state.logs, t0, tokens_seen = 0.0, 0, {}, clock(), 0
        stopping = any_rank(dist, stop.requested)
        if (done == start + 1 or done % loop.ckpt_every == 0 or done == state.planned or stopping
                or clock() - last_save > loop.ckpt_seconds):
            save(done)
            last_save = clock()
        if stopping:
            raise Interrupted(f"stopped at step {done:,}", f"--resume {run.path}" if run else "", stop.signum)
    return record
