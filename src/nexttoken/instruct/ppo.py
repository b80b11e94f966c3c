"""PPO against the reward model with a per-token KL penalty to the SFT model (InstructGPT's step 3), and PPO-ptx.

Ouyang et al. 2022, https://arxiv.org/abs/2203.02155: the policy starts from the SFT model and maximises
E[r(x, y) - beta log(pi(y|x) / pi_SFT(y|x))], beta = 0.02, with a value function initialised from the reward model
and no discount; PPO-ptx adds gamma times the pretraining log-likelihood to keep the abilities the RL fine-tuning would
tax. The details that make it work are those of Huang et al. ("The N implementation details of RLHF with PPO",
https://arxiv.org/abs/2403.17031): the reward model's score at the last token, a fixed score for a response that
never ends (no EOS), rewards normalised on the SFT model's own samples (gain and bias fitted once), log-probabilities
of the logits divided by the sampling temperature, advantages whitened, the value loss clipped, no dropout, and
optionally an adaptive KL coefficient (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593).

``--group K`` (K > 1) samples K responses per prompt and replaces the value head by a leave-one-out baseline: each
response's return (score minus the KL it spent) against the mean return of the prompt's other responses (RLOO,
Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740; GRPO is the same idea). The clipped updates stay; no value
network is trained or even held, so an iteration costs about half as much.

One iteration: sample a batch of prompts, roll out (batched, left-padded, KV-cached), score the responses, turn
score and KL into per-token rewards, estimate advantages with GAE, then take a few epochs of clipped updates on
minibatches. Prompts, samples and minibatch orders are drawn from generators seeded by the iteration, so a resumed
run ends as an uninterrupted one.

    nexttoken instruct ppo --init runs/sft-small --reward-model runs/rm --out runs/ppo-small
    nexttoken instruct ppo --init runs/sft-small --reward-model runs/rm --ptx-coef 1 --out runs/ppo-ptx-small
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from nexttoken.config import check, option
from nexttoken.distributed import Dist, any_rank, average_gradients, gather, mean_over
from nexttoken.errors import Interrupted, UserError
from nexttoken.instruct.advantages import (adapt_kl, episode_reward, gae, leave_one_out, masked_mean, token_rewards,
                                           whiten)
from nexttoken.instruct.corpus import make_corpus
from nexttoken.instruct.figures import plot_ppo_health
from nexttoken.instruct.policy import (POLICY_FILE, Policy, RewardModel, lm_loss_sum, load_policy, load_reward_model,
                                       respond, same_tokenizer, save_model, token_logprobs)
from nexttoken.instruct.pretrain import Windows, token_stream
from nexttoken.instruct.reward import GOLD, LabelerReward, score_texts
from nexttoken.instruct.stage import kept_summary
from nexttoken.instruct.tasks import TRAIN_FAMILIES, make_tasks
from nexttoken.instruct.world import make_world
from nexttoken.progress import Progress
from nexttoken.runs import Run
from nexttoken.training import (OptimConfig, StopRequests, autocast, lr_factor, make_optimizer, seed_everything,
                                set_lr)


@dataclass
class PPOConfig:
    init: str = option("", "the policy to start from (and the KL anchor): an SFT run folder or a model")
    reward_model: str = option("", "the reward run folder, or 'labeler': the held-out labeler's own noiseless "
                                   "utility (the gold reward a perfect reward model would give)")
    iterations: int = option(100, "rollout + update rounds", ge=1, le=10**7)
    rollouts: int = option(32, "episodes (responses) per iteration", ge=1, le=10**5)
    group: int = option(1, "responses per prompt; above 1 each response's baseline is the mean return of its "
                           "prompt's other responses instead of a value head (RLOO)", ge=1, le=1024)
    minibatch: int = option(8, "episodes per gradient step", ge=1, le=10**5)
    epochs: int = option(4, "passes over each iteration's episodes", ge=1, le=100)
    max_new_tokens: int = option(48, "longest response in tokens", ge=1, le=4096)
    temperature: float = option(0.7, "sampling temperature of the rollouts (the log-probs use it too)", gt=0, le=10)
    kl_coef: float = option(0.02, "beta: weight of the per-token KL(policy || SFT) penalty", ge=0, le=100)
    target_kl: float = option(0.0, "adaptive KL: the KL per response to steer beta to (0: beta stays fixed)", ge=0)
    kl_horizon: int = option(100, "adaptive KL: the controller's horizon in episodes: beta changes by at most 20%% "
                                  "per horizon (Ziegler et al. used 10,000, in far longer runs)", ge=1)
    gamma: float = option(1.0, "discount (InstructGPT: none)", ge=0, le=1)
    lam: float = option(0.95, "GAE lambda", ge=0, le=1)
    clip: float = option(0.2, "policy ratio clip", gt=0, le=10)
    value_clip: float = option(0.2, "value clip around the rollout's values", gt=0)
    vf_coef: float = option(0.1, "weight of the value loss", ge=0)
    no_eos_score: float = option(-1.0, "normalised score of a response that never emits EOS", ge=-100, le=100)
    ptx_coef: float = option(0.0, "PPO-ptx: weight of the pretraining loss (0: plain PPO)", ge=0, le=1000)
    ptx_rows: int = option(8, "PPO-ptx: pretraining rows per gradient step", ge=1)
    ptx_context: int = option(128, "PPO-ptx: tokens per pretraining row", ge=8)
    ptx_chars: int = option(1_000_000, "PPO-ptx: characters of pretraining pages to draw rows from", ge=10_000)
    norm_samples: int = option(128, "responses of the initial policy that fix the reward's gain and bias", ge=2)
    prompts: int = option(4000, "training prompts drawn from", ge=1, le=10**7)
    cached_rollouts: bool = option(True, "sample with the KV cache (--no-cached-rollouts recomputes every step)")
    precision: str = option("auto", "bf16 autocast of rollouts and updates on CUDA (auto), or fp32 / bf16 everywhere "
                                    "(the weights and the optimizer stay fp32)", choices=("auto", "fp32", "bf16"))
    ckpt_every: int = option(10, "iterations between checkpoints (also the first, the last, and on Ctrl-C)", ge=1)
    world_seed: int = option(0, "seed of the generated world", ge=0)
    seed: int = option(0, "seed of prompts, samples and minibatches", ge=0)

    def __post_init__(self) -> None:
        check(self)  # the ranges first: the checks below divide by and compare with them
        if self.rollouts % self.minibatch:
            raise UserError(f"--rollouts {self.rollouts} must be a multiple of --minibatch {self.minibatch}")
        if self.rollouts % self.group:
            raise UserError(f"--rollouts {self.rollouts} must be a multiple of --group {self.group}")
        if self.target_kl > 0 and self.kl_coef == 0:  # the adaptive controller scales beta, so 0 stays 0
            raise UserError("--target-kl needs a --kl-coef above 0 to start from (the controller multiplies it)")


# ---- the reward ------------------------------------------------------------------------------------------------------
def scores(reward_model: RewardModel | LabelerReward, prompts: list[str], out) -> Tensor:
    """The reward model's score of each rolled-out response (B,), read from its text tokenized afresh as the rankings
    it learnt from were: the sampled ids can split the same text otherwise, into sequences it never saw."""
    if isinstance(reward_model, LabelerReward):
        return reward_model(prompts, out.texts).to(out.ids.device)
    return score_texts(reward_model, prompts, out.texts, out.finished.tolist()).to(out.ids.device)


# ---- one iteration --------------------------------------------------------------------------------------------------
@dataclass
class Experience:
    ids: Tensor  # (B, T) prompt (left-padded) + response (right-padded)
    mask: Tensor  # (B, T)
    prompt_len: int
    action_mask: Tensor  # (B, Tr) float, 1 on response tokens (EOS included)
    logprobs: Tensor  # (B, Tr) of the policy that sampled
    values: Tensor  # (B, Tr)
    advantages: Tensor  # (B, Tr) whitened
    returns: Tensor  # (B, Tr)
    score: Tensor  # (B,) the reward model's raw score
    reward: Tensor  # (B,) the score normalised, or the fixed score of a response without EOS
    kl: Tensor  # (B,) sum over the response of log pi - log pi_SFT
    finished: Tensor  # (B,)


def response_view(model_out: Tensor, prompt_len: int) -> Tensor:
    """The outputs at the positions that predict the response tokens (the last prompt token and on)."""
    return model_out[:, prompt_len - 1 : -1]


def response_logits(policy: Policy, ids: Tensor, mask: Tensor, prompt_len: int, temperature: float) -> Tensor:
    """The logits the response tokens were drawn from, as the sampler saw them: at its temperature and without the
    tokens it never draws (the pad token), so that log-probabilities, KL and entropy are those of the sampler's
    distribution."""
    logits = response_view(policy(ids, mask), prompt_len).float() / temperature
    return logits.masked_fill(policy.never_sample(logits.device), torch.finfo(logits.dtype).min)


@torch.no_grad()
def experience(policy: Policy, ref: Policy, reward_model: RewardModel | LabelerReward, value: RewardModel | None,
               prompts: list[str], cfg: PPOConfig, beta: float, norm: tuple[float, float],
               generator: torch.Generator, dist: Dist = Dist()) -> Experience:
    """Roll out ``prompts`` and score them. With ``cfg.group`` > 1 the prompts come in groups of identical ones, the
    advantages are leave-one-out (``leave_one_out``) and ``value`` is not used (None). Under torchrun ``prompts`` are
    this process's share, and the advantages are whitened over all processes' episodes."""
    out = respond(policy, prompts, cfg.max_new_tokens, temperature=cfg.temperature, generator=generator,
                  use_cache=cfg.cached_rollouts)
    ids, mask, q = out.ids, out.mask, out.prompt_len
    actions, action_mask = out.response, out.response_mask.float()
    logprobs = token_logprobs(response_logits(policy, ids, mask, q, cfg.temperature), actions)
    ref_logprobs = token_logprobs(response_logits(ref, ids, mask, q, cfg.temperature), actions)
    score = scores(reward_model, prompts, out).float()
    reward = episode_reward(score, out.finished, norm, cfg.no_eos_score)
    kl = (logprobs - ref_logprobs) * action_mask
    rewards = token_rewards(kl, reward, action_mask, beta)
    if cfg.group > 1:
        values = torch.zeros_like(rewards)
        advantages, returns = leave_one_out(rewards, action_mask, cfg.group), values
    else:
        values = response_view(value.values(ids, mask), q).float()
        advantages, returns = gae(rewards, values, action_mask, cfg.gamma, cfg.lam)
    # A group's advantages already centre on each prompt: whitening only scales them (a shift by the token mean would
    # favour long or short responses).
    advantages = whiten(advantages, action_mask, shift=cfg.group == 1, dist=dist)
    return Experience(ids, mask, q, action_mask, logprobs, values * action_mask, advantages, returns, score, reward,
                      kl.sum(1), out.finished)


def minibatch_loss(policy: Policy, value: RewardModel | None, exp: Experience, mb: Tensor, cfg: PPOConfig,
                   ptx_rows: dict | None = None) -> tuple[Tensor, dict]:
    """PPO's clipped objective on the episodes ``mb``, plus the clipped value loss and PPO-ptx's pretraining loss on
    ``ptx_rows`` where there are any; and the step's statistics, as tensors (``update`` reads them once)."""
    ids, mask, am = exp.ids[mb], exp.mask[mb], exp.action_mask[mb]
    logits = response_logits(policy, ids, mask, exp.prompt_len, cfg.temperature)
    logp = token_logprobs(logits, ids[:, exp.prompt_len :])
    ratio = (logp - exp.logprobs[mb]).exp()
    adv = exp.advantages[mb]
    pg_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)), am)
    loss, step = pg_loss, {"policy_loss": pg_loss.detach()}
    if value is not None:
        v = response_view(value.values(ids, mask), exp.prompt_len).float()
        v_clipped = exp.values[mb] + (v - exp.values[mb]).clamp(-cfg.value_clip, cfg.value_clip)
        ret = exp.returns[mb]
        vf_loss = 0.5 * masked_mean(torch.max((v - ret) ** 2, (v_clipped - ret) ** 2), am)
        loss = loss + cfg.vf_coef * vf_loss
        step["value_loss"] = vf_loss.detach()
    if ptx_rows is not None:
        ptx = lm_loss_sum(policy, ptx_rows) / ptx_rows["targets"].numel()
        loss = loss + cfg.ptx_coef * ptx
        step["ptx_loss"] = ptx.detach()
    with torch.no_grad():
        step["entropy"] = masked_mean(-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1), am)
        step["clip_frac"] = masked_mean(((ratio - 1).abs() > cfg.clip).float(), am)
        step["approx_kl"] = masked_mean(0.5 * (logp - exp.logprobs[mb]) ** 2, am)
    return loss, step


