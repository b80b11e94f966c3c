"""Speed of Jukebox's stages as real-time factors (seconds of compute per second of audio; below 1 is faster than
real time): encoding and decoding with the VQ-VAE beside the EnCodec-architecture codec at the bottom level's
bitrate, and sampling each level with the KV cache beside recomputing every window position for every code.

    python benchmarks/jukebox_speed.py                       # the CPU preset and the CPU-sized priors
    python benchmarks/jukebox_speed.py --run runs/jukebox-cpu   # a trained pipeline's own models and sizes
    python benchmarks/jukebox_speed.py --device cuda --preset gpu --seconds 10   # the gpu preset's sizes

Speed does not depend on the weights, so without --run the models are randomly initialised at the sizes
``nexttoken jukebox train`` uses. Sampling draws ``--seconds`` of audio at every level, in windows with half their
context carried over, one sample at a time (batch 1). Prints a table and writes
benchmarks/results/jukebox_speed-<device>[-<run folder> or -<preset>-preset].json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from nexttoken.jukebox.evaluate import EncodecBaseline, matching_baseline
from nexttoken.jukebox.prior import Prior
from nexttoken.jukebox.sample import (JUKEBOX_SAMPLING, sample_level, top_conditioning, upsample_in_spans,
                                      upsampler_conditioning)
from nexttoken.jukebox.train import RECIPES
from nexttoken.jukebox.vqvae import PRESETS, VQVAE
from nexttoken.training import pick_device


def timed(fn, device, repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs (the others pay for warm-up or for other processes)."""
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def models(args, device):
    """The VQ-VAE and the three priors: a pipeline's own, or new ones at the preset's sizes."""
    if args.run:
        from nexttoken.jukebox.pipeline import load_prior, load_vqvae

        run = Path(args.run)
        vqvae = load_vqvae(run, device)
        return vqvae, {lv: load_prior(run, lv, device) for lv in vqvae.config.levels}
    vq = PRESETS[args.preset]
    vqvae = VQVAE(vq).to(device).eval()
    priors = {}
    for i, level in enumerate(vq.levels):
        ratio = vq.hops[i + 1] // vq.hops[i] if i + 1 < len(vq.hops) else 1
        cfg = replace(RECIPES[args.preset].priors[level], codebook_size=vq.codebook_size, artists=["a", "b"],
                      genres=["g"], ratio=ratio, hop=vq.hops[i], sample_rate=vq.sample_rate,
                      max_seconds=600.0).validate()
        priors[level] = Prior(cfg).to(device).eval()
    return vqvae, priors


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="cpu", choices=tuple(PRESETS))
    p.add_argument("--run", default="", help="a trained pipeline folder (its models and sizes)")
    p.add_argument("--seconds", type=float, default=2.0, help="audio sampled at each level")
    p.add_argument("--codec-seconds", type=float, default=10.0, help="audio encoded and decoded")
    p.add_argument("--uncached", action=argparse.BooleanOptionalAction, default=True,
                   help="also sample without the KV cache (the comparison; slow)")
    p.add_argument("--parallel", type=int, default=8, help="also sample the upsamplers in this many stretches side "
                                                           "by side (sample --parallel; 1: no)")
    args = p.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    vqvae, priors = models(args, device)
    vq = vqvae.config
    audio = 0.1 * torch.randn(1, int(args.codec_seconds * vq.sample_rate), device=device)
    rows = []
    codes = vqvae.encode(audio)
    rows.append({"stage": "encode (3 levels)", "model": "VQ-VAE",
                 "rtf": timed(lambda: vqvae.encode(audio), device) / args.codec_seconds})
    for i, level in enumerate(vq.levels):
        rows.append({"stage": f"decode {level}", "model": "VQ-VAE",
                     "rtf": timed(lambda: vqvae.decode(codes[i], i), device) / args.codec_seconds})
    codec = EncodecBaseline(matching_baseline(vq, 0)).to(device).eval()
    codec_codes = codec.encode(audio)[0]
    rows.append({"stage": "encode bottom bitrate", "model": "EnCodec arch.",
                 "rtf": timed(lambda: codec.encode(audio), device) / args.codec_seconds})
    rows.append({"stage": "decode bottom bitrate", "model": "EnCodec arch.",
                 "rtf": timed(lambda: codec.decode(codec_codes), device) / args.codec_seconds})

    samples = math.ceil(args.seconds * vq.sample_rate / vq.hops[-1]) * vq.hops[-1]
    cond = torch.tensor([[0, 2]])
    total_sampling = {True: 0.0, False: 0.0, "parallel": 0.0}
    above = None
    for i in reversed(range(len(vq.levels))):
        level = vq.levels[i]
        prior = priors[level]
        conditioning = top_conditioning(prior, cond, args.seconds, "") if prior.cfg.is_top else \
            upsampler_conditioning(prior, cond, above)
        for cache in (True, False) if args.uncached else (True,):
            def run():
                return sample_level(prior, torch.zeros(1, 0, dtype=torch.long), samples // vq.hops[i], conditioning,
                                    JUKEBOX_SAMPLING, torch.Generator(device).manual_seed(0), prior.cfg.context // 2,
                                    use_cache=cache)
            seconds = timed(run, device, repeats=1 if level == "bottom" or not cache else 2)
            total_sampling[cache] += seconds
            rows.append({"stage": f"sample {level}", "model": f"prior {'cached' if cache else 'uncached'}",
                         "params": sum(q.numel() for q in prior.parameters()), "rtf": seconds / args.seconds})
        if args.parallel > 1 and not prior.cfg.is_top:
            seconds = timed(lambda: upsample_in_spans(prior, cond, above, args.parallel, JUKEBOX_SAMPLING,
                                                      torch.Generator(device).manual_seed(0), prior.cfg.context // 2),
                            device, repeats=1)
            rows.append({"stage": f"sample {level}", "model": f"prior, {args.parallel} stretches",
                         "params": sum(q.numel() for q in prior.parameters()), "rtf": seconds / args.seconds})
            total_sampling["parallel"] += seconds
        elif args.parallel > 1:
            total_sampling["parallel"] += total_sampling[True]  # the top level is sampled as one stretch
        above = sample_level(prior, torch.zeros(1, 0, dtype=torch.long), samples // vq.hops[i], conditioning,
                             JUKEBOX_SAMPLING, torch.Generator(device).manual_seed(0), prior.cfg.context // 2)
    names = {True: "priors cached", False: "priors uncached", "parallel": f"upsamplers in {args.parallel} stretches"}
    for key, seconds in total_sampling.items():
        if seconds:
            rows.append({"stage": "sample all 3 levels", "model": names[key], "rtf": seconds / args.seconds})

    print(f"{'stage':24s} {'model':26s} {'real-time factor':>17s}")
    for r in rows:
        print(f"{r['stage']:24s} {r['model']:26s} {r['rtf']:17.3g}")  # a GPU's encode and decode are ~1e-4
    suffix = Path(args.run).name if args.run else "" if args.preset == "cpu" else f"{args.preset}-preset"
    name = f"jukebox_speed-{device.type}{'-' + suffix if suffix else ''}.json"
    out = Path(__file__).parent / "results" / name
    out.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "preset": args.preset,
                               "run": args.run, "sample_seconds": args.seconds, "codec_seconds": args.codec_seconds,
                               "sample_rate": vq.sample_rate, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
