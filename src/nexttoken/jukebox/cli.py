"""`nexttoken jukebox ...`: Jukebox on your machine. Verbs, in the order a user meets them:

    prepare       render the embedded default (or read your audio) once and print what is in it
    train         every stage into one folder: VQ-VAE, codes, top prior, upsamplers (--resume RUN continues)
    train-vqvae   the VQ-VAE alone (--no-restarts: the paper's ablation)
    train-prior   one level's prior on the cached codes (--level top|middle|bottom)
    encode        audio -> codes.npz at every level        decode   codes.npz -> audio from one level
    sample        artist, genre, lyrics, length, prime -> a WAV and a spectrogram per level (--resume DIR continues)
    evaluate      reconstruction against an EnCodec-architecture codec, bits per second, artist recognition, lyrics
                  alignment
    report        one HTML page for a pipeline folder

Each verb checks its flags (declared with their ranges on the config dataclasses) and calls one library function.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

from nexttoken.cli import add_device_option
from nexttoken.config import add_options, changed, check, flag_name, from_args, given
from nexttoken.errors import UserError, continue_with
from nexttoken.sampling import SamplingConfig
from nexttoken.training import LoopConfig, OptimConfig, check_preset_device, pick_device

LEVELS = ("top", "middle", "bottom")


def register(parser: argparse.ArgumentParser) -> None:
    from nexttoken.jukebox.data import DataConfig
    from nexttoken.jukebox.evaluate_run import EvaluateConfig
    from nexttoken.jukebox.pipeline import Plan
    from nexttoken.jukebox.prior import PriorConfig
    from nexttoken.jukebox.sample import JUKEBOX_SAMPLING, SampleConfig
    from nexttoken.jukebox.train import RECIPES, TimeBudget, VQVAEOptions

    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("prepare", help="render or read the audio once (cached) and print its artists and sizes")
    add_options(p, DataConfig)
    add_options(p, VQVAEOptions, skip=("restarts", "val_clips"))
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="every stage into one folder: VQ-VAE, codes, top prior, middle and bottom "
                                     "upsamplers")
    add_options(p, DataConfig)
    add_options(p, VQVAEOptions)
    add_options(p, Plan)
    _out_or_resume(p)
    p.set_defaults(func=cmd_train, distributed=True)

    p = sub.add_parser("train-vqvae", help="train the VQ-VAE of a new pipeline folder (or continue it)")
    add_options(p, DataConfig)
    add_options(p, VQVAEOptions)
    _preset_options(p, RECIPES, "vq_optim", "vq_loop")
    add_options(p, TimeBudget)
    _out_or_resume(p)
    p.set_defaults(func=cmd_train_vqvae, distributed=True)

    p = sub.add_parser("train-prior", help="train one level's prior on the pipeline's cached codes",
                       description="Train one level's prior on the pipeline's cached codes. Its size, optimiser and "
                                   "loop default to the preset its VQ-VAE was trained with (the defaults shown are "
                                   "the cpu preset's top prior's).")
    p.add_argument("run", type=Path)
    p.add_argument("--level", required=True, choices=LEVELS, help="top: the prior over the top codes; middle, "
                                                                  "bottom: the upsamplers")
    add_options(p, PriorConfig, defaults=asdict(RECIPES["cpu"].priors["top"]))
    _preset_options(p, RECIPES, "prior_optim", "prior_loop")
    add_options(p, TimeBudget)
    p.add_argument("--resume", action="store_true", help="continue the level's killed training (--steps N: train "
                                                         "a finished one further)")
    add_device_option(p)
    p.set_defaults(func=cmd_train_prior, distributed=True)

    p = sub.add_parser("encode", help="an audio file -> its codes at every level (.npz)")
    p.add_argument("run", type=Path)
    p.add_argument("audio", type=Path)
    p.add_argument("-o", "--out", type=Path, default=None, help="default: the audio path with .npz")
    add_device_option(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="codes (.npz of encode or sample) -> audio decoded from one level")
    p.add_argument("run", type=Path)
    p.add_argument("codes", type=Path)
    p.add_argument("--level", default="bottom", choices=LEVELS, help="the level decoded (default bottom)")
    p.add_argument("-o", "--out", type=Path, default=None, help="default: the codes path with -<level>.wav")
    add_device_option(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("sample", help="sample audio: top codes, then upsampled, then decoded at every level")
    p.add_argument("run", type=Path, nargs="?", help="the pipeline folder (with --resume DIR: DIR's, when left out)")
    add_options(p, SampleConfig)
    add_options(p, SamplingConfig, defaults=asdict(JUKEBOX_SAMPLING))
    p.add_argument("--out", type=Path, default=None, help="folder (default RUN/samples/sample-<artist>-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the sampling in DIR (killed, or stopped by --stop-at) with its own settings")
    add_device_option(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="the paper's measures for a trained pipeline folder")
    p.add_argument("run", type=Path)
    add_options(p, EvaluateConfig)
    add_device_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="an HTML page for a pipeline folder: reconstructions, samples, measures")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=None, help="folder (default RUN/report)")
    add_device_option(p)
    p.set_defaults(func=cmd_report)


def _preset_options(p: argparse.ArgumentParser, recipes: dict, optim: str, loop: str) -> None:
    """The optimiser and loop flags of a stage, each showing the cpu preset's default and what the others change."""
    cpu = recipes["cpu"]
    for section, cls in ((optim, OptimConfig), (loop, LoopConfig)):
        add_options(p, cls, defaults=asdict(getattr(cpu, section)),
                    presets={name: changed(getattr(r, section), getattr(cpu, section))
                             for name, r in recipes.items() if name != "cpu"})


