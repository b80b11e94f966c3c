"""The pieces a model learns from: the corpus the music21 wheel ships, or the user's own MIDI, as one note table.

    nexttoken muse prepare                          # the default subset of the music21 corpus (about a minute)
    nexttoken muse prepare --corpus music21         # all of it (~40 min on 2 cores; resumes where it stopped)
    nexttoken muse prepare --corpus ~/midi          # a folder: labels are the sub-folder names
    nexttoken muse prepare --corpus maestro.csv     # a CSV of path + composer (the MAESTRO metadata CSV works as is)

The music21 corpus (MusicXML, Humdrum, ABC) is parsed by music21 and written once as MIDI, one source file per task in
a process pool; each finished source leaves a small JSON record, so an interrupted preparation resumes where it
stopped. Every MIDI file is then read with symusic into one table of notes (``Corpus``), cached as ``notes.npz``:
tokens are made from it on the fly, because augmentation (transposition, tempo stretch, velocity jitter, as MuseNet)
changes them at every step. Files that cannot be parsed are skipped with a warning and counted, never fatal.
music21's MIDI writer refuses about 1,000 of the corpus's scores (badly formed repeats, or one time signature object
placed in two measures); those are repaired and written again, played once through without their repeats.
Caches live under ``$NEXTTOKEN_CACHE/muse`` (default ``~/.cache/nexttoken/muse``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
import unicodedata
import warnings
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nexttoken.errors import UserError
from nexttoken.muse.encoding import DRUMS, FAMILIES, Notes, read_midi
from nexttoken.runs import atomic_write_bytes, atomic_write_json, read_json
from nexttoken.training import progress_bar

# music21 collection folder -> label. Folk collections are genres; collections not listed keep their folder name.
LABELS = {"ryansMammoth": "folk_ryan", "oneills1850": "folk_oneill", "essenFolksong": "folk_essen",
          "airdsAirs": "folk_aird", "miscFolk": "folk_misc", "nottingham-dataset": "folk_nottingham",
          "schumann_robert": "schumann", "schumann_clara": "clara_schumann", "johnson_j_r": "johnson"}
SKIPPED_COLLECTIONS = {"demos", "theoryExercises", "leadSheet"}  # exercises and fragments, not pieces
SKIPPED_SUFFIXES = {".rntxt"}  # roman-numeral analyses: chord labels, not notes
# The default subset: distinct styles that convert fast (about 300 pieces, a minute on 2 cores).
SMALL = {"bach": 120, "palestrina": 60, "monteverdi": 40, "ryansMammoth": 80, "josquin": 8}
MIDI_SUFFIXES = {".mid", ".midi", ".kar"}


def cache_root() -> Path:
    return Path(os.environ.get("NEXTTOKEN_CACHE", "~/.cache/nexttoken")).expanduser() / "muse"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def label_of(name: str) -> str:
    """A composer label as a token can hold it: lower case, words joined by underscores.

    >>> label_of("Frédéric Chopin")
    'frederic_chopin'
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_") or "unknown"


# ---- the note table ------------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    """Every piece's notes in one table: concatenated note arrays with per-piece offsets, labels and split."""

    ids: list[str]  # (P,) stable piece ids
    labels: list[str]  # (P,) composer or genre
    splits: list[str]  # (P,) "train" or "val"
    offsets: np.ndarray  # (P + 1,) piece p owns notes offsets[p]:offsets[p+1]
    tempos: np.ndarray  # (P,) bpm
    table: dict[str, np.ndarray]  # start, end, pitch, velocity, family: (total notes,)
    skipped: int = 0  # files that could not be read
    path: Path | None = None  # the folder it is cached in, once saved or loaded

    def __len__(self) -> int:
        return len(self.ids)

    def notes(self, p: int) -> Notes:
        a, b = self.offsets[p], self.offsets[p + 1]
        t = self.table
        return Notes(t["start"][a:b], t["end"][a:b], t["pitch"][a:b], t["velocity"][a:b], t["family"][a:b],
                     float(self.tempos[p]))

    def n_notes(self, p: int) -> int:
        return int(self.offsets[p + 1] - self.offsets[p])

    def composers(self) -> list[str]:
        return sorted(set(self.labels))

    def families(self) -> list[str]:
        return [FAMILIES[f] for f in np.unique(self.table["family"])]

    def indices(self, split: str, label: str | None = None) -> list[int]:
        return [i for i, (s, l) in enumerate(zip(self.splits, self.labels)) if s == split and label in (None, l)]

    def save(self, path: Path) -> None:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, offsets=self.offsets, tempos=self.tempos, **self.table)  # ~4x smaller
        atomic_write_bytes(path / "notes.npz", buf.getvalue())
        atomic_write_json(path / "pieces.json", {"ids": self.ids, "labels": self.labels, "splits": self.splits,
                                                 "skipped": self.skipped})
        self.path = path

    @classmethod
    def load(cls, path: Path) -> "Corpus":
        try:
            meta = read_json(path / "pieces.json")
            with np.load(path / "notes.npz") as z:
                arrays = {k: z[k] for k in z.files}
            offsets, tempos = arrays.pop("offsets"), arrays.pop("tempos")
            corpus = cls(meta["ids"], meta["labels"], meta["splits"], offsets, tempos, arrays, meta.get("skipped", 0),
                         path)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise UserError(f"{path}: not a readable note table ({type(e).__name__}: {e}); delete the folder and run "
                            "`nexttoken muse prepare` again") from None
        if not len(corpus.offsets) - 1 == len(corpus.ids) == len(corpus.labels) == len(corpus.splits):
            raise UserError(f"{path}: pieces.json and notes.npz do not match; delete the folder and run "
                            "`nexttoken muse prepare` again")
        return corpus

    def summary(self) -> list[dict]:
        rows = []
        for label in self.composers():
            idx = [i for i, l in enumerate(self.labels) if l == label]
            rows.append({"label": label, "pieces": len(idx), "val": sum(self.splits[i] == "val" for i in idx),
                         "notes": sum(self.n_notes(i) for i in idx)})
        return rows


