"""`nexttoken muse ...`: MuseNet on your machine. Verbs, in the order a user meets them:

    prepare      convert a corpus once (the music21 subset by default) and print what is in it
    encode       MIDI -> readable tokens, one per line          decode   tokens -> MIDI
    train        train a model (a run folder); --resume RUN continues a killed run
    generate     compose: composer, instruments, prime, length -> .mid, .wav, piano-roll .png per sample
    critic       fit the inner critic (real vs generated) that --candidates uses to pick the best samples
    evaluate     bits per note, composer-classifier fidelity, histogram distances to real music
    embeddings   the composer tokens' embeddings: cosine-similarity heatmap and a 2-D map
    report       an HTML page for a trained run: curve, critic, samples as audio and piano rolls, composer map

Each verb checks its flags (declared with their ranges on the config dataclasses) and calls one library function.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from nexttoken.cli import add_device_option
from nexttoken.config import add_options, changed, check, from_args, given, integer, option
from nexttoken.errors import UserError, warn
from nexttoken.sampling import SamplingConfig
from nexttoken.training import LoopConfig, OptimConfig, pick_device


@dataclass
class CorpusJobs:
    jobs: int = option(2, "processes converting the music21 corpus and reading MIDI files", ge=1, le=64)


def register(parser: argparse.ArgumentParser) -> None:
    from nexttoken.muse.critic import CriticConfig
    from nexttoken.muse.demo import SHOWN, ReportConfig
    from nexttoken.muse.evaluate import EvaluateConfig
    from nexttoken.muse.generate import MUSE_SAMPLING, GenerateConfig
    from nexttoken.muse.train import PRESETS, MuseConfig, TimeBudget

    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("prepare", help="convert and cache a corpus; print its composers and sizes")
    p.add_argument("--corpus", default="music21-small", help=MuseConfig.__dataclass_fields__["corpus"].metadata["help"])
    add_options(p, CorpusJobs)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("encode", help="MIDI file -> tokens, one readable token per line")
    p.add_argument("midi", type=Path)
    p.add_argument("-o", "--out", type=Path, default=None, help="default: the MIDI path with .tokens, "
                   "which must not exist yet; an existing file is replaced only when -o names it (never the input)")
    p.add_argument("--composer", default="unknown", help="the composer token of the header")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="tokens (one per line) -> MIDI file")
    p.add_argument("tokens", type=Path)
    p.add_argument("-o", "--out", type=Path, default=None, help="default: the tokens path with .mid, "
                   "which must not exist yet; an existing file is replaced only when -o names it (never the input)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("train", help="train a model on a corpus; writes a run folder")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="the size of the model and its training: cpu (default: 1.4 M parameters, 600 steps, a few "
                        "minutes on 2 cores) or gpu (29 M parameters, a 2,048-token context, 30 minutes of one GPU; "
                        "sized for the whole corpus, --corpus music21: the default subset is too small for it)")
    cpu, gpu = PRESETS["cpu"], PRESETS["gpu"]
    add_options(p, MuseConfig, presets={"gpu": gpu.model})
    for section, cls in (("optim", OptimConfig), ("loop", LoopConfig)):
        add_options(p, cls, defaults=asdict(getattr(cpu, section)),
                    presets={"gpu": changed(getattr(gpu, section), getattr(cpu, section))})
    add_options(p, TimeBudget)
    p.add_argument("--workers", type=integer, default=None,
                   help="processes building batches ahead (default: none on CPU, half the cores up to 8 on a GPU)")
    add_options(p, CorpusJobs)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/muse-train-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue a killed run with its own settings (--steps N: train a finished run further)")
    add_device_option(p)
    p.set_defaults(func=cmd_train, distributed=True)

    p = sub.add_parser("generate", help="compose pieces with a trained model")
    p.add_argument("run", type=Path)
    add_options(p, GenerateConfig)
    add_options(p, SamplingConfig, defaults=asdict(MUSE_SAMPLING))
    p.add_argument("--soundfont", default=None, help="General MIDI .sf2 (default: a system soundfont, else the "
                                                     "built-in synthesizer)")
    p.add_argument("--out", type=Path, default=None, help="a new or empty folder (default RUN/samples-<time>)")
    add_device_option(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("critic", help="fit the inner critic (real vs generated) on the run's own samples")
    p.add_argument("run", type=Path)
    add_options(p, CriticConfig)
    add_options(p, SamplingConfig, skip=("top_k",), defaults=asdict(MUSE_SAMPLING))
    add_options(p, CorpusJobs)
    add_device_option(p)
    p.set_defaults(func=cmd_critic)

    p = sub.add_parser("evaluate", help="bits per note, conditioning fidelity and distances to real music")
    p.add_argument("run", type=Path)
    add_options(p, EvaluateConfig)
    add_options(p, SamplingConfig, skip=("top_k",), defaults=asdict(MUSE_SAMPLING))
    add_options(p, CorpusJobs)
    add_device_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="an HTML page for a trained run: its curve, critic, samples as audio, the map")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=None, help="folder (default RUN/report)")
    add_options(p, ReportConfig)
    add_options(p, SamplingConfig, skip=("top_k", "seed"), defaults=asdict(SHOWN))
    add_options(p, CorpusJobs)
    add_device_option(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("embeddings", help="composer-token embeddings: similarity heatmap and 2-D map")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=None, help="folder (default: the run folder)")
    p.set_defaults(func=cmd_embeddings)


# ---- verbs ---------------------------------------------------------------------------------------------------------------
def cmd_prepare(args) -> None:
    from nexttoken.midi.corpus import load_corpus

    corpus = load_corpus(args.corpus, from_args(args, CorpusJobs).jobs)
    print(f"{'label':18} {'pieces':>7} {'val':>5} {'notes':>9}")
    for r in corpus.summary():
        print(f"{r['label']:18} {r['pieces']:>7} {r['val']:>5} {r['notes']:>9,}")
    print(f"{len(corpus)} pieces, {corpus.table['pitch'].size:,} notes, {corpus.skipped} file(s) skipped")
    print(f"note table: {corpus.path} (pass it as --corpus on a machine without the source files)")


def cmd_encode(args) -> None:
    from nexttoken.muse.token_files import encode_file

    out, ids, notes = encode_file(args.midi, args.out, args.composer)
    print(f"{out}: {len(ids)} tokens for {_count(len(notes), 'note')} ({len(ids) / len(notes):.2f} tokens per "
          f"note)")


def cmd_decode(args) -> None:
    from nexttoken.muse.token_files import decode_file

    out, notes = decode_file(args.tokens, args.out)
    print(f"{out}: {_count(len(notes), 'note')}, {notes.seconds:.1f} s")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cmd_train(args) -> None:
    from nexttoken.muse.train import PRESETS, MuseConfig, TimeBudget, batch_workers, resume, train
    from nexttoken.training import check_preset_device
    from nexttoken.files import read_json

    budget, jobs = from_args(args, TimeBudget), from_args(args, CorpusJobs).jobs
    if args.resume is not None:
        if budget.max_minutes is not None:
            raise UserError("a resumed run keeps its time budget (the time it trained counts); leave out "
                            "--max-minutes")
        if args.preset is not None:
            raise UserError("a resumed run keeps its size; leave out --preset")
        changes = {**given(args, MuseConfig), **given(args, OptimConfig), **given(args, LoopConfig)}
        if args.workers is not None:
            changes["workers"] = args.workers
        path = resume(args.resume, args.device, jobs, changes)
    else:
        check_preset_device(args.preset, args.device)
        preset = PRESETS[args.preset or "cpu"]
        cfg = from_args(args, MuseConfig, base=preset.model_config()).validate()
        optim = from_args(args, OptimConfig, base=preset.optim)
        loop = from_args(args, LoopConfig, base=preset.loop)
        workers = args.workers if args.workers is not None else batch_workers(args.device)
        seconds = loop.max_seconds if budget.max_minutes is None else 60 * budget.max_minutes
        loop = check(replace(loop, max_seconds=seconds, workers=workers))
        path = train(cfg, optim, loop, args.out, args.device, jobs)
    if (path / "summary.json").is_file():
        s = read_json(path / "summary.json")
        if s.get("bits_per_note") is None:
            print(f"{path}: no validation pieces, so no bits per note (a composer's pieces are held out from two "
                  f"on, or by a CSV's split column), {s['params']:,} parameters")
        else:
            print(f"{path}: bits per note {s['bits_per_note']:.3f} on validation pieces, "
                  f"{s['tokens_per_note']:.2f} tokens per note, {s['params']:,} parameters")


def cmd_generate(args) -> None:
    from nexttoken.midi.render import find_soundfont
    from nexttoken.muse.generate import MUSE_SAMPLING, GenerateConfig, write_samples

    cfg = from_args(args, GenerateConfig)
    cfg.sampling = from_args(args, SamplingConfig, base=MUSE_SAMPLING)
    cfg.validate()
    soundfont = find_soundfont(args.soundfont)
    written = write_samples(args.run, cfg, args.out, pick_device(args.device), soundfont)
    for s in written:
        critic = f"  critic {s['critic_real']:.2f}" if "critic_real" in s else ""
        print(f"{s['midi']}  {s['seconds']:.1f} s  {_count(s['notes'], 'note')}  {s['tokens']} tokens{critic}")
    silent = sum(s["notes"] == 0 for s in written)
    if silent:
        warn(f"{silent} of the {len(written)} samples hold no notes (silent files); a higher --temperature or a "
             f"--prime gives the model notes to continue")
    if soundfont is None:
        print("nexttoken: no General MIDI soundfont found, so the WAV files are the built-in synthesizer's "
              "(apt-get install timgm6mb-soundfont, or --soundfont FILE.sf2, for sampled instruments)", file=sys.stderr)


def cmd_critic(args) -> None:
    from nexttoken.muse.critic import CRITIC_FILE, CriticConfig, fit_and_save, format_report
    from nexttoken.muse.generate import MUSE_SAMPLING

    cfg, sampling = from_args(args, CriticConfig), from_args(args, SamplingConfig, base=MUSE_SAMPLING)
    report = fit_and_save(args.run, pick_device(args.device), from_args(args, CorpusJobs).jobs,
                          per_class=cfg.per_composer, seconds=cfg.seconds, temperature=sampling.temperature,
                          top_p=sampling.top_p, seed=sampling.seed, progress=True)
    print(format_report(report))
    print(f"wrote {args.run / CRITIC_FILE}; use it with: nexttoken muse generate {args.run} --candidates 4")


def cmd_evaluate(args) -> None:
    from nexttoken.muse.evaluate import EvaluateConfig, evaluate_run, format_report
    from nexttoken.muse.generate import MUSE_SAMPLING

    cfg, sampling = from_args(args, EvaluateConfig), from_args(args, SamplingConfig, base=MUSE_SAMPLING)
    ev = evaluate_run(args.run, pick_device(args.device), cfg, sampling, from_args(args, CorpusJobs).jobs)
    print(format_report(ev))


def cmd_report(args) -> None:
    from nexttoken.muse.demo import SHOWN, ReportConfig, report

    cfg, sampling = from_args(args, ReportConfig), from_args(args, SamplingConfig, base=SHOWN)
    print(report(args.run, args.out, pick_device(args.device), cfg, sampling, from_args(args, CorpusJobs).jobs))


def cmd_embeddings(args) -> None:
    from nexttoken.muse.embeddings import composer_map

    for path in composer_map(args.run, args.out):
        print(path)


def demo(out: Path, device):
    """muse's section of `nexttoken demo` (``demo.demo``)."""
    from nexttoken.muse import demo as section

    return section.demo(out, device)
