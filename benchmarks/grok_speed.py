"""Time to grok x/y mod 97 at 50% training data: nexttoken's trainer against a conventional training loop.

    python benchmarks/grok_speed.py                  # CPU or the GPU PyTorch sees
    python benchmarks/grok_speed.py --sweep 128      # also time a 128-run vmapped sweep (GPU)
    python benchmarks/grok_speed.py --presets "" --sweep 128 --sweep-precisions fp32,bf16   # the sweep alone, twice

Rows:
- `conventional`: the loop most public grokking code uses: the same GPT and hyperparameters, a DataLoader over a
  TensorDataset reshuffled each epoch, torch.optim.AdamW, eager steps, the validation set evaluated every epoch;
- `nexttoken`: `nexttoken grok train` (data on the device, flat fused optimiser, log-spaced evaluation, CUDA graph on
  GPU);
- `nexttoken + grokfast-ema`: the same with Lee et al.'s EMA gradient filter and its published setting (alpha 0.98,
  lambda 2, and torch.optim.Adam with weight_decay 0.005: a coupled L2 penalty, `--weight-decay 0 --l2 0.005`);
- `nexttoken bf16` (with --precisions fp32,bf16): the forward autocast to bf16, weights and optimiser in fp32;

for each model preset: `paper` (Power et al.'s model as their code builds it) and `modern` (pre-LN GPT-2 block).

Each row reports steps and wall seconds until validation accuracy first reaches 99% (median over --seeds seeds), and
milliseconds per training step. Writes benchmarks/results/grok_speed-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from nexttoken.grok.data import make_table, split
from nexttoken.grok.sweep import expand, median_steps, run_sweep, write_results
from nexttoken.grok.ensemble import Ensemble, model_config
from nexttoken.grok.train import PRESETS, GrokConfig, TrainOptions, device_name, start, train
from nexttoken.model import GPT
from nexttoken.training import pick_device

TASK = GrokConfig(op="x/y", p=97, frac=0.5, steps=20_000, stop_at=0.99)  # the paper's model unless --presets


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def conventional(cfg: GrokConfig, device: torch.device) -> dict:
    table = make_table(cfg.op, cfg.p)
    tr, va = split(len(table), cfg.frac, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = GPT(replace(model_config(cfg, table.vocab_size), attention="sdpa")).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps))
    loader = DataLoader(TensorDataset(table.inputs[tr], table.answers[tr]),
                        batch_size=min(cfg.batch_size, len(tr) // 2), shuffle=True)
    val_x, val_y = table.inputs[va].to(device), table.answers[va].to(device)
    step, t0, train_s = 0, time.perf_counter(), 0.0
    while step < cfg.steps:
        for x, y in loader:
            s0 = time.perf_counter()
            x, y = x.to(device), y.to(device)
            logits, _ = model(x)
            loss = torch.nn.functional.cross_entropy(logits[:, -1], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sync(device)
            train_s += time.perf_counter() - s0
            step += 1
        with torch.no_grad():
            model.eval()
            acc = (model(val_x)[0][:, -1].argmax(-1) == val_y).float().mean().item()
            model.train()
        if acc >= cfg.stop_at:
            return {"steps_to_val_99": step, "wall_s_to_val_99": time.perf_counter() - t0, "ms_per_step": 1e3 * train_s / step}
    return {"steps_to_val_99": None, "wall_s_to_val_99": None, "ms_per_step": 1e3 * train_s / step}


def ours(cfg: GrokConfig, device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        with start(cfg, TrainOptions(), Path(tmp) / "run", device) as run:
            s = train(cfg, run, device, progress=False)
    # Steady-state step time, measured apart from evaluation.
    ens = Ensemble([cfg], device)
    try:
        ens.capture() if device.type == "cuda" else [ens.step() for _ in range(3)]
    except RuntimeError as e:
        print(f"capture failed: {e}")
    sync(device)
    t0 = time.perf_counter()
    n = 200 if device.type == "cuda" else 20
    for _ in range(n):
        ens.step()
    sync(device)
    return {"steps_to_val_99": s["steps_to_val_99"], "wall_s_to_val_99": s["wall_s_to_val_99"],
            "capture_s": s["capture_s"], "ms_per_step": 1e3 * (time.perf_counter() - t0) / n}


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if len(vals) > len(values) / 2 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--presets", default="paper,modern", help="model presets to time (paper, modern)")
    p.add_argument("--skip-conventional", action="store_true")
    p.add_argument("--precisions", default="fp32", help="also time nexttoken at these precisions (fp32,bf16)")
    p.add_argument("--skip-grokfast", action="store_true", help="leave out the Grokfast row (up to --steps per seed)")
    p.add_argument("--sweep", type=int, default=0, help="also time a sweep of this many runs (x/y, fractions x seeds)")
    p.add_argument("--sweep-steps", type=int, default=5000, help="step budget of each sweep run")
    p.add_argument("--sweep-baseline", action="store_true",
                   help="also time the sweep with every run kept in the ensemble to the end (no retiring)")
    p.add_argument("--sweep-precisions", default="fp32", help="time the sweep at each of these precisions (fp32,bf16)")
    p.add_argument("--sweep-out", type=Path, help="write the first sweep's figures and summary.json here (untimed)")
    p.add_argument("--steps", type=int, default=TASK.steps, help="step budget of the single runs")
    args = p.parse_args()
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = []
    for preset in filter(None, args.presets.split(",")):  # --presets "" --sweep 128: the sweep alone
        task = replace(TASK, **PRESETS[preset], steps=args.steps)
        # Grokfast's published EMA setting: the filter on torch.optim.Adam with weight_decay 0.005 (coupled L2).
        grokfast = replace(task, grokfast="ema", grokfast_alpha=0.98, grokfast_lambda=2.0, weight_decay=0.0, l2=0.005)
        variants = [("nexttoken", ours, task)] + ([] if args.skip_grokfast else [("nexttoken + grokfast-ema", ours, grokfast)])
        variants += [(f"nexttoken {p}", ours, replace(task, precision=p)) for p in args.precisions.split(",") if p != "fp32"]
        if not args.skip_conventional:
            variants.insert(0, ("conventional", conventional, task))
        for name, fn, cfg in variants:
            runs = [fn(replace(cfg, seed=s), device) for s in range(args.seeds)]
            rows.append({"preset": preset, "trainer": name,
                         "steps_to_val_99": median([r["steps_to_val_99"] for r in runs]),
                         "wall_s_to_val_99": median([r["wall_s_to_val_99"] for r in runs]),
                         "ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
                         "capture_s": median([r.get("capture_s") for r in runs]) if "capture_s" in runs[0] else None,
                         "seeds": args.seeds})
            print(rows[-1], flush=True)
            save(device, rows, None)  # after every row: a long benchmark keeps what it measured
    sweep = None
    if args.sweep:
        fracs = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
        seeds = max(1, args.sweep // len(fracs))
        grid = {"op": ["x/y"], "frac": fracs, "seed": list(range(seeds))}
        sweep = {"runs": len(fracs) * seeds, "budget_steps": args.sweep_steps, "stop_at": 0.99, "timings": []}
        for precision in args.sweep_precisions.split(","):
            configs = expand(replace(TASK, **PRESETS["modern"], steps=args.sweep_steps, precision=precision), grid)
            for retire in [True] + ([False] if args.sweep_baseline else []):
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    results = run_sweep(configs, grid, Path(tmp), device, progress=False, retire=retire)
                    wall = time.perf_counter() - t0
                    groups = [json.loads(f.read_text()) for f in sorted(Path(tmp).glob("group-*/summary.json"))]
                if args.sweep_out and not sweep["timings"]:
                    write_results(results, args.sweep_out, args.sweep_steps, {"device": device_name(device)})
                steps = [r["steps_to_val_99"] for r in results]
                sweep["timings"].append({
                    "precision": precision, "retire": retire, "wall_s": wall,
                    # where the time went: CUDA-graph captures, evaluations, checkpoints (the rest is steps and setup)
                    **{k: sum(g[k] for g in groups) for k in ("capture_s", "eval_s", "save_s")},
                    "reached_99": sum(s is not None for s in steps), "run_steps": sum(r["steps"] for r in results),
                    "median_steps_to_val_99": median_steps(steps),  # never reaching counts as slowest
                    "steps_to_val_99_by_frac": {f: [r["steps_to_val_99"] for r in results if r["frac"] == f]
                                                for f in fracs}})
                print(sweep["timings"][-1], flush=True)
    name = device_name(device)
    print(f"x/y mod 97, first step with validation accuracy >= 99%   device: {name}")
    if rows:
        print(f"50% training data\n{'preset':7} {'trainer':26} {'steps':>7} {'wall s':>8} {'ms/step':>8}")
    for r in rows:
        steps = f"{r['steps_to_val_99']:.0f}" if r["steps_to_val_99"] else "never"
        wall = f"{r['wall_s_to_val_99']:.2f}" if r["wall_s_to_val_99"] else "-"
        print(f"{r['preset']:7} {r['trainer']:26} {steps:>7} {wall:>8} {r['ms_per_step']:>8.2f}")
    if sweep:
        print(f"sweep: {sweep['runs']} runs (x/y, modern preset, 8 fractions x seeds, early stop at 99%, budget "
              f"{sweep['budget_steps']} steps)")
        print(f"  {'precision':9} {'runs':22} {'wall s':>7} {'eval s':>7} {'capture s':>9} {'reached 99%':>11} "
              f"{'run-steps':>10} {'median steps':>12}")
        for t in sweep["timings"]:
            what = "retire at 99%" if t["retire"] else "every run to the end"
            med = f"{t['median_steps_to_val_99']:.0f}" if t["median_steps_to_val_99"] else "-"
            print(f"  {t['precision']:9} {what:22} {t['wall_s']:7.1f} {t['eval_s']:7.1f} {t['capture_s']:9.1f} "
                  f"{t['reached_99']:>11} {t['run_steps']:>10,} {med:>12}")
    save(device, rows, sweep)


def save(device: torch.device, rows: list[dict], sweep: dict | None) -> None:
    name = f"grok_speed-{device.type}" + ("" if rows else "-sweep")
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": device_name(device), "rows": rows, "sweep": sweep}, indent=2) + "\n")


if __name__ == "__main__":
    main()
