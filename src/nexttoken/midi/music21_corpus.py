"""The corpus the music21 wheel ships (MusicXML, Humdrum, ABC), converted once to MIDI and read into a ``Corpus``.

Each source file is parsed by music21 and written as MIDI in a process pool, one source per task; each finished
source leaves a small JSON record, so an interrupted preparation resumes where it stopped. music21's MIDI writer
refuses about 1,000 of the corpus's scores (badly formed repeats, or one time signature object placed in two
measures); those are repaired and written again, played once through without their repeats. The MIDI files and the
records live under ``$NEXTTOKEN_CACHE/midi/music21-<version>``.
"""

from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from nexttoken.errors import warn
from nexttoken.midi.corpus import Corpus, READER, build_table, cache_root, label_of, slug, split_by_piece
from nexttoken.progress import Progress
from nexttoken.files import atomic_write_json, read_json

# music21 collection folder -> label. Folk collections are genres; collections not listed keep their folder name.
LABELS = {"ryansMammoth": "folk_ryan", "oneills1850": "folk_oneill", "essenFolksong": "folk_essen",
          "airdsAirs": "folk_aird", "miscFolk": "folk_misc", "nottingham-dataset": "folk_nottingham",
          "schumann_robert": "schumann", "schumann_clara": "clara_schumann", "johnson_j_r": "johnson"}
SKIPPED_COLLECTIONS = {"demos", "theoryExercises", "leadSheet"}  # exercises and fragments, not pieces
SKIPPED_SUFFIXES = {".rntxt"}  # roman-numeral analyses: chord labels, not notes
# The default subset: distinct styles that convert fast (about 300 pieces, a minute on 2 cores).
SMALL = {"bach": 120, "palestrina": 60, "monteverdi": 40, "ryansMammoth": 80, "josquin": 8}
CONVERTER = 2  # 2: scores music21 cannot write are repaired and written again (1 skipped them)


def music21_sources(subset: str) -> list[tuple[str, str]]:
    """(path relative to music21's corpus folder, label) of every source file of the subset ('small' or 'full')."""
    import music21
    from music21 import corpus as m21corpus

    root = Path(music21.__file__).parent / "corpus"
    taken: dict[str, int] = {}
    out = []
    for p in sorted(m21corpus.getCorePaths()):
        rel = Path(p).relative_to(root)
        collection = rel.parts[0]
        if collection in SKIPPED_COLLECTIONS or rel.suffix in SKIPPED_SUFFIXES:
            continue
        if subset == "small":
            if taken.get(collection, 0) >= SMALL.get(collection, 0):
                continue
            taken[collection] = taken.get(collection, 0) + 1
        out.append((rel.as_posix(), LABELS.get(collection, label_of(collection))))
    return out


def repair_score(score) -> None:
    """Make a score music21's MIDI writer accepts: drop its repeat signs and give each measure its own time signature,
    key signature and tempo mark (the ABC reader can put one object in two measures). The music plays once through."""
    import copy

    from music21 import bar, key, meter, repeat, spanner, stream, tempo

    for el in list(score.recurse().getElementsByClass((repeat.RepeatExpression, spanner.RepeatBracket))):
        el.activeSite.remove(el)
    for m in score.recurse().getElementsByClass(stream.Measure):
        for side in ("leftBarline", "rightBarline"):
            if isinstance(getattr(m, side), bar.Repeat):
                setattr(m, side, None)
    seen: set[int] = set()
    for site in list(score.recurse(streamsOnly=True, includeSelf=True)):
        for el in list(site.getElementsByClass((meter.TimeSignature, key.KeySignature, tempo.MetronomeMark))):
            if id(el) in seen:
                site.replace(el, copy.deepcopy(el))
            seen.add(id(el))


def write_score_midi(score, path: Path) -> None:
    """Write a music21 score as MIDI atomically, repairing it once if music21 refuses it as it is."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        try:
            score.write("midi", fp=str(tmp))
        except Exception:  # music21 raises many kinds of errors on malformed scores
            repair_score(score)
            score.write("midi", fp=str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def convert_source(rel: str, label: str, out_dir: str) -> dict:
    """Worker: parse one music21 source file and write each piece in it (an ABC book holds many) as MIDI.

    Returns the record ``{"source", "pieces": [[id, label, midi], ...], "errors": [...]}``; it never raises, so one
    bad file cannot stop the pool.
    """
    warnings.simplefilter("ignore")
    import music21
    from music21 import converter

    root = Path(music21.__file__).parent / "corpus"
    record: dict = {"source": rel, "pieces": [], "errors": [], "converter": CONVERTER}
    try:
        parsed = converter.parse(root / rel)
        scores = list(parsed.scores) if isinstance(parsed, music21.stream.Opus) else [parsed]
    except Exception as e:  # music21 raises many kinds of errors on malformed files
        record["errors"].append(f"{rel}: {type(e).__name__}: {e}")
        return record
    for k, score in enumerate(scores):
        pid = rel if len(scores) == 1 else f"{rel}#{k}"
        midi = Path(out_dir) / (slug(pid) + ".mid")
        try:
            write_score_midi(score, midi)
        except Exception as e:
            record["errors"].append(f"{pid}: {type(e).__name__}: {e}")
            continue
        record["pieces"].append([pid, label, midi.name])
    return record


def prepare_music21(subset: str = "small", jobs: int = 2, val_fraction: float = 0.1) -> Corpus:
    """The note table of the music21 corpus (``subset`` 'small' or 'full'), converted and read on first use."""
    import music21

    base = cache_root() / f"music21-{music21.__version__}"
    midi_dir, records_dir = base / "midi", base / "records"
    table_dir = base / f"{subset}-v{CONVERTER}-r{READER}"
    if (table_dir / "pieces.json").is_file():
        return Corpus.load(table_dir)
    midi_dir.mkdir(parents=True, exist_ok=True)
    records_dir.mkdir(parents=True, exist_ok=True)
    sources = music21_sources(subset)

    paths = {rel: records_dir / (slug(rel) + ".json") for rel, _ in sources}
    records = {rel: read_json(path) for rel, path in paths.items() if path.is_file()}
    # To convert: files with no record, and files an older converter gave up on some scores of.
    todo = [(rel, label) for rel, label in sources
            if rel not in records or (records[rel]["errors"] and records[rel].get("converter", 1) < CONVERTER)]
    if todo:
        print(f"nexttoken: converting {len(todo)} of {len(sources)} music21 files to MIDI with {jobs} processes "
              f"(once; cached in {base})", file=sys.stderr)
        with Progress(len(todo), "music21 -> MIDI", unit="file") as bar, \
                ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(convert_source, rel, label, str(midi_dir)) for rel, label in todo]
            for fut in as_completed(futures):
                record = fut.result()
                atomic_write_json(paths[record["source"]], record)
                records[record["source"]] = record
                bar.update(1)
    pieces, errors = [], 0
    for rel, _ in sources:
        record = records[rel]
        for message in record["errors"]:
            warn(f"skipped {message}")
        errors += len(record["errors"])
        pieces += [(pid, label, midi_dir / name) for pid, label, name in record["pieces"]]
    splits = split_by_piece([p[0] for p in pieces], [p[1] for p in pieces], val_fraction)
    corpus = build_table(pieces, splits, desc="read MIDI", jobs=jobs)
    corpus.skipped += errors
    corpus.save(table_dir)
    return corpus