def build_table(pieces: list[tuple[str, str, Path]], splits: list[str], desc: str) -> Corpus:
    """Read (id, label, midi path) triples with symusic; an unreadable file is skipped with a warning and counted."""
    ids, labels, kept_splits, parts, tempos, skipped = [], [], [], [], [], 0
    bar = progress_bar(len(pieces), desc=desc)
    for (pid, label, path), split in zip(pieces, splits):
        bar.update(1)
        try:
            notes = read_midi(path)
        except UserError as e:
            warn(f"skipped {e}")
            skipped += 1
            continue
        if not len(notes):
            warn(f"skipped {path}: no notes")
            skipped += 1
            continue
        ids.append(pid)
        labels.append(label)
        kept_splits.append(split)
        parts.append(notes)
        tempos.append(notes.tempo)
    bar.close()
    offsets = np.concatenate([[0], np.cumsum([len(n) for n in parts])]).astype(np.int64)
    table = Notes.concat(parts)
    arrays = {"start": table.start, "end": table.end, "pitch": table.pitch, "velocity": table.velocity,
              "family": table.family}
    return Corpus(ids, labels, kept_splits, offsets, np.array(tempos, dtype=np.float64), arrays, skipped)


def warn(message: str) -> None:
    print(f"nexttoken: warning: {message}", file=sys.stderr)


def split_by_piece(ids: list[str], labels: list[str], val_fraction: float) -> list[str]:
    """Validation pieces: per label, the ``val_fraction`` of pieces with the smallest hash of their id (at least one
    when the label has two pieces or more). A hash, not a shuffle, so a piece keeps its side when the corpus grows."""
    splits = ["train"] * len(ids)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for idx in by_label.values():
        if len(idx) < 2:
            continue
        idx = sorted(idx, key=lambda i: hashlib.sha1(ids[i].encode()).hexdigest())
        for i in idx[: max(1, round(val_fraction * len(idx)))]:
            splits[i] = "val"
    return splits


# ---- the music21 corpus ---------------------------------------------------------------------------------------------
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


CONVERTER = 2  # 2: scores music21 cannot write are repaired and written again (1 skipped them)


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
    import music21

    base = cache_root() / f"music21-{music21.__version__}"
    midi_dir, records_dir = base / "midi", base / "records"
    table_dir = base / f"{subset}-v{CONVERTER}"
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
        bar = progress_bar(len(todo), desc="music21 -> MIDI")
        with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(convert_source, rel, label, str(midi_dir)) for rel, label in todo]
            for fut in as_completed(futures):
                record = fut.result()
                atomic_write_json(paths[record["source"]], record)
                records[record["source"]] = record
                bar.update(1)
        bar.close()
    pieces, errors = [], 0
    for rel, _ in sources:
        record = records[rel]
        for message in record["errors"]:
            warn(f"skipped {message}")
        errors += len(record["errors"])
        pieces += [(pid, label, midi_dir / name) for pid, label, name in record["pieces"]]
    splits = split_by_piece([p[0] for p in pieces], [p[1] for p in pieces], val_fraction)
    corpus = build_table(pieces, splits, desc="read MIDI")
    corpus.skipped += errors
    corpus.save(table_dir)
    return corpus


