"""The parts of the GPT in ``model.py``: hook points, rotary positions, the KV cache, causal self-attention (padded
rows and cached decoding), cross-attention to an encoder memory, the MLP and the residual block.

Attention goes through PyTorch's fused ``scaled_dot_product_attention`` unless a hook reads the pattern, which needs
the weights written out (``explicit_attention``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from nexttoken.model import GPTConfig


class HookPoint(nn.Identity):
    """A named place in the forward pass; register a forward hook on it to read or replace the activation."""

    def is_hooked(self) -> bool:
        """Whether anything reads this point: attention computes its pattern explicitly only then."""
        return bool(self._forward_hooks)


def norm_layer(cfg: GPTConfig) -> nn.Module:
    return nn.Identity() if cfg.norm == "none" else nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


def rope_tables(length: int, head_dim: int, device, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)  # (T, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: (B, heads, T, head_dim); cos/sin: (T, head_dim/2), or (B, 1, T, head_dim/2) for per-row positions.
    # Rotate the two halves of each head as complex pairs.
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class KVCache:
    """Keys and values of every layer for decoding, preallocated for ``max_len`` positions.

    ``pos`` is the number of positions already processed (prefix condition tokens and padding included); ``cross``
    keeps the keys and values of the encoder memory, computed once per sequence. A padded batch also keeps which
    cached positions are real tokens (``key_valid``) and each row's next position (``row_pos``).
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int, device, dtype) -> None:
        shape = (batch_size, cfg.n_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.cross: list[tuple[Tensor, Tensor] | None] = [None] * cfg.n_layer
        self.memory_mask: Tensor | None = None
        self.key_valid: Tensor | None = None  # (B, max_len) bool, only for padded batches
        self.row_pos: Tensor | None = None  # (B,) position of each row's next token, only for padded batches
        self.max_len = max_len
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0
        self.cross = [None] * len(self.cross)
        self.memory_mask = None
        self.key_valid = None
        self.row_pos = None

    @property
    def has_memory(self) -> bool:
        return any(c is not None for c in self.cross)


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.hook_pattern = HookPoint()  # (B, heads, T, S) attention probabilities, computed only when hooked

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int,
                last_only: bool = False, mask: Tensor | None = None) -> Tensor:
        """``mask`` (B, 1, T, S), True = attend, replaces the causal mask for padded batches."""
        B, T, C = x.shape
        H, D = self.cfg.n_head, self.cfg.head_dim
        if last_only:  # keys and values for every position, a query for the last one only
            w_q, w_kv = self.qkv.weight.split([C, 2 * C])
            b_q, b_kv = self.qkv.bias.split([C, 2 * C]) if self.qkv.bias is not None else (None, None)
            q = F.linear(x[:, -1], w_q, b_q).view(B, 1, H, D).transpose(1, 2)  # (B, H, 1, D)
            k, v = F.linear(x, w_kv, b_kv).view(B, T, 2, H, D).permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        else:
            q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        if rope is not None:
            q = apply_rope(q, rope[0][..., -q.shape[2] :, :], rope[1][..., -q.shape[2] :, :])
            k = apply_rope(k, *rope)
        start = 0
        if cache is not None:
            start = cache.pos
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k, v = cache.k[layer][:, :, : start + T], cache.v[layer][:, :, : start + T]  # (B, H, S, D)
        Tq, S = q.shape[2], k.shape[2]
        # Queries are the last Tq of the S positions: query i sees keys 0..S - Tq + i.
        dropout = self.cfg.dropout if self.training else 0.0
        if mask is not None:
            mask = mask[..., -Tq:, :]
            causal = False
        else:
            causal = Tq > 1
        if self.cfg.attention == "math" or self.hook_pattern.is_hooked():
            y = explicit_attention(q, k, v, causal_mask(Tq, S, x.device) if causal else mask, self.hook_pattern, dropout)
        else:
            if causal and S != Tq:  # is_causal aligns top-left
                mask, causal = causal_mask(Tq, S, x.device), False
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        y = y.transpose(1, 2).reshape(B, Tq, C)  # (B, Tq, heads * head_dim)
        return self.proj(y)


class CrossAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.kv = nn.Linear(cfg.memory_dim or cfg.n_embd, 2 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.hook_pattern = HookPoint()  # (B, heads, T, memory length)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        B, S, _ = memory.shape
        H, D = self.cfg.n_head, self.cfg.head_dim
        k, v = self.kv(memory).view(B, S, 2, H, D).permute(2, 0, 3, 1, 4)  # each (B, H, S, D)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], memory_mask: Tensor | None) -> Tensor:
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.cfg.n_head, self.cfg.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = kv
        mask = None if memory_mask is None else memory_mask[:, None, None, :]  # (B, 1, 1, S), True = attend
        dropout = self.cfg.dropout if self.training else 0.0
        if self.cfg.attention == "math" or self.hook_pattern.is_hooked():
            y = explicit_attention(q, k, v, mask, self.hook_pattern, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def causal_mask(T: int, S: int, device) -> Tensor:
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, hook: HookPoint, dropout: float = 0.0
) -> Tensor:
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    pattern = hook(scores.softmax(dim=-1))
    return F.dropout(pattern, dropout) @ v if dropout else pattern @ v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)
        self.act = nn.GELU(approximate="tanh") if cfg.activation == "gelu" else nn.ReLU()
        self.hook_post = HookPoint()  # (B, T, hidden) activations after the nonlinearity

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.hook_post(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.ln_attn, self.ln_mlp = norm_layer(cfg), norm_layer(cfg)
        self.attn = SelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.has_cross = cfg.cross_every > 0 and (layer + 1) % cfg.cross_every == 0
        if self.has_cross:
            self.ln_cross = norm_layer(cfg)
            self.cross = CrossAttention(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x, rope, cache, memory_kv, memory_mask, last_only: bool = False, mask=None) -> Tensor:
        x = self.hook_resid_pre(x)
        post = self.cfg.norm == "post"
        a = self.attn(x if post else self.ln_attn(x), rope, cache, self.layer, last_only, mask)
        a = self.hook_attn_out(self.drop(a))
        if last_only:  # from here on only the last position is computed
            x = x[:, -1:]
        x = self.ln_attn(x + a) if post else x + a
        if self.has_cross and memory_kv is not None:
            c = self.drop(self.cross(x if post else self.ln_cross(x), memory_kv, memory_mask))
            x = self.ln_cross(x + c) if post else x + c
        m = self.hook_mlp_out(self.drop(self.mlp(x if post else self.ln_mlp(x))))
        x = self.ln_mlp(x + m) if post else x + m
        return self.hook_resid_post(x)
