"""`nexttoken instruct pipeline`: every stage of InstructGPT in order, each a run folder inside one pipeline folder,
ending with the evaluation that draws Figure 1, the alignment tax and the chain-of-thought table.

    FOLDER/pipeline.json          the pipeline's settings
    FOLDER/pretrain-<size>/       base models (the first trains the tokenizer the others share)
    FOLDER/sft-<size>/            supervised fine-tuning on demonstrations
    FOLDER/rank/                  K outputs of the SFT models per prompt, ranked by the simulated labeler panel
    FOLDER/reward/                one reward model from the largest SFT model (InstructGPT used one 6B RM for all)
    FOLDER/ppo-<size>/, ppo_ptx-<size>/, dpo-<size>/
    FOLDER/evaluate/              results.json, results.md, win_rates.png, every model's answers

A stage whose folder holds summary.json is done and skipped; one with a config.json but no summary was killed and is
resumed from its checkpoint; the rest start fresh. So a killed pipeline, started again with the same command,
continues where it stopped. Presets size it: ``demo`` (about a minute on a 2-core CPU, for `nexttoken demo`), ``cpu``
(the measured results in docs/instruct.md: 66 minutes on 2 cores, run two stages at a time) and ``gpu``.

Ouyang et al. 2022, https://arxiv.org/abs/2203.02155.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType


from nexttoken.config import check, load, option, resumed
from nexttoken.distributed import Dist, barrier
from nexttoken.errors import UserError, warn
from nexttoken.instruct import dpo, ppo, pretrain, rankings, results, reward, sft
from nexttoken.instruct.stage import finished, open_stage
from nexttoken.files import atomic_write_json, read_json
from nexttoken.runs import run_kind

# stage kind -> the module that runs it (CONFIGS, DEFAULTS, run_stage)
MODULES: dict[str, ModuleType] = {"pretrain": pretrain, "sft": sft, "rank": rankings, "reward": reward, "ppo": ppo,
                                  "dpo": dpo, "evaluate": results}

# preset -> sizes and, per stage kind, {config name: {field: value}} over the stage's defaults
PRESETS: dict[str, dict] = {
    "demo": {
        "sizes": ["tiny", "small"],
        "pretrain": {"pretrain": {"corpus_chars": 600_000, "context": 128}, "loop": {"steps": 150, "batch_size": 8}},
        "sft": {"sft": {"demonstrations": 2000}, "loop": {"steps": 60, "batch_size": 16}},
        "rank": {"rank": {"prompts": 128, "max_new_tokens": 32}},
        "reward": {},
        "ppo": {"ppo": {"iterations": 8, "rollouts": 16, "max_new_tokens": 32, "norm_samples": 32,
                        "ptx_chars": 100_000}},
        "dpo": {},
        "evaluate": {"eval": {"tasks": 36, "cot_tasks": 12, "max_new_tokens": 40, "cot_tokens": 64}},
    },
    "cpu": {
        "sizes": ["tiny", "small", "medium"],
        "pretrain": {"loop": {"steps": 3000}},
        "sft": {"loop": {"steps": 1000}},
        "rank": {"rank": {"prompts": 6000}},
        # InstructGPT trains one epoch on 33k prompts (more overfits); on 6k prompts and a 1M-parameter backbone one
        # epoch leaves the reward model short of what it can learn (measured: accuracy still rising at 3 epochs)
        "reward": {"reward": {"epochs": 3}},
        "ppo": {"ppo": {"iterations": 50, "rollouts": 32}},
        "dpo": {},
        "evaluate": {},
    },
    "gpu": {
        "sizes": ["small", "medium", "large", "xl"],
        "pretrain": {"loop": {"steps": 5000, "batch_size": 64}},
        "sft": {"loop": {"steps": 1500, "batch_size": 64}},
        "rank": {"rank": {"prompts": 8000, "k": 6}},
        "reward": {"loop": {"batch_size": 16}},
        "ppo": {"ppo": {"iterations": 300, "rollouts": 128, "minibatch": 32, "kl_horizon": 400}},
        "dpo": {"loop": {"batch_size": 16}},
        "evaluate": {"eval": {"tasks": 450, "cot_tasks": 300}},
    },
}


@dataclass
class PipelineConfig:
    preset: str = option("cpu", "scale of every stage: demo (a minute), cpu (an hour or more on 2 cores), gpu",
                         choices=tuple(PRESETS))
    sizes: list[str] = option(default_factory=list, help="model sizes, smallest first (default: the preset's)")
    ptx_coef: float = option(1.0, "PPO-ptx: weight of the pretraining loss", gt=0, le=1000)
    chatty: float = option(0.5, "share of SFT demonstrations that end with a follow-up question the labelers rank "
                                "lower (0: ideal demonstrations, which leave PPO nothing to improve on)", ge=0, le=1)
    ppo_group: int = option(1, "PPO's responses per prompt: 1 is InstructGPT's value head; above 1 a leave-one-out "
                               "baseline per prompt (RLOO)", ge=1, le=64)
    ppo_target_kl: float = option(4.0, "PPO's KL per response that the adaptive controller steers beta to, so the "
                                       "KL stays bounded as the reward rises (0: InstructGPT's fixed beta, under "
                                       "which it keeps growing)", ge=0, le=1000)

    def __post_init__(self) -> None:
        check(self)
        order = list(pretrain.SIZES)
        unknown = [s for s in self.sizes if s not in order]
        if unknown:
            raise UserError(f"unknown size {unknown[0]!r}; choose from {', '.join(order)}")
        # the reward model and the tokenizer come from the ends of the list, so its order has a meaning
        places = [order.index(s) for s in self.sizes]
        if places != sorted(set(places)):
            raise UserError(f"--sizes {','.join(self.sizes)}: give each size once, smallest first "
                            f"({', '.join(order)})")
        k = rankings.RankConfig(**PRESETS[self.preset].get("rank", {}).get("rank", {})).k
        if len(self.model_sizes) > k:
            raise UserError(f"--sizes names {len(self.model_sizes)} sizes, but the {self.preset} preset ranks {k} "
                            f"outputs a prompt and each model writes one; give at most {k} sizes")

    @property
    def model_sizes(self) -> list[str]:
        return self.sizes or PRESETS[self.preset]["sizes"]


@dataclass
class Stage:
    name: str  # the folder inside the pipeline folder
    kind: str  # pretrain, sft, rank, reward, ppo, dpo, evaluate
    configs: dict  # {config name: dataclass}


def stage_configs(kind: str, preset: dict, **overrides: dict) -> dict:
    """The configs of one stage: dataclass defaults, then the stage's DEFAULTS, the preset's, then ``overrides``."""
    module = MODULES[kind]
    out = {}
    for name, cls in module.CONFIGS.items():
        values = {**module.DEFAULTS.get(name, {}), **preset.get(kind, {}).get(name, {}), **overrides.get(name, {})}
        out[name] = check(replace(cls(), **values))
    return out


def plan(folder: Path, cfg: PipelineConfig) -> list[Stage]:
    """Every stage in order, with the inputs it reads from the stages before it."""
    p, sizes = PRESETS[cfg.preset], cfg.model_sizes
    stages = []
    for i, size in enumerate(sizes):
        tok = "" if i == 0 else str(folder / f"pretrain-{sizes[0]}" / "tokenizer.json")
        lr = {"lr": pretrain.default_lr(size)}
        stages.append(Stage(f"pretrain-{size}", "pretrain",
                            stage_configs("pretrain", p, pretrain={"size": size, "tokenizer": tok}, optim=lr)))
    for size in sizes:
        stages.append(Stage(f"sft-{size}", "sft", stage_configs("sft", p, sft={"init": str(folder / f"pretrain-{size}"),
                                                                               "chatty": cfg.chatty})))
    rank_dir, rm_dir = folder / "rank", folder / "reward"
    stages.append(Stage("rank", "rank", stage_configs("rank", p, rank={"models": [str(folder / f"sft-{s}")
                                                                                  for s in sizes]})))
    stages.append(Stage("reward", "reward", stage_configs("reward", p, reward={
        "init": str(folder / f"sft-{sizes[-1]}"), "rankings": str(rank_dir)})))
    for size in sizes:
        init = str(folder / f"sft-{size}")
        common = {"init": init, "reward_model": str(rm_dir), "group": cfg.ppo_group,
                  "target_kl": cfg.ppo_target_kl}
        stages.append(Stage(f"ppo-{size}", "ppo", stage_configs("ppo", p, ppo=common)))
        stages.append(Stage(f"ppo_ptx-{size}", "ppo",
                            stage_configs("ppo", p, ppo={**common, "ptx_coef": cfg.ptx_coef})))
        stages.append(Stage(f"dpo-{size}", "dpo", stage_configs("dpo", p, dpo={"init": init,
                                                                                "rankings": str(rank_dir)})))
    stages.append(Stage("evaluate", "evaluate", stage_configs("evaluate", p, results={
        "pipeline": str(folder), "sizes": sizes})))
    return stages


def settings(folder: Path, cfg: PipelineConfig, given: dict) -> PipelineConfig:
    """The pipeline's settings: those saved in FOLDER/pipeline.json by its first start, which a later start keeps (a
    flag that would change them is refused), else ``cfg``. The sizes are spelled out, so that naming the preset's
    sizes again changes nothing."""
    saved_file = folder / "pipeline.json"
    if not saved_file.is_file():
        return replace(cfg, sizes=cfg.model_sizes)
    # a folder started before PPO steered its KL keeps the fixed beta its finished PPO stages trained with
    saved = load(PipelineConfig, {"ppo_target_kl": 0.0, **read_json(saved_file)}, str(saved_file))
    return resumed(replace(saved, sizes=saved.model_sizes), given)


def check_folder(folder: Path) -> None:
    """A pipeline starts in a new or empty folder, or continues in its own (which holds pipeline.json)."""
    if (folder / "pipeline.json").is_file() or not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder; choose another --out")
    kind = run_kind(folder)
    if kind is not None:
        raise UserError(f"{folder} is a run folder ({kind or 'unnamed'}), not an instruct pipeline folder; choose "
                        f"another --out")
    if any(folder.iterdir()):
        raise UserError(f"{folder} holds other files; an instruct pipeline starts in a new or empty folder")


def needs(stage: Stage, stages: list[Stage], folder: Path) -> list[str]:
    """The stages whose results ``stage`` reads: those its settings name, and every other one for the evaluation."""
    if stage.kind == "evaluate":
        return [s.name for s in stages if s.kind != "evaluate"]
    named = {part for cfg in stage.configs.values() for v in asdict(cfg).values() if isinstance(v, str)
             for part in v.split(",")}
    return [s.name for s in stages if str(folder / s.name) in named]


def run_pipeline(folder: str | Path, cfg: PipelineConfig, dist: Dist, only: list[str] | None = None,
                 given: dict | None = None, progress: bool = True) -> dict:
    """Run (or continue) every stage, or the stages named in ``only``; returns the evaluation's summary when it ran.

    Under torchrun every process runs every stage (``dist``): each trains or samples its share, rank 0 alone writes
    and evaluates, and all of them look at a stage's folder before rank 0 writes in it and wait for each other after
    it, so they agree on what is done."""
    folder = Path(folder)
    check_folder(folder)
    cfg = settings(folder, cfg, given or {})
    stages = plan(folder, cfg)
    names = [s.name for s in stages]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; the stages of {folder} are: {', '.join(names)}")
    to_run = [s for s in stages if (not only or s.name in only) and not finished(folder / s.name)]
    running = {s.name for s in to_run}
    for stage in to_run:  # the stages run in order, so a stage they need either has run or runs before them
        missing = [n for n in needs(stage, stages, folder) if not finished(folder / n) and n not in running]
        if missing:
            raise UserError(f"{stage.name} needs {missing[0]}, which has not run to its end; run the pipeline without "
                            f"--stages, or with --stages {missing[0]},{stage.name}")
    if dist.is_main and not (folder / "pipeline.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "pipeline.json", asdict(cfg))
    summary: dict = {}
    made = []  # the stages this call trained
    for stage in stages:
        path = folder / stage.name
        if (only and stage.name not in only) or finished(path):
            if stage.kind == "evaluate" and made and finished(path) and dist.is_main:
                warn(f"{path} judged the models before {', '.join(made)} was made again; delete it and run the "
                     f"pipeline again to judge the new ones")
            continue
        made.append(stage.name)
        resume = (path / "config.json").is_file()
        barrier(dist)  # every process has looked before rank 0 writes
        if dist.is_main:
            print(f"instruct pipeline: {'resuming' if resume else 'running'} {stage.name}", file=sys.stderr, flush=True)
        run, configs = open_stage(path, stage.kind, stage.configs, resume, enabled=dist.is_main)
        with run:
            summary = MODULES[stage.kind].run_stage(configs, run, dist, resume, progress)
        barrier(dist)
    if finished(folder / "evaluate"):
        summary = read_json(folder / "evaluate" / "summary.json")
    return summary

