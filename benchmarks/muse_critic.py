"""Does MuseNet's inner critic pick better samples? Critic-chosen samples against randomly chosen ones.

    python benchmarks/muse_critic.py RUN                    # fits RUN's critic first if it has none
    python benchmarks/muse_critic.py RUN --candidates 4 --n 4 --seconds 20

For each composer of the run, ``n * candidates`` pieces are sampled (seeds the critic never saw). Three selections of
``n`` are compared: the first ``n`` (the samples are independent, so this is a random choice: what you get without a
critic), the critic's best ``n`` and its worst ``n``. Each selection is scored the way ``nexttoken muse evaluate``
scores samples: does a composer classifier trained on real pieces recognise the intended composer, and how far are
the pooled pitch-class / interval / inter-onset histograms and the note density from the composer's real pieces.
Prints a table and writes benchmarks/results/muse_critic.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nexttoken.midi.corpus import load_corpus
from nexttoken.muse.critic import CRITIC_FILE, Critic, fit_and_save, format_report, keep_best, score_pieces_real
from nexttoken.classifier import fit_classifier
from nexttoken.muse.evaluate import distances, excerpts, histograms, real_features
from nexttoken.muse.generate import GenerateConfig, generate_pieces
from nexttoken.muse.train import load_run
from nexttoken.sampling import SamplingConfig
from nexttoken.training import pick_device

METRICS = ("classifier_acc", "critic_real", "pitch_class_tvd", "interval_tvd", "ioi_tvd", "density_rel_diff")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--n", type=int, default=4, help="pieces kept per composer")
    p.add_argument("--candidates", type=int, default=4, help="pieces sampled per kept piece")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--per-composer", type=int, default=16, help="samples per composer to fit a missing critic on")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = pick_device(args.device)
    t0 = time.time()
    if not (args.run / CRITIC_FILE).is_file():
        print(format_report(fit_and_save(args.run, device, per_class=args.per_composer, seconds=args.seconds)))
    model, encoding, cfg, run = load_run(args.run, device)
    critic = Critic.load(run.path / CRITIC_FILE)
    corpus = load_corpus(cfg.corpus)
    classes = json.loads((run.path / "critic.json").read_text())["classes"]
    x, y = real_features(corpus, "train", classes, args.seconds)
    clf = fit_classifier(x, y, classes)

    picks = {"random (no critic)": [], "critic's best": [], "critic's worst": []}
    for k, composer in enumerate(classes):
        real = [histograms(ex) for q in corpus.indices("train", composer)
                for ex in excerpts(corpus.notes(q), args.seconds, most=1)]
        if not real:  # no real opening of --seconds with 4 notes or more: nothing to compare with
            print(f"  {composer}: no real {args.seconds:g}-second openings to compare with; skipped", flush=True)
            continue
        gen = GenerateConfig(composer=composer, instruments=[corpus.main_family(composer)], seconds=args.seconds,
                             n=args.n * args.candidates,
                             sampling=SamplingConfig(critic.temperature, top_p=critic.top_p, seed=20_000 + k))
        pieces = [pc for pc in generate_pieces(model, encoding, gen, device, cfg.tokens_per_second) if len(pc.notes)]
        scores = score_pieces_real(critic, model, encoding, [pc.notes for pc in pieces], [composer] * len(pieces),
                                   cfg.context)
        best = keep_best(scores, args.n)
        worst = keep_best(-scores, args.n)
        for name, chosen in zip(picks, (list(range(args.n)), best, worst)):
            hs = [histograms(pieces[i].notes) for i in chosen]
            pred = clf.predict(np.stack([h.vector() for h in hs]))
            picks[name].append({"composer": composer, "classifier_acc": float((pred == k).mean()),
                                "critic_real": float(scores[chosen].mean()), **distances(hs, real)})
        print(f"  {composer}: {len(pieces)} samples scored", flush=True)

    compared = len(picks["random (no critic)"])
    print(f"{args.run}: {compared} composers, {args.n} of {args.n * args.candidates} samples of {args.seconds:g} s "
          f"kept per composer; means over composers (distances: lower is closer to real)")
    print(f"{'selection':20} " + " ".join(f"{m:>16}" for m in METRICS))
    rows = []
    for name, per in picks.items():
        row = {"selection": name, **{m: float(np.mean([r[m] for r in per])) for m in METRICS}, "per_composer": per}
        rows.append(row)
        print(f"{name:20} " + " ".join(f"{row[m]:>16.3f}" for m in METRICS))
    out = Path(__file__).parent / "results" / "muse_critic.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                               "seconds": time.time() - t0}, indent=2) + "\n")


if __name__ == "__main__":
    main()
