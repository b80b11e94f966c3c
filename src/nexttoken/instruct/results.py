"""The pipeline's evaluation stage: every model of a pipeline folder answers the same held-out instructions, and the
measurements of the two papers are tabled and drawn.

Ouyang et al. 2022 (https://arxiv.org/abs/2203.02155), Figure 1: the win rate of each model against the largest SFT
model (here judged by ``labeler.HELD_OUT_LABELER``, which made no training data), by size, for the base model
prompted plainly and few-shot, SFT, PPO and PPO-ptx (and DPO here); their alignment tax: RL fine-tuning costs
likelihood on the pretraining distribution, and PPO-ptx keeps more of it. Kojima et al. 2022
(https://arxiv.org/abs/2205.11916): direct against "Let's think step by step" accuracy on held-out multi-step
problems, for base and instruction-tuned models of each size.

Writes RUN/results.json, RUN/results.md (the tables), RUN/win_rates.png, and RUN/models/<name>.json per model (its
answers too), so a killed evaluation resumes after the last model it finished.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from nexttoken.config import option
from nexttoken.distributed import Dist
from nexttoken.errors import UserError
from nexttoken.instruct.corpus import make_corpus
from nexttoken.instruct.evaluate import (EvalConfig, answer, chain_of_thought, eval_tasks, heldout_nll, judge,
                                         multi_step_tasks)
from nexttoken.instruct.figures import METHOD_LABEL, plot_win_rates
from nexttoken.instruct.policy import load_policy
from nexttoken.instruct.world import make_world
from nexttoken.progress import Progress
from nexttoken.files import atomic_write_json, atomic_write_text, read_json
from nexttoken.runs import Run

# method -> (stage folder prefix, prompt style); every method is evaluated at every size
METHODS = {"base": ("pretrain", "bare"), "few_shot": ("pretrain", "few_shot"), "sft": ("sft", "chat"),
           "ppo": ("ppo", "chat"), "ppo_ptx": ("ppo_ptx", "chat"), "dpo": ("dpo", "chat")}
TAX_METHODS = ("base", "sft", "ppo", "ppo_ptx", "dpo")  # held-out pretraining likelihood
# Kojima: the base models and every instruction-tuned one, to show which tuning keeps what pretraining taught
COT_METHODS = TAX_METHODS


@dataclass
class ResultsConfig:
    pipeline: str = option("", "the pipeline folder whose models are evaluated")
    sizes: list[str] = option(default_factory=list, help="model sizes, smallest first (the largest SFT model is the "
                                                         "reference)")
    heldout_pages: int = option(200, "held-out pretraining pages for the alignment tax", ge=1)


def evaluate_pipeline(cfg: ResultsConfig, ev: EvalConfig, run: Run, device: torch.device,
                      progress: bool = True) -> dict:
    folder = Path(cfg.pipeline)
    if not cfg.sizes:
        raise UserError("the evaluation needs the pipeline's sizes")
    world = make_world(ev.world_seed)
    tasks = eval_tasks(world, ev)
    problems = multi_step_tasks(world, ev) if ev.cot_tasks else []
    pages = make_corpus(world, 40 * 270 * cfg.heldout_pages).heldout[: cfg.heldout_pages]  # ~5% of pages held out
    reference_name = f"sft-{cfg.sizes[-1]}"
    (run.path / "models").mkdir(exist_ok=True)
    ref_file = run.path / "models" / "reference.json"
    entries = [(size, method) for size in cfg.sizes for method in METHODS]
    bar = Progress(1 + len(entries), "evaluate", enabled=progress, log=run.log_path, unit="model")  # the reference too
    phase = partial(Progress, 0, enabled=progress, log=run.log_path)  # each model's phases, finer than models
    if not ref_file.is_file():
        ref = load_policy(folder / reference_name, device)
        with phase(f"evaluate: the reference {reference_name} answering {len(tasks)} instructions",
                   unit="prompt") as inner:
            atomic_write_json(ref_file, {"outputs": answer(ref, tasks, "chat", ev, world, progress=inner)})
    reference = read_json(ref_file)["outputs"]
    bar.update(1)
    rows = []
    for size, method in entries:
        path = run.path / "models" / f"{method}-{size}.json"
        if not path.is_file():
            atomic_write_json(path, evaluate_model(folder, size, method, tasks, reference, problems, pages, ev,
                                                   world, device, phase))
        rows.append(read_json(path))
        bar.update(1)
    bar.close()
    for row in rows:
        row["params"] = read_json(folder / f"pretrain-{row['size']}" / "summary.json")["non_embedding_params"]
    plot_win_rates(rows, run.path / "win_rates.png", reference=f"SFT {cfg.sizes[-1]}")
    summary = {"reference": reference_name, "tasks": len(tasks), "cot_tasks": len(problems),
               "rows": [{k: v for k, v in r.items() if k != "outputs"} for r in rows], **headline(rows),
               "device": str(device)}
    atomic_write_json(run.path / "results.json", summary)
    atomic_write_text(run.path / "results.md", tables(rows, reference_name, len(tasks), len(problems)))
    run.write_summary({k: v for k, v in summary.items() if k != "rows"})
    return summary


def evaluate_model(folder: Path, size: str, method: str, tasks, reference, problems, pages, ev: EvalConfig, world,
                   device, phase=partial(Progress, 0, enabled=False)) -> dict:
    """One model's row; ``phase(desc, unit=...)`` makes the Progress of each measurement."""
    prefix, style = METHODS[method]
    name = f"{method}-{size}"
    t0 = time.time()
    policy = load_policy(folder / f"{prefix}-{size}", device)
    with phase(f"evaluate: {name} answering {len(tasks)} instructions", unit="prompt") as bar:
        outputs = answer(policy, tasks, style, ev, world, progress=bar)
    row = {"size": size, "method": method, **_rename(asdict(judge(tasks, outputs, reference)))}
    if method in TAX_METHODS:
        with phase(f"evaluate: {name} scoring {len(pages)} held-out pages", unit="page") as bar:
            row["heldout_nll"] = heldout_nll(policy, pages, progress=bar)
    if method in COT_METHODS and problems:
        with phase(f"evaluate: {name} chain of thought on {len(problems)} problems (3 greedy passes)",
                   unit="prompt") as bar:
            cot = chain_of_thought(policy, problems, ev, progress=bar)
        row.update(cot_direct=cot.direct, cot_step_by_step=cot.step_by_step, cot_example=cot.example)
    row["seconds"] = round(time.time() - t0, 1)
    row["outputs"] = outputs
    return row


