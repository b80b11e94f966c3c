"""Comparison data: K sampled outputs per prompt, ranked best to worst by a simulated labeler of a disagreeing panel.

InstructGPT's reward model learns from labelers who rank K = 4 to 9 outputs of a prompt (Ouyang et al. 2022,
https://arxiv.org/abs/2203.02155); the outputs come from the models trained so far. Here the K outputs of a prompt
are sampled from one or more policies (the SFT models of every size, round-robin over the K slots, so a ranking
compares models of different skill as well as samples of one), and ``labeler.labeler_panel`` ranks them, one
labeler per prompt taking turns. The reward model and DPO read the same file.

    nexttoken instruct rank --models runs/sft-tiny,runs/sft-small --prompts 2000 --k 4 --out runs/rankings

RUN/rankings.jsonl holds one JSON object per prompt; it is rewritten after every chunk of prompts, so a killed run
resumes after the last chunk it finished (every chunk is seeded by its index, so the file ends the same).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from nexttoken.config import check, option
from nexttoken.distributed import Dist, gather
from nexttoken.errors import UserError
from nexttoken.instruct.labeler import labeler_panel
from nexttoken.instruct.policy import Policy, load_policy, respond
from nexttoken.instruct.tasks import TRAIN_FAMILIES, make_tasks
from nexttoken.instruct.world import Task, make_world
from nexttoken.progress import Progress
from nexttoken.training import LoopConfig
from nexttoken.files import atomic_write_text, parse_lines, read_text
from nexttoken.runs import Run, run_kind, wrong_kind

RANKINGS_FILE = "rankings.jsonl"


@dataclass
class RankConfig:
    models: list[str] = option(default_factory=list, help="policies to sample the outputs from (run folders, "
                                                          "Hugging Face folders, smollm2), round-robin over the K")
    prompts: int = option(2000, "training prompts to rank outputs for", ge=2, le=10**7)
    k: int = option(4, "outputs ranked per prompt (InstructGPT: 4 to 9)", ge=2, le=16)
    temperature: float = option(0.7, "sampling temperature of the outputs (PPO's rollout temperature, so the reward "
                                     "model learns on the outputs it will score)", gt=0, le=10)
    max_new_tokens: int = option(64, "longest output in tokens", ge=1, le=4096)
    labelers: int = option(4, "labelers in the panel (one ranks each prompt)", ge=1, le=1000)
    noise: float = option(0.1, "labelers' utility noise (standard deviation)", ge=0, le=10)
    flip: float = option(0.05, "probability that a labeler swaps two adjacent outputs", ge=0, le=1)
    tie_margin: float = option(0.2, "labelers call outputs whose noisy utilities differ by less than this a tie (a "
                                    "tied pair trains nothing; 0: a strict order)", ge=0, le=10)
    chunk: int = option(64, "prompts sampled at once (and saved together)", ge=1, le=4096)
    world_seed: int = option(0, "seed of the generated world", ge=0)
    seed: int = option(0, "seed of the prompts, samples and judgements", ge=0)

    def __post_init__(self) -> None:
        check(self)  # the ranges first: the checks below divide by and compare with them
        if len(self.models) > self.k:  # output j is written by model j mod the models: the rest would never write
            raise UserError(f"--k {self.k} must be at least the number of --models ({len(self.models)}): every model "
                            f"writes one of the K outputs of a prompt")


@dataclass
class Ranking:
    task: Task
    outputs: list[str]
    finished: list[bool]  # the output ended with EOS (a truncated one is scored without it)
    order: list[int]  # indices of ``outputs``, best first
    labeler: str
    models: list[str] = field(default_factory=list)  # which policy wrote each output
    tiers: list[int] = field(default_factory=list)  # per place of ``order``: equal for outputs called a tie

    def pair_mask(self) -> list[list[bool]]:
        """(K, K) over the places of ``order``: True where place i is preferred to place j (i above j, different
        texts, not called a tie)."""
        tiers = self.tiers or list(range(len(self.order)))
        texts = [self.outputs[i] for i in self.order]
        return [[i < j and texts[i] != texts[j] and tiers[i] != tiers[j] for j in range(len(texts))]
                for i in range(len(texts))]

    def preferences(self) -> int:
        """Pairs of outputs that carry a preference."""
        return sum(map(sum, self.pair_mask()))

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "task": asdict(self.task)})

    @classmethod
    def from_json(cls, line: str) -> "Ranking":
        """A ranking as ``to_json`` wrote it; a ValueError saying what is wrong with anything else."""
        d = json.loads(line)
        try:
            t = d.pop("task")
            r = cls(Task(**{**t, "steps": tuple(t["steps"]), "keywords": tuple(t["keywords"])}), **d)
            k = len(r.outputs)
            agree = (k >= 2 and all(isinstance(o, str) for o in r.outputs) and len(r.finished) == k
                     and sorted(r.order) == list(range(k)) and len(r.tiers) in (0, k))
        except (AttributeError, KeyError, TypeError) as e:
            raise ValueError(f"not a ranking ({type(e).__name__}: {e})") from None
        if not agree:
            raise ValueError("its outputs, order, finished flags and tiers do not agree")
        return r


def prompts_of(cfg: RankConfig) -> list[Task]:
    return make_tasks(make_world(cfg.world_seed), cfg.prompts, cfg.seed + 77, families=TRAIN_FAMILIES, unique=False)


def collect(cfg: RankConfig, run: Run, dist: Dist, progress: bool = True) -> dict:
    """Sample and rank outputs for ``cfg.prompts`` prompts into RUN/rankings.jsonl; returns the summary. Under torchrun
    every process samples its share of each chunk's prompts, all rank the gathered outputs alike, and rank 0 writes
    them."""
    if not cfg.models:
        raise UserError("rank needs --models: the policies whose outputs are ranked")
    policies = [load_policy(m, dist.device) for m in cfg.models]
    if len({p.tokenizer.vocab_size for p in policies}) > 1:
        raise UserError("the --models must share a tokenizer (the reward model reads the same tokens)")
    panel = labeler_panel(cfg.labelers, cfg.seed, cfg.noise, cfg.flip)
    tasks = prompts_of(cfg)
    done = read_rankings(run.path) if (run.path / RANKINGS_FILE).is_file() else []
    done = done[: len(done) // cfg.chunk * cfg.chunk]  # a chunk is written whole; keep whole chunks only
    bar = Progress(len(tasks), "rank", initial=len(done), enabled=progress and dist.is_main, log=run.log_path,
                   unit="prompt")
    for start in range(len(done), len(tasks), cfg.chunk):
        chunk = tasks[start : start + cfg.chunk]
        seed = dist.own_seed(cfg.seed * 1_000_003 + start)
        outputs, ended, writers = zip(*gather(dist, sample_outputs(policies, dist.share(chunk), cfg, seed)))
        for i, task in enumerate(chunk):
            labeler = panel[(start + i) % len(panel)]
            rng = random.Random(f"rank:{cfg.seed}:{labeler.seed}:{start + i}")
            order, tiers = labeler.rank_with_ties(task, outputs[i], rng, cfg.tie_margin)
            done.append(Ranking(task, outputs[i], ended[i], order, labeler.name, writers[i], tiers))
        if run.enabled:
            atomic_write_text(run.path / RANKINGS_FILE, "".join(r.to_json() + "\n" for r in done))
        run.log({"step": len(done), "prompts": len(done)})
        bar.update(len(chunk))
    bar.close()
    summary = summarize(done)
    run.write_summary(summary)
    return summary


def sample_outputs(policies: list[Policy], tasks: list[Task], cfg: RankConfig, seed: int
                   ) -> list[tuple[list[str], list[bool], list[str]]]:
    """Per task, K (outputs, ended with EOS, writers): output j of every prompt is written by policy j mod the number
    of policies, all of one policy's in one batch."""
    outputs = [[""] * cfg.k for _ in tasks]
    ended = [[False] * cfg.k for _ in tasks]
    writers = [[""] * cfg.k for _ in tasks]
    generator = torch.Generator(policies[0].device).manual_seed(seed)  # where the draws are made (one device)
    for m, policy in enumerate(policies):
        slots = [(i, j) for i in range(len(tasks)) for j in range(cfg.k) if j % len(policies) == m]
        if not slots:
            continue
        out = respond(policy, [policy.chat_prompt(tasks[i].instruction) for i, _ in slots], cfg.max_new_tokens,
                      temperature=cfg.temperature, generator=generator)
        for (i, j), text, fin in zip(slots, out.texts, out.finished.tolist()):
            outputs[i][j], ended[i][j], writers[i][j] = text, fin, cfg.models[m]
    return list(zip(outputs, ended, writers))


