"""Train a reward model on ranked outputs: InstructGPT's pairwise loss over all K(K-1)/2 pairs of a prompt at once.

Ouyang et al. 2022 (https://arxiv.org/abs/2203.02155), step 2: the reward model is the SFT model with its unembedding
replaced by a scalar head; for a prompt x whose K outputs a labeler ranked, every pair (y_w preferred to y_l) enters

    loss = -1 / C(K, 2) * sum over pairs of log sigmoid(r(x, y_w) - r(x, y_l))

Our labelers can tie two outputs (identical texts, or equal judgements): a tie is no pair, and a prompt's loss is the
mean over its untied pairs, so every prompt weighs the same, as every prompt does in the paper's formula without ties.
The K outputs of one prompt form one batch element, so each output is read once per step (treating the pairs as separate
examples makes the model overfit: each output would be seen K - 1 times in an epoch). One epoch by default, as in the
paper (``--epochs``). Afterwards the head's bias is shifted so that demonstrations score 0 on average (the ideal ones,
without the habits of the demonstrators SFT learnt from), which makes 0 the reward of "as good as an ideal
demonstration"; PPO then normalises the reward on the SFT model's own samples. The reward sits on the hidden state of
the last real token (EOS when the output ended).
``LabelerReward`` is the other reward PPO can climb: the held-out labeler's own judgement, the gold standard.

    nexttoken instruct reward --init runs/sft-medium --rankings runs/rankings --out runs/rm
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nexttoken.config import option
from nexttoken.distributed import Dist
from nexttoken.errors import UserError
from nexttoken.instruct.corpus import demonstrations
from nexttoken.instruct.labeler import HELD_OUT_LABELER
from nexttoken.instruct.policy import REWARD_FILE, Policy, RewardModel, load_policy, response_rows, save_model
from nexttoken.instruct.rankings import Ranking, split_rankings
from nexttoken.instruct.stage import kept_summary
from nexttoken.instruct.world import Task, make_world
from nexttoken.plots import plot_metrics
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, OptimConfig, count_rows, fit, seed_everything


@dataclass
class RewardConfig:
    init: str = option("", "the model the reward model starts from (an SFT run folder, a Hugging Face model...)")
    rankings: str = option("", "the rank run folder whose rankings are learnt")
    epochs: float = option(1.0, "passes over the rankings (InstructGPT: 1; more overfits)", gt=0, le=100)
    val_fraction: float = option(0.1, "share of the rankings kept to measure pairwise accuracy", ge=0, lt=1)
    bias_demonstrations: int = option(256, "demonstrations whose mean reward the bias sets to 0", ge=1)
    world_seed: int = option(0, "seed of the generated world", ge=0)


def ranking_rows(policy: Policy, rankings: list[Ranking]) -> dict:
    """One batch element per ranking: its K outputs as rows best first (``ids``, ``mask``, ``targets`` of shape
    (B, K, T)), and ``pairs`` (B, K, K): 1 where output i is ranked above output j, their texts differ and the
    labeler did not call them a tie."""
    K = len(rankings[0].outputs)
    prompts, responses, ended = [], [], []
    for r in rankings:
        prompt = policy.chat_prompt(r.task.instruction)
        for i in r.order:
            prompts.append(prompt)
            responses.append(r.outputs[i])
            ended.append(r.finished[i])
    rows = response_rows(policy.tokenizer, prompts, responses, ended, context=policy.context)
    B = len(rankings)
    out = {k: v.view(B, K, -1) for k, v in rows.items()}
    out["pairs"] = torch.tensor([r.pair_mask() for r in rankings], dtype=torch.float32)  # (B, K, K)
    return out


def pairwise_loss(scores: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    """(sum over elements of the mean pair loss, sum over elements of the share of pairs ordered right) for scores
    (B, K) of outputs ranked best first and the ``pairs`` mask (B, K, K).

    >>> loss, right = pairwise_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))
    >>> round(loss.item(), 4), right.item()
    (0.1269, 1.0)
    """
    diff = scores[:, :, None] - scores[:, None, :]  # (B, K, K): winner i minus loser j
    n = pairs.sum((1, 2)).clamp(min=1)
    loss = -(F.logsigmoid(diff) * pairs).sum((1, 2)) / n
    right = ((diff > 0).float() * pairs).sum((1, 2)) / n
    return loss.sum(), right.sum()


def reward_loss(model: RewardModel, batch: dict) -> tuple[Tensor, dict]:
    B, K, T = batch["ids"].shape
    scores = model(batch["ids"].view(B * K, T), batch["mask"].view(B * K, T), right_padded=True).view(B, K)
    loss, right = pairwise_loss(scores, batch["pairs"])
    return loss, {"accuracy": right.detach()}


class RankingBatches:
    """``batch_fn``: rankings in an order drawn per pass, every one once per pass."""

    def __init__(self, policy: Policy, rankings: list[Ranking], batch_size: int, seed: int) -> None:
        self.policy, self.rankings, self.batch_size, self.seed = policy, rankings, batch_size, seed
        self.orders: dict[int, np.ndarray] = {}

    def __call__(self, step: int) -> dict:
        n = len(self.rankings)
        picks = []
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            if i // n not in self.orders:
                self.orders = {i // n: np.random.default_rng((self.seed, i // n)).permutation(n)}
            picks.append(self.rankings[self.orders[i // n][i % n]])
        return ranking_rows(self.policy, picks)


@torch.no_grad()
def ranking_accuracy(model: RewardModel, rankings: list[Ranking], batch_size: int = 16) -> dict:
    """Mean pair loss and share of pairs the model orders as the labeler did."""
    loss = right = 0.0
    for i in range(0, len(rankings), batch_size):
        rows = ranking_rows(model.backbone, rankings[i : i + batch_size])
        batch = {k: v.to(model.score.weight.device) for k, v in rows.items()}
        total, logs = reward_loss(model, batch)
        loss, right = loss + float(total), right + float(logs["accuracy"])
    n = max(len(rankings), 1)
    return {"val_loss": loss / n, "val_accuracy": right / n}


@torch.no_grad()
def score_texts(model: RewardModel, prompts: list[str], responses: list[str], finished: list[bool] | None = None,
                batch_size: int = 32) -> Tensor:
    """Rewards of responses to prompts (EOS appended where ``finished``, as the policy would have written it)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = response_rows(model.tokenizer, prompts[i : i + batch_size], responses[i : i + batch_size],
                             None if finished is None else finished[i : i + batch_size], model.backbone.context)
        out.append(model(rows["ids"].to(model.score.weight.device), rows["mask"].to(model.score.weight.device)))
    return torch.cat(out).cpu()