def _out_or_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, help="the pipeline folder (default runs/jukebox-pipeline-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN", help="continue the pipeline folder RUN")
    add_device_option(p)


def _new_folder(args) -> Path:
    from nexttoken.runs import default_run_dir

    return args.out or default_run_dir("jukebox", "pipeline")


# ---- verbs ---------------------------------------------------------------------------------------------------------
def cmd_prepare(args) -> None:
    from nexttoken.jukebox.data import DataConfig, load_data, summary_rows
    from nexttoken.jukebox.train import VQVAEOptions

    vq = from_args(args, VQVAEOptions).vqvae_config()
    clips = load_data(from_args(args, DataConfig), vq.sample_rate, vq.clip_samples)
    print(f"{'artist':16} {'tracks':>6} {'val':>4} {'minutes':>8} {'sung':>5}  genres")
    for r in summary_rows(clips):
        print(f"{r['artist']:16} {r['tracks']:>6} {r['val']:>4} {r['minutes']:>8.1f} {r['lyrics']:>5}  {r['genres']}")
    hours = len(clips) * clips.clips.shape[1] / clips.sample_rate / 3600
    print(f"{len(clips.tracks)} tracks, {len(clips):,} clips of {clips.clips.shape[1] / clips.sample_rate:g} s "
          f"({hours:.2f} h) at {clips.sample_rate} Hz, {len(clips.skipped)} file(s) skipped")


def cmd_train(args) -> None:
    from nexttoken.jukebox.data import DataConfig
    from nexttoken.jukebox.pipeline import Plan, train_everything
    from nexttoken.jukebox.train import VQVAEOptions

    path = _new_folder(args)
    if args.resume is not None:
        typed = [*given(args, DataConfig), *given(args, VQVAEOptions), *given(args, Plan)]
        if typed:
            raise UserError(f"--resume RUN continues RUN with its own settings; leave out {flag_name(typed[0])} "
                            f"(to train a prior further: nexttoken jukebox train-prior RUN --level L --resume "
                            f"--steps N)")
        with continue_with(f"nexttoken jukebox train --resume {args.resume}"):
            train_everything(args.resume, Plan(), VQVAEOptions(), args.device, None)
        path = args.resume
    else:
        opts = from_args(args, VQVAEOptions)
        check_preset_device(opts.preset, args.device)
        with continue_with(f"nexttoken jukebox train --resume {path}"):
            train_everything(path, from_args(args, Plan), opts, args.device, from_args(args, DataConfig).validate())
    _print_summaries(path)


def cmd_train_vqvae(args) -> None:
    from nexttoken.jukebox.data import DataConfig
    from nexttoken.jukebox.pipeline import saved_vqvae_settings, vqvae_stage
    from nexttoken.jukebox.train import RECIPES, TimeBudget, VQVAEOptions

    path = _new_folder(args)
    budget = from_args(args, TimeBudget)
    if args.resume is not None:
        if given(args, DataConfig):
            raise UserError("--resume RUN keeps RUN's audio; leave out the data flags")
        path = args.resume
        changes = {**given(args, VQVAEOptions), **given(args, OptimConfig), **given(args, LoopConfig)}
        if (path / "vqvae" / "config.json").is_file():
            opts, optim, loop = saved_vqvae_settings(path, changes)
        else:
            opts = from_args(args, VQVAEOptions)
            recipe = RECIPES[opts.preset]
            optim, loop = (from_args(args, OptimConfig, base=recipe.vq_optim),
                           from_args(args, LoopConfig, base=recipe.vq_loop))
        with continue_with(f"nexttoken jukebox train-vqvae --resume {path}"):
            vqvae_stage(path, opts, optim, check(budget.apply(loop)), args.device)
    else:
        opts = from_args(args, VQVAEOptions)
        check_preset_device(opts.preset, args.device)
        recipe = RECIPES[opts.preset]
        with continue_with(f"nexttoken jukebox train-vqvae --resume {path}"):
            vqvae_stage(path, opts, from_args(args, OptimConfig, base=recipe.vq_optim),
                        check(budget.apply(from_args(args, LoopConfig, base=recipe.vq_loop))), args.device,
                        from_args(args, DataConfig).validate())
    _print_summaries(path)


