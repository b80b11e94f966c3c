"""What every training loop shares: devices, seeding, AdamW parameter groups, the LR schedule, precision, DDP, and
``fit``, a plain next-token training loop with gradient accumulation, evaluation, atomic checkpoints and resume.

Distributed runs use PyTorch DDP as launched by torchrun (``torchrun --nproc_per_node N -m nexttoken ...``): the
environment variables it sets pick the rank; NCCL on CUDA, gloo on CPU. Nothing here is home-made distribution.

The loop asks ``batch_fn(step)`` for the *global* batch of a step (a dict of tensors, rows first), so the data order
depends on the step alone: resuming at step N, or splitting the batch over processes and micro-batches, sees exactly
the rows an uninterrupted single-process run sees. The loss of every micro-batch is divided by the number of target
tokens of the whole global batch, so DDP and gradient accumulation give the single-process gradient exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from nexttoken.errors import UserError
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- optimisation -----------------------------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay: str = "matrices"  # which tensors decay: matrices (2-D and up) | all | none
    warmup_steps: int = 100
    schedule: str = "cosine"  # constant | cosine (to min_lr_ratio * lr at the last step)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.decay not in ("matrices", "all", "none"):
            raise UserError(f"decay must be matrices, all or none, not {self.decay!r}")
        if self.schedule not in ("constant", "cosine"):
            raise UserError(f"schedule must be constant or cosine, not {self.schedule!r}")


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


# ---- distributed --------------------------------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> Dist:
    """Read torchrun's environment; start the process group when there is more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


# ---- the loop -----------------------------------------------------------------------------------------------------------
@dataclass
class LoopConfig:
    steps: int = 1000
    batch_size: int = 32  # global: rows per optimizer step over all processes and micro-batches
    grad_accum: int = 1
    eval_every: int = 100
    ckpt_every: int = 500  # a multiple of eval_every: checkpoints are written right after an evaluation
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16
    compile: bool = False
    max_seconds: float = 0.0  # > 0: as many steps (up to ``steps``) as fit in this wall-clock time; the LR follows
    workers: int = 0  # processes building batches ahead of the loop (0: built in the loop)

    def validate(self, world_size: int = 1) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.eval_every < 1:
            raise UserError("steps, batch size, grad accumulation and eval interval must be positive")
        if self.batch_size % (world_size * self.grad_accum):
            raise UserError(
                f"batch size {self.batch_size} must divide evenly into {world_size} processes x "
                f"{self.grad_accum} accumulation steps"
            )
        if self.max_seconds < 0 or self.workers < 0:
            raise UserError("the time budget and the number of batch workers cannot be negative")
        if self.ckpt_every % self.eval_every:
            raise UserError(f"checkpoint interval {self.ckpt_every} must be a multiple of eval interval {self.eval_every}")


