"""Many grokking runs trained together: operations x fractions x seeds x optimiser settings.

    nexttoken grok sweep --ops s5:x*y --fracs 0.25,0.3,0.35,0.4,0.5 --seeds 4 --steps 1e5 --stop-at 0.99
    nexttoken grok sweep --ops x+y,x-y,x/y,x^3+xy^2+y --fracs 0.3,0.5,0.7 --grid weight_decay=0,1

Runs that share a model shape are trained as one vmapped ``Ensemble`` on one device (one group per vocabulary,
dropout, ...), groups one after another. Writes the paper's Figure 1 (center) style plot (median steps to 99%
validation accuracy against the training fraction) and Figure 2 (right) style plot (best validation accuracy per
operation and fraction) and a results table (summary.json) in the sweep's folder, whose config.json holds the grid
and every run; each group trains in its own run folder under it (group-000, ...), so a killed sweep resumes where it
stopped.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from nexttoken import config
from nexttoken.config import option
from nexttoken.distributed import Dist, gather
from nexttoken.errors import Interrupted, UserError
from nexttoken.grok.ensemble import Ensemble
from nexttoken.grok.loop import default_eval_ratio, train_ensemble
from nexttoken.grok.memory import check_memory
from nexttoken.grok.train import (ADJUSTABLE, GROUP_KIND, GrokConfig, TrainOptions, check_preset, device_name,
                                  member_configs, open_run, run_config, saved_options, use_tf32)
from nexttoken.files import atomic_write_json, read_json
from nexttoken.runs import Run

KIND = "grok.sweep"
SWEPT_LABEL_SKIP = {"frac", "seed"}


@dataclass
class SweepConfig:
    """What a sweep varies besides ``--grid``, and how many of its runs train at once."""

    ops: str = option("", "comma-separated operations (default: --op)")
    fracs: str = option("0.3,0.4,0.5,0.6,0.7", "comma-separated training fractions")
    seeds: int = option(3, "seeds per setting (0..N-1)", ge=1, le=10_000)
    max_ensemble: int = option(256, "most runs trained at once", ge=1, le=10**5)


def make_grid(sweep: SweepConfig, op: str, items: list[str]) -> dict[str, list]:
    """The swept values: operations, fractions, seeds, and each ``--grid NAME=V1,V2``, checked as their flags are.

    >>> make_grid(SweepConfig(fracs="0.3,0.5", seeds=2), "x+y", ["weight_decay=0,1"])
    {'op': ['x+y'], 'frac': [0.3, 0.5], 'seed': [0, 1], 'weight_decay': [0.0, 1.0]}
    """
    known = {f.name: f for f in fields(GrokConfig)}
    grid = {"op": _values(known["op"], sweep.ops or op, "--ops"),
            "frac": _values(known["frac"], sweep.fracs, "--fracs"),
            "seed": list(range(sweep.seeds))}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in known or name in ("op", "frac", "seed") or not values:
            raise UserError(f"--grid expects NAME=V1,V2 with NAME a training option, not {item!r}")
        if name in grid:
            raise UserError(f"--grid {name} is given twice; give all its values once, e.g. --grid {name}=V1,V2")
        grid[name] = _values(known[name], values, f"--grid {name}")
    return grid


def _values(f, text: str, where: str) -> list:
    """The comma-separated values of one swept option, converted and checked; each value once, since a repeated one
    would train the same runs twice and count them twice in the medians."""
    values = [_value(f, v, where) for v in text.split(",") if v.strip()]
    if not values:
        raise UserError(f"{where} needs at least one value, not {text!r}")
    for i, v in enumerate(values):
        if v in values[:i]:
            raise UserError(f"{where} lists {v} twice; give each value once")
    return values


def _value(f, text: str, where: str):
    """One value of a swept option, converted to the option's type and checked against its range."""
    text = text.strip()
    if f.type == "bool":
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise UserError(f"{where} takes true or false, not {text!r}")
        return text.lower() in ("1", "true", "yes")
    if f.type in ("int", "float"):
        try:
            text = config.number(text)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"{where}: {e}") from None
    return config.check_field(GrokConfig, f, text, where=where)


