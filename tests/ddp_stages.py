"""Run under torchrun by test_distributed.py, in two gloo processes: the collective helpers, then the instruct stages
(pretrain, rank, reward, PPO) as the pipeline runs them. Every process writes what it saw to OUT/rank<r>.json, with its
policy's checksum after every PPO update, so the test can check that the processes agreed and the replicas stayed equal."""

import json
import os
import signal
import sys
from pathlib import Path

import torch

from charlm import batch_fn, char_model
from nexttoken.distributed import (all_sum, any_rank, average_gradients, barrier, gather, init_distributed,
                                   main_first, mean_over, shutdown_distributed)
from nexttoken.errors import Interrupted
from nexttoken.instruct.pipeline import MODULES, stage_configs
from nexttoken.instruct.stage import open_stage
from nexttoken.training import LoopConfig, OptimConfig, fit

out = Path(sys.argv[1])
dist = init_distributed("cpu")
seen: dict = {"world_size": dist.world_size}

# the helpers
seen["gather"] = gather(dist, dist.share(list(range(7))))
marker = out / "marker"
with main_first(dist):
    seen["marker_there"] = marker.exists()  # rank 0: not yet; the others: rank 0 wrote it first
    if dist.is_main:
        marker.write_text("rank 0 was here")
p = torch.nn.Parameter(torch.zeros(3))
(p * torch.tensor([1.0, 2.0, 3.0]) * (dist.rank + 1)).sum().backward()
average_gradients(dist, [p])
seen["grad"] = p.grad.tolist()
seen["mean"] = mean_over(dist, {"x": float(dist.rank)})
seen["sum"] = all_sum(dist, torch.tensor([1.0])).tolist()
seen["any"] = [any_rank(dist, dist.rank == 1), any_rank(dist, False)]

# a SIGTERM that reaches rank 1 alone, during step 3, stops both processes after that step
batches = batch_fn(32, 8)


def terminated_batches(step: int) -> dict:
    if step == 2 and dist.rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return batches(step)


try:
    fit(char_model(), terminated_batches, OptimConfig(lr=1e-2, warmup_steps=1), LoopConfig(steps=6, batch_size=8),
        dist=dist, progress=False)
except Interrupted as e:
    seen["stopped"] = str(e)

# the stages; every PPO update leaves a checksum of this process's policy
from nexttoken.instruct import ppo  # noqa: E402

seen["ppo_checksums"] = []
real_update = ppo.update


def update(policy, *args, **kwargs):
    stats = real_update(policy, *args, **kwargs)
    seen["ppo_checksums"].append(float(sum(p.detach().double().sum() for p in policy.parameters())))
    return stats


ppo.update = update
stages = [
    ("pretrain", "pretrain", {"pretrain": {"corpus_chars": 20_000, "context": 32, "vocab_size": 300, "heldout_pages": 4},
                              "loop": {"steps": 3, "batch_size": 4, "eval_every": 3, "ckpt_every": 3}}),
    ("rank", "rank", {"rank": {"models": [str(out / "pretrain")], "prompts": 6, "k": 2, "max_new_tokens": 8,
                               "chunk": 3}}),
    ("reward", "reward", {"reward": {"init": str(out / "pretrain"), "rankings": str(out / "rank"), "val_fraction": 0,
                                     "bias_demonstrations": 8}, "loop": {"batch_size": 2}}),
    ("ppo", "ppo", {"ppo": {"init": str(out / "pretrain"), "reward_model": "labeler", "iterations": 2,
                            "rollouts": 4, "minibatch": 2, "epochs": 1, "max_new_tokens": 8, "norm_samples": 4,
                            "prompts": 50}}),
]
for name, kind, overrides in stages:
    configs = stage_configs(kind, {}, **overrides)
    barrier(dist)
    run, configs = open_stage(out / name, kind, configs, False, enabled=dist.is_main)
    with run:
        summary = MODULES[kind].run_stage(configs, run, dist, progress=False)
    barrier(dist)
    seen[name] = summary
(out / f"rank{dist.rank}.json").write_text(json.dumps(seen))
shutdown_distributed()
