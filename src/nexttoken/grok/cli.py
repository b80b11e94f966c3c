"""`nexttoken grok table | train | sweep | analyze`: each verb parses its flags and calls the library."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from nexttoken import config
from nexttoken.cli import add_device_option
from nexttoken.errors import UserError
from nexttoken.grok.sweep import SweepConfig
from nexttoken.grok.train import PRESETS, GrokConfig, TrainOptions
from nexttoken.runs import default_run_dir


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True)

    table = sub.add_parser("table", help="print every equation of an operation, one per line")
    config.add_options(table, GrokConfig, skip=tuple(f.name for f in fields(GrokConfig) if f.name not in ("op", "p")))
    table.set_defaults(func=cmd_table)

    train = sub.add_parser("train", help="train one run (Power et al.'s model and optimiser by default)")
    add_run_options(train, resume_help="continue a killed run from its folder (more --steps may be given; the other "
                                       "settings are the saved ones)")
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="many runs (ops x fractions x seeds x settings) trained as vmapped ensembles")
    add_run_options(sweep, skip=("snapshots",), resume_help="continue a killed sweep from its folder (its settings "
                                                            "are the saved ones)")
    config.add_options(sweep, SweepConfig)
    sweep.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                       help="also sweep a training option, e.g. --grid weight_decay=0,1 (repeatable)")
    sweep.set_defaults(func=cmd_sweep, distributed=True)

    analyze = sub.add_parser("analyze", help="curves, embedding maps, Fourier spectrum and progress measures of a run")
    analyze.add_argument("run", type=Path, help="a run folder written by `grok train` (or a sweep's group-NNN folder)")
    add_device_option(analyze)
    analyze.set_defaults(func=cmd_analyze)


def add_run_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = (), resume_help: str = "") -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="paper: Power et al.'s model as their code builds it (default); modern: pre-LN GPT-2 block; "
                        "nanda: 1-layer full-batch x+y mod 113")
    config.add_options(p, GrokConfig, presets={k: v for k, v in PRESETS.items() if v})
    config.add_options(p, TrainOptions, skip=skip)
    add_device_option(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/grok-<verb>-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN", help=resume_help)


def requested(args: argparse.Namespace) -> dict:
    """The GrokConfig settings the command line asks for: the preset's, then the flags given."""
    return {**PRESETS[args.preset or "paper"], **config.given(args, GrokConfig)}


def preset_settings(args: argparse.Namespace) -> tuple[str, dict] | None:
    """The preset given and the settings it decides (those no typed flag overrides), to name it when they differ."""
    if not args.preset:
        return None
    typed = config.given(args, GrokConfig)
    return args.preset, {k: v for k, v in PRESETS[args.preset].items() if k not in typed}


def base_config(args: argparse.Namespace) -> GrokConfig:
    return GrokConfig(**requested(args)).validate()


def _device(args: argparse.Namespace):
    from nexttoken.training import pick_device

    return pick_device(args.device)