BatchFn = Callable[[int], dict]  # step -> global batch {"idx": (B, T), "targets": (B, T), optional cond/x_add/...}
EvalFn = Callable[[torch.nn.Module], dict]


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = ""):
    """tqdm on a terminal, silent otherwise (CI logs, pipes)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False)


class Prefetch:
    """``batch_fn`` run ahead of the loop by forked worker processes, so the accelerator never waits for the CPU.

    The workers inherit ``batch_fn`` (and the data it reads) through fork, so nothing large is pickled; batches come
    back as numpy arrays. Since a batch depends on its step alone, the batches are exactly those of ``batch_fn``.
    """

    def __init__(self, batch_fn: BatchFn, workers: int, ahead: int | None = None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.batch_fn = batch_fn
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                        initializer=_prefetch_init, initargs=(batch_fn,))
        self.ahead = ahead or 2 * workers
        self.pending: dict = {}
        self.broken = False

    def __call__(self, step: int) -> dict:
        from concurrent.futures.process import BrokenProcessPool

        if self.broken:
            return self.batch_fn(step)
        try:
            for s in range(step, step + self.ahead + 1):
                if s not in self.pending:
                    self.pending[s] = self.pool.submit(_prefetch_batch, s)
            for s in [s for s in self.pending if s < step]:  # a resumed or re-planned loop skipped them
                self.pending.pop(s).cancel()
            return {k: torch.from_numpy(v) for k, v in self.pending.pop(step).result().items()}
        except (BrokenProcessPool, OSError) as e:  # a worker died (killed, out of memory): go on without them
            print(f"nexttoken: batch workers stopped ({type(e).__name__}); building batches in the loop", file=sys.stderr)
            self.broken = True
            self.close()
            return self.batch_fn(step)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


_PREFETCH_FN: BatchFn | None = None


def _prefetch_init(batch_fn: BatchFn) -> None:
    global _PREFETCH_FN
    _PREFETCH_FN = batch_fn
    torch.set_num_threads(1)


def _prefetch_batch(step: int) -> dict:
    return {k: v.numpy() for k, v in _PREFETCH_FN(step).items()}


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
) -> dict:
    """Train ``model`` (already on its device) for ``loop.steps`` optimizer steps; return the last evaluation record.

    With ``loop.max_seconds``, ``loop.steps`` becomes the number of steps that fit that time (never more than it was).
    """
    dist = dist or Dist(device=next(model.parameters()).device)
    loop.validate(dist.world_size)
    device = dist.device
    optimizer = make_optimizer(model, optim)
    start = 0
    if resume and run is not None and run.has_checkpoint():
        start, _, _ = run.load_checkpoint(model, optimizer)
        run.rewind_metrics(start)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if dist.enabled else model
    forward = torch.compile(ddp) if loop.compile else ddp
    bar = progress_bar(loop.steps, start, dist.is_main, desc="train")
    prefetch = Prefetch(batch_fn, loop.workers) if loop.workers else None
    try:
        return _loop(model, ddp, forward, optimizer, prefetch or batch_fn, optim, loop, run, dist, eval_fn, start, bar)
    finally:
        if prefetch is not None:
            prefetch.close()
        bar.close()


def _loop(model, ddp, forward, optimizer, batch_fn, optim, loop, run, dist, eval_fn, start, bar) -> dict:
    device = dist.device
    micro = loop.batch_size // (dist.world_size * loop.grad_accum)
    record: dict = {}
    loss_sum, loss_steps, t0, tokens_seen = 0.0, 0, time.time(), 0
    # With a time budget, loop.steps is planned from the pace of the steps after the first (which pays for warm-up
    # and compilation): after each of the next 10 steps (a budget of a few slow steps still ends on time, with the LR
    # decayed), then after every evaluation, so that evaluations count too.
    deadline = time.time() + loop.max_seconds if loop.max_seconds else None
    cap, t_timed = loop.steps, time.time()

    def replan(done: int) -> None:
        planned = planned_steps(cap, done, done - start - 1, time.time() - t_timed, deadline - time.time())
        if dist.enabled:  # every process must stop at the same step: rank 0's plan is the plan
            t = torch.tensor([planned], device=device)
            torch_dist.broadcast(t, 0)
            planned = int(t.item())
        if dist.is_main and (done == start + 11 or done < start + 11 and planned == done):
            print(f"nexttoken: {planned} steps fit the time budget of {loop.max_seconds:.0f} s "
                  f"({1e3 * (time.time() - t_timed) / (done - start - 1):.0f} ms per step)", file=sys.stderr)
        loop.steps = planned
        bar.total = planned

    step = start
    while step < loop.steps:
        set_lr(optimizer, optim.lr * lr_factor(step, loop.steps, optim))
        batch = batch_fn(step)
        n_targets = (batch["targets"] != -1).sum().item()
        mine = {k: v[dist.rank * loop.grad_accum * micro : (dist.rank + 1) * loop.grad_accum * micro] for k, v in batch.items()}
        step_loss = 0.0
        for i in range(loop.grad_accum):
            mb = {k: v[i * micro : (i + 1) * micro].to(device, non_blocking=True) for k, v in mine.items()}
            sync = i == loop.grad_accum - 1
            with (contextlib.nullcontext() if sync or not dist.enabled else ddp.no_sync()), autocast(device, loop.precision):
                _, token_loss = forward(mb.pop("idx"), mb.pop("targets"), reduction="none", **mb)
                # DDP averages gradients over processes, so scale the share of this process back up by world_size.
                loss = token_loss.sum() * (dist.world_size / max(n_targets, 1))
            loss.backward()
            step_loss += loss.item() / dist.world_size
        if optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += step_loss
        loss_steps += 1
        tokens_seen += n_targets
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)

        done = step + 1
        if deadline is not None and done == start + 1:
            t_timed = time.time()
        elif deadline is not None and done <= start + 11:
            replan(done)
        if done % loop.eval_every == 0 or done == loop.steps:
            elapsed = time.time() - t0
            record = {"step": done, "train_loss": loss_sum / loss_steps, "lr": optimizer.param_groups[0]["lr"]}
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
                if done % loop.ckpt_every == 0 or done == loop.steps:
                    run.save_checkpoint(model, optimizer, done, extra_meta={"loop": asdict(loop)})
            loss_sum, loss_steps, t0, tokens_seen = 0.0, 0, time.time(), 0
        step = done
    return record