def _rename(d: dict) -> dict:
    return {"win_rate": d["rate"], "ci95": d["ci95"], "score": d["score"], "following": d["following"],
            "utility": d["utility"], "asks_back": d["asks_back"]}


def headline(rows: list[dict]) -> dict:
    """The smallest PPO model against the largest base model, both against the same reference."""
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    pick = {(r["size"], r["method"]): r for r in rows}
    ppo, base = pick.get((sizes[0], "ppo")), pick.get((sizes[-1], "base"))
    if not ppo or not base:
        return {}
    return {"headline": {"small_ppo": sizes[0], "small_ppo_params": ppo["params"], "small_ppo_win_rate": ppo["win_rate"],
                         "large_base": sizes[-1], "large_base_params": base["params"],
                         "large_base_win_rate": base["win_rate"], "size_ratio": base["params"] / ppo["params"]}}


def tables(rows: list[dict], reference: str, n_tasks: int, n_problems: int) -> str:
    """The three tables as Markdown."""
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    pick = {(r["size"], r["method"]): r for r in rows}
    params = {r["size"]: r["params"] for r in rows}
    out = [f"Win rate against {reference} ({n_tasks} held-out instructions, held-out labeler; +- 95% interval), "
           "and mean checker score in brackets:", "",
           "| size | non-embedding params | " + " | ".join(METHOD_LABEL[m] for m in METHODS) + " |",
           "|---" * (len(METHODS) + 2) + "|"]
    for s in sizes:
        cells = [f"{pick[s, m]['win_rate']:.2f} +- {pick[s, m]['ci95']:.2f} ({pick[s, m]['score']:.2f})"
                 for m in METHODS]
        out.append(f"| {s} | {params[s] / 1e6:.2f}M | " + " | ".join(cells) + " |")
    out += ["", "The held-out labeler's mean utility of the answers (noiseless: correctness + following + brevity), "
            "and the share of answers that end by asking something back in brackets:", "",
            "| size | " + " | ".join(METHOD_LABEL[m] for m in METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for s in sizes:
        out.append(f"| {s} | " + " | ".join(f"{pick[s, m]['utility']:.2f} ({pick[s, m]['asks_back']:.0%})"
                                            for m in METHODS) + " |")
    out += ["", "Held-out pretraining loss (nats per token; lower keeps more of the base model, the alignment tax):",
            "", "| size | " + " | ".join(METHOD_LABEL[m] for m in TAX_METHODS) + " |",
            "|---" * (len(TAX_METHODS) + 1) + "|"]
    for s in sizes:
        out.append(f"| {s} | " + " | ".join(f"{pick[s, m]['heldout_nll']:.3f}" for m in TAX_METHODS) + " |")
    if n_problems:
        out += ["", f"Accuracy on {n_problems} held-out word problems (2-4 steps), greedy: direct answer against "
                "two-stage zero-shot chain of thought:", "",
                "| size | model | direct | Let's think step by step |", "|---|---|---|---|"]
        for s in sizes:
            for m in COT_METHODS:
                r = pick[s, m]
                out.append(f"| {s} | {METHOD_LABEL[m]} | {r['cot_direct']:.2f} | {r['cot_step_by_step']:.2f} |")
    return "\n".join(out) + "\n"


CONFIGS = {"results": ResultsConfig, "eval": EvalConfig}
DEFAULTS: dict = {}


def run_stage(c: dict, run: Run, dist: Dist, resume: bool = False, progress: bool = True) -> dict:
    """The evaluation runs on rank 0 alone (the other processes of a torchrun return {})."""
    return evaluate_pipeline(c["results"], c["eval"], run, dist.device, progress) if dist.is_main else {}