def train_reward(cfg: RewardConfig, optim: OptimConfig, loop: LoopConfig, run: Run, dist: Dist, resume: bool = False,
                 progress: bool = True) -> dict:
    """Fit the reward model, centre it on demonstrations, write RUN/reward_model.safetensors; returns the summary."""
    if not cfg.init or not cfg.rankings:
        raise UserError("reward needs --init (the model to start from) and --rankings (a rank run folder)")
    seed_everything(loop.seed)
    train, val, loop = split_rankings(cfg.rankings, cfg.val_fraction, cfg.epochs, loop)
    if (kept := kept_summary(run, resume, loop)) is not None:
        return kept
    model = RewardModel(load_policy(cfg.init)).to(dist.device)
    result = fit(model, RankingBatches(model.backbone, train, loop.batch_size, loop.seed), optim, loop, run,
                 eval_fn=(lambda m: ranking_accuracy(m, val)) if val else None, resume=resume, loss_fn=reward_loss,
                 weight_fn=count_rows, dist=dist, progress=progress)
    if not dist.is_main:
        return {}
    # Centre: demonstrations (the ideal responses) score 0 on average.
    world = make_world(cfg.world_seed)
    demos = demonstrations(world, cfg.bias_demonstrations, seed=4242)
    demo_scores = score_texts(model, [model.backbone.chat_prompt(d.task.instruction) for d in demos],
                              [d.response for d in demos])
    with torch.no_grad():
        model.score.bias -= demo_scores.mean().to(dist.device)
    save_model(model, run.path / REWARD_FILE, {"demo_mean_before_centring": float(demo_scores.mean())})
    plot_metrics(run.metrics(), ["train_accuracy", "val_accuracy"], run.path / "accuracy.png",
                 ylabel="pairs ordered as the labeler did", title="reward model")
    samples = [(r.task.instruction, r.outputs[i], r.finished[i]) for r in val[:64] for i in range(len(r.outputs))]
    sample_scores = score_texts(model, [model.backbone.chat_prompt(s[0]) for s in samples], [s[1] for s in samples],
                                [s[2] for s in samples]) if samples else torch.zeros(1)
    final = ranking_accuracy(model, val) if val else {}
    summary = {"init": cfg.init, "rankings": len(train) + len(val), "train_rankings": len(train), "steps": result.steps,
               "train_accuracy": result.record.get("train_accuracy"), **final,
               "demo_mean_before_centring": float(demo_scores.mean()),
               "sample_mean": float(sample_scores.mean()), "sample_std": float(sample_scores.std()) if len(sample_scores) > 1 else 0.0,
               "seconds": round(result.seconds, 1), "device": str(dist.device)}
    run.write_summary(summary)
    return summary


# ---- the gold reward ------------------------------------------------------------------------------------------------
GOLD = "labeler"


class LabelerReward:
    """The gold reward of Gao et al. 2022 (https://arxiv.org/abs/2210.10760): the held-out labeler's noiseless utility
    of each response, what a perfect reward model would say. PPO against it measures what PPO can do at all, apart
    from the learnt reward model's errors."""

    def __init__(self, tasks: dict[str, Task]) -> None:
        self.tasks = tasks  # chat prompt -> its task
        self.labeler = replace(HELD_OUT_LABELER, noise=0.0, flip=0.0)

    def __call__(self, prompts: list[str], texts: list[str]) -> Tensor:
        return torch.tensor([self.labeler.utility(self.tasks[p], t) for p, t in zip(prompts, texts)])


CONFIGS = {"reward": RewardConfig, "optim": OptimConfig, "loop": LoopConfig}
DEFAULTS = {"optim": {"lr": 3e-4, "warmup_steps": 10},
            "loop": {"batch_size": 8, "eval_every": 50, "ckpt_every": 50}}


def run_stage(c: dict, run: Run, dist: Dist, resume: bool = False, progress: bool = True) -> dict:
    return train_reward(c["reward"], c["optim"], c["loop"], run, dist, resume, progress)
