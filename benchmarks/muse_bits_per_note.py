"""Bits per note of our MuseNet encoding vs MidiTok's REMI and MIDILike: same model, same corpus, same budget.

    python benchmarks/muse_bits_per_note.py                  # CPU: 4 x 128, context 256, 300 steps of 16 rows each
    python benchmarks/muse_bits_per_note.py --steps 2000 --n-embd 256 --device cuda

Each encoding trains the same GPT (same width, depth, context, batch, steps, learning rate, augmentation, seed) on
the same training pieces and is scored on the same held-out pieces. Bits per note (total negative log2-likelihood
of a piece divided by its notes) does not depend on the vocabulary, so the rows compare directly. "musenet, no
extras" is the like-for-like row (no timing/structural embeddings, which only our encoding can feed); "musenet" adds
them. A fixed context holds more music with fewer tokens per note: that is part of what an encoding buys.
Prints a table, where each encoding's bits per note go (by the kind of the predicted token: for ours note-ons,
note-offs and waits; for MidiTok's its token types), and writes benchmarks/results/muse_bits_per_note.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from nexttoken.muse.train import MuseConfig, train
from nexttoken.training import LoopConfig, OptimConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="music21-small")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--stretch", type=float, default=0.1, help="tempo-stretch augmentation (a no-op for beat-based "
                   "REMI/MIDILike, a real change of our absolute-time tokens)")
    p.add_argument("--encodings", default="musenet-noextras,musenet,remi,midilike")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.encodings.split(","):
            extras = name == "musenet"
            cfg = MuseConfig(corpus=args.corpus, encoding=name.replace("-noextras", ""), context=args.context,
                             n_layer=args.n_layer, n_embd=args.n_embd, timing_embedding=extras,
                             structure_embedding=extras, countdown_embedding=extras, stretch=args.stretch, val_pieces=0)
            loop = LoopConfig(steps=args.steps, batch_size=args.batch_size, eval_every=args.steps,
                              ckpt_every=args.steps)
            t0 = time.time()
            run = train(cfg, OptimConfig(lr=args.lr, warmup_steps=min(50, args.steps // 10)), loop,
                        out=Path(tmp) / name, device=args.device)
            s = json.loads((run / "summary.json").read_text())
            rows.append({"encoding": name, "bits_per_note": s["bits_per_note"],
                         "masked_bits_per_note": s.get("masked_bits_per_note"), "tokens_per_note":
                         s["tokens_per_note"], "by_kind": s["bits_per_note_by_kind"], "vocab_size": s["vocab_size"],
                         "params": s["params"],
                         "seconds": time.time() - t0})
            print(f"  {name}: {s['bits_per_note']:.3f} bits/note", flush=True)
    print(f"{args.corpus}: {args.n_layer} x {args.n_embd}, context {args.context}, {args.steps} steps x "
          f"{args.batch_size} rows; bits per note on all held-out pieces")
    print(f"{'encoding':18} {'bits/note':>10} {'masked':>8} {'tokens/note':>12} {'vocab':>7} {'params':>10} "
          f"{'seconds':>8}")
    for r in rows:
        masked = f"{r['masked_bits_per_note']:.3f}" if r["masked_bits_per_note"] is not None else "-"
        print(f"{r['encoding']:18} {r['bits_per_note']:>10.3f} {masked:>8} {r['tokens_per_note']:>12.2f} "
              f"{r['vocab_size']:>7} {r['params']:>10,} {r['seconds']:>8.0f}")
    print("masked: under the rules the sampler enforces (a note-off only for a sounding note, no header token "
          "after the header), each prediction renormalised over the tokens they allow")
    print("where the bits per note go (by the kind of the predicted token):")
    for r in rows:
        parts = sorted(r["by_kind"].items(), key=lambda kv: -kv[1])
        print(f"  {r['encoding']:18} " + ", ".join(f"{k} {v:.2f}" for k, v in parts))
    out = Path(__file__).parent / "results" / f"muse_bits_per_note{'' if args.stretch == 0.1 else '-stretch' + str(args.stretch)}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