def cmd_train_prior(args) -> None:
    from nexttoken.jukebox.pipeline import prior_stage, recipe_of, saved_prior_settings
    from nexttoken.jukebox.prior import PriorConfig
    from nexttoken.jukebox.train import TimeBudget

    budget = from_args(args, TimeBudget)
    if args.resume and (args.run / args.level / "config.json").is_file():
        changes = {**given(args, PriorConfig), **given(args, OptimConfig), **given(args, LoopConfig)}
        cfg, optim, loop = saved_prior_settings(args.run, args.level, changes)
        loop = check(budget.apply(loop))  # the loop's budget, not PriorConfig.max_seconds (the longest piece)
    else:
        recipe = recipe_of(args.run)  # the preset of the pipeline's VQ-VAE sizes its priors
        cfg = from_args(args, PriorConfig, base=recipe.priors[args.level])
        cfg = replace(cfg, level=args.level).validate()
        optim = from_args(args, OptimConfig, base=recipe.prior_optim)
        loop = check(budget.apply(from_args(args, LoopConfig, base=recipe.prior_loop)))
    with continue_with(f"nexttoken jukebox train-prior {args.run} --level {args.level} --resume"):
        prior_stage(args.run, args.level, cfg, optim, loop, args.device, args.resume)
    _print_summaries(args.run)


def cmd_encode(args) -> None:
    from nexttoken.jukebox.pipeline import encode_file

    out, lines = encode_file(args.run, args.audio, args.out, pick_device(args.device))
    print("\n".join(lines))
    print(f"wrote {out}")


def cmd_decode(args) -> None:
    from nexttoken.jukebox.pipeline import decode_file

    out, seconds = decode_file(args.run, args.codes, args.level, args.out, pick_device(args.device))
    print(f"wrote {out} ({seconds:.2f} s from the {args.level} level)")


def cmd_sample(args) -> None:
    from nexttoken.jukebox.sample import JUKEBOX_SAMPLING, SampleConfig, describe, sample_run, sampled_from

    device = pick_device(args.device)
    if args.run is None:
        if args.resume is None:
            raise UserError("give the pipeline folder RUN to sample from")
        args.run = sampled_from(args.resume)
    if args.resume is not None:
        changed = set(given(args, SampleConfig)) - {"stop_at"} | set(given(args, SamplingConfig))
        if changed:
            raise UserError(f"--resume DIR samples with DIR's own settings; leave out --{sorted(changed)[0]}"
                            .replace("_", "-"))
        stop_at = from_args(args, SampleConfig).stop_at
        results = sample_run(args.run, args.resume, SampleConfig(stop_at=stop_at), JUKEBOX_SAMPLING, device, True)
        out = args.resume
    else:
        from nexttoken.runs import default_run_dir

        cfg = from_args(args, SampleConfig)
        if cfg.prime_seconds is not None and not cfg.prime:
            raise UserError("--prime-seconds is the length of --prime's recording kept; give --prime too")
        out = args.out or default_run_dir("sample", cfg.artist or "first", args.run / "samples")
        results = sample_run(args.run, out, cfg, from_args(args, SamplingConfig, base=JUKEBOX_SAMPLING), device)
    print(describe(results, out))
    print(f"codes: {out / 'codes.npz'}")


def cmd_evaluate(args) -> None:
    from nexttoken.jukebox.evaluate_run import EvaluateConfig, evaluate_run, format_report

    report = evaluate_run(args.run, from_args(args, EvaluateConfig), pick_device(args.device))
    print(format_report(report))
    print(f"wrote {args.run / 'evaluation.json'}")


def cmd_report(args) -> None:
    from nexttoken.jukebox.demo import report

    print(report(args.run, args.out, pick_device(args.device)))


def _print_summaries(path: Path) -> None:
    from nexttoken.jukebox.pipeline import stale_priors
    from nexttoken.files import read_json

    s = path / "vqvae" / "summary.json"
    if s.is_file():
        summary = read_json(s)
        levels = summary["levels"]
        on = "held-out" if summary.get("scored_on", "val") == "val" else "training-clip (none held out)"
        print(f"{path / 'vqvae'}: {on} spectral convergence "
              + " / ".join(f"{n} {m['spectral_convergence_db']:.1f} dB" for n, m in levels.items())
              + "; codes in use " + " / ".join(f"{100 * m['usage']:.0f}%" for m in levels.values()))
    stale = stale_priors(path, LEVELS) if (path / "vqvae" / "config.json").is_file() else []
    for level in LEVELS:
        s = path / level / "summary.json"
        if path / level in stale:
            print(f"{path / level}: learned the codes of the VQ-VAE before it trained on; train it again "
                  f"(delete the folder, then nexttoken jukebox train --resume {path})")
        elif s.is_file():
            r = read_json(s)
            on = "held-out audio" if r.get("scored_on", "val") == "val" else "training audio (none held out)"
            print(f"{path / level}: {r['bits_per_second']:.0f} bits/s on {on} (unigram "
                  f"{r['unigram_bits_per_second']:.0f}), {r['params']:,} parameters", file=sys.stdout)


def demo(out: Path, device):
    """jukebox's section of `nexttoken demo` (``demo.demo``)."""
    from nexttoken.jukebox import demo as section

    return section.demo(out, device)
