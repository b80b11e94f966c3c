"""Train grokking runs: one run, or many trained together as one vmapped ensemble.

    nexttoken grok train --op x/y --p 97 --frac 0.5            # Power et al.'s model and optimiser
    nexttoken grok train --preset nanda                         # Nanda et al.'s 1-layer, full-batch x+y mod 113

Every run, even a single one, is a member of an ``Ensemble``: E copies of the shared GPT evaluated with
``torch.func.vmap`` over stacked weights. Each member has its own operation, training fraction, seed and optimiser
settings; the weights of all members live in one (E, P) tensor, so AdamW, weight decay (to zero or to the initial
weights), gradient and weight noise, the Grokfast filters and the perpendicular gradient are a handful of whole-tensor
operations whatever E is. Data stays on the device (no DataLoader); evaluation follows a log-spaced schedule, so a
1e6-step run costs a few hundred evaluations, each scoring every member's whole table once. On CUDA the whole step
(batch sampling, forward, backward, optimiser) is captured once as a CUDA graph and replayed. ``precision="bf16"``
runs the forward under bf16 autocast; the weights and the optimiser stay fp32.

When every member shares its AdamW settings, the update is PyTorch's fused AdamW kernel on the (E, P) state. Otherwise
it is written out, since torch.optim takes one set of hyperparameters per tensor and these differ per member; with one
member it matches torch.optim.AdamW exactly, and torch.optim.Adam's coupled weight decay with ``l2`` (tested).

Papers: Power et al. 2022 https://arxiv.org/abs/2201.02177 (the task, model, interventions);
Lee et al. 2024 https://arxiv.org/abs/2405.20233 (Grokfast EMA/MA gradient filters);
Prieto et al. 2025 https://arxiv.org/abs/2501.04697 (StableMax, perpendicular gradient).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vmap

from nexttoken.errors import UserError
from nexttoken.grok.data import check_op, make_table, split, vocab_size
from nexttoken.model import GPT, GPTConfig
from nexttoken.runs import Run, load_tensors, restore_rng, rng_tensors, save_tensors
from nexttoken.training import progress_bar


@dataclass
class GrokConfig:
    """One grokking run. Defaults are Power et al.'s model (as their released code builds it) and optimiser."""

    op: str = "x/y"
    p: int = 97
    frac: float = 0.5  # training fraction of all equations
    seed: int = 0  # the split and the initial weights
    # model: decoder-only transformer, 2 layers, width 128, 4 heads, MLP 512
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    mlp_hidden: int = 512
    # As the paper's released code: LayerNorm after each residual sum, ReLU, no biases, PyTorch's default init.
    norm: str = "post"  # post | pre | none (Nanda)
    activation: str = "relu"  # relu | gelu
    bias: bool = False
    init: str = "torch"  # torch: PyTorch's layer defaults, N(0, 1) embeddings | gpt2: N(0, init_std)
    init_std: float = 0.02
    dropout: float = 0.0
    # optimiser: AdamW lr 1e-3, betas (0.9, 0.98), weight decay 1 on every tensor, 10 warm-up steps, batch 512
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    weight_decay: float = 1.0  # 0 = Adam without decay
    decay_to_init: bool = False  # decay toward the initial weights instead of toward zero
    # Coupled L2 penalty: l2 * w added to the gradient before Adam normalises it (torch.optim.Adam's weight_decay, as
    # Grokfast's published runs use it: Adam with weight_decay 0.005). Unlike decoupled decay, it is rescaled by Adam.
    l2: float = 0.0
    warmup_steps: int = 10
    batch_size: int = 512  # capped at half the training set, as the paper; 0 = the whole training set each step
    grad_noise: float = 0.0  # std of Gaussian noise added to the gradient
    weight_noise: float = 0.0  # std of Gaussian noise added to the weights for each forward pass
    grokfast: str = "none"  # none | ema | ma
    grokfast_alpha: float = 0.98  # EMA momentum
    grokfast_lambda: float = 2.0  # amplification of the slow gradient
    grokfast_window: int = 100  # MA window
    loss: str = "softmax"  # softmax | stablemax
    perp_grad: bool = False  # drop the gradient component along the weights (⊥Grad)
    # fp32 | bf16: bf16 autocast of the forward pass (matrix products in bf16); weights and optimiser stay fp32
    precision: str = "fp32"
    # budget
    steps: int = 10_000
    stop_at: float = 0.0  # stop once validation accuracy reaches this (0 = run the whole budget)

    def validate(self) -> None:
        check_op(self.op, self.p)
        if not 0.0 < self.frac < 1.0:
            raise UserError(f"training fraction must be strictly between 0 and 1, not {self.frac}")
        choices = {"norm": ("pre", "post", "none"), "activation": ("gelu", "relu"), "grokfast": ("none", "ema", "ma"),
                   "loss": ("softmax", "stablemax"), "init": ("gpt2", "torch"), "precision": ("fp32", "bf16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise UserError(f"width {self.n_embd} is not divisible by {self.n_head} heads")
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 0 or self.grokfast_window < 1:
            raise UserError("steps, learning rate, batch size and Grokfast window must be positive")
        if self.weight_decay < 0 or self.l2 < 0:
            raise UserError("--weight-decay and --l2 must not be negative")
        if not 0.0 <= self.stop_at <= 1.0:
            raise UserError(f"--stop-at is an accuracy between 0 and 1, not {self.stop_at}")

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


def model_config(cfg: GrokConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=4, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                     mlp_hidden=cfg.mlp_hidden, dropout=cfg.dropout, norm=cfg.norm, activation=cfg.activation,
                     bias=cfg.bias, init=cfg.init, init_std=cfg.init_std, pos="learned", attention="math")


# ---- losses ---------------------------------------------------------------------------------------------------------------
def stablemax_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-row cross-entropy of StableMax: s(x) = x + 1 for x >= 0, 1 / (1 - x) below; p_i = s(x_i) / sum_j s(x_j).

    >>> round(stablemax_cross_entropy(torch.tensor([[0.0, 1.0]]), torch.tensor([1])).item(), 6)
    0.405465
    """
    x = logits.double()  # Prieto et al. compute it in float64: the point is to avoid absorption errors
    s = torch.where(x >= 0, x + 1, 1 / (1 - x))
    logp = s.log() - s.sum(-1, keepdim=True).log()
    return -logp.gather(-1, targets[..., None]).squeeze(-1).to(logits.dtype)


def softmax_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


# ---- evaluation schedule --------------------------------------------------------------------------------------------------
def eval_steps(budget: int, ratio: float = 1.02, first: int = 10) -> list[int]:
    """Steps after which to evaluate: every ``first`` steps at the start, then geometrically (about 2% apart), and the
    last step. A 1e6-step run is evaluated about 600 times.

    >>> eval_steps(100, ratio=1.5)
    [10, 20, 30, 45, 68, 100]
    """
    out, s = [], first
    while s < budget:
        out.append(s)
        s = max(s + first, round(s * ratio))
    return out + [budget]


# ---- the ensemble -----------------------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    train_acc: Tensor  # (E,)
    train_loss: Tensor
    val_acc: Tensor
    val_loss: Tensor


class Ensemble:
    """E grokking runs that share a model shape, trained in lock-step on one device."""

    def __init__(self, configs: list[GrokConfig], device: torch.device | str = "cpu", eval_chunk: int = 4096) -> None:
        for c in configs:
            c.validate()
        keys = {c.shape_key() for c in configs}
        if len(keys) != 1:
            raise UserError("ensemble members must share vocabulary, model shape, dropout, Grokfast window and precision")
        self.configs = configs
        self.device = torch.device(device)
        self.E = E = len(configs)
        self.eval_chunk = eval_chunk
        c0 = configs[0]

        # Data, resident on the device: each member's training rows (padded to the longest) to draw batches from, and
        # its whole table with a mask of the training rows. Evaluation runs over the table once: a member's training
        # and validation sets are its two halves, so nothing is padded to the largest set of either kind.
        tables: dict = {}
        train, whole, masks = [], [], []
        for c in configs:
            table = tables.setdefault((c.op, c.p), make_table(c.op, c.p))
            tr, _ = split(len(table), c.frac, c.seed)
            train.append((table.inputs[tr], table.answers[tr]))
            whole.append((table.inputs, table.answers))
            masks.append(torch.zeros(len(table), dtype=torch.bool).index_fill_(0, tr, True))
        self.vocab_size = next(iter(tables.values())).vocab_size
        self.train_x, self.train_y, self.n_train = _pad(train, self.device)
        self.table_x, self.table_y, n_table = _pad(whole, self.device)
        self.is_train = torch.nn.utils.rnn.pad_sequence(masks, batch_first=True).to(self.device)  # (E, N)
        self.is_val = (torch.arange(self.table_y.shape[1], device=self.device) < n_table[:, None]) & ~self.is_train
        self.n_val = n_table - self.n_train
        # Rows per step: the paper's min(batch, half the training set); batch 0 is the whole training set.
        batch = torch.tensor([min(c.batch_size, max(1, n // 2)) if c.batch_size else n
                              for c, n in zip(configs, self.n_train.tolist())])
        self.batch = batch.to(self.device)  # rows per step of each member
        self.B = int(batch.max())

        # Weights: member m is initialised like GPT(...) under torch.manual_seed(seed_m), then flattened into (E, P).
        self.model_cfg = model_config(c0, self.vocab_size)
        self.skeleton = GPT(self.model_cfg).to("meta")
        rows = []
        for c in configs:
            torch.manual_seed(c.seed)
            member = GPT(model_config(c, self.vocab_size))  # its own init scheme
            rows.append(torch.cat([p.detach().flatten() for p in member.parameters()]))
        self.names = [n for n, _ in self.skeleton.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in self.skeleton.named_parameters()]
        self.numels = [math.prod(s) for s in self.shapes]
        self.flat = torch.stack(rows).to(self.device)  # (E, P)
        self.init = self.flat.clone()
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.t = torch.zeros((), device=self.device)  # optimiser steps taken (a tensor: CUDA graphs read it)

        def col(values) -> Tensor:  # per-member hyperparameter as an (E, 1) column
            return torch.tensor([float(v) for v in values], device=self.device)[:, None]

        self.lr = col(c.lr for c in configs)
        self.beta1, self.beta2 = col(c.beta1 for c in configs), col(c.beta2 for c in configs)
        self.wd = col(c.weight_decay for c in configs)
        self.to_init = col(c.decay_to_init for c in configs)
        self.l2 = col(c.l2 for c in configs)
        self.warmup = col(max(1, c.warmup_steps) for c in configs)
        self.grad_noise, self.weight_noise = col(c.grad_noise for c in configs), col(c.weight_noise for c in configs)
        self.ema_alpha = col(c.grokfast_alpha for c in configs)
        self.ema_lambda = col(c.grokfast_lambda if c.grokfast == "ema" else 0 for c in configs)
        self.ma_lambda = col(c.grokfast_lambda if c.grokfast == "ma" else 0 for c in configs)
        self.perp = col(c.perp_grad for c in configs)
        self.stable = torch.tensor([c.loss == "stablemax" for c in configs], device=self.device)
        self.use = {
            "ema": any(c.grokfast == "ema" for c in configs),
            "ma": any(c.grokfast == "ma" for c in configs),
            "grad_noise": any(c.grad_noise > 0 for c in configs),
            "weight_noise": any(c.weight_noise > 0 for c in configs),
            "perp": any(c.perp_grad for c in configs),
            "l2": any(c.l2 > 0 for c in configs),
            "stablemax": bool(self.stable.any()),
            "softmax": not bool(self.stable.all()),
        }
        self.ema = torch.zeros_like(self.flat) if self.use["ema"] else None
        window = c0.grokfast_window
        self.ma_ring = torch.zeros(window, E, self.flat.shape[1], device=self.device) if self.use["ma"] else None
        self.ma_sum = torch.zeros_like(self.flat) if self.use["ma"] else None
        self.fused_adamw = self._fused_settings()
        self.step_fn: Callable[[], None] = self._step
        self._eval_graph: torch.cuda.CUDAGraph | None = None
        self.training = c0.dropout > 0
        self.bf16 = c0.precision == "bf16"

    def _fused_settings(self) -> dict | None:
        """The AdamW settings every member shares, for PyTorch's fused AdamW kernel: one pass over the (E, P) state
        instead of a dozen. At 128 runs of the modern block a step takes 19.9 ms instead of 21.6 on an H200. None when
        members differ in these settings or decay toward their initial weights: the general arithmetic handles those."""
        settings = {"lr": self.lr, "warmup": self.warmup, "beta1": self.beta1, "beta2": self.beta2, "wd": self.wd}
        if any(c.decay_to_init for c in self.configs) or any(bool((v != v[0]).any()) for v in settings.values()):
            return None
        return {k: v[0, 0] if k in ("lr", "warmup") else float(v[0, 0]) for k, v in settings.items()}

    # -- retiring members ---------------------------------------------------------------------------------------------------
    MEMBER_TENSORS = ("train_x", "train_y", "n_train", "table_x", "table_y", "is_train", "is_val", "n_val", "batch",
                      "flat", "init", "exp_avg", "exp_avg_sq", "lr", "beta1", "beta2", "wd", "to_init", "l2", "warmup",
                      "grad_noise", "weight_noise", "ema_alpha", "ema_lambda", "ma_lambda", "perp", "stable", "ema",
                      "ma_sum")

    def keep(self, members: list[int]) -> None:
        """Go on with only these members (indices into the current ensemble): a sweep retires the runs that are done,
        so the step costs what the runs still training need. Captured CUDA graphs are dropped (shapes change)."""
        index = torch.tensor(members, device=self.device)
        for name in self.MEMBER_TENSORS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, index))
        if self.ma_ring is not None:  # (window, E, P)
            self.ma_ring = self.ma_ring.index_select(1, index)
        self.configs = [self.configs[m] for m in members]
        self.E = len(members)
        self.B = int(self.batch.max())
        self.step_fn, self._eval_graph = self._step, None

    # -- weights as named tensors ------------------------------------------------------------------------------------------
    def views(self, flat: Tensor) -> dict[str, Tensor]:
        out, offset = {}, 0
        for name, shape, n in zip(self.names, self.shapes, self.numels):
            out[name] = flat[:, offset : offset + n].view(flat.shape[0], *shape)
            offset += n
        return out

    def member_state_dict(self, m: int) -> dict[str, Tensor]:
        return {name: v[m].detach().clone() for name, v in self.views(self.flat).items()}

    def member_model(self, m: int = 0) -> GPT:
        model = GPT(replace(self.model_cfg, attention="sdpa"))
        model.load_state_dict(self.member_state_dict(m))
        return model.to(self.device).eval()

    # -- forward ------------------------------------------------------------------------------------------------------------
    def logits(self, flat: Tensor, x: Tensor) -> Tensor:
        """Answer logits (E, B, vocab) of each member's rows x (E, B, 4)."""
        return self._logits(self.views(flat), x)

    def _logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        skeleton = self.skeleton.train(self.training)

        def one(member_params: dict, rows: Tensor) -> Tensor:
            logits, _ = functional_call(skeleton, member_params, (rows,), {"last_only": True})
            return logits[:, 0]

        return vmap(one, randomness="different")(params, x)

    def autocast(self):
        # No weight-cast cache: the step's parameters are fresh leaves each time, and a CUDA graph must not keep one.
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16, cache_enabled=False)

    def row_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.use["stablemax"] and self.use["softmax"]:
            return torch.where(self.stable[:, None], stablemax_cross_entropy(logits, y), softmax_cross_entropy(logits, y))
        if self.use["stablemax"]:
            return stablemax_cross_entropy(logits, y)
        return softmax_cross_entropy(logits, y)

    # -- one optimiser step for every member --------------------------------------------------------------------------------
    def _step(self) -> None:
        E = self.E
        # A fresh batch per member: the B smallest of random keys, padding rows keyed last (no row twice in a batch).
        keys = torch.rand(E, self.train_x.shape[1], device=self.device)
        keys = keys.masked_fill(torch.arange(keys.shape[1], device=self.device) >= self.n_train[:, None], 2.0)
        rows = keys.topk(self.B, dim=1, largest=False).indices  # (E, B)
        x = self.train_x.gather(1, rows[..., None].expand(-1, -1, 4))
        y = self.train_y.gather(1, rows)
        weight = (torch.arange(self.B, device=self.device) < self.batch[:, None]) / self.batch[:, None]  # (E, B)

        used = self.flat + self.weight_noise * torch.randn_like(self.flat) if self.use["weight_noise"] else self.flat
        # Each parameter is its own leaf, so the backward writes one gradient per parameter and a single cat makes the
        # flat gradient (differentiating through views of `flat` would zero-fill an (E, P) buffer per parameter).
        params = {name: v.detach().requires_grad_(True) for name, v in self.views(used).items()}
        with self.autocast():
            logits = self._logits(params, x)
        loss = (self.row_loss(logits.float(), y) * weight).sum()  # sum over members of each member's mean
        grads = torch.autograd.grad(loss, list(params.values()))
        self.apply_gradient(torch.cat([g.reshape(self.E, -1) for g in grads], dim=1))

    @torch.no_grad()
    def apply_gradient(self, grad: Tensor) -> None:
        w = self.flat
        if self.use["grad_noise"]:
            grad = grad + self.grad_noise * torch.randn_like(grad)
        if self.use["ema"]:  # Grokfast-EMA: mu <- a mu + (1 - a) g (mu starts at the first g); g <- g + lambda mu
            first = (self.t == 0).to(grad.dtype)
            self.ema.copy_(first * grad + (1 - first) * (self.ema_alpha * self.ema + (1 - self.ema_alpha) * grad))
            grad = grad + self.ema_lambda * self.ema
        if self.use["ma"]:  # Grokfast-MA: g <- g + lambda mean(last `window` gradients), once the window is full
            window = self.ma_ring.shape[0]
            slot = (self.t % window).long().view(1)  # a device tensor, not an int: no sync inside a CUDA graph
            self.ma_sum.add_(grad - self.ma_ring.index_select(0, slot)[0])
            self.ma_ring.index_copy_(0, slot, grad[None])
            full = (self.t + 1 >= window).to(grad.dtype)
            grad = grad + full * self.ma_lambda * self.ma_sum / window
        if self.use["perp"]:  # ⊥Grad: remove the component of g along w, over each member's whole weight vector
            along = (grad * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True).clamp_min(1e-30)
            grad = grad - self.perp * along * w
        if self.use["l2"]:  # after the filters, as torch.optim.Adam adds it inside its step
            grad = grad + self.l2 * w

        # AdamW with torch.optim.AdamW's arithmetic; decay toward zero or toward the initial weights.
        self.t += 1
        if self.fused_adamw is not None:  # every member the same AdamW: PyTorch's fused kernel, one pass over (E, P)
            h = self.fused_adamw
            lr = h["lr"] * torch.clamp(self.t / h["warmup"], max=1.0)  # a device tensor: a CUDA graph replays it
            torch._fused_adamw_([w], [grad], [self.exp_avg], [self.exp_avg_sq], [], [self.t], lr=lr, beta1=h["beta1"],
                                beta2=h["beta2"], weight_decay=h["wd"], eps=1e-8, amsgrad=False, maximize=False)
            return
        lr = self.lr * torch.clamp(self.t / self.warmup, max=1.0)
        target = self.to_init * self.init
        w.sub_(lr * self.wd * (w - target))
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad * (1 - self.beta2))
        bias1 = 1 - self.beta1**self.t
        bias2_sqrt = (1 - self.beta2**self.t).sqrt()
        w.sub_(lr / bias1 * self.exp_avg / (self.exp_avg_sq.sqrt() / bias2_sqrt + 1e-8))

    def step(self) -> None:
        self.step_fn()

    # -- evaluation -----------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """Accuracy and loss of every member on its whole training and validation sets."""
        if self._eval_graph is not None:
            self._eval_graph.replay()
            return Evaluation(**{f.name: getattr(self._eval_out, f.name).clone() for f in fields(Evaluation)})
        return self._evaluate()

    def _evaluate(self) -> Evaluation:
        was = self.training
        self.training = False
        sums = torch.zeros(4, self.E, device=self.device)  # correct and loss on the training rows, then validation
        N = self.table_y.shape[1]
        chunk = math.ceil(N / math.ceil(N / self.eval_chunk))  # equal chunks of at most eval_chunk rows
        try:
            for start in range(0, N, chunk):
                part = slice(start, start + chunk)
                x, y = self.table_x[:, part], self.table_y[:, part]
                with self.autocast():
                    logits = self.logits(self.flat, x).float()
                per_row = torch.stack([(logits.argmax(-1) == y).float(), self.row_loss(logits, y)])  # (2, E, chunk)
                masks = torch.stack([self.is_train[:, part], self.is_val[:, part]]).float()  # (2, E, chunk)
                sums += (per_row[None] * masks[:, None]).sum(-1).flatten(0, 1)
        finally:
            self.training = was
        train_acc, train_loss, val_acc, val_loss = sums / torch.stack([self.n_train, self.n_train, self.n_val, self.n_val])
        return Evaluation(train_acc, train_loss, val_acc, val_loss)

    # -- CUDA graphs ------------------------------------------------------------------------------------------------------------
    def capture(self, warmup: int = 3) -> int:
        """CUDA only: run ``warmup`` eager steps on a side stream, then capture one training step and one evaluation as
        CUDA graphs that later calls replay. Returns the training steps taken (the warm-up steps are real steps)."""
        if self.device.type != "cuda":
            return 0
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._step()
            with torch.no_grad():
                self._evaluate()
        torch.cuda.current_stream().wait_stream(stream)
        step_graph, eval_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(step_graph):
            self._step()  # recorded, not run: the state stays as after the warm-up
        with torch.no_grad(), torch.cuda.graph(eval_graph):
            self._eval_out = self._evaluate()
        self._step_graph, self._eval_graph = step_graph, eval_graph
        self.step_fn = step_graph.replay
        return warmup

    # -- state for checkpoints ----------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        out = {"flat": self.flat, "init": self.init, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "t": self.t}
        if self.ema is not None:
            out["ema"] = self.ema
        if self.ma_ring is not None:
            out["ma_ring"], out["ma_sum"] = self.ma_ring, self.ma_sum
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        for name, value in self.state_tensors().items():
            value.copy_(tensors[name].to(self.device))


