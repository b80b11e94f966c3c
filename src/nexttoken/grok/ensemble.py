"""The vmapped ensemble: E grokking runs of one model shape trained in lock-step as stacked weights on one device.

Every run, even a single one, is a member of an ``Ensemble``: E copies of the shared GPT evaluated with
``torch.func.vmap`` over stacked weights. Each member has its own operation, training fraction, seed and optimiser
settings; the weights of all members live in one (E, P) tensor, so AdamW, weight decay (to zero or to the initial
weights), gradient and weight noise, the Grokfast filters and the perpendicular gradient are a handful of whole-tensor
operations whatever E is. Data stays on the device (no DataLoader). On CUDA the whole step (batch sampling, forward,
backward, optimiser) is captured once as a CUDA graph and replayed. ``precision="bf16"`` runs the forward under bf16
autocast; the weights and the optimiser stay fp32.

When every member shares its AdamW settings, the update is PyTorch's fused AdamW kernel on the (E, P) state. Otherwise
it is written out, since torch.optim takes one set of hyperparameters per tensor and these differ per member; with one
member it matches torch.optim.AdamW exactly, and torch.optim.Adam's coupled weight decay with ``l2`` (tested).

Papers: Power et al. 2022 https://arxiv.org/abs/2201.02177 (the task, model, interventions);
Lee et al. 2024 https://arxiv.org/abs/2405.20233 (Grokfast EMA/MA gradient filters);
Prieto et al. 2025 https://arxiv.org/abs/2501.04697 (StableMax, perpendicular gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vmap

from nexttoken.errors import UserError
from nexttoken.grok.data import make_table, split
from nexttoken.grok.memory import check_memory
from nexttoken.model import GPT, GPTConfig

if TYPE_CHECKING:
    from nexttoken.grok.train import GrokConfig


def model_config(cfg: GrokConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=4, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                     mlp_hidden=cfg.mlp_hidden, dropout=cfg.dropout, norm=cfg.norm, activation=cfg.activation,
                     bias=cfg.bias, init=cfg.init, init_std=cfg.init_std, pos="learned", attention="math")


# ---- losses ---------------------------------------------------------------------------------------------------------
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


@dataclass
class SplitScores:
    """Each member's accuracy and mean loss on its training split and on its validation split, all (E,)."""

    train_acc: Tensor
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
        self.device = torch.device(device)
        check_memory(configs, self.device, eval_chunk)
        self.configs = configs
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
        self._step_graph: torch.cuda.CUDAGraph | None = None
        self._eval_graph: torch.cuda.CUDAGraph | None = None
        self.training = c0.dropout > 0
        self.bf16 = c0.precision == "bf16"

    def _fused_settings(self) -> dict | None:
        """The AdamW settings every member shares, for PyTorch's fused AdamW kernel: one pass over the (E, P) state
        instead of a dozen. None when members differ in these settings or decay toward their initial weights: the
        general arithmetic handles those."""
        settings = {"lr": self.lr, "warmup": self.warmup, "beta1": self.beta1, "beta2": self.beta2, "wd": self.wd}
        if any(c.decay_to_init for c in self.configs) or any(bool((v != v[0]).any()) for v in settings.values()):
            return None
        return {k: v[0, 0] if k in ("lr", "warmup") else float(v[0, 0]) for k, v in settings.items()}

    # -- retiring members -------------------------------------------------------------------------------------------
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
        self._step_graph, self._eval_graph = None, None

    # -- weights as named tensors -----------------------------------------------------------------------------------
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

    # -- forward ----------------------------------------------------------------------------------------------------
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

    # -- one optimiser step for every member ------------------------------------------------------------------------
    def step(self) -> None:
        if self._step_graph is not None:
            self._step_graph.replay()
        else:
            self._step()

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

    # -- evaluation -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> SplitScores:
        """Accuracy and loss of every member on its whole training and validation sets."""
        if self._eval_graph is not None:
            self._eval_graph.replay()
            return SplitScores(**{f.name: getattr(self._eval_out, f.name).clone() for f in fields(SplitScores)})
        return self._evaluate()

    def _evaluate(self) -> SplitScores:
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
        return SplitScores(train_acc, train_loss, val_acc, val_loss)

    # -- CUDA graphs ------------------------------------------------------------------------------------------------
    @property
    def capturable(self) -> bool:
        """Whether ``capture`` would record the step as a CUDA graph: on CUDA, and not captured for the current
        members yet (retiring members drops the graphs)."""
        return self.device.type == "cuda" and self._step_graph is None

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
        return warmup

    # -- state for checkpoints --------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        out = {"flat": self.flat, "init": self.init, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "t": self.t}
        if self.ema is not None:
            out["ema"] = self.ema
        if self.ma_ring is not None:
            out["ma_ring"], out["ma_sum"] = self.ma_ring, self.ma_sum
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor], source: str = "the checkpoint") -> None:
        for name, value in self.state_tensors().items():
            saved = tensors.get(name)
            if saved is None or saved.shape != value.shape:
                raise UserError(f"{source} does not fit this run ({name}: "
                                f"{'missing' if saved is None else tuple(saved.shape)}); it was written by another "
                                f"configuration")
            value.copy_(saved.to(self.device))


def _pad(pairs: list[tuple[Tensor, Tensor]], device) -> tuple[Tensor, Tensor, Tensor]:
    n = torch.tensor([len(y) for _, y in pairs])
    N = int(n.max())
    x = torch.zeros(len(pairs), N, 4, dtype=torch.long)
    y = torch.zeros(len(pairs), N, dtype=torch.long)
    for i, (xi, yi) in enumerate(pairs):
        x[i, : len(yi)], y[i, : len(yi)] = xi, yi
    return x.to(device), y.to(device), n.to(device)