def cmd_table(args: argparse.Namespace) -> int:
    from nexttoken.grok.data import check_op, lines

    cfg = config.check(GrokConfig(**config.given(args, GrokConfig)))
    check_op(cfg.op, cfg.p)
    out = sys.stdout
    for line in lines(cfg.op, cfg.p):  # streamed: a table of any size prints without being held in memory
        out.write(line + "\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nexttoken.grok.evaluate import plot_curves
    from nexttoken.grok.train import resume, start, train

    device = _device(args)
    if args.resume:
        resumed = resume(args.resume, device, requested(args), config.given(args, TrainOptions),
                         preset=preset_settings(args))
        run, cfg, options = resumed.run, resumed.config, resumed.options
        if resumed.finished:
            print(f"grok: {run.path} has already finished; nothing to train", file=sys.stderr)
    else:
        cfg, options = base_config(args), config.from_args(args, TrainOptions)
        refuse_unused(cfg, config.given(args, GrokConfig))
        run = start(cfg, options, args.out or default_run_dir("grok", "train"), device)
        task = cfg.op if cfg.op.startswith("s5:") else f"{cfg.op} mod {cfg.p}"  # S5 has no modulus
        print(f"grok: {task}, {cfg.frac:.0%} training data, up to {cfg.steps:,} steps on {device.type} "
              f"-> {run.path}", file=sys.stderr)
    with run:
        summary = train(cfg, run, device, resume=bool(args.resume), options=options)
        plot_curves(run)
    print(summary_line(summary))
    print(f"run folder: {run.path}")
    return 0


# settings that only matter under another one: typed without it, they would be silently ignored
USED_ONLY_WITH = {"grokfast_alpha": ("grokfast", ("ema",)), "grokfast_window": ("grokfast", ("ma",)),
                  "grokfast_lambda": ("grokfast", ("ema", "ma")), "init_std": ("init", ("gpt2",))}


def refuse_unused(cfg: GrokConfig, typed: dict, grid: dict | None = None) -> None:
    """A setting typed, or swept with ``--grid``, where what it depends on ignores it, is refused: a sweep over it
    would train the same runs under different names."""
    grid = grid or {}
    for name, (needs, values) in USED_ONLY_WITH.items():
        if name in typed or name in grid:
            ignored = [v for v in grid.get(needs, [getattr(cfg, needs)]) if v not in values]
            if ignored:
                where = f"--grid {name}" if name in grid else config.flag_name(name)
                raise UserError(f"{where} is used only with {config.flag_name(needs)} {' or '.join(values)}, "
                                f"not {ignored[0]}")
    ops = grid.get("op", [cfg.op])
    if len(grid.get("p", ())) > 1 and all(op.startswith("s5:") for op in ops):  # S5 has no modulus
        raise UserError(f"--grid p: the permutation operations ({', '.join(ops)}) have no modulus; each value "
                        f"would train the same runs")


def summary_line(s: dict) -> str:
    reach = f"val 99% at step {s['steps_to_val_99']:,} ({s['wall_s_to_val_99']:.1f} s)" if s["steps_to_val_99"] else \
        "val never reached 99%"
    train99 = f"train 99% at step {s['steps_to_train_99']:,}" if s["steps_to_train_99"] else "train never reached 99%"
    return (f"{train99}; {reach}; final train {s['final_train_acc']:.3f} val {s['final_val_acc']:.3f} "
            f"(best val {s['best_val_acc']:.3f}) on {s['device']}")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Under torchrun rank 0 plans the sweep and claims its folder, and every process trains its share of the
    ensembles on its own GPU (``run_sweep``); rank 0 writes the results."""
    import contextlib
    import time
    from dataclasses import replace

    from nexttoken.distributed import broadcast, init_distributed
    from nexttoken.grok.sweep import make_grid, resume_sweep, run_sweep, start_sweep, write_results

    dist = init_distributed(args.device)
    device = dist.device
    given = config.given(args, SweepConfig)
    typed = config.given(args, GrokConfig)
    shape = config.from_args(args, SweepConfig)
    sweep = None
    if args.resume:
        grid = make_grid(shape, args.op or GrokConfig.op, args.grid)
        refuse_unswept(typed, given, grid)
        asked = {"op": "ops" in given or args.op is not None, "frac": "fracs" in given, "seed": "seeds" in given}
        grid = {k: v for k, v in grid.items() if asked.get(k, True)}
        if dist.is_main:
            sweep = resume_sweep(args.resume, requested(args), grid, given.get("max_ensemble"),
                                 config.given(args, TrainOptions), typed=typed, preset=preset_settings(args))
    else:
        base = base_config(args)
        grid = make_grid(shape, base.op, args.grid)
        refuse_unswept(typed, given, grid)
        refuse_unused(base, typed, grid)
        if dist.is_main:
            sweep = start_sweep(base, grid, shape.max_ensemble, config.from_args(args, TrainOptions),
                                args.out or default_run_dir("grok", "sweep"), device, processes=dist.world_size)
    plan, out = broadcast(dist, sweep and (replace(sweep, folder=None), sweep.folder.path))
    if args.resume and (out / "summary.json").exists():
        if sweep:
            sweep.folder.close()
            print(f"grok: {out} has already finished; nothing to train", file=sys.stderr)
        print(f"sweep folder: {out}")
        return 0
    if dist.is_main:
        where = f"{dist.world_size} processes" if dist.enabled else device.type
        print(f"grok sweep: {len(plan.configs)} runs on {where} -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    with sweep.folder if sweep else contextlib.nullcontext():
        rows = run_sweep(plan.configs, plan.grid, out, device, resume=bool(args.resume),
                         max_ensemble=plan.max_ensemble, options=plan.options, progress=dist.is_main, dist=dist,
                         processes=plan.processes)
        wall = time.perf_counter() - t0
        if sweep:
            write_results(rows, out, max(c.steps for c in plan.configs),
                          {"wall_s": round(wall, 2), "device": device.type, "processes": dist.world_size})
    reached = sum(r["steps_to_val_99"] is not None for r in rows)
    print(f"{len(rows)} runs in {wall:.1f} s; {reached} reached 99% validation accuracy")
    print(f"sweep folder: {out}")
    return 0


def refuse_unswept(typed: dict, given: dict, grid: dict) -> None:
    """A flag the sweep would ignore or override is refused, naming the flag that sets it in a sweep."""
    if "frac" in typed:
        raise UserError("--frac is not used by a sweep; give its training fractions with --fracs")
    if "seed" in typed:
        raise UserError("--seed is not used by a sweep; --seeds N trains seeds 0..N-1")
    if "op" in typed and "ops" in given:
        raise UserError("--op and --ops both given; give the sweep's operations with --ops alone")
    for name in typed:
        if name in grid and name not in ("op", "frac", "seed"):
            raise UserError(f"{config.flag_name(name)} and --grid {name} both given; give its values with "
                            f"--grid {name}=V1,V2 alone")


def cmd_analyze(args: argparse.Namespace) -> int:
    from nexttoken.grok.evaluate import analyze
    from nexttoken.grok.train import GROUP_KIND, KIND, open_run

    from nexttoken.grok.sweep import KIND as SWEEP_KIND

    group = next(iter(sorted(args.run.glob("group-*"))), args.run / "group-000")
    hint = f"analyze one of its group-NNN folders instead, e.g. {group} (the group's first run)"
    run = open_run(args.run, kinds=(KIND, GROUP_KIND), hints={SWEEP_KIND: hint})
    for path in analyze(run, _device(args)):
        print(path)
    return 0


def demo(out: Path, device) -> "Section":  # noqa: F821
    from nexttoken.grok.demo import section

    return section(out, device)