def _pad(pairs: list[tuple[Tensor, Tensor]], device) -> tuple[Tensor, Tensor, Tensor]:
    n = torch.tensor([len(y) for _, y in pairs])
    N = int(n.max())
    x = torch.zeros(len(pairs), N, 4, dtype=torch.long)
    y = torch.zeros(len(pairs), N, dtype=torch.long)
    for i, (xi, yi) in enumerate(pairs):
        x[i, : len(yi)], y[i, : len(yi)] = xi, yi
    return x.to(device), y.to(device), n.to(device)


# ---- the training loop --------------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Per member: first steps (and seconds since the first step) at 99% train / validation accuracy, and the best
    validation accuracy seen at any evaluation."""

    steps_to_train_99: list
    steps_to_val_99: list
    wall_s_to_val_99: list
    best_val_acc: list


@dataclass
class TrainResult:
    progress: Progress
    final: Evaluation
    steps: int  # steps taken (less than the budget after an early stop)
    wall_s: float  # since the first step, resumed stretches included
    capture_s: float  # of which CUDA-graph warm-up and capture
    eval_s: float  # of which evaluations (with the one read-back each needs)
    save_s: float  # of which checkpoints
    member_steps: list[int]  # steps each member trained (fewer for one retired early)


EVAL_KEYS = ("train_acc", "train_loss", "val_acc", "val_loss")


def train_ensemble(
    ens: Ensemble,
    run: Run | None = None,
    *,
    resume: bool = False,
    snapshot_steps: set[int] | None = None,
    eval_ratio: float = 1.02,
    checkpoint_every_s: float = 60.0,
    use_cuda_graph: bool = True,
    progress: bool = True,
    retire: bool = True,
    on_eval: Callable[[int, Evaluation], None] | None = None,
) -> TrainResult:
    """Train every member for the longest budget; stop early once each member with a ``stop_at`` has reached it.

    With ``retire``, members that have reached their ``stop_at`` leave the ensemble once they are an eighth of it (or
    one member, for small ensembles), so the members still training no longer pay for them; a retired member's
    metrics stay at their last values. ``on_eval`` sees the evaluation of the members still training.
    """
    budget = max(c.steps for c in ens.configs)
    stop_levels = [c.stop_at or 2.0 for c in ens.configs]  # 2.0: never stops early
    schedule = eval_steps(budget, eval_ratio)
    snapshot_steps = snapshot_steps or set()
    E = ens.E
    prog = Progress([None] * E, [None] * E, [None] * E, [0.0] * E)
    active = list(range(E))  # row of the ensemble -> member
    last = {k: [0.0] * E for k in EVAL_KEYS}  # each member's latest evaluation (kept once it retires)
    member_steps = [0] * E
    start = 0
    elapsed_before = 0.0
    if resume and run is not None and run.has_checkpoint():
        tensors, meta = load_tensors(run.checkpoint_path)
        active, last, member_steps = meta.get("active", active), meta.get("last", last), meta.get("member_steps", member_steps)
        if len(active) < E:
            ens.keep(active)
        ens.load_state_tensors(tensors)
        restore_rng(tensors)
        start, elapsed_before = meta["step"], meta["wall_s"]
        prog = Progress(**meta["progress"])
        run.rewind_metrics(start)

    def save(step: int, wall: float) -> None:
        if run is not None:
            save_tensors(run.checkpoint_path, {**ens.state_tensors(), **rng_tensors()},
                         {"step": step, "wall_s": wall, "progress": asdict(prog), "active": active, "last": last,
                          "member_steps": member_steps})

    bar = progress_bar(budget, start, progress, desc="grok")
    t0 = time.perf_counter() - elapsed_before
    last_save = time.perf_counter()
    capture_s = eval_s = save_s = 0.0
    step = start
    for target in [s for s in schedule if s > start]:
        # Snapshots between evaluations split the stretch so they land exactly on their step.
        stops = sorted({s for s in snapshot_steps if step < s < target} | {target})
        for stop in stops:
            while step < stop:
                if use_cuda_graph and ens.device.type == "cuda" and ens.step_fn == ens._step and step >= 1:
                    c0 = time.perf_counter()
                    try:
                        step += ens.capture(warmup=min(3, stop - step))
                    except RuntimeError as e:  # an exotic setting the graph cannot hold: carry on eagerly
                        warnings.warn(f"CUDA graph capture failed, continuing eagerly: {e}")
                        use_cuda_graph = False
                    capture_s += time.perf_counter() - c0
                    continue
                ens.step()
                step += 1
            if stop in snapshot_steps and run is not None:
                for row, m in enumerate(active):
                    name = f"step-{stop:07d}" + (f"-m{m}" if E > 1 else "")
                    save_tensors(run.path / "checkpoints" / f"{name}.safetensors",
                                 {f"model.{k}": v for k, v in ens.member_state_dict(row).items()}, {"step": stop})
        if ens.device.type == "cuda":
            torch.cuda.synchronize(ens.device)  # the steps queued so far are not the evaluation's time
        e0 = time.perf_counter()
        ev = ens.evaluate()
        values = {k: getattr(ev, k).tolist() for k in EVAL_KEYS}  # one sync
        now = time.perf_counter()
        wall, eval_s = now - t0, eval_s + now - e0
        bar.update(step - bar.n)
        for row, m in enumerate(active):
            for k in EVAL_KEYS:
                last[k][m] = values[k][row]
            member_steps[m] = step
            if prog.steps_to_train_99[m] is None and values["train_acc"][row] >= 0.99:
                prog.steps_to_train_99[m] = step
            if prog.steps_to_val_99[m] is None and values["val_acc"][row] >= 0.99:
                prog.steps_to_val_99[m], prog.wall_s_to_val_99[m] = step, round(wall, 4)
            prog.best_val_acc[m] = max(prog.best_val_acc[m], values["val_acc"][row])
        bar.update(step - bar.n, val=sum(values["val_acc"]) / len(active))
        if run is not None:
            run.log({"step": step, "wall_s": round(wall, 4), **{k: v[0] if E == 1 else list(v) for k, v in last.items()}})
        if on_eval is not None:
            on_eval(step, ev)
        going = [row for row, m in enumerate(active) if values["val_acc"][row] < stop_levels[m]]
        done = step >= budget or not going
        # Retire in batches of an eighth of the ensemble: each change of shape costs a new CUDA graph capture.
        if retire and not done and len(active) - len(going) >= max(1, len(active) // 8):
            ens.keep(going)
            active = [active[row] for row in going]
        if done or time.perf_counter() - last_save > checkpoint_every_s:
            s0 = time.perf_counter()
            save(step, wall)
            last_save = time.perf_counter()
            save_s += last_save - s0
        if done:
            break
    bar.close()
    final = Evaluation(**{k: torch.tensor(v) for k, v in last.items()})
    return TrainResult(prog, final, step, wall, capture_s, eval_s, save_s, member_steps)


def config_from_dict(d: dict) -> GrokConfig:
    names = {f.name for f in fields(GrokConfig)}
    return GrokConfig(**{k: v for k, v in d.items() if k in names})


def snapshot_schedule(budget: int, count: int) -> set[int]:
    """``count`` log-spaced steps in [10, budget] at which to keep the weights for progress measures."""
    if count <= 0:
        return set()
    return {round(10 ** (1 + i * (math.log10(max(budget, 11)) - 1) / max(count - 1, 1))) for i in range(count)}


def default_eval_ratio(device: torch.device, members: int = 1) -> float:
    """How far apart evaluations are (see ``eval_steps``). An evaluation scores the whole table (~9,400 rows for
    p = 97) against a step's 512 rows: it costs 7-12 steps where the hardware is busy (measured on a CPU), as a GPU is
    once an ensemble fills it (expected, not yet measured). One run on a GPU is bound by kernel launches instead, and
    its evaluation costs next to nothing. So: ~24 evaluations per decade of steps on a CPU, ~47 for a large ensemble on a
    GPU (steps to 99% known within 5%), ~116 for a small one.

    >>> default_eval_ratio(torch.device("cpu")), default_eval_ratio(torch.device("cuda"), members=128)
    (1.1, 1.05)
    """
    if device.type != "cuda":
        return 1.1
    return 1.02 if members <= 16 else 1.05


def train(
    cfg: GrokConfig,
    run: Run,
    device: torch.device,
    *,
    resume: bool = False,
    snapshots: int = 0,
    eval_ratio: float | None = None,
    use_cuda_graph: bool = True,
    progress: bool = True,
) -> dict:
    """One run: train, then write summary.json and the curves. Returns the summary."""
    ens = Ensemble([cfg], device)
    result = train_ensemble(
        ens, run, resume=resume, snapshot_steps=snapshot_schedule(cfg.steps, snapshots),
        eval_ratio=eval_ratio or default_eval_ratio(device), use_cuda_graph=use_cuda_graph, progress=progress,
    )
    p = result.progress
    summary = {
        "op": cfg.op, "p": cfg.p, "frac": cfg.frac, "seed": cfg.seed,
        "steps_to_train_99": p.steps_to_train_99[0],
        "steps_to_val_99": p.steps_to_val_99[0],
        "wall_s_to_val_99": p.wall_s_to_val_99[0],
        "final_train_acc": result.final.train_acc.item(),
        "final_val_acc": result.final.val_acc.item(),
        "best_val_acc": p.best_val_acc[0],
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


def load_member(run: Run, member: int = 0, snapshot: Path | None = None) -> GPT:
    """The GPT of one member of a finished (or running) run, from its checkpoint or from a weight snapshot."""
    configs = [config_from_dict(c) for c in run.config["members"]]
    cfg = configs[member]
    model = GPT(replace(model_config(cfg, vocab_size(cfg.op, cfg.p)), attention="sdpa"))
    if snapshot is not None:
        tensors, _ = load_tensors(snapshot)
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()})
    else:
        if not run.has_checkpoint():
            raise UserError(f"{run.path} has no checkpoint yet")
        tensors, _ = load_tensors(run.checkpoint_path)
        flat, offset, state = tensors["flat"][member], 0, {}
        for name, p in model.named_parameters():
            state[name] = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        model.load_state_dict(state)
    return model.eval()
