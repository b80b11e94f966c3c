"""PPO's arithmetic on a batch of responses, pure functions of tensors: the reward model's score and the KL penalty as
per-token rewards, advantages by GAE or by a leave-one-out baseline, whitening over the real tokens (and over every
process under torchrun), and the adaptive KL coefficient. ``ppo`` runs the loop around them; the tests check each
against a hand computation.

Schulman et al. 2016 (GAE), https://arxiv.org/abs/1506.02438; Ziegler et al. 2019, https://arxiv.org/abs/1909.08593.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nexttoken.distributed import Dist, all_sum


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """(advantages, returns), each (B, T), by generalised advantage estimation over right-padded responses: the state
    after a response's last token has value 0, and positions past it stay 0.

    >>> adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2), 1.0, 1.0)
    >>> adv.tolist(), ret.tolist()
    ([[0.5, 0.5]], [[1.0, 1.0]])
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def leave_one_out(rewards: Tensor, mask: Tensor, group: int) -> Tensor:
    """Advantages (B, T) from a group baseline: each response's return (its rewards summed, gamma = 1) minus the mean
    return of the other responses to the same prompt, at every one of its tokens. Rows come in groups of ``group``
    consecutive responses to one prompt (Ahmadian et al. 2024, RLOO, https://arxiv.org/abs/2402.14740).

    >>> leave_one_out(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]), 2).tolist()
    [[-2.0, -2.0], [2.0, 0.0]]
    """
    returns = (rewards * mask).sum(1).view(-1, group)
    baseline = (returns.sum(1, keepdim=True) - returns) / (group - 1)
    return (returns - baseline).view(-1, 1) * mask


def masked_mean(x: Tensor, mask: Tensor, dist: Dist = Dist()) -> Tensor:
    """The mean of ``x`` over the real tokens (of every process's ``x``, with ``dist``)."""
    sums = all_sum(dist, torch.stack([(x * mask).sum(), mask.sum()]))
    return sums[0] / sums[1].clamp(min=1)


def whiten(x: Tensor, mask: Tensor, shift: bool = True, dist: Dist = Dist()) -> Tensor:
    """Zero mean (unless not ``shift``) and unit variance over the real tokens (padding left at 0); with ``dist``, the
    statistics of all processes' episodes, as one process with the whole batch would whiten."""
    mean = masked_mean(x, mask, dist)
    var = masked_mean((x - mean) ** 2, mask, dist)
    return (x - mean * shift) * torch.rsqrt(var + 1e-8) * mask


def token_rewards(kl: Tensor, score: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token rewards: -beta * KL at every response token, plus the score at the last one.

    >>> r = token_rewards(torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([2.0]), torch.tensor([[1.0, 1.0, 0.0]]), 0.1)
    >>> [round(x, 4) + 0.0 for x in r[0].tolist()]
    [-0.05, 1.95, 0.0]
    """
    rewards = -beta * kl * mask
    last = (mask * torch.arange(1, mask.shape[1] + 1, device=mask.device)).argmax(1)
    return rewards.index_put((torch.arange(len(score), device=score.device), last), score, accumulate=True)


def episode_reward(score: Tensor, finished: Tensor, norm: tuple[float, float], no_eos_score: float) -> Tensor:
    """The reward model's part of the PPO reward: the score normalised by the SFT samples' mean and standard
    deviation, or ``no_eos_score`` for a response that never ended.

    >>> episode_reward(torch.tensor([3.0, 3.0]), torch.tensor([True, False]), (1.0, 2.0), -1.0).tolist()
    [1.0, -1.0]
    """
    return torch.where(finished, (score - norm[0]) / norm[1], torch.full_like(score, no_eos_score))


def adapt_kl(beta: float, kl: float, target: float, horizon: int, n: int) -> float:
    """Ziegler et al.'s proportional controller: beta grows when the KL is above target (by at most 20% a horizon).

    >>> round(adapt_kl(0.1, kl=12.0, target=6.0, horizon=100, n=10), 4)
    0.102
    """
    error = max(-0.2, min(0.2, kl / target - 1))
    return beta * (1 + error * n / horizon)
