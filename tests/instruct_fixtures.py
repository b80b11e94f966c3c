"""Tiny instruct models for the tests: a BPE trained on a small corpus and a one-layer GPT policy, built in seconds."""

from __future__ import annotations

import functools

import torch

from nexttoken.instruct.corpus import demonstrations, make_corpus
from nexttoken.instruct.policy import GPTPolicy, RewardModel
from nexttoken.instruct.tokenizer import train_tokenizer
from nexttoken.instruct.world import make_world
from nexttoken.model import GPT, GPTConfig

WORLD = make_world(0)


@functools.cache
def tokenizer():
    texts = [*make_corpus(WORLD, n_chars=40_000, seed=0).train,
             *(d.prompt + d.response for d in demonstrations(WORLD, 200, seed=0))]
    return train_tokenizer(texts, vocab_size=400)


def tiny_policy(seed: int = 0, context: int = 96) -> GPTPolicy:
    torch.manual_seed(seed)
    tok = tokenizer()
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=context, n_layer=1, n_head=2, n_embd=32, pos="rope",
                        tie_embeddings=True))
    return GPTPolicy(gpt, tok)


def tiny_reward_model(seed: int = 0) -> RewardModel:
    return RewardModel(tiny_policy(seed))
