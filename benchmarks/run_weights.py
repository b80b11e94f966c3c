"""Move a trained run's weights through a channel that only passes small files (a lent GPU machine's results folder).

    python benchmarks/run_weights.py pack RUN PARTS_DIR [--max-mib 15]   # bf16 weights in parts of at most 15 MiB
    python benchmarks/run_weights.py unpack PARTS_DIR RUN                # RUN/checkpoint.safetensors (fp32 weights)

`pack` keeps the model's weights only (no optimiser state), in bfloat16, split by tensor into numbered safetensors
files. `unpack` joins them into a weights-only checkpoint of the run folder, which generate, evaluate, critic and
report read like any other (a weights-only checkpoint cannot resume training).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nexttoken.files import load_tensors, save_tensors
from nexttoken.runs import CHECKPOINT


def pack(run: Path, out: Path, max_mib: float) -> None:
    tensors, meta = load_tensors(run / CHECKPOINT)
    weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items() if k.startswith("model.")}
    out.mkdir(parents=True, exist_ok=True)
    parts: list[dict] = [{}]
    size = 0
    for name, t in weights.items():
        n = t.numel() * t.element_size()
        if parts[-1] and size + n > max_mib * 2**20:
            parts.append({})
            size = 0
        parts[-1][name] = t
        size += n
    for i, part in enumerate(parts):
        save_tensors(out / f"weights-{i:02d}.safetensors", part, {"step": meta["step"], "parts": len(parts)})
    total = sum(t.numel() for t in weights.values())
    print(f"{run}: {total:,} weights at step {meta['step']} in {len(parts)} part(s) under {out}")


def unpack(parts_dir: Path, run: Path) -> None:
    files = sorted(parts_dir.glob("weights-*.safetensors"))
    if not files:
        raise SystemExit(f"{parts_dir}: no weights-*.safetensors parts")
    tensors, meta = {}, {}
    for f in files:
        t, meta = load_tensors(f)
        tensors.update({k: v.float() if v.is_floating_point() else v for k, v in t.items()})
    if len(files) != meta["parts"]:
        raise SystemExit(f"{parts_dir}: {len(files)} of {meta['parts']} parts")
    save_tensors(run / CHECKPOINT, tensors, {"step": meta["step"]})
    print(f"{run / CHECKPOINT}: {sum(t.numel() for t in tensors.values()):,} weights at step {meta['step']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    a = sub.add_parser("pack")
    a.add_argument("run", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--max-mib", type=float, default=15.0)
    b = sub.add_parser("unpack")
    b.add_argument("parts", type=Path)
    b.add_argument("run", type=Path)
    args = p.parse_args()
    pack(args.run, args.out, args.max_mib) if args.verb == "pack" else unpack(args.parts, args.run)


if __name__ == "__main__":
    main()
