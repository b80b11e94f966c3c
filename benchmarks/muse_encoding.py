"""MuseNet encoding vs MidiTok on the same MIDI files: tokens per note and encoding throughput (notes/s).

    python benchmarks/muse_encoding.py                        # the music21 subset (prepared on first use)
    python benchmarks/muse_encoding.py --corpus ~/midi --limit 500

Both sides start from the same parsed symusic Score and produce token ids: ours = Score -> note arrays -> ids,
MidiTok = ``tokenizer.encode(score)`` (REMI and MIDILike, one stream, programs on). Each file is encoded ``--repeats``
times and the best time is kept. Prints a table and writes benchmarks/results/muse_encoding.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import miditok
import symusic

from nexttoken.midi.corpus import load_corpus
from nexttoken.midi.notes import notes_from_score, notes_to_score
from nexttoken.muse.encoding import Vocab, encode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="music21-small")
    p.add_argument("--limit", type=int, default=300, help="pieces (0: all)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    corpus = load_corpus(args.corpus)
    pieces = list(range(len(corpus)))[: args.limit or None]
    # The same Score objects for every encoder: MIDI bytes written from the corpus's notes and parsed once.
    scores = [symusic.Score.from_midi(bytes(notes_to_score(corpus.notes(i)).dumps_midi())) for i in pieces]
    labels = [corpus.labels[i] for i in pieces]
    vocab = Vocab(sorted(set(labels)))
    n_notes = sum(s.note_num() for s in scores)

    def ours(score, label):
        return encode(notes_from_score(score), vocab, label)

    encoders = {"musenet (ours)": ours}
    for name, cls in (("MidiTok REMI", miditok.REMI), ("MidiTok MIDILike", miditok.MIDILike)):
        tok = cls(miditok.TokenizerConfig(use_programs=True, one_token_stream_for_programs=True))
        encoders[name] = lambda score, label, tok=tok: tok.encode(score).ids

    rows = []
    for name, fn in encoders.items():
        best, tokens = float("inf"), 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            tokens = sum(len(fn(s, l)) for s, l in zip(scores, labels))
            best = min(best, time.perf_counter() - t0)
        rows.append({"encoding": name, "tokens_per_note": tokens / n_notes, "notes_per_s": n_notes / best,
                     "seconds": best})
    base = rows[0]["notes_per_s"]
    for r in rows:
        r["ours_speedup"] = base / r["notes_per_s"]
    print(f"{len(scores)} pieces of {args.corpus}, {n_notes:,} notes; per-label tokens/note below the table")
    print(f"{'encoding':18} {'tokens/note':>11} {'notes/s':>12} {'ours is x faster':>17}")
    for r in rows:
        print(f"{r['encoding']:18} {r['tokens_per_note']:>11.2f} {r['notes_per_s']:>12,.0f} {r['ours_speedup']:>16.1f}x")
    per_label = {}
    for label in sorted(set(labels)):
        sel = [i for i, l in enumerate(labels) if l == label]
        n = sum(scores[i].note_num() for i in sel)
        per_label[label] = sum(len(ours(scores[i], label)) for i in sel) / n
    print("musenet tokens/note by label: " + ", ".join(f"{k} {v:.2f}" for k, v in per_label.items()))
    out = Path(__file__).parent / "results" / "muse_encoding.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"corpus": args.corpus, "pieces": len(scores), "notes": n_notes, "rows": rows,
                               "musenet_tokens_per_note_by_label": per_label}, indent=2) + "\n")


if __name__ == "__main__":
    main()