# ---- the user's own MIDI ----------------------------------------------------------------------------------------------
def folder_pieces(root: Path) -> list[tuple[str, str, Path]]:
    """Every MIDI file under ``root``; its label is the first sub-folder it sits in (files at the top: the root's name)."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file()):
        rel = path.relative_to(root)
        label = label_of(rel.parts[0] if len(rel.parts) > 1 else root.resolve().name)
        out.append((rel.as_posix(), label, path))
    return out


PATH_COLUMNS = ("midi_filename", "path", "file", "filename", "midi")
LABEL_COLUMNS = ("canonical_composer", "composer", "label", "genre")


def csv_pieces(csv_path: Path) -> tuple[list[tuple[str, str, Path]], list[str] | None]:
    """(id, label, path) rows of a CSV with a path column and a composer column (paths relative to the CSV), and the
    split when the CSV has a ``split`` column (MAESTRO: train / validation / test; the last two are held out)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{csv_path}: no rows")
    cols = {c.lower().strip(): c for c in rows[0]}
    path_col = next((cols[c] for c in PATH_COLUMNS if c in cols), None)
    label_col = next((cols[c] for c in LABEL_COLUMNS if c in cols), None)
    if path_col is None or label_col is None:
        raise UserError(f"{csv_path}: needs a path column ({'/'.join(PATH_COLUMNS)}) and a composer column "
                        f"({'/'.join(LABEL_COLUMNS)}); found {', '.join(rows[0])}")
    pieces = [(r[path_col], label_of(r[label_col]), (csv_path.parent / r[path_col])) for r in rows]
    split_col = cols.get("split")
    splits = None if split_col is None else ["train" if r[split_col].strip() == "train" else "val" for r in rows]
    return pieces, splits


def prepare_user(source: Path, val_fraction: float = 0.1) -> Corpus:
    source = source.expanduser()
    if source.is_dir():
        pieces, splits = folder_pieces(source), None
    elif source.is_file() and source.suffix.lower() == ".csv":
        pieces, splits = csv_pieces(source)
    else:
        raise UserError(f"{source}: not a folder of MIDI files, a CSV, or one of music21, music21-small")
    if not pieces:
        raise UserError(f"{source}: no MIDI files (.mid, .midi) found")
    # The cache is keyed by the source and by every file's size and time, so changed files are read again.
    fingerprint = hashlib.sha1(json.dumps([[p, str(f), *_stat(f)] for p, _, f in pieces]).encode()).hexdigest()[:16]
    table_dir = cache_root() / f"user-{hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]}" / fingerprint
    if (table_dir / "pieces.json").is_file():
        return Corpus.load(table_dir)
    corpus = build_table(pieces, splits or ["train"] * len(pieces), desc="read MIDI")
    if splits is None:
        corpus.splits = split_by_piece(corpus.ids, corpus.labels, val_fraction)
    if not len(corpus):
        raise UserError(f"{source}: none of the {len(pieces)} MIDI files could be read")
    corpus.save(table_dir)
    return corpus


def _stat(path: Path) -> tuple[int, int]:
    try:
        s = path.stat()
        return s.st_size, int(s.st_mtime)
    except OSError:
        return -1, -1


def load_corpus(name: str = "music21-small", jobs: int = 2, val_fraction: float = 0.1) -> Corpus:
    """``music21-small`` (default), ``music21`` (everything), a folder of MIDI files, a CSV, or a prepared note table
    (a folder holding ``pieces.json`` and ``notes.npz``, as ``muse prepare`` caches them: it travels to a machine that
    lacks music21 or the MIDI files)."""
    if name == "music21-small":
        corpus = prepare_music21("small", jobs, val_fraction)
    elif name == "music21":
        corpus = prepare_music21("full", jobs, val_fraction)
    elif (Path(name) / "pieces.json").is_file() and (Path(name) / "notes.npz").is_file():
        corpus = Corpus.load(Path(name))
    else:
        corpus = prepare_user(Path(name), val_fraction)
    if corpus.skipped:
        warn(f"{corpus.skipped} file(s) could not be read and were skipped")
    return corpus


# ---- augmentation ----------------------------------------------------------------------------------------------------
@dataclass
class Augment:
    """MuseNet's augmentation: transposition, tempo (timing) stretch and volume changes, drawn once per piece."""

    transpose: int = 5  # semitones, up or down
    stretch: float = 0.1  # time scaled by a factor in [1/(1+s), 1+s]
    velocity: int = 12  # every velocity shifted by up to this much

    def __call__(self, notes: Notes, rng: np.random.Generator) -> Notes:
        melodic = notes.family != DRUMS
        if self.transpose and melodic.any():
            lo, hi = int(notes.pitch[melodic].min()), int(notes.pitch[melodic].max())
            shift = int(rng.integers(max(-self.transpose, -lo), min(self.transpose, 127 - hi) + 1))
            pitch = np.where(melodic, notes.pitch + shift, notes.pitch).astype(np.int16)
        else:
            pitch = notes.pitch
        factor = float(np.exp(rng.uniform(-1, 1) * np.log1p(self.stretch))) if self.stretch else 1.0
        shift_v = int(rng.integers(-self.velocity, self.velocity + 1)) if self.velocity else 0
        velocity = np.clip(notes.velocity + shift_v, 1, 127).astype(np.int16)
        return Notes(notes.start * factor, notes.end * factor, pitch, velocity, notes.family, notes.tempo / factor)
