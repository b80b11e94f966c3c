"""The whole instruct pipeline's time at the demo size (what `nexttoken demo` runs), stage by stage.

    python benchmarks/instruct_pipeline.py                  # preset demo, in a temporary folder
    python benchmarks/instruct_pipeline.py --preset cpu --out runs/instruct-cpu-timed

Each stage is timed by wall clock and by this process's CPU time (on a machine shared with other work the two
differ: the CPU time is what the pipeline itself cost). Writes benchmarks/results/instruct_pipeline-<preset>-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nexttoken.distributed import Dist
from nexttoken.instruct import pipeline
from nexttoken.instruct.pipeline import PipelineConfig, run_pipeline
from nexttoken.training import pick_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", choices=tuple(pipeline.PRESETS))
    p.add_argument("--out", type=Path, default=None, help="pipeline folder (default: a temporary one)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = pick_device(args.device)
    rows = []
    for kind, module in pipeline.MODULES.items():
        def timed(c, run, dist, resume, progress, real=module.run_stage):
            w0, c0 = time.perf_counter(), time.process_time()
            out = real(c, run, dist, resume, progress)
            rows.append({"stage": run.path.name, "wall_s": round(time.perf_counter() - w0, 2),
                         "cpu_s": round(time.process_time() - c0, 2)})
            print(f"{run.path.name:16} wall {rows[-1]['wall_s']:7.1f} s   cpu {rows[-1]['cpu_s']:7.1f} s", flush=True)
            return out
        module.run_stage = timed
    w0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp) / "pipeline"
        summary = run_pipeline(folder, PipelineConfig(preset=args.preset), Dist(device=device), progress=False)
    total = {"wall_s": round(time.perf_counter() - w0, 1), "cpu_s": round(time.process_time() - c0, 1)}
    print(f"{'total':16} wall {total['wall_s']:7.1f} s   cpu {total['cpu_s']:7.1f} s (threads: {torch.get_num_threads()})")
    out = Path(__file__).parent / "results" / f"instruct_pipeline-{args.preset}-{device.type}.json"
    out.write_text(json.dumps({"preset": args.preset, "device": device.type, "threads": torch.get_num_threads(),
                               "total": total, "stages": rows, "headline": summary.get("headline")}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
