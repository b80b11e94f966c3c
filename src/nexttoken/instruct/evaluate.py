"""The measurements of InstructGPT and of zero-shot chain of thought, in miniature: win rates against a reference
judged by a held-out labeler, few-shot prompting of base models, the held-out pretraining likelihood (the alignment
tax), and direct against "Let's think step by step" accuracy on multi-step problems.

Ouyang et al. 2022 (https://arxiv.org/abs/2203.02155): Figure 1 is the win rate of each model against the 175B SFT
model, judged by labelers who wrote no training data; base GPT-3 is prompted plainly or with a few-shot prefix.
Kojima et al. 2022 (https://arxiv.org/abs/2205.11916): stage 1 samples greedily after "Q: ... A: Let's think step by
step.", stage 2 appends "Therefore, the answer (arabic numerals) is" and reads the number; the direct baseline asks
"Q: ... A: The answer (arabic numerals) is".

A model is asked in one of three styles: ``bare`` (the instruction and a newline: what a base model sees),
``few_shot`` (worked Q/A examples from the demonstrations first, the answer cut at the blank line that ends it) and
``chat`` (the chat format that SFT teaches).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from nexttoken.config import option
from nexttoken.errors import warn
from nexttoken.instruct.corpus import ANSWER_TRIGGER, COT_TRIGGER, Demonstration, demonstrations, qa_prompt
from nexttoken.instruct.labeler import HELD_OUT_LABELER, Labeler, following, win_rate
from nexttoken.instruct.policy import Policy, lm_loss_sum, respond, respond_all
from nexttoken.instruct.tasks import FAMILIES, make_tasks, score
from nexttoken.instruct.world import Task, World, first_number, looks_like_instruction
from nexttoken.progress import Progress

STYLES = ("bare", "few_shot", "chat")
DIRECT_TRIGGER = "The answer (arabic numerals) is"  # Kojima et al.'s zero-shot baseline


@dataclass
class EvalConfig:
    tasks: int = option(180, "held-out instructions to answer (the families take turns)", ge=1, le=100_000)
    seed: int = option(0, "seed of the held-out instructions", ge=0)
    temperature: float = option(0.7, "sampling temperature of every model's answers (0: greedy)", ge=0, le=10)
    max_new_tokens: int = option(64, "longest answer in tokens", ge=1, le=4096)
    shots: int = option(3, "worked examples before the instruction in the few-shot style", ge=1, le=16)
    cot_tasks: int = option(100, "held-out word problems for the chain-of-thought comparison (0: skip it)", ge=0)
    cot_tokens: int = option(96, "tokens of stage 1's reasoning", ge=1, le=4096)
    batch_size: int = option(64, "prompts sampled at once", ge=1)
    world_seed: int = option(0, "seed of the generated world", ge=0)


def eval_tasks(world: World, cfg: EvalConfig) -> list[Task]:
    """Held-out instructions of every family (those never demonstrated included). A few families have only a dozen
    held-out instructions (formatting, facts), so an instruction may come twice; each answer is sampled anew."""
    return make_tasks(world, cfg.tasks, cfg.seed, families=tuple(FAMILIES), split="eval", unique=False)


# ---- asking a model -------------------------------------------------------------------------------------------------
def example_pool(world: World, n: int = 64) -> list[Demonstration]:
    return demonstrations(world, n, seed=1234)


def few_shot_prompt(instruction: str, examples: Sequence[Demonstration]) -> str:
    """Worked examples in the corpus's Q/A layout, then the question.

    >>> from nexttoken.instruct.world import Task
    >>> ex = Demonstration(Task("arithmetic", "add", "What is 1 + 1?", "2"), "", "2")
    >>> few_shot_prompt("What is 2 + 2?", [ex])
    'Q: What is 1 + 1?\\nA: 2\\n\\nQ: What is 2 + 2?\\nA:'
    """
    return "".join(f"{qa_prompt(e.task.instruction)} {e.response}\n\n" for e in examples) + qa_prompt(instruction)


def prompt_for(policy: Policy, style: str, instruction: str, pool: Sequence[Demonstration] = (), shots: int = 3,
               answer_tokens: int = 0) -> str:
    """The prompt that asks ``instruction`` in ``style``. A few-shot prompt that would leave fewer than
    ``answer_tokens`` of the context for the answer loses whole examples, the first first: cut from the left, as an
    over-long prompt is, it would open on half an example."""
    if style == "bare":
        return instruction + "\n"
    if style == "few_shot":
        rng = random.Random(f"shots:{instruction}")  # the same examples for a question whatever the model
        examples = rng.sample(list(pool), shots)
        room = policy.context - answer_tokens
        while examples and len(policy.tokenizer.encode(few_shot_prompt(instruction, examples))) > room:
            examples = examples[1:]
        return few_shot_prompt(instruction, examples)
    return policy.chat_prompt(instruction)


def cut(style: str, text: str) -> str:
    """The answer within a continuation: in the Q/A layouts it ends at the blank line (or the next question).

    >>> cut("few_shot", " 4\\n\\nQ: What is 3 + 3?")
    '4'
    """
    if style == "few_shot":
        for stop in ("\n\n", "\nQ:"):
            text = text.split(stop)[0]
    return text.strip()


def answer(policy: Policy, tasks: Sequence[Task], style: str, cfg: EvalConfig, world: World,
           progress: Progress | None = None, seed: int = 1) -> list[str]:
    """One sampled answer per task, asked in ``style`` (few-shot examples come from ``world``). Every model answers
    with the same ``seed``. ``progress`` (its total set here) counts the prompts."""
    pool = example_pool(world) if style == "few_shot" else ()
    prompts = [prompt_for(policy, style, t.instruction, pool, cfg.shots, cfg.max_new_tokens) for t in tasks]
    warn_if_cut(policy, prompts, cfg.max_new_tokens, "--max-new-tokens")
    if progress is not None:
        progress.set_total(len(prompts))
    texts = respond_all(policy, prompts, cfg.max_new_tokens, cfg.batch_size, seed, progress,
                        temperature=cfg.temperature)
    return [cut(style, t) for t in texts]


# ---- measurements ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def heldout_nll(policy: Policy, pages: Sequence[str], batch_size: int = 16, progress: Progress | None = None) -> float:
    """Mean negative log-likelihood (nats per token) of held-out pretraining pages, EOS included. ``progress`` (its
    total set here) counts the pages."""
    if progress is not None:
        progress.set_total(len(pages))
    was_training = policy.training
    policy.eval()
    tok, device = policy.tokenizer, policy.device
    total, count = 0.0, 0
    for i in range(0, len(pages), batch_size):
        rows = [tok.encode(p, eos=True)[: policy.context + 1] for p in pages[i : i + batch_size]]
        width = max(map(len, rows)) - 1
        ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
        targets = torch.full((len(rows), width), -1, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            ids[j, : len(row) - 1] = torch.tensor(row[:-1])
            targets[j, : len(row) - 1] = torch.tensor(row[1:])
            mask[j, : len(row) - 1] = 1
        batch = {"ids": ids.to(device), "mask": mask.to(device), "targets": targets.to(device)}
        total += float(lm_loss_sum(policy, batch))
        count += int((targets != -1).sum())
        if progress is not None:
            progress.update(len(rows))
    policy.train(was_training)
    return total / max(count, 1)


@dataclass
class WinRate:
    rate: float  # share of tasks where the judge prefers the model's answer, ties counting half
    ci95: float  # half-width of the normal-approximation 95% interval
    score: float  # mean checker score of the model's answers (correctness alone)
    following: float  # mean instruction-following of the answers (answering rather than continuing a list)
    utility: float  # the judge's mean noiseless utility of the answers (correctness, following and brevity)
    asks_back: float  # share of answers that go on, after answering, with a question or request of their own


def judge(tasks: Sequence[Task], outputs: Sequence[str], reference: Sequence[str],
          labeler: Labeler = HELD_OUT_LABELER) -> WinRate:
    """The model's answers against the reference's, judged by ``labeler`` (the held-out one by default).

    >>> tasks = [Task("arithmetic", "add", "What is 2 + 3?", "5")] * 2
    >>> judge(tasks, ["5", "5"], ["6", "What is 4 + 4?"]).rate
    1.0
    """
    rate = win_rate(tasks, outputs, reference, labeler)
    return WinRate(rate, 1.96 * math.sqrt(max(rate * (1 - rate), 1e-12) / len(tasks)),
                   **answer_stats(tasks, outputs, labeler))


def answer_stats(tasks: Sequence[Task], outputs: Sequence[str], labeler: Labeler = HELD_OUT_LABELER) -> dict:
    """Means over a model's answers: checker ``score``, ``following``, ``labeler``'s noiseless ``utility``, and the
    share that ``asks_back``.

    >>> answer_stats([Task("arithmetic", "add", "What is 2 + 3?", "5")] * 2, ["5", "5\\nShall I explain?"])["asks_back"]
    0.5
    """
    n = len(tasks)
    return {"score": sum(score(t, o) for t, o in zip(tasks, outputs)) / n,
            "following": sum(following(t, o) for t, o in zip(tasks, outputs)) / n,
            "utility": sum(labeler.utility(t, o) for t, o in zip(tasks, outputs)) / n,
            "asks_back": sum(asks_back(o) for o in outputs) / n}


def asks_back(output: str) -> bool:
    """True when a line after the first asks rather than answers (a chatty demonstrator's follow-up question).

    >>> asks_back("5\\nWould you like me to explain how I got it?"), asks_back("- frog\\n- owl")
    (True, False)
    """
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return any(looks_like_instruction(ln) for ln in lines[1:])


@dataclass
class ChainOfThought:
    direct: float  # accuracy answering at once
    step_by_step: float  # accuracy after "Let's think step by step." (two stages)
    n: int
    example: str  # one stage-1 reasoning and its answer, to show


def multi_step_tasks(world: World, cfg: EvalConfig) -> list[Task]:
    """Held-out word problems of 2 to 4 steps (eval split: never in the corpus or a demonstration)."""
    return make_tasks(world, cfg.cot_tasks, cfg.seed, families=("word_problem",), split="eval")


def chain_of_thought(policy: Policy, tasks: Sequence[Task], cfg: EvalConfig,
                     progress: Progress | None = None) -> ChainOfThought:
    """Kojima et al.'s comparison, greedy throughout: direct "The answer (arabic numerals) is" against the two-stage
    zero-shot chain of thought, each answer cleansed as theirs: the first number written after the trigger.
    ``progress`` (its total set here) counts the prompts of the three passes."""
    if progress is not None:
        progress.set_total(3 * len(tasks))
    direct_prompts = [qa_prompt(t.instruction, DIRECT_TRIGGER) for t in tasks]
    direct = _greedy(policy, direct_prompts, 8, cfg.batch_size, progress=progress)
    stage1_prompts = [qa_prompt(t.instruction, COT_TRIGGER) for t in tasks]
    warn_if_cut(policy, stage1_prompts, cfg.cot_tokens, "--cot-tokens")  # stage 2's keep their end, the trigger
    reasons = [cut("few_shot", r) for r in _greedy(policy, stage1_prompts, cfg.cot_tokens, cfg.batch_size,
                                                   "--cot-tokens", progress)]
    stage2_prompts = [f"{p} {r} {ANSWER_TRIGGER}" for p, r in zip(stage1_prompts, reasons)]
    finals = _greedy(policy, stage2_prompts, 8, cfg.batch_size, progress=progress)
    n = len(tasks)
    acc_direct = sum(first_number(a) == int(t.answer) for t, a in zip(tasks, direct)) / max(n, 1)
    acc_cot = sum(first_number(a) == int(t.answer) for t, a in zip(tasks, finals)) / max(n, 1)
    example = f"{stage2_prompts[0]} {cut('few_shot', finals[0])}" if n else ""
    return ChainOfThought(acc_direct, acc_cot, n, example)


def warn_if_cut(policy: Policy, prompts: Sequence[str], new_tokens: int, flag: str) -> None:
    """One line when prompts are longer than the context leaves beside ``flag``'s tokens: the model reads only their
    ends (as `chat` says of each), so what is scored are answers to cut questions."""
    room = policy.context - new_tokens
    if room <= 0:  # no room at all: respond's check_room says so
        return
    n = sum(len(policy.tokenizer.encode(p)) > room for p in prompts)
    if n:
        warn(f"{n} of {len(prompts)} prompts are longer than the {room} tokens that the model's context of "
             f"{policy.context} leaves beside {flag} {new_tokens}; it reads only their last {room}")


def _greedy(policy: Policy, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
            flag: str = "--max-new-tokens", progress: Progress | None = None) -> list[str]:
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out += respond(policy, prompts[i : i + batch_size], max_new_tokens, temperature=0.0, flag=flag).texts
        if progress is not None:
            progress.update(len(prompts[i : i + batch_size]))
    return out
