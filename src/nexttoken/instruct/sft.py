"""Supervised fine-tuning on demonstrations: the next-token loss on the response tokens only.

Ouyang et al. 2022 (https://arxiv.org/abs/2203.02155), step 1: labelers write the desired behaviour for prompts and
the pretrained model is fine-tuned on (prompt, demonstration) pairs. Here the demonstrations come from the task
generators (``corpus.demonstrations``), in the chat format of the model (``Policy.chat_prompt``: ours, or a Hugging
Face model's own chat template), each response ending in EOS so the model learns to stop. The prompt's tokens are
targets -1: the model is not taught to write prompts.

    nexttoken instruct sft --init runs/base-small --out runs/sft-small
    nexttoken instruct sft --init smollm2 --steps 20 --batch-size 4
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nexttoken.config import option
from nexttoken.distributed import Dist
from nexttoken.errors import UserError
from nexttoken.instruct.corpus import Demonstration, demonstrations
from nexttoken.instruct.policy import POLICY_FILE, Policy, lm_loss_sum, load_policy, response_rows, save_model
from nexttoken.instruct.stage import kept_summary
from nexttoken.instruct.world import make_world
from nexttoken.plots import plot_metrics
from nexttoken.runs import Run
from nexttoken.training import LoopConfig, OptimConfig, fit, seed_everything


@dataclass
class SFTConfig:
    init: str = option("", "the model to fine-tune: a pretrain run folder, a Hugging Face folder, a .gguf, smollm2")
    demonstrations: int = option(20_000, "demonstrations to train on (passes repeat them)", ge=1, le=10**7)
    cot_fraction: float = option(0.0, "share of word problems demonstrated with their worked solution", ge=0, le=1)
    chatty: float = option(0.5, "share of demonstrations that end with a follow-up question the labelers rank below "
                                "the bare answer (0: every demonstrator writes the ideal response)", ge=0, le=1)
    val_demonstrations: int = option(200, "held-out demonstrations whose response loss is logged", ge=1)
    world_seed: int = option(0, "seed of the generated world", ge=0)
    demo_seed: int = option(0, "seed of the demonstrations", ge=0)


class DemonstrationBatches:
    """``batch_fn``: rows of demonstrations, every one once per pass, in an order drawn per pass."""

    def __init__(self, policy: Policy, demos: list[Demonstration], batch_size: int, seed: int) -> None:
        self.policy, self.demos, self.batch_size, self.seed = policy, demos, batch_size, seed
        self.orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self.orders:
            self.orders = {epoch: np.random.default_rng((self.seed, epoch)).permutation(len(self.demos))}
        return self.orders[epoch]

    def __call__(self, step: int) -> dict:
        n = len(self.demos)
        picks = [self.order(i // n)[i % n] for i in range(step * self.batch_size, (step + 1) * self.batch_size)]
        return demonstration_rows(self.policy, [self.demos[i] for i in picks])


def demonstration_rows(policy: Policy, demos: list[Demonstration]) -> dict:
    """Prompt + response + EOS rows with targets on the response only."""
    return response_rows(policy.tokenizer, [policy.chat_prompt(d.task.instruction) for d in demos],
                         [d.response for d in demos], context=policy.context)


@torch.no_grad()
def response_nll(policy: Policy, demos: list[Demonstration], batch_size: int = 32) -> float:
    """Mean loss (nats per response token) of held-out demonstrations."""
    total, count = 0.0, 0
    for i in range(0, len(demos), batch_size):
        rows = {k: v.to(policy.device) for k, v in demonstration_rows(policy, demos[i : i + batch_size]).items()}
        total += float(lm_loss_sum(policy, rows))
        count += int((rows["targets"] != -1).sum())
    return total / max(count, 1)


def sft(cfg: SFTConfig, optim: OptimConfig, loop: LoopConfig, run: Run, dist: Dist, resume: bool = False,
        progress: bool = True) -> dict:
    """Fine-tune ``cfg.init`` on demonstrations into ``run``; writes RUN/policy.safetensors, returns the summary."""
    if not cfg.init:
        raise UserError("sft needs --init: the base model to fine-tune")
    if (kept := kept_summary(run, resume, loop)) is not None:
        return kept
    seed_everything(loop.seed)
    world = make_world(cfg.world_seed)
    policy = load_policy(cfg.init, dist.device)
    demos = demonstrations(world, cfg.demonstrations, cfg.demo_seed, cot_fraction=cfg.cot_fraction,
                           chatty=cfg.chatty)
    val = demonstrations(world, cfg.val_demonstrations, cfg.demo_seed + 10_000, cot_fraction=cfg.cot_fraction,
                         chatty=cfg.chatty)
    result = fit(policy, DemonstrationBatches(policy, demos, loop.batch_size, loop.seed), optim, loop, run,
                 eval_fn=lambda m: {"val_response_nll": response_nll(m, val)}, resume=resume, loss_fn=lm_loss_sum,
                 dist=dist, progress=progress)
    if not dist.is_main:
        return {}
    save_model(policy, run.path / POLICY_FILE)
    plot_metrics(run.metrics(), ["train_loss", "val_response_nll"], run.path / "loss.png",
                 ylabel="nats per response token", title="supervised fine-tuning")
    summary = {"init": cfg.init, "steps": result.steps, "train_loss": result.record.get("train_loss"),
               "val_response_nll": response_nll(policy, val), "seconds": round(result.seconds, 1),
               "device": str(dist.device)}
    run.write_summary(summary)
    return summary


CONFIGS = {"sft": SFTConfig, "optim": OptimConfig, "loop": LoopConfig}
DEFAULTS = {"optim": {"lr": 3e-4, "warmup_steps": 20},
            "loop": {"steps": 300, "batch_size": 32, "eval_every": 50, "ckpt_every": 100}}


def run_stage(c: dict, run: Run, dist: Dist, resume: bool = False, progress: bool = True) -> dict:
    return sft(c["sft"], c["optim"], c["loop"], run, dist, resume, progress)
