"""muse's section of `nexttoken demo`, and the page `nexttoken muse report RUN` writes: a trained run's learning
curve, its inner critic, pieces as audio and piano rolls, and the composer map.

    nexttoken muse report RUN              # RUN/report/report.html
    nexttoken demo --only muse             # trains a small model first (a few CPU minutes)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from nexttoken.config import option
from nexttoken.errors import UserError
from nexttoken.midi.corpus import load_corpus
from nexttoken.midi.notes import write_midi
from nexttoken.muse.critic import CRITIC_FILE, CriticReport, fit_and_save
from nexttoken.muse.embeddings import composer_map
from nexttoken.muse.encoding import MuseNetEncoding
from nexttoken.muse.generate import GenerateConfig, write_samples
from nexttoken.muse.train import PRESETS, MuseConfig, check_out, load_run, open_run, resume, train
from nexttoken.report import Section, render
from nexttoken.files import read_json
from nexttoken.sampling import SamplingConfig

DEMO_STEPS = 500  # a few CPU minutes (docs/muse.md)
DEMO_CANDIDATES = 3  # samples drawn per piece shown; the critic keeps the best
# The pieces shown are drawn a little cooler than the model's own distribution, with nucleus sampling.
SHOWN = SamplingConfig(temperature=0.95, top_p=0.95)


@dataclass
class ReportConfig:
    """What ``nexttoken muse report`` shows."""

    composers: int = option(4, "pieces for this many composers (those with the most pieces)", ge=1, le=1000)
    candidates: int = option(3, "samples drawn per piece shown; the critic keeps the best (1: no critic)", ge=1,
                             le=64)
    seconds: float = option(20.0, "length of each piece", gt=0, le=600)


def demo(out: Path, device) -> Section:
    """A small model trained for a few CPU minutes on the music21 subset; pieces as audio and piano rolls; the map."""
    t0 = time.time()
    corpus = load_corpus("music21-small")
    t_corpus = time.time() - t0
    run_dir = out / "musenet"  # named in its progress bar
    if (run_dir / "config.json").exists():
        resume(run_dir, device=device.type)
    else:
        train(MuseConfig(), PRESETS["cpu"].optim, replace(PRESETS["cpu"].loop, steps=DEMO_STEPS), out=run_dir,
              device=device.type)
    bach_prime = next((corpus.notes(p) for p in corpus.indices("val", "bach")), None)
    requests = [
        ("bach", "piano", None, "bach, piano"),
        ("palestrina", "voice", None, "palestrina, voice"),
        ("folk_ryan", "piano", None, "folk_ryan (Ryan's Mammoth Collection), piano"),
        ("monteverdi", "piano", bach_prime, "monteverdi, primed with the first 6 notes of a held-out Bach chorale"),
    ]
    return run_section(run_dir, out, device, requests, DEMO_CANDIDATES, "MuseNet: MIDI as a language",
                       f"The music21 corpus subset ({len(corpus)} pieces, {corpus.table['pitch'].size:,} notes; "
                       f"prepared in {t_corpus:.0f} s).")


def report(run_dir: Path, out: Path | None, device, cfg: ReportConfig, sampling: SamplingConfig = SHOWN,
           jobs: int = 2) -> Path:
    """The HTML page of a finished training run (default ``RUN/report/report.html``): pieces of its largest
    composers, and one composer's piece primed with another's opening, as MuseNet showed."""
    check_out(out)
    run = open_run(run_dir)
    if not (run.path / "summary.json").is_file():
        raise UserError(f"{run_dir} has not finished training (no summary.json); finish it with: nexttoken muse "
                        f"train --resume {run_dir}")
    # Everything the samples need is checked before the report folder is made, so a refusal leaves no folder.
    _, encoding, muse_cfg, _ = load_run(run.path, torch.device("cpu"))
    if not isinstance(encoding, MuseNetEncoding):
        raise UserError(f"a report needs a run trained with --encoding musenet; {run_dir} was trained with "
                        f"--encoding {muse_cfg.encoding} (see: nexttoken muse evaluate {run_dir})")
    corpus = load_corpus(muse_cfg.corpus, jobs)
    largest = sorted((c for c in muse_cfg.composers if corpus.indices("train", c)),
                     key=lambda c: -len(corpus.indices("train", c)))[: cfg.composers]
    family = {c: corpus.main_family(c) for c in largest}
    requests = [(c, family[c], None, f"{c}, {family[c]}") for c in largest]
    if len(largest) >= 2 and corpus.indices("val", largest[0]):  # MuseNet's trick: one composer's opening, another's style
        prime = corpus.notes(corpus.indices("val", largest[0])[0])
        requests.append((largest[1], family[largest[1]], prime,
                         f"{largest[1]}, primed with the first 6 notes of a held-out {largest[0]} piece"))
    out = out or run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    section = run_section(run.path, out, device, requests, cfg.candidates, f"MuseNet: {run.path.name}",
                          f"Corpus {muse_cfg.corpus} ({len(corpus)} pieces).", cfg.seconds, sampling)
    return render(f"nexttoken muse: {run.path.name}", [section], out / "report.html")


def _critic(run_dir: Path, device, seconds: float, sampling: SamplingConfig) -> CriticReport:
    """The run's critic report: the one fitted before (``critic.json``), or a critic fitted now."""
    if (run_dir / CRITIC_FILE).is_file() and (run_dir / "critic.json").is_file():
        try:
            return CriticReport(**read_json(run_dir / "critic.json"))
        except TypeError:
            raise UserError(f"{run_dir / 'critic.json'} is damaged; fit the critic again with: nexttoken muse "
                            f"critic {run_dir}") from None
    return fit_and_save(run_dir, device, per_class=8, seconds=seconds, temperature=sampling.temperature,
                        top_p=sampling.top_p, progress=True)


