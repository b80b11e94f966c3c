"""`nexttoken muse ...`: MuseNet on your machine. Verbs, in the order a user meets them:

    prepare      convert a corpus once (the music21 subset by default) and print what is in it
    encode       MIDI -> readable tokens, one per line          decode   tokens -> MIDI
    train        train a model (a run folder); --resume RUN continues a killed run
    generate     compose: composer, instruments, prime, length -> .mid, .wav, piano-roll .png per sample
    critic       fit the inner critic (real vs generated) that --candidates uses to pick the best samples
    evaluate     bits per note, composer-classifier fidelity, histogram distances to real music
    embeddings   the composer tokens' embeddings: cosine-similarity heatmap and a 2-D map
    report       an HTML page for a trained run: curve, critic, samples as audio and piano rolls, composer map
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nexttoken.cli import add_device_option, positive_int
from nexttoken.errors import UserError

HELP = "MuseNet: MIDI as a language, composer-conditioned training, primed generation"


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("prepare", help="convert and cache a corpus; print its composers and sizes")
    _corpus_options(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("encode", help="MIDI file -> tokens, one readable token per line")
    p.add_argument("midi", type=Path)
    p.add_argument("-o", "--out", type=Path, default=None, help="default: the MIDI path with .tokens")
    p.add_argument("--composer", default="unknown", help="the composer token of the header")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="tokens (one per line) -> MIDI file")
    p.add_argument("tokens", type=Path)
    p.add_argument("-o", "--out", type=Path, default=None, help="default: the tokens path with .mid")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("train", help="train a model on a corpus; writes a run folder")
    _corpus_options(p)
    p.add_argument("--encoding", default="musenet", choices=["musenet", "remi", "midilike"])
    p.add_argument("--context", type=positive_int, default=256, help="tokens per training window")
    p.add_argument("--n-layer", type=positive_int, default=4)
    p.add_argument("--n-head", type=positive_int, default=4)
    p.add_argument("--n-embd", type=positive_int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--no-timing-embedding", dest="timing_embedding", action="store_false",
                   help="drop MuseNet's timing embedding (time and index within a chord)")
    p.add_argument("--no-structure-embedding", dest="structure_embedding", action="store_false",
                   help="drop MuseNet's structural embedding (position within the piece in 128 parts)")
    p.add_argument("--no-countdown-embedding", dest="countdown_embedding", action="store_false",
                   help="drop MuseNet's countdown embedding (time left to the end of the piece)")
    p.add_argument("--transpose", type=int, default=5, help="augmentation: transpose up to this many semitones")
    p.add_argument("--stretch", type=float, default=0.1, help="augmentation: tempo stretch up to this fraction")
    p.add_argument("--velocity-shift", type=int, default=12, help="augmentation: velocity shift")
    p.add_argument("--steps", type=positive_int, default=600)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--grad-accum", type=positive_int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--eval-every", type=positive_int, default=100)
    p.add_argument("--ckpt-every", type=positive_int, default=100)
    p.add_argument("--val-pieces", type=int, default=40, help="validation pieces scored per evaluation (0: all)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="train as many of --steps as fit in this many minutes (the LR schedule follows)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes building batches ahead (default: none on CPU, half the cores on a GPU)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/muse-train-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN", help="continue a killed run")
    add_device_option(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="compose pieces with a trained model")
    p.add_argument("run", type=Path)
    p.add_argument("--composer", default="", help="a composer of the run (default: its first)")
    p.add_argument("--instruments", default="piano", help="comma-separated families, e.g. piano,strings")
    p.add_argument("--strict", action="store_true", help="mask every other instrument (default: a strong suggestion)")
    p.add_argument("--prime", default=None, metavar="FILE.mid", help="start from the opening of this piece")
    p.add_argument("--prime-notes", type=positive_int, default=6)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--n", type=positive_int, default=4, help="pieces to sample (one batch)")
    p.add_argument("--candidates", type=positive_int, default=1,
                   help="sample this many times --n pieces and keep the --n the critic finds most real "
                        "(needs `nexttoken muse critic RUN` first)")
    p.add_argument("--tempo", type=float, default=120.0, help="tempo token of the header when not priming")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--soundfont", default=None, help="General MIDI .sf2 (default: a system soundfont)")
    p.add_argument("--out", type=Path, default=None, help="folder (default RUN/samples-<time>)")
    add_device_option(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("critic", help="fit the inner critic (real vs generated) on the run's own samples")
    p.add_argument("run", type=Path)
    p.add_argument("--per-composer", type=positive_int, default=16, help="samples per composer to fit on (and as "
                   "many fresh ones to test on)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the excerpts and samples")
    p.add_argument("--temperature", type=float, default=1.0, help="the sampling settings the critic will rank")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--jobs", type=positive_int, default=2)
    add_device_option(p)
    p.set_defaults(func=cmd_critic)

    p = sub.add_parser("evaluate", help="bits per note, conditioning fidelity and distances to real music")
    p.add_argument("run", type=Path)
    p.add_argument("--n-per-composer", type=positive_int, default=4)
    p.add_argument("--seconds", type=float, default=20.0, help="length of generated (and real) excerpts")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--jobs", type=positive_int, default=2)
    add_device_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="an HTML page for a trained run: its curve, critic, samples as audio, the map")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=None, help="folder (default RUN/report)")
    p.add_argument("--composers", type=positive_int, default=4, help="pieces for this many composers (the largest)")
    p.add_argument("--candidates", type=positive_int, default=3,
                   help="samples drawn per piece shown; the critic keeps the best (1: no critic)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--jobs", type=positive_int, default=2)
    add_device_option(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("embeddings", help="composer-token embeddings: similarity heatmap and 2-D map")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=None, help="folder (default: the run folder)")
    p.set_defaults(func=cmd_embeddings)


def _corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default="music21-small",
                   help="music21-small (default subset), music21 (all), a folder of MIDI files, a CSV, or a note "
                        "table that prepare printed")
    p.add_argument("--jobs", type=positive_int, default=2, help="processes converting the music21 corpus")


# ---- verbs ---------------------------------------------------------------------------------------------------------------
def cmd_prepare(args) -> None:
    from nexttoken.muse.corpus import load_corpus

    corpus = load_corpus(args.corpus, args.jobs)
    print(f"{'label':18} {'pieces':>7} {'val':>5} {'notes':>9}")
    for r in corpus.summary():
        print(f"{r['label']:18} {r['pieces']:>7} {r['val']:>5} {r['notes']:>9,}")
    print(f"{len(corpus)} pieces, {corpus.table['pitch'].size:,} notes, {corpus.skipped} file(s) skipped")
    print(f"note table: {corpus.path} (pass it as --corpus on a machine without the source files)")


def cmd_encode(args) -> None:
    from nexttoken.muse.corpus import label_of
    from nexttoken.muse.encoding import Vocab, encode, read_midi
    from nexttoken.runs import atomic_write_text

    notes = read_midi(args.midi)
    composer = label_of(args.composer)
    vocab = Vocab([composer])
    ids = encode(notes, vocab, composer)
    out = args.out or args.midi.with_suffix(".tokens")
    atomic_write_text(out, "\n".join(vocab.to_strings(ids)) + "\n")
    print(f"{out}: {len(ids)} tokens for {len(notes)} notes ({len(ids) / max(len(notes), 1):.2f} tokens per note)")


def cmd_decode(args) -> None:
    from nexttoken.muse.encoding import Vocab, decode, write_midi

    if not args.tokens.is_file():
        raise UserError(f"{args.tokens}: no such file")
    lines = [(n, t.strip()) for n, t in enumerate(args.tokens.read_text().splitlines(), 1) if t.strip()]
    vocab = Vocab(sorted({t[len("composer:"):] for _, t in lines if t.startswith("composer:")}))
    ids = []
    for n, token in lines:
        if token not in vocab.index:
            raise UserError(f"{args.tokens}:{n}: unknown token {token!r}")
        ids.append(vocab.index[token])
    notes = decode(ids, vocab)
    out = write_midi(notes, args.out or args.tokens.with_suffix(".mid"))
    print(f"{out}: {len(notes)} notes, {notes.seconds:.1f} s")


def cmd_train(args) -> None:
    from nexttoken.muse.train import MuseConfig, train
    from nexttoken.training import LoopConfig, OptimConfig, pick_device

    cfg = MuseConfig(corpus=args.corpus, encoding=args.encoding, context=args.context, n_layer=args.n_layer,
                     n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout,
                     timing_embedding=args.timing_embedding, structure_embedding=args.structure_embedding,
                     countdown_embedding=args.countdown_embedding,
                     transpose=args.transpose, stretch=args.stretch, velocity_shift=args.velocity_shift,
                     val_pieces=args.val_pieces)
    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}")
    optim = OptimConfig(lr=args.lr, warmup_steps=args.warmup)
    workers = args.workers
    if workers is None:  # the CPU's cores are the model's on a CPU run
        per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        workers = 0 if pick_device(args.device).type == "cpu" else min(8, per_process // 2)
    loop = LoopConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                      eval_every=args.eval_every, ckpt_every=args.ckpt_every, seed=args.seed,
                      precision=args.precision, compile=args.compile, max_seconds=60 * args.max_minutes,
                      workers=workers)
    path = train(cfg, optim, loop, args.out, args.device, args.resume, args.jobs)
    summary = path / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        print(f"{path}: bits per note {s['bits_per_note']:.3f} on validation pieces, "
              f"{s['tokens_per_note']:.2f} tokens per note, {s['params']:,} parameters")


def _instruments(text: str) -> list[str]:
    from nexttoken.muse.encoding import FAMILIES

    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        if n not in FAMILIES:
            raise UserError(f"unknown instrument {n!r}; choose from {', '.join(FAMILIES)}")
    if not names:
        raise UserError("--instruments needs at least one instrument")
    return names


def cmd_generate(args) -> None:
    from nexttoken.muse.generate import GenerateConfig
    from nexttoken.training import pick_device

    if args.seconds <= 0:
        raise UserError("--seconds must be positive")
    if args.prime and not Path(args.prime).is_file():
        raise UserError(f"{args.prime}: no such file")
    cfg = GenerateConfig(composer=args.composer, instruments=_instruments(args.instruments), strict=args.strict,
                         prime=args.prime, prime_notes=args.prime_notes, seconds=args.seconds,
                         temperature=args.temperature, top_p=args.top_p, n=args.n, tempo=args.tempo, seed=args.seed)
    out = args.out or args.run / f"samples-{time.strftime('%Y%m%d-%H%M%S')}"
    written = write_samples(args.run, cfg, out, pick_device(args.device), args.soundfont, candidates=args.candidates)
    for s in written:
        critic = f"  critic {s['critic_real']:.2f}" if "critic_real" in s else ""
        print(f"{s['midi']}  {s['seconds']:.1f} s  {s['notes']} notes  {s['tokens']} tokens{critic}")


def write_samples(run_dir: Path, cfg, out: Path, device, soundfont: str | None = None, title: str = "",
                  candidates: int = 1) -> list[dict]:
    """Generate, then write sample-NN.mid/.wav/.png and samples.json into ``out``; returns one record per sample.
    With ``candidates`` > 1, ``candidates * cfg.n`` pieces are sampled and the critic keeps the ``cfg.n`` best."""
    from dataclasses import replace

    from nexttoken.muse.critic import CRITIC_FILE, Critic, keep_best, score_pieces_real
    from nexttoken.muse.encoding import write_midi
    from nexttoken.muse.generate import generate_pieces
    from nexttoken.muse.render import find_soundfont, piano_roll, render_wav
    from nexttoken.muse.train import load_run
    from nexttoken.runs import atomic_write_json

    model, encoding, muse_cfg, run = load_run(run_dir, device)
    if cfg.composer and cfg.composer not in muse_cfg.composers:
        raise UserError(f"unknown composer {cfg.composer!r}; this run knows: {', '.join(muse_cfg.composers)}")
    critic = Critic.load(run.path / CRITIC_FILE) if candidates > 1 else None
    sf = find_soundfont(soundfont)
    if sf is None:
        print("nexttoken: warning: no General MIDI soundfont found (apt-get install timgm6mb-soundfont, or pass "
              "--soundfont FILE.sf2); writing MIDI and piano rolls without audio", file=sys.stderr)
    composer = cfg.composer or muse_cfg.composers[0]
    t0 = time.time()
    pieces = generate_pieces(model, encoding, replace(cfg, n=cfg.n * candidates), device, muse_cfg.tokens_per_second)
    scores = None
    if critic is not None:
        scores = score_pieces_real(critic, model, encoding, [p.notes for p in pieces], [composer] * len(pieces),
                                   muse_cfg.context)
        best = keep_best(scores, cfg.n)
        pieces, scores = [pieces[i] for i in best], scores[best]
    elapsed = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for k, piece in enumerate(pieces):
        stem = out / f"sample-{k:02d}"
        write_midi(piece.notes, stem.with_suffix(".mid"))
        caption = title or f"{composer} / {','.join(cfg.instruments)} / sample {k}"
        piano_roll(piece.notes, stem.with_suffix(".png"), caption, piece.prime_seconds)
        record = {"midi": str(stem.with_suffix(".mid")), "png": str(stem.with_suffix(".png")),
                  "seconds": piece.notes.seconds, "notes": len(piece.notes), "tokens": len(piece.ids),
                  "finished": piece.finished}
        if scores is not None:
            record["critic_real"] = float(scores[k])
        if sf is not None:
            render_wav(piece.notes, stem.with_suffix(".wav"), sf)
            record["wav"] = str(stem.with_suffix(".wav"))
        records.append(record)
    atomic_write_json(out / "samples.json", {"run": str(run_dir), "config": asdict(cfg), "candidates": candidates,
                                             "soundfont": str(sf),
                                             "sampling_seconds": elapsed, "samples": records})
    return records


def cmd_critic(args) -> None:
    from nexttoken.muse.critic import CRITIC_FILE, fit_and_save, format_report
    from nexttoken.training import pick_device

    if args.seconds <= 0:
        raise UserError("--seconds must be positive")
    report = fit_and_save(args.run, pick_device(args.device), args.jobs, per_class=args.per_composer,
                          seconds=args.seconds, temperature=args.temperature, top_p=args.top_p)
    print(format_report(report))
    print(f"wrote {args.run / CRITIC_FILE}; use it with: nexttoken muse generate {args.run} --candidates 4")


def cmd_evaluate(args) -> None:
    from nexttoken.muse.corpus import load_corpus
    from nexttoken.muse.evaluate import evaluate
    from nexttoken.muse.train import load_run
    from nexttoken.runs import atomic_write_json
    from nexttoken.training import pick_device

    device = pick_device(args.device)
    model, encoding, cfg, run = load_run(args.run, device)
    corpus = load_corpus(cfg.corpus, args.jobs)
    ev = evaluate(model, encoding, cfg, corpus, device, args.n_per_composer, args.seconds,
                  temperature=args.temperature, top_p=args.top_p)
    atomic_write_json(run.path / "evaluation.json", ev.to_dict())
    print(format_evaluation(ev))


def format_evaluation(ev) -> str:
    masked = "" if ev.masked_bits_per_note is None else f", {ev.masked_bits_per_note:.3f} under the sampler's rules"
    lines = [f"bits per note on {ev.held_out_pieces} held-out pieces: {ev.bits_per_note:.3f}{masked} "
             f"({ev.tokens_per_note:.2f} tokens per note): "
             + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ev.bits_per_note_by_kind.items(), key=lambda kv: -kv[1])),
             f"composer classifier over {len(ev.classifier_classes)} composers (chance {ev.chance:.2f}): "
             f"real held-out excerpts {ev.real_accuracy:.2f}, generated excerpts {ev.generated_accuracy:.2f}"]
    keys = ["pitch_class_tvd", "interval_tvd", "ioi_tvd", "density_rel_diff"]
    lines.append(f"{'composer':16} " + " ".join(f"{k[:-4] if k.endswith('_tvd') else 'density':^22}" for k in keys)
                 + "   (generated vs real | real half vs half)")
    for r in ev.per_composer:
        cells = [f"{r.get('gen_' + k, float('nan')):>10.3f} | {r.get('real_' + k, float('nan')):<9.3f}" for k in keys]
        lines.append(f"{r['composer']:16} " + " ".join(cells))
    return "\n".join(lines)


def cmd_report(args) -> None:
    from nexttoken.muse.corpus import load_corpus
    from nexttoken.muse.evaluate import main_family
    from nexttoken.report import render
    from nexttoken.runs import Run
    from nexttoken.training import pick_device

    if args.seconds <= 0:
        raise UserError("--seconds must be positive")
    run = Run.open(args.run)
    if "muse" not in run.config or not (run.path / "summary.json").is_file():
        raise UserError(f"{args.run} is not a finished muse training run")
    composers = run.config["muse"]["composers"]
    corpus = load_corpus(run.config["muse"]["corpus"], args.jobs)
    largest = sorted((c for c in composers if corpus.indices("train", c)),
                     key=lambda c: -len(corpus.indices("train", c)))[: args.composers]
    family = {c: main_family(corpus, c) for c in largest}
    requests = [(c, family[c], None, f"{c}, {family[c]}") for c in largest]
    if len(largest) >= 2 and corpus.indices("val", largest[0]):  # MuseNet's trick: one composer's opening, another's style
        prime = corpus.notes(corpus.indices("val", largest[0])[0])
        requests.append((largest[1], family[largest[1]], prime,
                         f"{largest[1]}, primed with the first 6 notes of a held-out {largest[0]} piece"))
    out = args.out or run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    section = run_section(run.path, out, pick_device(args.device), corpus, requests, args.candidates,
                          f"MuseNet: {run.path.name}", f"Corpus {run.config['muse']['corpus']} ({len(corpus)} pieces).",
                          args.seconds)
    print(render(f"nexttoken muse: {run.path.name}", [section], out / "report.html"))


def cmd_embeddings(args) -> None:
    paths = composer_map(args.run, args.out)
    for p in paths:
        print(p)


def composer_map(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Cosine similarities of the composer tokens' embeddings (heatmap) and their first two principal components."""
    import torch

    from nexttoken.muse.train import load_run
    from nexttoken.plots import figure, save

    model, encoding, cfg, run = load_run(run_dir, torch.device("cpu"))
    names = cfg.composers
    if len(names) < 2:
        raise UserError(f"{run_dir}: the run has only {len(names)} composer; a map needs two or more")
    ids = torch.tensor([encoding.composer_id(c) for c in names])
    emb = model.gpt.tok_emb.weight[ids].detach()  # (composers, n_embd)
    unit = torch.nn.functional.normalize(emb, dim=1)
    sim = (unit @ unit.T).numpy()
    out = out or run.path
    fig, ax = figure(1.2 + 0.45 * len(names), 1.0 + 0.4 * len(names))
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("composer tokens: cosine similarity", fontsize=9)
    heat = save(fig, out / "composer_similarity.png")
    centred = emb - emb.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    xy = (centred @ v[:2].T).numpy()  # (composers, 2) first two principal components
    fig, ax = figure(5, 4)
    ax.scatter(xy[:, 0], xy[:, 1])
    for (x, y), n in zip(xy, names):
        ax.annotate(n, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_title("composer tokens: first two principal components", fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    m = save(fig, out / "composer_map.png")
    np.savetxt(out / "composer_similarity.csv", sim, delimiter=",", header=",".join(names), fmt="%.4f")
    return [heat, m]


# ---- the demo section ------------------------------------------------------------------------------------------------------
DEMO_STEPS = 500  # under 3 minutes on 2 free cores (about 13k tokens/s)
DEMO_CANDIDATES = 3  # samples drawn per piece shown; the critic keeps the best


def demo(out: Path, device):
    """A small model trained for a few CPU minutes on the music21 subset; pieces as audio and piano rolls; the map."""
    from nexttoken.muse.corpus import load_corpus
    from nexttoken.muse.train import MuseConfig, train
    from nexttoken.training import LoopConfig, OptimConfig

    t0 = time.time()
    corpus = load_corpus("music21-small")
    t_corpus = time.time() - t0
    run_dir = out / "run"
    loop = LoopConfig(steps=DEMO_STEPS, batch_size=16, eval_every=100, ckpt_every=100)
    if (run_dir / "config.json").exists():
        train(MuseConfig(), OptimConfig(), loop, device=device.type, resume=run_dir)
    else:
        train(MuseConfig(), OptimConfig(lr=3e-3, warmup_steps=30), loop, out=run_dir, device=device.type)
    bach_prime = next((corpus.notes(p) for p in corpus.indices("val", "bach")), None)
    requests = [
        ("bach", "piano", None, "bach, piano"),
        ("palestrina", "voice", None, "palestrina, voice"),
        ("folk_ryan", "piano", None, "folk_ryan (Ryan's Mammoth Collection), piano"),
        ("monteverdi", "piano", bach_prime, "monteverdi, primed with the first 6 notes of a held-out Bach chorale"),
    ]
    return run_section(run_dir, out, device, corpus, requests, DEMO_CANDIDATES, "MuseNet: MIDI as a language",
                       f"The music21 corpus subset ({len(corpus)} pieces, {corpus.table['pitch'].size:,} notes; "
                       f"prepared in {t_corpus:.0f} s).")


def run_section(run_dir: Path, out: Path, device, corpus, requests: list[tuple], candidates: int, title: str,
                intro: str = "", seconds: float = 20.0):
    """A report section for a trained run: its learning curve, the inner critic, one piece per request
    (composer, instrument, prime notes or None, caption) as audio and piano roll, and the composer map."""
    from nexttoken.muse.critic import CRITIC_FILE, CriticReport, fit_and_save
    from nexttoken.muse.encoding import write_midi
    from nexttoken.muse.generate import GenerateConfig
    from nexttoken.report import Section

    summary = json.loads((run_dir / "summary.json").read_text())
    section = Section(title)
    by_kind = ", ".join(f"{k} {v:.2f}" for k, v in sorted(summary.get("bits_per_note_by_kind", {}).items(),
                                                          key=lambda kv: -kv[1]))
    section.text(
        f"{intro} As MuseNet tokens: {summary['tokens_per_note']:.2f} tokens per note. A "
        f"{summary['params'] / 1e6:.1f} M-parameter GPT with MuseNet's timing, structural and countdown embeddings "
        f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s on {summary['device']}: "
        f"{summary['bits_per_note']:.2f} bits per note on held-out pieces" + (f" ({by_kind})" if by_kind else "")
        + (f"; {summary['masked_bits_per_note']:.2f} under the rules the sampler enforces (a note-off only for a "
           f"sounding note)." if summary.get("masked_bits_per_note") else "."))
    section.image(run_dir / "bits_per_note.png", "validation bits per note")
    if candidates > 1:
        if (run_dir / CRITIC_FILE).is_file() and (run_dir / "critic.json").is_file():  # fitted before: keep it
            critic = CriticReport(**json.loads((run_dir / "critic.json").read_text()))
        else:
            critic = fit_and_save(run_dir, device, per_class=8, seconds=seconds, temperature=0.95)
        section.text(f"MuseNet's inner critic (`nexttoken muse critic RUN`), fitted on {critic.train_real} real "
                     f"openings against {critic.train_generated} of the model's own samples, tells held-out openings "
                     f"from fresh samples with balanced accuracy {critic.balanced_accuracy:.2f} (AUC "
                     f"{critic.auc:.2f}). Each piece below is the one it found most real of {candidates} samples.")
    for k, (composer, inst, prime, caption) in enumerate(requests):
        if composer not in summary["composers"]:
            continue
        if prime is not None:
            prime = str(write_midi(prime, out / "prime.mid"))
        cfg = GenerateConfig(composer=composer, instruments=[inst], prime=prime, prime_notes=6, seconds=seconds, n=1,
                             seed=k, temperature=0.95)
        for rec in write_samples(run_dir, cfg, out / f"sample-{k:02d}-{composer}", device, title=caption,
                                 candidates=candidates):
            if "wav" in rec:
                section.audio(rec["wav"], caption)
            section.image(rec["png"], caption)
    if len(summary["composers"]) >= 2:
        maps = composer_map(run_dir, out)
        section.image(maps[1], "composer tokens' embeddings, first two principal components")
        section.image(maps[0], "cosine similarity of the composer tokens' embeddings")
    section.text("Each piece starts from the header MuseNet would see (composer, instruments, start, tempo) and is "
                 "sampled with temperature 0.95 and top-p 0.95. See `nexttoken muse evaluate RUN` for "
                 "composer-classifier fidelity and histogram distances.")
    return section
