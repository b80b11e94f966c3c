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

from nexttoken.layers import Block, HookPoint, KVCache, causal_mask, norm_layer, rope_tables


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


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.cond_emb = nn.Embedding(cfg.n_cond, cfg.n_embd) if cfg.n_cond else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = norm_layer(cfg) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.hook_embed = HookPoint()  # (B, T, n_embd) the residual stream entering block 0
        self.hook_final = HookPoint()  # (B, T, n_embd) the residual stream entering the head
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.block_size, cfg.head_dim, device="cpu")
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
            mask = (causal_mask(L, S, idx.device) & keys_valid[:, None, :]) | own  # (B, L, S)
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
