"""Steps to generalise under different training recipes: x/y mod 97 at 50% training data, several seeds.

    python benchmarks/grok_recipes.py --preset modern --seeds 2 --recipes adamw,grokfast,adam-l2 --steps 4000
    python benchmarks/grok_recipes.py --preset modern --seeds 4 --recipes adamw,adamw-bf16 --steps 3000

Every recipe runs on the same seeds (the same splits and initial weights) and is compared with the others in the
same run. Recipes that share a model shape and precision are trained together as one ensemble, and each run stops
once its validation accuracy reaches 99%. Evaluations are 5% of the steps apart, so step counts are known to ~5%.
Prints, per recipe, the steps at which train and validation accuracy first reached 99% for each seed, and writes
benchmarks/results/grok_recipes-<device>-<preset>-<recipes>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from nexttoken.grok.sweep import median_steps, run_sweep
from nexttoken.grok.train import PRESETS, GrokConfig, TrainOptions, device_name
from nexttoken.training import pick_device

RECIPES: dict[str, dict] = {
    "adamw": {},  # the preset's optimiser: AdamW, weight decay 1
    "adamw-bf16": {"precision": "bf16"},
    "adam": {"weight_decay": 0.0},  # Adam without decay (Power et al. Figure 1)
    "adam-l2": {"weight_decay": 0.0, "l2": 0.005},  # torch.optim.Adam(weight_decay=0.005), no filter
    # Lee et al.'s published Grokfast-EMA run: the filter on torch.optim.Adam with weight_decay 0.005 (coupled L2)
    "grokfast": {"grokfast": "ema", "grokfast_alpha": 0.98, "grokfast_lambda": 2.0, "weight_decay": 0.0, "l2": 0.005},
    # Prieto et al.: StableMax and the perpendicular gradient, without weight decay
    "stablemax-perp": {"loss": "stablemax", "perp_grad": True, "weight_decay": 0.0},
}


def show(values: list) -> str:
    """Steps as 1,234 (None: never), accuracies as 0.995."""
    return ", ".join("never" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.3f}" for v in values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="modern", choices=sorted(PRESETS))
    p.add_argument("--recipes", default="adamw,grokfast,adam-l2", help="comma-separated: " + ", ".join(RECIPES))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=4000, help="step budget of each run")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    device = pick_device(args.device)
    base = replace(GrokConfig(op="x/y", p=97, frac=0.5, steps=args.steps, stop_at=0.99), **PRESETS[args.preset])
    configs = [replace(base, seed=s, **RECIPES[n]) for n in names for s in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rows = run_sweep(configs, {}, Path(tmp), device, options=TrainOptions(eval_ratio=1.05))
        wall = time.perf_counter() - t0
    results = []
    for i, name in enumerate(names):
        mine = rows[i * args.seeds : (i + 1) * args.seeds]
        val = [r["steps_to_val_99"] for r in mine]
        results.append({"recipe": name, "settings": RECIPES[name], "steps_to_val_99": val,
                        "steps_to_train_99": [r["steps_to_train_99"] for r in mine],
                        "best_val_acc": [r["best_val_acc"] for r in mine],
                        "median_steps_to_val_99": median_steps(val)})  # never reaching counts as slowest
    print(f"x/y mod 97, 50% training data, {args.preset} preset, {args.seeds} seeds, budget {args.steps:,} steps, "
          f"{device_name(device)}, {wall:.0f} s")
    print(f"{'recipe':15} {'val 99% at step (per seed)':32} {'train 99% at step':26} {'best val acc':20}")
    for r in results:
        print(f"{r['recipe']:15} {show(r['steps_to_val_99']):32} {show(r['steps_to_train_99']):26} "
              f"{show(r['best_val_acc']):20}")
    out = Path(__file__).parent / "results" / f"grok_recipes-{device.type}-{args.preset}-{'_'.join(names)}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": device_name(device), "preset": args.preset, "seeds": args.seeds,
                               "budget_steps": args.steps, "wall_s": wall, "recipes": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
