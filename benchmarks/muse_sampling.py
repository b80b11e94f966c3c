"""Sampling speed of `nexttoken muse generate`: KV-cached vs uncached, and the cost of the muse mask and timing inputs.

    python benchmarks/muse_sampling.py                 # the CPU default model (4 x 128, context 256) and a larger one
    python benchmarks/muse_sampling.py --device cuda

Rows, all on the same randomly initialised model (speed does not depend on the weights):
- core generate: the shared sampler wired to the bare GPT (top-p, but no mask and no timing inputs): the floor;
- muse cached: the real generation path (length/instrument mask, timing inputs recomputed per token, KV cache);
- muse uncached: the same path recomputing the whole window for every token (the alternative the cache must beat).
Prints a table and writes benchmarks/results/muse_sampling-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nexttoken.model import GPT
from nexttoken.muse.encoding import make_encoding
from nexttoken.muse.generate import GenerateConfig, generate_pieces
from nexttoken.muse.model import build_model
from nexttoken.muse.train import MuseConfig
from nexttoken.sampling import SamplingConfig, generate
from nexttoken.training import pick_device

SIZES = {"cpu-default": dict(n_layer=4, n_head=4, n_embd=128, context=256),
         "medium": dict(n_layer=8, n_head=8, n_embd=512, context=1024)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", default="cpu-default,medium")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=200, help="new tokens per row")
    args = p.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    rows = []
    for size in args.sizes.split(","):
        cfg = MuseConfig(composers=["bach", "palestrina"], families=["piano", "voice"], dropout=0.0, **SIZES[size])
        enc = make_encoding("musenet", cfg.composers, cfg.families)
        model = build_model(cfg, enc.vocab_size).to(device).eval()
        # A length that the forced waits reach after exactly --tokens new tokens per row.
        tps = args.tokens / 1.5 / 60.0
        gen = GenerateConfig(composer="bach", instruments=["piano"], seconds=60.0, n=args.batch,
                             sampling=SamplingConfig(top_p=0.95, seed=0))

        def muse(use_cache):
            pieces = generate_pieces(model, enc, gen, device, tps, use_cache=use_cache)
            return sum(len(pc.ids) - 4 for pc in pieces)

        bare = GPT(cfg.gpt_config(enc.vocab_size)).to(device).eval()  # the same shape, without muse's inputs

        def core():
            prompt = torch.full((args.batch, 4), enc.vocab.start, device=device)
            threads = torch.get_num_threads()
            if device.type == "cpu":
                torch.set_num_threads(1)  # as the muse path does for small batches
            try:
                out = generate(bare, prompt, args.tokens, top_p=0.95)
            finally:
                torch.set_num_threads(threads)
            return out.tokens.numel() - prompt.numel()

        result = {"size": size, "params": sum(p.numel() for p in model.parameters()), "batch": args.batch}
        for name, fn in (("core_tok_s", core), ("muse_cached_tok_s", lambda: muse(True)),
                         ("muse_uncached_tok_s", lambda: muse(False))):
            fn()  # warm-up
            sync(device)
            t0 = time.perf_counter()
            n = fn()
            sync(device)
            result[name] = n / (time.perf_counter() - t0)
        result["cache_speedup"] = result["muse_cached_tok_s"] / result["muse_uncached_tok_s"]
        rows.append(result)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"device: {name}   batch {args.batch}   about {args.tokens} new tokens per row   (tokens/s over all rows)")
    print(f"{'size':12} {'params':>10} {'core':>9} {'muse cached':>12} {'muse uncached':>14} {'cache speedup':>14}")
    for r in rows:
        print(f"{r['size']:12} {r['params']:>10,} {r['core_tok_s']:>9,.0f} {r['muse_cached_tok_s']:>12,.0f} "
              f"{r['muse_uncached_tok_s']:>14,.0f} {r['cache_speedup']:>13.1f}x")
    out = Path(__file__).parent / "results" / f"muse_sampling-{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": name, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
