"""The instruct section of `nexttoken demo`: the whole pipeline at its demo preset (two sizes, minutes on a CPU), its
Figure 1 plot, the chain-of-thought table, PPO's health, and base, SFT and PPO answering the same prompts.

Ouyang et al. 2022, https://arxiv.org/abs/2203.02155; Kojima et al. 2022, https://arxiv.org/abs/2205.11916.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nexttoken.distributed import Dist
from nexttoken.instruct.evaluate import cut, prompt_for
from nexttoken.instruct.pipeline import PipelineConfig, run_pipeline
from nexttoken.instruct.policy import load_policy, respond
from nexttoken.instruct.world import make_world
from nexttoken.report import Section
from nexttoken.files import read_json


def demo_prompts() -> list[str]:
    """The seed's wise-frog prompt and three more kinds of instruction, about the demo's world."""
    world = make_world(0)
    person = world.people[0]
    return ["Write a short poem about a wise frog.", "What is 23 + 19?", f"Where does {person.name} live?",
            "Name three colours, separated by commas."]


def demo_section(out: Path, device: torch.device) -> Section:
    folder = out / "pipeline"
    cfg = PipelineConfig(preset="demo")
    run_pipeline(folder, cfg, Dist(device=device))
    sizes = cfg.model_sizes
    section = Section("Making language models useful (InstructGPT, Ouyang et al. 2022; Kojima et al. 2022)")
    section.text(
        f"The whole pipeline at its demo size: base GPTs of {len(sizes)} sizes pretrained on a generated world's "
        "corpus, supervised fine-tuning on demonstrations (half of them end with a follow-up question the labelers "
        "rank lower), rankings by simulated labelers, one reward model, PPO with "
        "a KL penalty to the SFT model (and PPO-ptx), DPO, and an evaluation judged by a held-out labeler. At this "
        "size the models have seen a few hundred thousand tokens; docs/instruct.md has the measured CPU-size results.")
    section.image(folder / "evaluate" / "win_rates.png", "win rate against the largest SFT model, by size and method")
    rows = read_json(folder / "evaluate" / "results.json")["rows"]
    section.table([{"size": r["size"], "method": r["method"], "win rate": r["win_rate"], "+-": r["ci95"],
                    "checker score": r["score"], "asks back": r["asks_back"], "held-out loss": r.get("heldout_nll")}
                   for r in rows],
                  "InstructGPT's Figure 1 in miniature")
    section.table([{"size": r["size"], "model": r["method"], "direct": r["cot_direct"],
                    "Let's think step by step": r["cot_step_by_step"]} for r in rows if "cot_direct" in r],
                  "Zero-shot chain of thought on held-out word problems (greedy)")
    section.text("Models this small, this briefly trained, rarely get a 2-4 step word problem right either way; at the "
                 "cpu preset's size (nexttoken instruct pipeline --preset cpu) the 0.79 M-parameter base model goes "
                 "from 5% direct to 50% with \"Let's think step by step\", and PPO-ptx, which keeps training on the "
                 "pretraining mix, from 5% to 44%, where SFT, PPO and DPO lose it (docs/instruct.md).")
    largest = sizes[-1]
    section.image(folder / f"ppo-{largest}" / "ppo_health.png", f"PPO health ({largest})")
    answers = []
    for method, stage, style in (("base", "pretrain", "bare"), ("SFT", "sft", "chat"), ("PPO", "ppo", "chat")):
        policy = load_policy(folder / f"{stage}-{largest}", device)
        for prompt in demo_prompts():
            text = respond(policy, [prompt_for(policy, style, prompt)], 48, temperature=0.7,
                           generator=torch.Generator(policy.device).manual_seed(0)).texts[0]
            answers.append({"prompt": prompt, "model": f"{method} ({largest})", "answer": cut(style, text)})
    section.table(answers, "The same prompts to the base, SFT and PPO models")
    example = next((r.get("cot_example") for r in rows if r.get("cot_example")), "")
    if example:
        section.code(example)
    headline = read_json(folder / "evaluate" / "summary.json").get("headline")
    if headline:
        section.text(f"Smallest PPO model ({headline['small_ppo']}) against the reference: "
                     f"{headline['small_ppo_win_rate']:.2f}; largest base model ({headline['large_base']}, "
                     f"{headline['size_ratio']:.1f}x its parameters): {headline['large_base_win_rate']:.2f}.")
    return section
