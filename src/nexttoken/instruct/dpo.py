"""Direct preference optimisation on the same rankings as the reward model: the second way from SFT to a preferred
policy, with no reward model and no sampling.

Rafailov et al. 2023, https://arxiv.org/abs/2305.18290: the policy's implicit reward of a response is
beta * log(pi(y|x) / pi_SFT(y|x)), and InstructGPT's pairwise loss on that reward is the whole objective,

    loss = -log sigmoid(beta * [log pi(y_w|x) / pi_SFT(y_w|x) - log pi(y_l|x) / pi_SFT(y_l|x)]),

here over all K(K-1)/2 pairs of a ranking in one batch element, as the reward model reads them
(``reward.pairwise_loss``). The SFT model stays frozen as the reference.

    nexttoken instruct dpo --init runs/sft-small --rankings runs/rankings --out runs/dpo-small
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from nexttoken.config import option
from nexttoken.distributed import Dist
from nexttoken.errors import UserError
from nexttoken.instruct.policy import POLICY_FILE, Policy, load_policy, save_model, token_logprobs
from nexttoken.instruct.rankings import split_rankings
from nexttoken.instruct.reward import RankingBatches, pairwise_loss, ranking_rows
from nexttoken.instruct.stage import kept_summary
from nexttoken.plots import plot_metrics
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, OptimConfig, count_rows, fit, seed_everything


@dataclass
class DPOConfig:
    init: str = option("", "the SFT policy: where training starts, and the frozen reference")
    rankings: str = option("", "the rank run folder whose rankings are learnt")
    beta: float = option(0.1, "strength of the implicit KL constraint to the reference", gt=0, le=100)
    epochs: float = option(1.0, "passes over the rankings", gt=0, le=100)
    val_fraction: float = option(0.1, "share of the rankings kept to measure pairwise accuracy", ge=0, lt=1)


def sequence_logprob(policy: Policy, ids: Tensor, targets: Tensor) -> Tensor:
    """Sum of log p over each row's response tokens (the targets that are not -1), (N,); the rows are right-padded,
    so no mask is needed (see ``lm_loss_sum``)."""
    logp = token_logprobs(policy(ids), targets)
    return (logp * (targets != -1)).sum(1)


def dpo_loss(policy: Policy, ref: Policy, beta: float, batch: dict) -> tuple[Tensor, dict]:
    B, K, T = batch["ids"].shape
    ids, targets = (batch[k].view(B * K, T) for k in ("ids", "targets"))
    with torch.no_grad():
        ref_logp = sequence_logprob(ref, ids, targets)
    implicit = beta * (sequence_logprob(policy, ids, targets) - ref_logp)  # (B * K,)
    loss, right = pairwise_loss(implicit.view(B, K), batch["pairs"])
    return loss, {"accuracy": right.detach()}


def train_dpo(cfg: DPOConfig, optim: OptimConfig, loop: LoopConfig, run: Run, dist: Dist, resume: bool = False,
              progress: bool = True) -> dict:
    """Fit the policy to the rankings by DPO; writes RUN/policy.safetensors and returns the summary."""
    if not cfg.init or not cfg.rankings:
        raise UserError("dpo needs --init (the SFT policy) and --rankings (a rank run folder)")
    seed_everything(loop.seed)
    train, val, loop = split_rankings(cfg.rankings, cfg.val_fraction, cfg.epochs, loop)
    if (kept := kept_summary(run, resume, loop)) is not None:
        return kept
    device = dist.device
    policy = load_policy(cfg.init, device)
    ref = copy.deepcopy(policy).requires_grad_(False)

    def val_accuracy(model: Policy) -> dict:
        right = 0.0
        for i in range(0, len(val), 16):
            batch = {k: v.to(device) for k, v in ranking_rows(model, val[i : i + 16]).items()}
            right += float(dpo_loss(model, ref, cfg.beta, batch)[1]["accuracy"])
        return {"val_accuracy": right / max(len(val), 1)}

    result = fit(policy, RankingBatches(policy, train, loop.batch_size, loop.seed), optim, loop, run,
                 eval_fn=val_accuracy if val else None, resume=resume,
                 loss_fn=lambda model, batch: dpo_loss(model, ref, cfg.beta, batch), weight_fn=count_rows,
                 dist=dist, progress=progress)
    if not dist.is_main:
        return {}
    save_model(policy, run.path / POLICY_FILE)
    plot_metrics(run.metrics(), ["train_accuracy", "val_accuracy"], run.path / "accuracy.png",
                 ylabel="pairs ordered as the labeler did", title="DPO implicit reward")
    summary = {"init": cfg.init, "rankings": len(train) + len(val), "steps": result.steps, "beta": cfg.beta,
               "train_loss": result.record.get("train_loss"), "train_accuracy": result.record.get("train_accuracy"),
               **(val_accuracy(policy) if val else {}), "seconds": round(result.seconds, 1),
               "device": str(device)}
    run.write_summary(summary)
    return summary


CONFIGS = {"dpo": DPOConfig, "optim": OptimConfig, "loop": LoopConfig}
DEFAULTS = {"optim": {"lr": 1e-4, "warmup_steps": 10},
            "loop": {"batch_size": 8, "eval_every": 50, "ckpt_every": 50}}


def run_stage(c: dict, run: Run, dist: Dist, resume: bool = False, progress: bool = True) -> dict:
    return train_dpo(c["dpo"], c["optim"], c["loop"], run, dist, resume, progress)
