"""Speed of the GPT core: training tokens/s, and KV-cached vs uncached sampling tokens/s near a 1k context.

    python benchmarks/core_speed.py                      # CPU or the GPU PyTorch sees, fp32
    python benchmarks/core_speed.py --precision bf16 --compile   # on a GPU

Each sampling row continues a prompt of `context - new_tokens` tokens by `new_tokens` tokens, so every generated
token attends to about a full context; the uncached path recomputes the whole window per token (the alternative the
cache must beat). Prints a table and writes benchmarks/results/core_speed-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nexttoken.model import GPT, GPTConfig
from nexttoken.sampling import generate
from nexttoken.training import OptimConfig, autocast, make_optimizer, pick_device

CONFIGS = {
    "small": GPTConfig(vocab_size=512, block_size=1024, n_layer=4, n_head=4, n_embd=256),
    "medium": GPTConfig(vocab_size=4096, block_size=1024, n_layer=8, n_head=8, n_embd=512),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_speed(cfg: GPTConfig, device, precision: str, compile_: bool, batch: int, steps: int) -> float:
    model = GPT(cfg).to(device)
    opt = make_optimizer(model, OptimConfig())
    step_fn = torch.compile(model) if compile_ else model
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), device=device)

    def one_step():
        with autocast(device, precision):
            _, loss = step_fn(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (and compilation)
        one_step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync(device)
    return batch * cfg.block_size * steps / (time.perf_counter() - t0)


def sample_speed(cfg: GPTConfig, device, precision: str, use_cache: bool, batch: int, new_tokens: int) -> float:
    model = GPT(cfg).to(device).eval()
    prompt = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size - new_tokens), device=device)
    with autocast(device, precision):
        generate(model, prompt[:, :16], 4, use_cache=use_cache)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        generate(model, prompt, new_tokens, use_cache=use_cache, generator=None)
        sync(device)
    return batch * new_tokens / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--configs", default="small,medium")
    p.add_argument("--train-steps", type=int, default=0, help="default: 3 on CPU, 20 on GPU")
    p.add_argument("--new-tokens", type=int, default=0, help="default: 32 on CPU, 128 on GPU")
    args = p.parse_args()
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    steps = args.train_steps or (20 if gpu else 3)
    new_tokens = args.new_tokens or (128 if gpu else 32)
    name = torch.cuda.get_device_name(device) if gpu else f"cpu x{torch.get_num_threads()} threads"
    rows = []
    for cfg_name in args.configs.split(","):
        cfg = CONFIGS[cfg_name]
        n_params = GPT(cfg).num_params(non_embedding=False)
        train = train_speed(cfg, device, args.precision, args.compile, batch=32 if gpu else 4, steps=steps)
        batch = 8 if gpu else 1
        cached = sample_speed(cfg, device, args.precision, True, batch, new_tokens)
        uncached = sample_speed(cfg, device, args.precision, False, batch, new_tokens)
        rows.append({"config": cfg_name, "params": n_params, "train_tok_s": train, "sample_cached_tok_s": cached,
                     "sample_uncached_tok_s": uncached, "cache_speedup": cached / uncached})
    print(f"device: {name}   precision: {args.precision}   compile: {args.compile}   context: 1024")
    print(f"{'config':8} {'params':>11} {'train tok/s':>12} {'cached tok/s':>13} {'uncached tok/s':>15} {'speedup':>8}")
    for r in rows:
        print(f"{r['config']:8} {r['params']:>11,} {r['train_tok_s']:>12,.0f} {r['sample_cached_tok_s']:>13,.1f} "
              f"{r['sample_uncached_tok_s']:>15,.1f} {r['cache_speedup']:>7.1f}x")
    out = Path(__file__).parent / "results" / f"core_speed-{device.type}-{args.precision}{'-compile' if args.compile else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": name, "precision": args.precision, "compile": args.compile, "rows": rows},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
