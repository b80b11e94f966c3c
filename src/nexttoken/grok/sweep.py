"""Many grokking runs trained together: operations x fractions x seeds x optimiser settings.

    nexttoken grok sweep --ops s5:x*y --fracs 0.25,0.3,0.35,0.4,0.5 --seeds 4 --steps 1e5 --stop-at 0.99
    nexttoken grok sweep --ops x+y,x-y,x/y,x^3+xy^2+y --fracs 0.3,0.5,0.7 --grid weight_decay=0,1

Runs that share a model shape are trained as one vmapped ``Ensemble`` on one device (one group per vocabulary,
dropout, ...), groups one after another. Writes the paper's Figure 1 (center) style plot (median steps to 99%
validation accuracy against the training fraction) and Figure 2 (right) style plot (best validation accuracy per
operation and fraction), a results table (summary.json) and, per group, the usual run folder (resumable).
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import torch

from nexttoken.grok.train import Ensemble, GrokConfig, default_eval_ratio, device_name, train_ensemble
from nexttoken.plots import figure, save
from nexttoken.runs import Run, atomic_write_json, read_json

SWEPT_LABEL_SKIP = {"frac", "seed"}


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


def groups(configs: list[GrokConfig], max_size: int) -> list[list[int]]:
    """Indices of configs that can share an ensemble, at most ``max_size`` per group, in first-seen order."""
    by_key: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        by_key.setdefault(c.shape_key(), []).append(i)
    return [idx[j : j + max_size] for idx in by_key.values() for j in range(0, len(idx), max_size)]


def run_sweep(
    configs: list[GrokConfig],
    grid: dict[str, list],
    out: Path,
    device: torch.device,
    *,
    resume: bool = False,
    max_ensemble: int = 256,
    eval_ratio: float | None = None,
    use_cuda_graph: bool = True,
    progress: bool = True,
    retire: bool = True,
) -> list[dict]:
    """Train every config (grouped into ensembles by model shape); one result row per config, in the order given."""
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[int, dict] = {}
    plan = groups(configs, max_ensemble)
    for g, members in enumerate(plan):
        folder = out / f"group-{g:03d}"
        done = folder / "summary.json"
        if resume and done.exists():
            rows.update(zip(members, read_json(done)["members"]))
            continue
        member_cfgs = [configs[i] for i in members]
        config = {"members": [asdict(c) for c in member_cfgs]}
        run = Run.open(folder) if resume and (folder / "config.json").exists() else Run.create(folder, config)
        ens = Ensemble(member_cfgs, device)
        result = train_ensemble(ens, run, resume=resume, eval_ratio=eval_ratio or default_eval_ratio(device, len(members)),
                                use_cuda_graph=use_cuda_graph, progress=progress, retire=retire)
        group_rows = []
        for m, cfg in enumerate(member_cfgs):
            group_rows.append({
                "label": label(cfg, grid), "op": cfg.op, "frac": cfg.frac, "seed": cfg.seed,
                **{k: getattr(cfg, k) for k in grid if k not in ("op", "frac", "seed")},
                "steps_to_train_99": result.progress.steps_to_train_99[m],
                "steps_to_val_99": result.progress.steps_to_val_99[m],
                "best_val_acc": round(result.progress.best_val_acc[m], 4),
                "final_val_acc": round(float(result.final.val_acc[m]), 4),
                "steps": result.member_steps[m],
            })
        times = {k: round(getattr(result, k), 3) for k in ("wall_s", "capture_s", "eval_s", "save_s")}
        run.write_summary({"members": group_rows, **times, "ensemble_size": len(members), "device": device_name(device)})
        rows.update(zip(members, group_rows))
    return [rows[i] for i in range(len(configs))]


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
