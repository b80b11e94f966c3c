"""The one transformer every nexttoken pipeline trains: a decoder-only GPT.

Radford et al. 2019 (GPT-2, https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf)
with the switches the four pipelines need:

- norm placement (pre/post/none), positions (learned/rope/none), bias on/off, GELU or ReLU, tied or untied head;
- ``cond``: prefix condition tokens from their own vocabulary (composer, artist, genre) placed before the sequence;
- ``x_add``: an additive per-position input (Jukebox upsamplers add the upsampled codes of the level above);
- ``memory``: cross-attention to an encoder memory in every ``cross_every``-th block (Jukebox lyrics);
- ``attention_mask``: left-padded batches of prompts of different lengths, with per-row positions, through the
  forward pass and the KV cache (InstructGPT's batched rollouts);
- ``hidden``: the final hidden states, so a value or reward head sits on the same GPT (``head`` maps them to logits);
- hook points (TransformerLens-style ``nn.Identity`` modules) exposing the residual stream, attention pattern and MLP
  activations, so analysis needs no second model class;
- a KV cache for decoding (``GPT.new_cache``), whose logits equal full recomputation.

Run ``python -m nexttoken.model`` to print the size and FLOPs of the default config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass
class GPTConfig:
    vocab_size: int = 256
    block_size: int = 256  # longest sequence (prefix condition tokens included)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_hidden: int = 0  # 0 means 4 * n_embd
    dropout: float = 0.0
    bias: bool = True
    norm: str = "pre"  # pre | post | none
    pos: str = "learned"  # learned | rope | none
    activation: str = "gelu"  # gelu | relu
    tie_embeddings: bool = False
    n_cond: int = 0  # vocabulary of prefix condition tokens; 0 disables them
    cross_every: int = 0  # cross-attention in every k-th block (k-1, 2k-1, ...); 0 disables it
    memory_dim: int = 0  # width of the encoder memory; 0 means n_embd
    attention: str = "sdpa"  # sdpa (fused kernels) | math (explicit softmax: vmap-friendly, same result)
    init: str = "gpt2"  # gpt2: N(0, init_std), residual projections / sqrt(2 n_layer) | torch: PyTorch layer defaults
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.norm not in ("pre", "post", "none"):
            raise ValueError(f"norm must be pre, post or none, not {self.norm!r}")
        if self.pos not in ("learned", "rope", "none"):
            raise ValueError(f"pos must be learned, rope or none, not {self.pos!r}")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be gelu or relu, not {self.activation!r}")
        if self.init not in ("gpt2", "torch"):
            raise ValueError(f"init must be gpt2 or torch, not {self.init!r}")
        if self.attention not in ("sdpa", "math"):
            raise ValueError(f"attention must be sdpa or math, not {self.attention!r}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("rope needs an even head size")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


class HookPoint(nn.Identity):
    """A named place in the forward pass; register a forward hook on it to read or replace the activation."""

    def is_hooked(self) -> bool:
        """Whether anything reads this point: attention computes its pattern explicitly only then."""
        return bool(self._forward_hooks)


def _norm(cfg: GPTConfig) -> nn.Module:
    return nn.Identity() if cfg.norm == "none" else nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


def _rope_tables(length: int, head_dim: int, device, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)  # (T, head_dim/2)
    return angles.cos(), angles.sin()


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
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
            q = _apply_rope(q, rope[0][..., -q.shape[2] :, :], rope[1][..., -q.shape[2] :, :])
            k = _apply_rope(k, *rope)
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
            y = _explicit_attention(q, k, v, _causal(Tq, S, x.device) if causal else mask, self.hook_pattern, dropout)
        else:
            if causal and S != Tq:  # is_causal aligns top-left
                mask, causal = _causal(Tq, S, x.device), False
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
            y = _explicit_attention(q, k, v, mask, self.hook_pattern, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def _causal(T: int, S: int, device) -> Tensor:
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def _explicit_attention(
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
        self.ln_attn, self.ln_mlp = _norm(cfg), _norm(cfg)
        self.attn = SelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.has_cross = cfg.cross_every > 0 and (layer + 1) % cfg.cross_every == 0
        if self.has_cross:
            self.ln_cross = _norm(cfg)
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


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.cond_emb = nn.Embedding(cfg.n_cond, cfg.n_embd) if cfg.n_cond else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = _norm(cfg) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.hook_embed = HookPoint()  # (B, T, n_embd) the residual stream entering block 0
        self.hook_final = HookPoint()  # (B, T, n_embd) the residual stream entering the head
        if cfg.pos == "rope":
            cos, sin = _rope_tables(cfg.block_size, cfg.head_dim, device="cpu")
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.init == "gpt2":  # "torch" keeps PyTorch's defaults: N(0, 1) embeddings, U(+-1/sqrt(fan_in)) linears
            self.apply(self._init_weights)
            for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
                if name.endswith("proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ---- size -------------------------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if self.cond_emb is not None:
                n -= self.cond_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 N plus attention scores, as in Kaplan et al. 2020."""
        T = seq_len or self.cfg.block_size
        # The head is a matrix product per token: counted once, whether or not it shares the embedding's weights.
        n = self.num_params(non_embedding=True) + (self.head.weight.numel() if self.cfg.tie_embeddings else 0)
        return 6 * n + 12 * self.cfg.n_layer * self.cfg.n_embd * T

    # ---- forward ----------------------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.cfg, batch_size, max_len or self.cfg.block_size, p.device, p.dtype)

    def hidden(
        self,
        idx: Tensor,
        *,
        cond: Tensor | None = None,
        x_add: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """The final hidden states (B, T, n_embd) of ``idx`` (B, T), after the last norm: what ``head`` turns into
        logits, and what a value or reward head reads. Arguments as in ``forward``."""
        B, T = idx.shape
        cfg = self.cfg
        first = cache is None or cache.pos == 0
        if cfg.n_cond and cond is None and first:
            raise ValueError(f"this model expects prefix condition tokens (n_cond={cfg.n_cond}); pass cond=")
        if cfg.cross_every and memory is None and not (cache is not None and cache.has_memory):
            raise ValueError(f"this model cross-attends to an encoder memory (cross_every={cfg.cross_every}); "
                             "pass memory=")
        x = self.tok_emb(idx)  # (B, T, n_embd)
        if x_add is not None:
            x = x + x_add
        n_prefix = 0
        if cond is not None:
            if self.cond_emb is None:
                raise ValueError("this model has no condition tokens (n_cond=0)")
            x = torch.cat([self.cond_emb(cond), x], dim=1)  # (B, C + T, n_embd)
            n_prefix = cond.shape[1]
        start = cache.pos if cache is not None else 0
        L = x.shape[1]
        if start + L > (cache.max_len if cache is not None else cfg.block_size):
            raise ValueError(f"sequence of {start + L} positions exceeds the context of {cfg.block_size}")

        padded = attention_mask is not None or (cache is not None and cache.key_valid is not None)
        mask = None
        if padded:
            valid = torch.ones(B, L, dtype=torch.bool, device=idx.device)  # (B, L) real tokens (the prefix is real)
            if attention_mask is not None:
                valid[:, n_prefix:] = attention_mask.bool()
            base = cache.row_pos if cache is not None and cache.row_pos is not None else \
                torch.zeros(B, dtype=torch.long, device=idx.device)
            positions = (base[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)  # (B, L): pads share a position
            if cache is not None:
                if cache.key_valid is None:
                    cache.key_valid = torch.ones(B, cache.max_len, dtype=torch.bool, device=idx.device)
                cache.key_valid[:, start : start + L] = valid
                cache.row_pos = base + valid.long().sum(1)
                keys_valid = cache.key_valid[:, : start + L]  # (B, S)
            else:
                keys_valid = valid
            S = start + L
            # Each query sees the real keys up to itself, and always itself (so a pad query has no empty row).
            own = torch.arange(start, S, device=idx.device)[:, None] == torch.arange(S, device=idx.device)
            mask = (_causal(L, S, idx.device) & keys_valid[:, None, :]) | own  # (B, L, S)
            mask = mask[:, None]  # (B, 1, L, S)
        else:
            positions = torch.arange(start, start + L, device=idx.device)  # (L,)

        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        elif cfg.pos == "rope":
            rope = (self.rope_cos[positions], self.rope_sin[positions])  # (L, d/2) or (B, L, d/2)
            if padded:
                rope = (rope[0][:, None], rope[1][:, None])  # (B, 1, L, head_dim/2)
        x = self.hook_embed(self.drop(x))

        memory_kvs: list = [None] * cfg.n_layer
        for i, block in enumerate(self.blocks):
            if not block.has_cross:
                continue
            if cache is not None and cache.cross[i] is not None:
                memory_kvs[i] = cache.cross[i]
            elif memory is not None:
                memory_kvs[i] = block.cross.memory_kv(memory)
                if cache is not None:
                    cache.cross[i] = memory_kvs[i]
        if cache is not None:
            if memory_mask is None:
                memory_mask = cache.memory_mask
            cache.memory_mask = memory_mask

        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, memory_kvs[i], memory_mask, last_only and i == last, mask)
        if cache is not None:
            cache.pos = start + L
        return self.hook_final(self.ln_f(x if last_only else x[:, n_prefix:]))

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        reduction: str = "mean",
        **inputs,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, vocab) for ``idx`` (B, T) and, given ``targets``, the loss.

        ``targets`` equal to -1 are ignored. ``reduction='none'`` gives the per-token loss (B, T), zero where ignored.
        Inputs (keywords): ``cond`` (B, C) prefix condition ids, ``x_add`` (B, T, n_embd) added to the token
        embeddings, ``memory`` (B, S, memory_dim) with optional ``memory_mask`` (B, S; True = attend) for
        cross-attention, ``attention_mask`` (B, T; True = a real token) for left-padded rows, whose positions then
        count real tokens only. With a ``cache``, ``idx`` continues the sequence already in it; pass ``cond``,
        ``memory`` and the prompt's ``attention_mask`` on the first call only. ``last_only`` computes the last block
        and the head for the last position alone (B, 1, vocab): what decoding and single-answer tasks need, for a
        fraction of the last block's work.
        """
        logits = self.head(self.hidden(idx, **inputs))  # (B, T, vocab), or (B, 1, vocab) with last_only
        if targets is None:
            return logits, None
        B = idx.shape[0]
        token_loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none"
        ).view(B, -1)
        if reduction == "none":
            return logits, token_loss
        return logits, token_loss.sum() / (targets != -1).sum().clamp(min=1)

    def run_with_cache(self, idx: Tensor, names: list[str] | None = None, **kwargs) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward pass that also returns the activations at the named hook points (all of them by default)."""
        acts: dict[str, Tensor] = {}
        handles = []
        for name, module in self.named_modules():
            if isinstance(module, HookPoint) and (names is None or name in names):
                handles.append(module.register_forward_hook(lambda m, i, o, name=name: acts.__setitem__(name, o.detach())))
        try:
            logits, _ = self(idx, **kwargs)
        finally:
            for h in handles:
                h.remove()
        return logits, acts

    def hook_names(self) -> list[str]:
        return [n for n, m in self.named_modules() if isinstance(m, HookPoint)]


if __name__ == "__main__":
    m = GPT(GPTConfig())
    print(f"params {m.num_params(False):,}  non-embedding {m.num_params():,}  FLOPs/token {m.flops_per_token():,.0f}")
