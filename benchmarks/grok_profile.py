"""Where a grokking step spends its time: milliseconds per step by ensemble size, and the heaviest kernels.

    python benchmarks/grok_profile.py                          # paper preset, E = 1, 8, 32, 128
    python benchmarks/grok_profile.py --presets modern,nanda --sizes 1,16
    python benchmarks/grok_profile.py --presets modern --precisions fp32,bf16
    python benchmarks/grok_profile.py --presets modern --sizes 8 --fracs 0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95

For each preset, precision and ensemble size E (E copies of x/y mod 97 with different seeds, at 50% training data or
cycling through --fracs; the nanda preset keeps its own task), the step is timed as training runs it (a CUDA graph on
a GPU, eager on a CPU), with the achieved TFLOP/s from the model's FLOPs per token, and so is one evaluation (every
member on its whole table). Then one eager step of the last configuration is profiled and its top operators by device
time are printed: the first place to look when a step is slower than its FLOPs say it should be.
Writes benchmarks/results/grok_profile-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from nexttoken.grok.ensemble import Ensemble
from nexttoken.grok.train import PRESETS, GrokConfig, device_name
from nexttoken.training import pick_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(ens: Ensemble, device: torch.device, steps: int) -> tuple[float, float]:
    """Seconds per step and per evaluation (of the whole table) after warm-up, through CUDA graphs where there are."""
    if device.type == "cuda":
        ens.capture()
    for _ in range(3):
        ens.step()
    ens.evaluate()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        ens.step()
    sync(device)
    t1 = time.perf_counter()
    evals = max(1, steps // 5)
    for _ in range(evals):
        ens.evaluate()
    sync(device)
    return (t1 - t0) / steps, (time.perf_counter() - t1) / evals


def member_configs(preset: str, E: int, precision: str, fracs: list[float]) -> list[GrokConfig]:
    return [replace(GrokConfig(), **PRESETS[preset], seed=s, frac=fracs[s % len(fracs)], precision=precision)
            for s in range(E)]


def flops_per_step(ens: Ensemble) -> float:
    """Forward + backward FLOPs of one step of every member: 6 x matmul parameters x tokens (the last block and the
    head see one position), plus attention."""
    c = ens.model_cfg
    d, h, L, T = c.n_embd, c.hidden, c.n_layer, 4
    block = 4 * d * d + 2 * d * h
    last = 2 * d * d + (2 * d * d + 2 * d * h) / T  # keys/values for all positions, the rest for the last one
    per_token = (L - 1) * block + last + d * c.vocab_size / T
    return 6 * per_token * T * float(ens.batch.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="paper")
    p.add_argument("--sizes", default="1,8,32,128")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--precisions", default="fp32", help="fp32, bf16 or both (fp32,bf16)")
    p.add_argument("--fracs", default="0.5", help="training fractions the runs cycle through (a sweep mixes them)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-tf32", action="store_true")
    args = p.parse_args()
    device = pick_device(args.device)
    fracs = [float(f) for f in args.fracs.split(",")]
    if device.type == "cuda" and not args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    print(f"{'preset':8} {'precision':9} {'E':>5} {'ms/step':>9} {'ms/run':>8} {'TFLOP/s':>8} {'ms/eval':>9}")
    for preset in args.presets.split(","):
        for precision in args.precisions.split(","):
            for E in map(int, args.sizes.split(",")):
                cfgs = member_configs(preset, E, precision, fracs)
                ens = Ensemble(cfgs, device)
                dt, de = time_steps(ens, device, args.steps)
                row = {"preset": preset, "precision": precision, "E": E, "ms_per_step": dt * 1e3,
                       "ms_per_run": dt * 1e3 / E, "tflops": flops_per_step(ens) / dt / 1e12, "ms_per_eval": de * 1e3}
                rows.append(row)
                print(f"{preset:8} {precision:9} {E:>5} {row['ms_per_step']:>9.2f} {row['ms_per_run']:>8.3f} "
                      f"{row['tflops']:>8.2f} {row['ms_per_eval']:>9.1f}", flush=True)
                del ens
    # One eager step of the last configuration, profiled.
    from torch.profiler import ProfilerActivity, profile

    ens = Ensemble(member_configs(preset, E, precision, fracs), device)
    ens.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        ens.step()
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\none eager step, {preset} {precision} E={E}:")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=15, max_name_column_width=40,
                                                             max_shapes_column_width=60))
    out = Path(__file__).parent / "results" / f"grok_profile-{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": device_name(device), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