def update(policy: Policy, value: RewardModel | None, optimizer, exp: Experience, cfg: PPOConfig, optim: OptimConfig,
           generator: torch.Generator, ptx_batch=None, dist: Dist = Dist()) -> dict:
    """``cfg.epochs`` passes of clipped policy and value updates over the episodes; returns mean statistics. Under
    torchrun each process steps through its own episodes, ``cfg.minibatch`` over all processes a step, and the
    gradients are averaged before every step, so the replicas stay equal."""
    stats: dict[str, Tensor] = {}  # summed on the device, read once at the end: a read waits for the GPU
    n_steps = 0
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for _ in range(cfg.epochs):
        order = torch.randperm(len(exp.ids), generator=generator, device=generator.device)
        for mb in order.split(cfg.minibatch // dist.world_size):
            with autocast(exp.ids.device, cfg.precision):
                loss, step = minibatch_loss(policy, value, exp, mb, cfg, ptx_batch(n_steps) if ptx_batch else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(dist, params)
            if optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, optim.grad_clip)
            optimizer.step()
            for k, x in step.items():
                stats[k] = stats.get(k, 0.0) + x.float()
            n_steps += 1
    return {k: float(x) / n_steps for k, x in stats.items()}


# ---- the loop -------------------------------------------------------------------------------------------------------
@torch.no_grad()
def reward_norm(policy: Policy, reward_model: RewardModel | LabelerReward, prompts: list[str], cfg: PPOConfig,
                dist: Dist = Dist()) -> tuple[float, float]:
    """(mean, std) of the reward model's score on the initial policy's responses: the gain and bias that make the
    reward model's part of the PPO reward mean 0 and standard deviation 1 on the SFT model's samples (each process
    samples its share of ``prompts``)."""
    mine, local = dist.share(prompts), []
    if mine:
        out = respond(policy, mine, cfg.max_new_tokens, temperature=cfg.temperature,
                      generator=torch.Generator(policy.device).manual_seed(dist.own_seed(cfg.seed + 5)))
        local = scores(reward_model, mine, out).float().tolist()
    score = torch.tensor(gather(dist, local))
    return float(score.mean()), float(score.std().clamp(min=1e-3))


def models(cfg: PPOConfig, device: torch.device) -> tuple[Policy, Policy, RewardModel | LabelerReward,
                                                           RewardModel | None, list[str], object]:
    """The policy, its frozen KL anchor (both the SFT model), the reward, the value model (None with ``--group`` > 1),
    the training prompts and the world they come from."""
    policy = load_policy(cfg.init, device)
    if cfg.ptx_coef > 0 and cfg.ptx_context > policy.context:
        raise UserError(f"--ptx-context {cfg.ptx_context} is longer than the context of {cfg.init} "
                        f"({policy.context} tokens); give --ptx-context {policy.context} or less")
    ref = load_policy(cfg.init, device).requires_grad_(False)
    world = make_world(cfg.world_seed)
    train_tasks = make_tasks(world, cfg.prompts, cfg.seed + 99, TRAIN_FAMILIES, unique=False)
    pool = [policy.chat_prompt(t.instruction) for t in train_tasks]
    if cfg.reward_model == GOLD:
        reward_model = LabelerReward(dict(zip(pool, train_tasks)))
    else:
        reward_model = load_reward_model(cfg.reward_model, device)[0].requires_grad_(False)
        if not same_tokenizer(policy, reward_model.backbone):
            raise UserError(f"{cfg.init} and {cfg.reward_model} do not share a tokenizer; the reward model must read "
                            f"the policy's chat format (and with --group 1 the value model, a copy of it, the policy's "
                            f"tokens)")
    value = None  # a group of responses per prompt is its own baseline
    if cfg.group == 1 and cfg.reward_model == GOLD:
        value = RewardModel(load_policy(cfg.init, device))  # no reward model to start from: a zero value head
        nn.init.zeros_(value.score.weight)
    elif cfg.group == 1:
        value = copy.deepcopy(reward_model).trainable()  # InstructGPT: the value function starts as the RM
    return policy, ref, reward_model, value, pool, world


def summarise(cfg: PPOConfig, records: list[dict], norm: tuple[float, float], beta: float, seconds: float,
              device: torch.device, processes: int) -> dict:
    """summary.json: the reward and KL over the first and last tenth of the iterations."""
    tenth = max(1, len(records) // 10)
    return {"init": cfg.init, "reward_model": cfg.reward_model, "iterations": cfg.iterations,
            "ptx_coef": cfg.ptx_coef, "reward_norm": list(norm),
            "reward_first": sum(r["reward"] for r in records[:tenth]) / tenth,
            "reward_last": sum(r["reward"] for r in records[-tenth:]) / tenth,
            "kl_last": sum(r["kl"] for r in records[-tenth:]) / tenth, "kl_coef_last": beta,
            "episodes_per_s": sum(r["episodes_per_s"] for r in records) / len(records),
            "seconds": round(seconds, 1), "device": str(device), "processes": processes}


def train_ppo(cfg: PPOConfig, optim: OptimConfig, run: Run, dist: Dist, resume: bool = False,
              progress: bool = True) -> dict:
    """Run PPO (PPO-ptx when ``cfg.ptx_coef`` > 0) into ``run``; writes RUN/policy.safetensors, returns the summary
    (on rank 0; the other processes of a torchrun return {}). Under torchrun each process rolls out its share of every
    iteration's prompts and the replicas step together (``update``)."""
    if not cfg.init or not cfg.reward_model:
        raise UserError("ppo needs --init (the SFT policy) and --reward-model (a reward run folder)")
    if (cfg.rollouts // cfg.group) % dist.world_size or cfg.minibatch % dist.world_size:
        raise UserError(f"--rollouts {cfg.rollouts} ({cfg.rollouts // cfg.group} prompts) and --minibatch "
                        f"{cfg.minibatch} must divide evenly into {dist.world_size} processes")
    device = dist.device
    seed_everything(cfg.seed)
    policy, ref, reward_model, value, pool, world = models(cfg, device)
    trained = nn.ModuleDict({"policy": policy} if value is None else {"policy": policy, "value": value})
    optimizer = make_optimizer(trained, optim)
    start, beta, norm, meta = 0, cfg.kl_coef, None, {}
    if resume and run.has_checkpoint():
        start, _, meta = run.load_checkpoint(trained, optimizer)
        beta, norm = meta["kl_coef"], tuple(meta["reward_norm"])
    run.rewind_metrics(start)  # a resumed run logs again what came after its checkpoint (a new one has nothing)
    if norm is None:
        sample = random.Random(cfg.seed).sample(pool, min(cfg.norm_samples, len(pool)))
        with autocast(device, cfg.precision), Progress(len(sample), "ppo: sampling the responses that normalise "
                                                       "the reward", unit="response", enabled=progress and dist.is_main,
                                                       log=run.log_path) as bar:
            bar.announce()  # one batch, counted when it ends
            norm = reward_norm(policy, reward_model, sample, cfg, dist)
            bar.update(len(sample))
        if value is not None and cfg.reward_model != GOLD:
            with torch.no_grad():  # the value head starts as the reward model on the normalised scale it predicts
                value.score.weight /= norm[1]
                value.score.bias.sub_(norm[0]).div_(norm[1])
    ptx = None
    if cfg.ptx_coef > 0:
        pages = make_corpus(world, cfg.ptx_chars, seed=0).train
        windows = Windows(token_stream(policy.tokenizer, pages), cfg.ptx_context, cfg.ptx_rows, cfg.seed + 7)
    t0 = time.time() - meta.get("elapsed_s", 0.0)  # the summary's seconds count the stretches before a resume
    bar = Progress(cfg.iterations, "ppo", initial=start, enabled=progress and dist.is_main, log=run.log_path)

    def save(done: int) -> None:
        run.save_checkpoint(trained, optimizer, done, extra_meta={"kl_coef": beta, "reward_norm": list(norm),
                                                                  "elapsed_s": time.time() - t0})

    with StopRequests() as stop:
        for it in range(start, cfg.iterations):
            set_lr(optimizer, optim.lr * lr_factor(it, cfg.iterations, optim))
            t_it = time.time()
            drawn = random.Random(f"ppo:{cfg.seed}:{it}").choices(pool, k=cfg.rollouts // cfg.group)
            prompts = [p for p in dist.share(drawn) for _ in range(cfg.group)]
            # on the device, where the rollout's draws are made (the minibatch orders are drawn there too)
            generator = torch.Generator(device).manual_seed(dist.own_seed(cfg.seed * 1_000_003 + it))
            with autocast(device, cfg.precision):
                exp = experience(policy, ref, reward_model, value, prompts, cfg, beta, norm, generator, dist)
            t_roll = time.time() - t_it
            if cfg.ptx_coef > 0:  # every process its own rows
                ptx = lambda k, it=it: {n: v.to(device) for n, v in  # noqa: E731
                                        windows((it * 10_000 + k) * dist.world_size + dist.rank).items()}
            stats = update(policy, value, optimizer, exp, cfg, optim, generator, ptx, dist)
            means = mean_over(dist, {"reward": float(exp.reward.mean()), "score": float(exp.score.mean()),
                                     "kl": float(exp.kl.mean()), **stats,
                                     "response_length": float(exp.action_mask.sum(1).mean()),
                                     "no_eos": float((~exp.finished).float().mean()), "rollout_s": t_roll})
            record = {"step": it + 1, **means, "objective": means["reward"] - beta * means["kl"], "kl_coef": beta,
                      "episodes_per_s": cfg.rollouts / (time.time() - t_it), "lr": optimizer.param_groups[0]["lr"]}
            run.log(record)
            if cfg.target_kl > 0:
                beta = adapt_kl(beta, means["kl"], cfg.target_kl, cfg.kl_horizon, cfg.rollouts)
            bar.update(1, reward=record["reward"], kl=means["kl"])
            done = it + 1
            stopping = any_rank(dist, stop.requested)
            if done == 1 or done % cfg.ckpt_every == 0 or done == cfg.iterations or stopping:
                save(done)
            if stopping:
                bar.close()
                raise Interrupted(f"stopped at iteration {done:,}", f"--resume {run.path}", stop.signum)
    bar.close()
    if not dist.is_main:
        return {}
    save_model(policy, run.path / POLICY_FILE)
    plot_ppo_health(run.metrics(), run.path / "ppo_health.png", target_kl=cfg.target_kl)
    summary = summarise(cfg, run.metrics(), norm, beta, time.time() - t0, device, dist.world_size)
    run.write_summary(summary)
    return summary


CONFIGS = {"ppo": PPOConfig, "optim": OptimConfig}
DEFAULTS = {"optim": {"lr": 5e-5, "warmup_steps": 5, "schedule": "constant", "weight_decay": 0.0}}


def run_stage(c: dict, run: Run, dist: Dist, resume: bool = False, progress: bool = True) -> dict:
    kept = kept_summary(run, resume, c["ppo"].iterations, "iterations")
    return kept if kept is not None else train_ppo(c["ppo"], c["optim"], run, dist, resume, progress)