def run_section(run_dir: Path, out: Path, device, requests: list[tuple], candidates: int, title: str,
                intro: str = "", seconds: float = 20.0, sampling: SamplingConfig = SHOWN) -> Section:
    """A report section for a trained run: its learning curve, the inner critic, one piece per request
    (composer, instrument, prime notes or None, caption) as audio and piano roll, and the composer map."""
    summary = read_json(run_dir / "summary.json")
    section = Section(title)
    by_kind = ", ".join(f"{k} {v:.2f}" for k, v in sorted(summary.get("bits_per_note_by_kind", {}).items(),
                                                          key=lambda kv: -kv[1]))
    trained = (f"A {summary['params'] / 1e6:.1f} M-parameter GPT with MuseNet's timing, structural and countdown "
               f"embeddings trained {summary['steps']} steps in {summary['train_seconds']:.0f} s on "
               f"{summary['device']}")
    if summary.get("bits_per_note") is None:
        section.text(f"{intro} {trained}; the corpus holds no held-out pieces, so there are no bits per note.")
    else:
        section.text(
            f"{intro} As MuseNet tokens: {summary['tokens_per_note']:.2f} tokens per note. {trained}: "
            f"{summary['bits_per_note']:.2f} bits per note on held-out pieces" + (f" ({by_kind})" if by_kind else "")
            + (f"; {summary['masked_bits_per_note']:.2f} under the rules the sampler enforces (a note-off only for "
               f"a sounding note)." if summary.get("masked_bits_per_note") else "."))
        section.image(run_dir / "bits_per_note.png", "validation bits per note")
    if candidates > 1:
        critic = _critic(run_dir, device, seconds, sampling)
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
                             candidates=candidates, sampling=replace(sampling, seed=k))
        for rec in write_samples(run_dir, cfg, out / f"sample-{k:02d}-{composer}", device, title=caption,
                                 rewrite=True):
            section.audio(rec["wav"], caption)
            section.image(rec["png"], caption)
    if len(summary["composers"]) >= 2:
        maps = composer_map(run_dir, out)
        section.image(maps[1], "composer tokens' embeddings, first two principal components")
        section.image(maps[0], "cosine similarity of the composer tokens' embeddings")
    section.text(f"Each piece starts from the header MuseNet would see (composer, instruments, start, tempo) and is "
                 f"sampled with temperature {sampling.temperature:g} and top-p {sampling.top_p:g}. See `nexttoken "
                 f"muse evaluate RUN` for composer-classifier fidelity and histogram distances.")
    return section
