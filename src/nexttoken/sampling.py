"""Autoregressive sampling over any logits function: temperature, top-k, top-p, token masks, stop tokens, KV cache.

The sampler never sees a model, only ``logits_fn(tokens, cache) -> logits (B, t, vocab)``: with ``cache=None`` it is
given the whole (cropped) sequence, with a cache only the tokens that are new since the last call. That keeps it
testable with fake logits and lets every domain (and PPO rollouts) reuse it; ``generate`` wires it to a ``GPT``.

Holtzman et al. 2019 (nucleus sampling): https://arxiv.org/abs/1904.09751
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from nexttoken.config import option

LogitsFn = Callable[[Tensor, "Cache | None"], Tensor]
MaskFn = Callable[[Tensor], Tensor]  # current tokens (B, t) -> allowed next tokens (B, vocab), bool


class Cache(Protocol):
    pos: int
    max_len: int

    def reset(self) -> None: ...


@dataclass
class SamplingConfig:
    """The sampling flags every generating command shares (``config.add_options(parser, SamplingConfig)``)."""

    temperature: float = option(1.0, "divide the logits by this; 0 is greedy", ge=0, le=100)
    top_k: int = option(0, "keep the k most likely tokens (0: all)", ge=0)
    top_p: float = option(1.0, "keep the smallest set of tokens whose probability reaches p (nucleus)", gt=0, le=1)
    seed: int = option(0, "seed of the draws", ge=0)

    def sample_kwargs(self, device: torch.device | str = "cpu") -> dict:
        """The keyword arguments of ``sample`` and ``generate`` for a model on ``device``, where the draws are made
        (``torch.multinomial`` refuses a generator of another device)."""
        return {"temperature": self.temperature, "top_k": self.top_k or None,
                "top_p": self.top_p if self.top_p < 1 else None,
                "generator": torch.Generator(device).manual_seed(self.seed)}


@dataclass
class Samples:
    tokens: Tensor  # (B, prompt + new) prompt followed by the sampled tokens; -1 after a stop token
    lengths: Tensor  # (B,) tokens per row before the padding (a stop token counts)
    finished: Tensor  # (B,) True where a stop token was produced


def filter_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed: Tensor | None = None,
) -> Tensor:
    """Next-token logits (B, vocab) -> logits with the excluded tokens at -inf, divided by the temperature.

    ``allowed`` is a bool mask (vocab,) or (B, vocab). Top-k keeps the k largest, top-p the smallest set whose
    probability reaches p (the most likely token always stays). Masks apply first, then top-k, then top-p.

    >>> filter_logits(torch.tensor([[1.0, 3.0, 2.0]]), top_k=2).isinf().tolist()
    [[True, False, False]]
    """
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed.expand_as(logits), float("-inf"))
    if temperature != 1.0 and temperature > 0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Draw one token per row from filtered logits (B, vocab); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample(
    logits_fn: LogitsFn,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed: Tensor | MaskFn | None = None,
    forbidden: Tensor | None = None,
    stop_tokens: Sequence[int] = (),
    cache: Cache | None = None,
    context: int | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> Samples:
    """Continue ``prompt`` (B, T0), every row the same length, by up to ``max_new_tokens`` tokens.

    ``context`` is the most tokens ``logits_fn`` can take; longer sequences slide: uncached calls see the last
    ``context`` tokens, a full cache is reset and refilled with the last ``context // 2`` tokens. Sampling stops early
    once every row has produced a stop token.
    """
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError("prompt must be (batch, length) with at least one token")
    B = prompt.shape[0]
    device = prompt.device
    tokens = prompt
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.full((B,), prompt.shape[1], dtype=torch.long, device=device)
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    forbidden_mask = None
    if forbidden is not None:
        forbidden_mask = ~forbidden if forbidden.dtype == torch.bool else None
        if forbidden_mask is None:
            raise ValueError("forbidden must be a bool mask over the vocabulary")
    if cache is not None:
        cache.reset()
    fed = 0  # tokens of `tokens` already inside the cache
    window_start = 0

    for step in range(max_new_tokens):
        if cache is None:
            window = tokens if context is None else tokens[:, -context:]
            logits = logits_fn(window, None)[:, -1]
        else:
            if context is not None and tokens.shape[1] - window_start > context:
                window_start = tokens.shape[1] - context // 2
                cache.reset()
                fed = window_start
            logits = logits_fn(tokens[:, fed:], cache)[:, -1]
            fed = tokens.shape[1]
        mask = allowed(tokens) if callable(allowed) else allowed
        if forbidden_mask is not None:
            mask = forbidden_mask if mask is None else mask & forbidden_mask
        logits = filter_logits(logits, temperature, top_k, top_p, mask)
        nxt = next_token(logits, temperature, generator)
        # Finished rows keep feeding their stop token (any valid id) and are padded with -1 in the result.
        if len(stops):
            nxt = torch.where(finished, tokens[:, -1], nxt)
            newly = torch.isin(nxt, stops) & ~finished
            lengths = lengths + (~finished).long()
            finished = finished | newly
        else:
            lengths = lengths + 1
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if progress is not None:
            progress(step + 1)
        if len(stops) and bool(finished.all()):
            break
    pad = torch.arange(tokens.shape[1], device=device)[None, :] >= lengths[:, None]
    return Samples(tokens.masked_fill(pad, -1), lengths, finished)


def generate(
    model,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    cond: Tensor | None = None,
    x_add: Tensor | None = None,
    memory: Tensor | None = None,
    memory_mask: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    use_cache: bool = True,
    **kwargs,
) -> Samples:
    """Sample from a ``GPT`` with its conditioning inputs. ``x_add`` (B, prompt + max_new_tokens, n_embd) covers every
    position of the result, so it needs the whole result to fit in the context (windowed upsampling slices it).
    ``prompt_mask`` (B, prompt; True = a real token) samples a batch of left-padded prompts of different lengths:
    each row continues as if it had been sampled alone."""
    n_prefix = 0 if cond is None else cond.shape[1]
    context = model.cfg.block_size - n_prefix
    B, T0 = prompt.shape
    if (x_add is not None or prompt_mask is not None) and T0 + max_new_tokens > context:
        raise ValueError(f"prompt + max_new_tokens ({T0 + max_new_tokens}) must fit the context of {context} "
                         "with x_add or a padded prompt; sample window by window")
    full_mask = None
    if prompt_mask is not None:
        full_mask = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(B, max_new_tokens, dtype=torch.bool)], dim=1)

    def logits_fn(tokens: Tensor, cache) -> Tensor:
        first = cache is None or cache.pos == 0
        start = 0 if cache is None else max(cache.pos - n_prefix, 0)
        logits, _ = model(
            tokens,
            cond=cond if first else None,
            x_add=None if x_add is None else x_add[:, start : start + tokens.shape[1]],
            memory=memory if first else None,
            memory_mask=memory_mask if first else None,
            attention_mask=None if full_mask is None or not first else full_mask[:, : tokens.shape[1]],
            cache=cache,
            last_only=True,
        )
        return logits

    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(prompt.shape[0]) if use_cache else None
        # Decoding meets a new key length at every step; cuDNN's attention builds a plan per shape, which costs far
        # more than the step itself, so decoding keeps to the flash, memory-efficient and math kernels.
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return sample(logits_fn, prompt, max_new_tokens, cache=cache, context=context, **kwargs)
    finally:
        model.train(was_training)
