"""`nexttoken grok table | train | sweep | analyze` and the grokking section of `nexttoken demo`."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from nexttoken.cli import add_device_option
from nexttoken.errors import UserError
from nexttoken.grok.data import OPERATIONS, make_table
from nexttoken.grok.train import PRESETS, GrokConfig, config_from_dict, train
from nexttoken.runs import Run, default_run_dir

HELP = "grokking: small transformers on algorithmic tables (Power et al. 2022, Nanda et al. 2023)"

OPTION_HELP = {
    "op": "operation: " + ", ".join(OPERATIONS),
    "p": "modulus (a prime for division)",
    "frac": "fraction of all equations used for training",
    "batch_size": "rows per step, capped at half the training set; 0 = full batch",
    "weight_decay": "AdamW decoupled weight decay (0 = Adam without decay)",
    "decay_to_init": "decay toward the initial weights instead of toward zero",
    "l2": "coupled L2 penalty added to the gradient (torch.optim.Adam's weight_decay; Grokfast's runs use 0.005)",
    "grokfast": "Grokfast gradient filter: none, ema or ma",
    "loss": "softmax or stablemax cross-entropy",
    "perp_grad": "drop the gradient component along the weights (perpendicular gradient)",
    "stop_at": "stop once validation accuracy reaches this (0 = use the whole budget)",
    "steps": "budget in optimiser steps",
    "precision": "fp32, or bf16 autocast of the forward pass (weights and optimiser stay fp32)",
}


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def integer(text: str) -> int:
    value = number(text)  # accepts 1e5
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per GrokConfig field; defaults come from --preset (then the dataclass)."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="paper: Power et al.'s model as their code builds it (default); modern: pre-LN GPT-2 block; "
                        "nanda: 1-layer full-batch x+y mod 113")
    for f in fields(GrokConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", default=None, help=OPTION_HELP.get(f.name))
        else:
            kind = {"int": integer, "float": number}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=None, metavar=f.name.upper(),
                           help=f"{OPTION_HELP.get(f.name, '')} (default {f.default})".strip())


def config_from_args(args: argparse.Namespace) -> GrokConfig:
    cfg = replace(GrokConfig(), **PRESETS[args.preset])
    given = {f.name: getattr(args, f.name) for f in fields(GrokConfig) if getattr(args, f.name, None) is not None}
    cfg = replace(cfg, **given)
    cfg.validate()
    return cfg


def add_common(p: argparse.ArgumentParser) -> None:
    add_device_option(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/grok-<verb>-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN", help="continue a killed run from its folder")
    p.add_argument("--eval-ratio", type=number, default=None,
                   help="evaluate when the step grows by this factor (default 1.1 on CPU; on CUDA 1.02, or 1.05 "
                        "for ensembles of more than 16 runs)")
    p.add_argument("--no-cuda-graph", action="store_true", help="run every step eagerly on CUDA")
    p.add_argument("--no-tf32", action="store_true", help="full fp32 matrix products on CUDA (default: TF32)")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True)

    table = sub.add_parser("table", help="print every equation of an operation, one per line")
    table.add_argument("--op", default="x/y", help=OPTION_HELP["op"])
    table.add_argument("--p", type=integer, default=97, help=OPTION_HELP["p"])
    table.set_defaults(func=cmd_table)

    tr = sub.add_parser("train", help="train one run (Power et al.'s model and optimiser by default)")
    add_config_options(tr)
    add_common(tr)
    tr.add_argument("--snapshots", type=integer, default=0,
                    help="keep the weights at this many log-spaced steps (for `grok analyze` progress measures)")
    tr.set_defaults(func=cmd_train)

    sw = sub.add_parser("sweep", help="many runs (ops x fractions x seeds x settings) trained as vmapped ensembles")
    add_config_options(sw)
    add_common(sw)
    sw.add_argument("--ops", default=None, help="comma-separated operations (default: --op)")
    sw.add_argument("--fracs", default="0.3,0.4,0.5,0.6,0.7", help="comma-separated training fractions")
    sw.add_argument("--seeds", type=integer, default=3, help="seeds per setting (0..N-1)")
    sw.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                    help="also sweep a training option, e.g. --grid weight_decay=0,1 (repeatable)")
    sw.add_argument("--max-ensemble", type=integer, default=256, help="most runs trained at once")
    sw.set_defaults(func=cmd_sweep)

    an = sub.add_parser("analyze", help="curves, embedding maps, Fourier spectrum and progress measures of a run")
    an.add_argument("run", type=Path, help="a run folder written by `grok train`")
    add_device_option(an)
    an.set_defaults(func=cmd_analyze)


def cmd_table(args: argparse.Namespace) -> int:
    table = make_table(args.op, args.p)
    out = sys.stdout
    for line in table.lines():
        out.write(line + "\n")
    return 0


def _device(args):
    import torch

    from nexttoken.training import pick_device

    device = pick_device(args.device)
    if device.type == "cuda" and not getattr(args, "no_tf32", False):
        torch.backends.cuda.matmul.allow_tf32 = True  # 10-bit mantissa inputs, fp32 accumulation: ~3x faster products
    return device


def cmd_train(args: argparse.Namespace) -> int:
    device = _device(args)
    if args.resume:
        run = Run.open(args.resume)
        cfg = config_from_dict(run.config["members"][0])
        snapshots = run.config.get("snapshots", 0)
    else:
        cfg = config_from_args(args)
        run = Run.create(args.out or default_run_dir("grok", "train"),
                         {"members": [asdict(cfg)], "snapshots": args.snapshots})
        snapshots = args.snapshots
    print(f"grok: {cfg.op} mod {cfg.p}, {cfg.frac:.0%} training data, up to {cfg.steps:,} steps on {device.type} "
          f"-> {run.path}", file=sys.stderr)
    summary = train(cfg, run, device, resume=bool(args.resume), snapshots=snapshots, eval_ratio=args.eval_ratio,
                    use_cuda_graph=not args.no_cuda_graph)
    from nexttoken.grok.analysis import plot_curves

    plot_curves(run)
    print(_summary_line(summary))
    print(f"run folder: {run.path}")
    return 0


def _summary_line(s: dict) -> str:
    reach = f"val 99% at step {s['steps_to_val_99']:,} ({s['wall_s_to_val_99']:.1f} s)" if s["steps_to_val_99"] else \
        "val never reached 99%"
    train99 = f"train 99% at step {s['steps_to_train_99']:,}" if s["steps_to_train_99"] else "train never reached 99%"
    return (f"{train99}; {reach}; final train {s['final_train_acc']:.3f} val {s['final_val_acc']:.3f} "
            f"(best val {s['best_val_acc']:.3f}) on {s['device']}")


def parse_grid(args: argparse.Namespace) -> dict[str, list]:
    names = {f.name: f for f in fields(GrokConfig)}
    grid: dict[str, list] = {}
    grid["op"] = [o.strip() for o in (args.ops or args.op or GrokConfig.op).split(",") if o.strip()]
    try:
        grid["frac"] = [float(f) for f in args.fracs.split(",")]
    except ValueError:
        raise UserError(f"--fracs must be comma-separated numbers, not {args.fracs!r}") from None
    grid["seed"] = list(range(args.seeds))
    for item in args.grid:
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in names or not values:
            raise UserError(f"--grid expects NAME=V1,V2 with NAME a training option, not {item!r}")
        kind = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}.get(
            str(names[name].type), str)
        try:
            grid[name] = [kind(float(v)) if kind is int else kind(v) for v in values.split(",")]
        except ValueError:
            raise UserError(f"bad value in --grid {item!r}") from None
    return grid


def cmd_sweep(args: argparse.Namespace) -> int:
    from nexttoken.grok.sweep import expand, run_sweep, write_results
    from nexttoken.runs import atomic_write_json, read_json

    device = _device(args)
    if args.resume:
        out = args.resume
        saved = read_json(out / "sweep.json")
        configs = [config_from_dict(c) for c in saved["configs"]]
        grid = saved["grid"]
    else:
        base = config_from_args(args)
        grid = parse_grid(args)
        configs = expand(base, grid)
        for c in configs:
            c.validate()
        out = args.out or default_run_dir("grok", "sweep")
        if (out / "sweep.json").exists():
            raise UserError(f"{out} already holds a sweep; pass --resume {out} to continue it or choose --out")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "sweep.json", {"grid": grid, "configs": [asdict(c) for c in configs]})
    print(f"grok sweep: {len(configs)} runs on {device.type} -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    rows = run_sweep(configs, grid, out, device, resume=bool(args.resume), max_ensemble=args.max_ensemble,
                     eval_ratio=args.eval_ratio, use_cuda_graph=not args.no_cuda_graph)
    wall = time.perf_counter() - t0
    budget = max(c.steps for c in configs)
    write_results(rows, out, budget, {"wall_s": round(wall, 2), "device": device.type})
    reached = sum(r["steps_to_val_99"] is not None for r in rows)
    print(f"{len(rows)} runs in {wall:.1f} s; {reached} reached 99% validation accuracy")
    print(f"sweep folder: {out}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from nexttoken.grok.analysis import analyze

    run = Run.open(args.run)
    if "members" not in run.config:
        raise UserError(f"{args.run} is not a `grok train` run folder")
    for path in analyze(run, _device(args)):
        print(path)
    return 0


def demo(out: Path, device) -> "Section":  # noqa: F821
    """x+y mod 31 at 50% data, modern preset: train 99% at step 70, validation 99% at step 1,453 on the 2-core CPU,
    with weight snapshots for the progress measures; about a minute."""
    from nexttoken.grok.analysis import analyze
    from nexttoken.report import Section

    cfg = replace(GrokConfig(), **PRESETS["modern"], op="x+y", p=31, frac=0.5, steps=2000)
    run = Run.create(out / "train", {"members": [asdict(cfg)], "snapshots": 12})
    summary = train(cfg, run, device, snapshots=12, progress=True)
    paths = analyze(run, device)
    section = Section("Grokking (Power et al. 2022)")
    section.text(
        f"A 2-layer transformer (the 'modern' preset) learns {cfg.op} mod {cfg.p} from {cfg.frac:.0%} of the table "
        f"with AdamW and weight decay 1: it fits the training set long before it generalises. "
        f"{_summary_line(summary)}. The sudden dips are Adam's loss spikes ('slingshots'), common once the loss is tiny."
    )
    section.table([{k: summary[k] for k in ("op", "p", "frac", "steps_to_train_99", "steps_to_val_99",
                                             "wall_s_to_val_99", "final_train_acc", "final_val_acc", "device")}])
    for p in paths:
        section.image(p, p.stem.replace("_", " "))
    return section