def summarize(rankings: list[Ranking]) -> dict:
    """How often each policy's output was ranked first, the share of pairs called a tie, and how many outputs ended
    with EOS."""
    firsts: dict[str, int] = {}
    for r in rankings:
        firsts[r.models[r.order[0]]] = firsts.get(r.models[r.order[0]], 0) + 1
    n_out = sum(len(r.outputs) for r in rankings)
    return {"prompts": len(rankings), "k": len(rankings[0].outputs) if rankings else 0,
            "pairs": sum(len(r.outputs) * (len(r.outputs) - 1) // 2 for r in rankings),
            "tied_share": sum(r.tiers[i] == r.tiers[j] for r in rankings if r.tiers for i in range(len(r.tiers))
                              for j in range(i + 1, len(r.tiers)))
            / max(1, sum(len(r.outputs) * (len(r.outputs) - 1) // 2 for r in rankings)),
            "ranked_first": {m: n / max(len(rankings), 1) for m, n in firsts.items()},
            "finished_share": sum(sum(r.finished) for r in rankings) / max(n_out, 1)}


def read_rankings(source: str | Path) -> list[Ranking]:
    """The rankings of a `rank` run folder (or a rankings.jsonl file); a half-written last line is skipped."""
    path = Path(source)
    if path.is_dir():
        kind = run_kind(path)
        if kind not in (None, "instruct.rank"):  # None: a plain folder, which may still hold a rankings.jsonl
            raise wrong_kind(path, kind, ("instruct.rank",))
        path = path / RANKINGS_FILE
    if not path.is_file():
        raise UserError(f"{source} holds no rankings (make them with `nexttoken instruct rank`)")
    numbered = parse_lines(path, read_text(path).splitlines(), Ranking.from_json,
                           "a ranking of `nexttoken instruct rank`")
    for n, r in numbered:
        if len(r.outputs) != len(numbered[0][1].outputs):  # a reward model's batch holds K outputs per element
            raise UserError(f"{path}: line {n} ranks {len(r.outputs)} outputs where the first ranks "
                            f"{len(numbered[0][1].outputs)}; rank every prompt's outputs in one `rank` run")
    return [r for _, r in numbered]


def split_rankings(source: str | Path, val_fraction: float, epochs: float, loop: LoopConfig
                   ) -> tuple[list[Ranking], list[Ranking], LoopConfig]:
    """The rankings a preference stage (reward model, DPO) trains and validates on (those with a preference: a ranking
    of K equally good outputs teaches nothing), and its loop sized to ``epochs`` passes over the training ones (one
    evaluation at the end at the latest)."""
    rankings = [r for r in read_rankings(source) if r.preferences()]
    n_val = int(len(rankings) * val_fraction)
    train, val = rankings[n_val:], rankings[:n_val]
    if not train:
        raise UserError(f"{source} holds {len(rankings)} rankings with a preference: too few to train on")
    steps = math.ceil(epochs * len(train) / loop.batch_size)
    return train, val, replace(loop, steps=steps, eval_every=min(loop.eval_every, steps))


CONFIGS = {"rank": RankConfig}
DEFAULTS: dict = {}


def run_stage(c: dict, run: Run, dist: Dist, resume: bool = False, progress: bool = True) -> dict:
    return collect(c["rank"], run, dist, progress)
