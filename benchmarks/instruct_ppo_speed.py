"""PPO episodes per second with KV-cached rollouts against uncached ones, in the same run, on the same models.

    python benchmarks/instruct_ppo_speed.py                           # tiny, small, medium policies on the CPU
    python benchmarks/instruct_ppo_speed.py --pipeline runs/instruct-cpu   # the pipeline's SFT models and reward model

One PPO iteration is what `nexttoken instruct ppo` runs (``ppo.experience`` then ``ppo.update``): a batch of
left-padded prompts rolled out to EOS or --max-new-tokens, scored by the policy, the SFT reference, the value model
and the reward model, then --epochs passes of minibatch updates. Only the rollout differs between the two modes. With
randomly initialised models (the default) no response ends early, so every rollout has the full length: the cache's
best case for length, its worst for batch shape. The two modes alternate iteration by iteration so that a change in
the machine's load falls on both. Writes benchmarks/results/instruct_ppo_speed-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from nexttoken.instruct.corpus import demonstrations, make_corpus
from nexttoken.instruct.policy import GPTPolicy, RewardModel, load_policy, load_reward_model
from nexttoken.instruct.ppo import PPOConfig, experience, update
from nexttoken.instruct.pretrain import PretrainConfig, build_gpt
from nexttoken.instruct.tasks import TRAIN_FAMILIES, make_tasks
from nexttoken.instruct.tokenizer import train_tokenizer
from nexttoken.instruct.world import make_world
from nexttoken.training import OptimConfig, autocast, make_optimizer, pick_device


def models(size: str, pipeline: Path | None, device):
    if pipeline is not None:
        policy = load_policy(pipeline / f"sft-{size}", device)
        ref = load_policy(pipeline / f"sft-{size}", device)
        rm = load_reward_model(pipeline / "reward", device)[0]
        value = load_reward_model(pipeline / "reward", device)[0]
        return policy, ref, rm, value
    world = make_world(0)
    tok = train_tokenizer([*make_corpus(world, 300_000).train, *(d.prompt + d.response
                                                                for d in demonstrations(world, 500))])
    torch.manual_seed(0)
    cfg = PretrainConfig(size=size)
    policy = GPTPolicy(build_gpt(cfg, tok.vocab_size), tok).to(device)
    ref = GPTPolicy(build_gpt(cfg, tok.vocab_size), tok).to(device)
    rm = RewardModel(GPTPolicy(build_gpt(cfg, tok.vocab_size), tok)).to(device)
    value = RewardModel(GPTPolicy(build_gpt(cfg, tok.vocab_size), tok)).to(device)
    return policy, ref, rm, value


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # the clock must see the GPU's work, not only its launch
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", default="tiny,small,medium")
    p.add_argument("--pipeline", type=Path, default=None, help="use this pipeline's sft-<size> and reward models")
    p.add_argument("--iterations", type=int, default=4, help="iterations per mode (after one warm-up each)")
    p.add_argument("--rollouts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48)
    args = p.parse_args()
    device = pick_device(args.device)
    world = make_world(0)
    rows = []
    for size in args.sizes.split(","):
        policy, ref, rm, value = models(size, args.pipeline, device)
        prompt_pool = [policy.chat_prompt(t.instruction) for t in make_tasks(world, 500, 3, TRAIN_FAMILIES)]
        optim = OptimConfig(lr=1e-6, warmup_steps=0)
        opt = make_optimizer(torch.nn.ModuleDict({"policy": policy, "value": value}), optim)
        timing = {True: {"rollout": 0.0, "total": 0.0, "episodes": 0, "tokens": 0},
                  False: {"rollout": 0.0, "total": 0.0, "episodes": 0, "tokens": 0}}
        for it in range(args.iterations + 1):
            for cached in (True, False) if it % 2 else (False, True):
                cfg = PPOConfig(rollouts=args.rollouts, minibatch=8, max_new_tokens=args.max_new_tokens,
                                cached_rollouts=cached)
                prompts = random.Random(it).choices(prompt_pool, k=args.rollouts)
                gen = torch.Generator(device).manual_seed(it)  # where the rollout's draws are made
                t0 = time.perf_counter()
                with autocast(device, cfg.precision):  # as train_ppo rolls out
                    exp = experience(policy, ref, rm, value, prompts, cfg, 0.02, (0.0, 1.0), gen)
                sync(device)
                t1 = time.perf_counter()
                update(policy, value, opt, exp, cfg, optim, gen)
                sync(device)
                t2 = time.perf_counter()
                if it == 0:
                    continue  # warm-up
                timing[cached]["rollout"] += t1 - t0
                timing[cached]["total"] += t2 - t0
                timing[cached]["episodes"] += args.rollouts
                timing[cached]["tokens"] += int(exp.action_mask.sum())
        c, u = timing[True], timing[False]
        row = {"size": size, "params": policy.gpt.num_params() if isinstance(policy, GPTPolicy) else None,
               "rollouts": args.rollouts, "max_new_tokens": args.max_new_tokens,
               "response_tokens_mean": c["tokens"] / c["episodes"],
               "episodes_per_s_cached": c["episodes"] / c["total"],
               "episodes_per_s_uncached": u["episodes"] / u["total"],
               "rollout_s_cached": c["rollout"] / args.iterations, "rollout_s_uncached": u["rollout"] / args.iterations,
               "iteration_speedup": u["total"] / c["total"], "rollout_speedup": u["rollout"] / c["rollout"]}
        rows.append(row)
        print(f"{size:7} {row['params'] or 0:>10,} params  episodes/s cached {row['episodes_per_s_cached']:6.2f} "
              f"uncached {row['episodes_per_s_uncached']:6.2f}  rollout {row['rollout_s_cached']:.2f} s vs "
              f"{row['rollout_s_uncached']:.2f} s ({row['rollout_speedup']:.2f}x), iteration {row['iteration_speedup']:.2f}x",
              flush=True)
        # written after every size: a run stopped by a time limit keeps the sizes it finished
        out = Path(__file__).parent / "results" / f"instruct_ppo_speed-{device.type}.json"
        out.write_text(json.dumps({"device": device.type, "threads": torch.get_num_threads(),
                                   "models": str(args.pipeline or "random"), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