def expand(base: GrokConfig, grid: dict[str, list]) -> list[GrokConfig]:
    """Every combination of the grid's values on top of ``base``.

    >>> [(c.op, c.frac) for c in expand(GrokConfig(), {"op": ["x+y", "x-y"], "frac": [0.3, 0.5]})]
    [('x+y', 0.3), ('x+y', 0.5), ('x-y', 0.3), ('x-y', 0.5)]
    """
    names = list(grid)
    return [replace(base, **dict(zip(names, values))) for values in itertools.product(*(grid[n] for n in names))]


def label(cfg: GrokConfig, grid: dict[str, list]) -> str:
    """The swept settings of a run other than fraction and seed, e.g. 'x/y weight_decay=0'."""
    parts = [cfg.op] + [f"{k}={getattr(cfg, k)}" for k, v in grid.items()
                        if k not in SWEPT_LABEL_SKIP | {"op"} and len(v) > 1]
    return " ".join(parts)


def groups(configs: list[GrokConfig], max_size: int, processes: int = 1) -> list[list[int]]:
    """Indices of configs that can share an ensemble, at most ``max_size`` per group, in first-seen order; runs of one
    shape are split into at least ``processes`` groups (when there are that many), so each process gets one.

    >>> groups([GrokConfig(seed=s) for s in range(5)], 4), groups([GrokConfig(seed=s) for s in range(5)], 4, 2)
    ([[0, 1, 2, 3], [4]], [[0, 1, 2], [3, 4]])
    """
    by_key: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        by_key.setdefault(c.shape_key(), []).append(i)
    out = []
    for idx in by_key.values():
        size = min(max_size, -(-len(idx) // processes))
        out += [idx[j : j + size] for j in range(0, len(idx), size)]
    return out


# ---- the sweep folder -------------------------------------------------------------------------------------------
class SweepFolder(Run):
    """A sweep's own folder (config.json with the grid and every run, summary.json, the figures): it has started once
    any of its ensembles has, so a failed start removes it but a failure later keeps the work done."""

    def started(self) -> bool:
        return any(Run(group, {}).started() for group in self.path.glob("group-*"))


@dataclass
class Sweep:
    folder: SweepFolder
    configs: list[GrokConfig]
    grid: dict[str, list]
    max_ensemble: int
    options: TrainOptions
    processes: int = 1  # the processes its groups were planned for (``groups``); any number can resume it


def start_sweep(base: GrokConfig, grid: dict[str, list], max_ensemble: int, options: TrainOptions, out: Path,
                device: torch.device, processes: int = 1) -> Sweep:
    """Check every run of the grid and that each ensemble fits in memory, then claim the sweep's folder (a context
    manager, like a run)."""
    configs = [c.validate() for c in expand(base, grid)]
    for members in groups(configs, max_ensemble, processes):
        check_memory([configs[i] for i in members], device)
    saved = {"grid": grid, "configs": [asdict(c) for c in configs], "max_ensemble": max_ensemble,
             "processes": processes, **asdict(options)}
    return Sweep(SweepFolder.create(out, saved, kind=KIND), configs, grid, max_ensemble, options, processes)


def resume_sweep(path: Path, requested: dict, grid: dict[str, list], max_ensemble: int | None,
                 requested_options: dict, typed: dict | None = None, preset: tuple[str, dict] | None = None) -> Sweep:
    """Claim a killed sweep to continue it. Settings given again must equal the saved ones: ``requested`` training
    options, the ``grid`` entries given, ``max_ensemble``; only the checkpoint intervals may change. ``typed``: the
    training options typed as flags, so that a swept one is refused and ``--op`` is named as typed."""
    typed = typed or {}
    if not (path / "config.json").exists() and (path / "sweep.json").is_file():  # saved before sweeps named their kind
        atomic_write_json(path / "config.json", {"kind": KIND, **read_json(path / "sweep.json")})
    folder = SweepFolder.resume(path, kind=KIND)
    try:
        source = f"{path / 'config.json'}"
        saved = folder.config
        if not isinstance(saved.get("grid"), dict) or not isinstance(saved.get("configs"), list) or not saved["configs"]:
            raise UserError(f"{source} is damaged: it lacks the sweep's grid or runs")
        configs = [config.load(GrokConfig, c, source).validate() for c in saved["configs"]]
        for name, values in grid.items():
            flag = "--op" if name == "op" and "op" in typed else None
            if name not in saved["grid"]:
                raise UserError(f"{_flag(name, values)}: the resumed sweep has no {name} grid; a resumed sweep keeps "
                                f"its grid (start a new sweep to change it)")
            if saved["grid"][name] != values:
                raise UserError(f"{_flag(name, values, flag=flag)} differs from the resumed sweep's "
                                f"{_flag(name, saved['grid'][name], bare=True)}; a resumed sweep keeps its grid "
                                f"(start a new sweep to change it)")
        for name in typed:
            if name in saved["grid"] and name not in grid:
                raise UserError(f"{config.flag_name(name)} is swept by the resumed sweep "
                                f"({_flag(name, saved['grid'][name])}); leave it out")
        check_preset(configs[0], preset, skip=tuple(saved["grid"]))
        swept = {k: v for k, v in requested.items() if k not in saved["grid"]}
        config.resumed(configs[0], swept)  # refuses a setting that differs from the runs'
        size = saved.get("max_ensemble", max_ensemble or SweepConfig.max_ensemble)
        if not all(type(v) is int and v >= 1 for v in (size, saved.get("processes", 1))):
            raise UserError(f"{path / 'config.json'} is damaged (max_ensemble and processes are whole numbers >= 1)")
        if max_ensemble is not None and max_ensemble != size:
            raise UserError(f"--max-ensemble {max_ensemble} differs from the resumed sweep's {size}")
        options = config.resumed(config.load(TrainOptions, saved, source), requested_options, adjustable=ADJUSTABLE)
        updated = {**saved, "max_ensemble": size, **asdict(options)}
        if updated != saved:
            atomic_write_json(path / "config.json", updated)
    except BaseException:
        folder.close()
        raise
    return Sweep(folder, configs, saved["grid"], size, options, saved.get("processes", 1))


def _flag(name: str, values: list, bare: bool = False, flag: str | None = None) -> str:
    """A grid entry as the flag that sets it (or ``flag``), e.g. '--fracs 0.3,0.5' or '--seeds 3'."""
    flag = flag or {"op": "--ops", "frac": "--fracs", "seed": "--seeds"}.get(name, f"--grid {name}=")
    text = str(len(values)) if name == "seed" else ",".join(map(str, values))
    return text if bare else f"{flag}{'' if flag.endswith('=') else ' '}{text}"


def run_sweep(
    configs: list[GrokConfig],
    grid: dict[str, list],
    out: Path,
    device: torch.device,
    *,
    resume: bool = False,
    max_ensemble: int = 256,
    options: TrainOptions | None = None,
    progress: bool = True,
    retire: bool = True,
    dist: Dist | None = None,
    processes: int = 1,
) -> list[dict]:
    """Train every config (grouped into ensembles by model shape) in group folders under ``out``; one result row per
    config, in the order given. With ``resume``, finished groups are read back and a killed one continues. Under
    torchrun (``dist``) each process trains every ``world_size``-th group on its own GPU and every process gets all
    the rows."""
    options = options or TrainOptions()
    dist = dist or Dist(device=device)
    use_tf32(device, options.tf32)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[int, dict] = {}
    for g, members in enumerate(groups(configs, max_ensemble, processes)):
        if g % dist.world_size == dist.rank:
            rows.update(zip(members, train_group([configs[i] for i in members], grid, out, out / f"group-{g:03d}",
                                                 device, resume, options, progress, retire)))
    rows = dict(gather(dist, list(rows.items())))
    return [rows[i] for i in range(len(configs))]


def train_group(member_cfgs: list[GrokConfig], grid: dict[str, list], out: Path, folder: Path, device: torch.device,
                resume: bool, options: TrainOptions, progress: bool, retire: bool) -> list[dict]:
    """One ensemble of the sweep in its own run folder: its result rows, read back when it has finished before."""
    if resume and (folder / "summary.json").exists():
        done = read_json(folder / "summary.json")
        members = done.get("members") if isinstance(done, dict) else None
        if not isinstance(members, list) or len(members) != len(member_cfgs) or \
                not all(isinstance(m, dict) for m in members):
            raise UserError(f"{folder / 'summary.json'} is damaged; delete it to finish the group again")
        return done["members"]
    if resume and (folder / "config.json").exists():
        run = open_run(folder, kinds=(GROUP_KIND,), resume=True)
        group_options = saved_options(run, device)
        if member_configs(run) != member_cfgs:
            run.close()
            raise UserError(f"{folder} holds other runs than the sweep plans for it (was --max-ensemble changed?)")
    else:
        group_options = replace(options, eval_ratio=options.eval_ratio or default_eval_ratio(device, len(member_cfgs)))
        run = Run.create(folder, run_config(member_cfgs, group_options), kind=GROUP_KIND)
    with run:
        try:
            result = train_ensemble(
                Ensemble(member_cfgs, device), run, resume=resume, eval_ratio=group_options.eval_ratio,
                checkpoint_every_s=options.checkpoint_seconds, checkpoint_every=options.checkpoint_steps,
                use_cuda_graph=group_options.cuda_graph, progress=progress, retire=retire)
        except Interrupted as e:
            raise e.resumed_by(f"nexttoken grok sweep --resume {out}") from None
        group_rows = [{
            "label": label(cfg, grid), "op": cfg.op, "frac": cfg.frac, "seed": cfg.seed,
            **{k: getattr(cfg, k) for k in grid if k not in ("op", "frac", "seed")},
            "steps_to_train_99": result.milestones.steps_to_train_99[m],
            "steps_to_val_99": result.milestones.steps_to_val_99[m],
            "best_val_acc": round(result.milestones.best_val_acc[m], 4),
            "final_val_acc": round(float(result.final.val_acc[m]), 4),
            "steps": result.member_steps[m],
        } for m, cfg in enumerate(member_cfgs)]
        times = {k: round(getattr(result, k), 3) for k in ("wall_s", "capture_s", "eval_s", "save_s")}
        run.write_summary({"members": group_rows, **times, "ensemble_size": len(member_cfgs),
                           "device": device_name(device)})
    return group_rows


def median_steps(steps: list[int | None]) -> float | None:
    """Median steps to 99% over seeds, counting runs that never got there as infinitely slow (None if most never did).

    >>> median_steps([100, 300, None])
    300
    >>> median_steps([100, None, None]) is None
    True
    """
    ordered = sorted(steps, key=lambda s: float("inf") if s is None else s)
    mid = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
    if any(s is None for s in mid):
        return None
    return statistics.mean(mid)


def plot_steps_vs_fraction(rows: list[dict], path: Path, budget: int) -> Path:
    """Figure 1 (center): median steps until validation accuracy first reaches 99%, per training fraction."""
    from nexttoken.plots import figure, save

    fig, ax = figure()
    for name in dict.fromkeys(r["label"] for r in rows):
        fracs = sorted({r["frac"] for r in rows if r["label"] == name})
        pts = [(f, median_steps([r["steps_to_val_99"] for r in rows if r["label"] == name and r["frac"] == f]))
               for f in fracs]
        reached = [(f, s) for f, s in pts if s is not None]
        if reached:
            ax.plot(*zip(*reached), marker="o", label=name)
    ax.axhline(budget, color="gray", ls="--", lw=0.8, label=f"budget ({budget:,} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("training data fraction")
    ax.set_ylabel("median steps to 99% validation accuracy")
    ax.set_title("Steps to generalise vs training data (Power et al. Fig. 1 center)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_best_accuracy(rows: list[dict], path: Path) -> Path:
    """Figure 2 (right): best validation accuracy (mean over seeds) per operation and training fraction."""
    from nexttoken.plots import figure, save

    fig, ax = figure()
    for name in dict.fromkeys(r["label"] for r in rows):
        fracs = sorted({r["frac"] for r in rows if r["label"] == name})
        means = [statistics.mean(r["best_val_acc"] for r in rows if r["label"] == name and r["frac"] == f)
                 for f in fracs]
        ax.plot(fracs, [100 * m for m in means], marker="o", label=name)
    ax.set_xlabel("training data fraction")
    ax.set_ylabel("best validation accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title("Best validation accuracy within the budget (Power et al. Fig. 2 right)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def write_results(rows: list[dict], out: Path, budget: int, extra: dict) -> dict:
    fig1 = plot_steps_vs_fraction(rows, out / "steps_to_val_99.png", budget)
    fig2 = plot_best_accuracy(rows, out / "best_val_acc.png")
    summary = {"runs": len(rows), **extra, "rows": rows, "plots": [fig1.name, fig2.name]}
    atomic_write_json(out / "summary.json", summary)
    return summary
