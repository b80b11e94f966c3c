"""The pieces the music domains learn from, as one table of notes: the music21 corpus or the user's own MIDI files.

    load_corpus("music21-small")         # the default subset of the corpus the music21 wheel ships (about a minute)
    load_corpus("music21")               # all of it (~40 min on 2 cores; resumes where it stopped)
    load_corpus("~/midi")                # a folder: labels are the sub-folder names
    load_corpus("maestro.csv")           # a CSV of path + composer (the MAESTRO metadata CSV works as is)
    load_corpus("~/.cache/.../small-v2-r1")   # a note table a previous call cached (pieces.json + notes.npz)

Every MIDI file is read in worker processes (``notes.read_midi_files``) into one table of notes (``Corpus``), cached as
``notes.npz`` under ``$NEXTTOKEN_CACHE/midi`` (default ``~/.cache/nexttoken/midi``). A file that cannot be read, or
holds no notes, is skipped with a one-line warning and counted, never fatal; the same files always give the same
count. Each piece has a label (its composer, or a folk collection) and a side of a train/validation split by piece.
The conversion of the music21 corpus to MIDI lives in ``music21_corpus``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nexttoken.errors import UserError, warn
from nexttoken.midi.notes import FAMILIES, MIDI_SUFFIXES, Notes, read_midi_files
from nexttoken.progress import Progress
from nexttoken.files import atomic_write_bytes, atomic_write_json, read_json, read_text

# Bumped whenever the reader's verdicts can change, so no table built by another reader is reused.
READER = 1
MUSIC21_NAMES = ("music21-small", "music21")


def cache_root() -> Path:
    return Path(os.environ.get("NEXTTOKEN_CACHE", "~/.cache/nexttoken")).expanduser() / "midi"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def corpus_source(name: str) -> str:
    """A corpus or audio source as a run keeps it (muse's ``--corpus``, jukebox's ``--audio``): a named corpus as it
    is, a path made absolute, so that evaluate, generate or a resume run from another working directory read the same
    folder the run trained on.

    >>> corpus_source("music21-small")
    'music21-small'
    """
    return name if name in MUSIC21_NAMES else str(Path(name).expanduser().resolve())


def label_of(name: str) -> str:
    """A composer label as a token can hold it: letters and digits of any script in lower case, words joined by
    underscores, accents on Latin letters dropped; ``unknown`` for a name with no letter or digit.

    >>> label_of("Frédéric Chopin"), label_of("Мумий Тролль"), label_of("?!")
    ('frederic_chopin', 'мумий_тролль', 'unknown')
    """
    kept: list[str] = []
    for c in unicodedata.normalize("NFKD", name):
        if unicodedata.category(c).startswith("M"):
            # An accent on a Latin letter goes (é is e: 'Chopin, Frederic' typed without accents names the label);
            # a mark of another script is part of its letter (Cyrillic й, Devanagari vowel signs), and dropping it
            # would merge distinct names.
            if not (kept and kept[-1].isascii()):
                kept.append(c)
        else:
            kept.append(c.lower() if c.isalnum() else "_")
    return re.sub(r"_+", "_", unicodedata.normalize("NFC", "".join(kept))).strip("_") or "unknown"


def labels_of(names: list[str], what: str, kind: str) -> list[str]:
    """The label of each name, with one warning per label that different names share (e.g. folders 'björk' and
    'bjork'): they become one label, which the user would otherwise never learn. ``what`` names the names
    ("folders"), ``kind`` the label ("artist"). Empty names are not compared: callers warn about those."""
    labels = [label_of(n) for n in names]
    merged: dict[str, list[str]] = {}
    for name, label in zip(names, labels):
        shown = name.strip()
        if shown and shown not in merged.setdefault(label, []):
            merged[label].append(shown)
    for label, shown in merged.items():
        if len(shown) > 1:
            listed = ", ".join(repr(n) for n in shown[:-1]) + f" and {shown[-1]!r}"
            warn(f"{what} {listed} are {'both' if len(shown) == 2 else 'all'} {kind} {label!r}; they are treated as "
                 f"one")
    return labels


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

    def main_family(self, label: str) -> str:
        """The instrument family that plays most of the notes of ``label``'s pieces."""
        fams = np.concatenate([self.notes(p).family for p in range(len(self)) if self.labels[p] == label])
        return FAMILIES[int(np.bincount(fams).argmax())]

    def save(self, path: Path) -> None:
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
            raise UserError(f"{path}: not a readable note table ({type(e).__name__}: {e}); delete the folder and "
                            "prepare the corpus again") from None
        wrong = corpus.damage()
        if wrong:
            raise UserError(f"{path}: not a note table ({wrong}); delete the folder and prepare the corpus again")
        return corpus

    def damage(self) -> str:
        """What makes a loaded table unusable ("" for none): the columns, offsets and values every reader relies on.
        A table is the project's own cache, but a user may point --corpus at a copied or edited one."""
        t, n = self.table, len(self.ids)
        columns = ("start", "end", "pitch", "velocity", "family")
        if not set(columns) <= set(t):
            return f"it lacks the {', '.join(sorted(set(columns) - set(t)))} column"
        if not len(self.offsets) - 1 == n == len(self.labels) == len(self.splits) == len(self.tempos):
            return "pieces.json and notes.npz count different pieces"
        if len(self.offsets) == 0 or self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0) \
                or any(len(t[c]) != self.offsets[-1] for c in columns):
            return "the note columns do not fit the pieces' offsets"
        if any(s not in ("train", "val") for s in self.splits) or not all(isinstance(x, str) for x in self.labels):
            return "a piece's split or label is not one"
        for column, top in (("pitch", 127), ("velocity", 127), ("family", len(FAMILIES) - 1)):
            if len(t[column]) and not 0 <= int(t[column].min()) <= int(t[column].max()) <= top:
                return f"a {column} outside 0-{top}"
        return ""

    def summary(self) -> list[dict]:
        rows = []
        for label in self.composers():
            idx = [i for i, l in enumerate(self.labels) if l == label]
            rows.append({"label": label, "pieces": len(idx), "val": sum(self.splits[i] == "val" for i in idx),
                         "notes": sum(self.n_notes(i) for i in idx)})
        return rows


def build_table(pieces: list[tuple[str, str, Path]], splits: list[str], desc: str, jobs: int = 2) -> Corpus:
    """Read (id, label, midi path) triples in worker processes; a file that cannot be read or holds no notes is skipped
    with a warning and counted."""
    with Progress(len(pieces), desc, unit="file") as bar:
        outcomes = read_midi_files([path for _, _, path in pieces], jobs=jobs, on_done=lambda i, o: bar.update(1))
    ids, labels, kept_splits, parts, skipped = [], [], [], [], 0
    for (pid, label, path), split, outcome in zip(pieces, splits, outcomes):
        if not outcome.ok or not len(outcome.value):
            reason = outcome.error if not outcome.ok else f"{path}: no notes"
            warn(f"skipped {reason if reason.startswith(str(path)) else f'{path}: {reason}'}")
            skipped += 1
            continue
        ids.append(pid)
        labels.append(label)
        kept_splits.append(split)
        parts.append(outcome.value)
    offsets = np.concatenate([[0], np.cumsum([len(n) for n in parts])]).astype(np.int64)
    table = Notes.concat(parts)
    arrays = {"start": table.start, "end": table.end, "pitch": table.pitch, "velocity": table.velocity,
              "family": table.family}
    return Corpus(ids, labels, kept_splits, offsets, np.array([n.tempo for n in parts], dtype=np.float64), arrays,
                  skipped)


def split_by_piece(ids: list[str], labels: list[str], val_fraction: float) -> list[str]:
    """Validation pieces: per label, the ``val_fraction`` of pieces with the smallest hash of their id (at least one
    when the label has two pieces or more). A hash, not a shuffle, so a piece keeps its side when the corpus grows.

    >>> split_by_piece(["a", "b", "c"], ["x", "x", "y"], 0.1)
    ['val', 'train', 'train']
    """
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


# ---- the user's own MIDI ----------------------------------------------------------------------------------------------
def folder_pieces(root: Path) -> list[tuple[str, str, Path]]:
    """Every MIDI file under ``root``; its label is the first sub-folder it sits in (files at the top: the root's name)."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    rels = [path.relative_to(root) for path in paths]
    folders = [rel.parts[0] if len(rel.parts) > 1 else root.resolve().name for rel in rels]
    labels = labels_of(folders, "folders", "composer")
    return [(rel.as_posix(), label, path) for rel, label, path in zip(rels, labels, paths)]


PATH_COLUMNS = ("midi_filename", "path", "file", "filename", "midi")
LABEL_COLUMNS = ("canonical_composer", "composer", "label", "genre")


def csv_pieces(csv_path: Path) -> tuple[list[tuple[str, str, Path]], list[str] | None]:
    """(id, label, path) rows of a CSV with a path column and a composer column (paths relative to the CSV), and the
    split when the CSV has a ``split`` column (MAESTRO: train / validation / test; the last two are held out)."""
    try:
        rows = list(csv.DictReader(io.StringIO(read_text(csv_path), newline="")))
    except csv.Error as e:
        raise UserError(f"{csv_path}: not a readable CSV ({e})") from None
    if not rows:
        raise UserError(f"{csv_path}: no rows")
    cols = {c.lower().strip(): c for c in rows[0] if c}
    path_col = next((cols[c] for c in PATH_COLUMNS if c in cols), None)
    label_col = next((cols[c] for c in LABEL_COLUMNS if c in cols), None)
    if path_col is None or label_col is None:
        raise UserError(f"{csv_path}: needs a path column ({'/'.join(PATH_COLUMNS)}) and a composer column "
                        f"({'/'.join(LABEL_COLUMNS)}); found {', '.join(c for c in rows[0] if c)}")
    rows = [r for r in rows if r.get(path_col)]  # a short row (a blank line, a cut-off file) names no file
    names = [(r[label_col] or "").strip() for r in rows]
    unnamed = names.count("")
    if unnamed:
        warn(f"{csv_path}: {unnamed} row(s) name no composer ({label_col}); they are composer 'unknown'")
    labels = labels_of(names, f"{csv_path}: {label_col} values", "composer")
    pieces = [(r[path_col], label, (csv_path.parent / r[path_col])) for r, label in zip(rows, labels)]
    split_col = cols.get("split")
    splits = None if split_col is None else ["train" if (r[split_col] or "").strip() == "train" else "val"
                                             for r in rows]
    return pieces, splits


def prepare_user(source: Path, jobs: int = 2, val_fraction: float = 0.1) -> Corpus:
    source = source.expanduser()
    if source.is_dir():
        pieces, splits = folder_pieces(source), None
    elif source.is_file() and source.suffix.lower() == ".csv":
        pieces, splits = csv_pieces(source)
    else:
        raise UserError(f"{source}: not a folder of MIDI files, a CSV, or one of {', '.join(MUSIC21_NAMES)}")
    if not pieces:
        raise UserError(f"{source}: no MIDI files ({', '.join(MIDI_SUFFIXES)}) found")
    # The cache is keyed by the source, the reader, every file's size and time (changed files are read again) and
    # every piece's label and split (an edited CSV row is a different corpus though its files are the same).
    listing = [READER, val_fraction if splits is None else splits] + [[p, label, str(f), *_stat(f)]
                                                                       for p, label, f in pieces]
    fingerprint = hashlib.sha1(json.dumps(listing).encode()).hexdigest()[:16]
    table_dir = cache_root() / f"user-{hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]}" / fingerprint
    if (table_dir / "pieces.json").is_file():
        return Corpus.load(table_dir)
    corpus = build_table(pieces, splits or ["train"] * len(pieces), desc="read MIDI", jobs=jobs)
    if splits is None:
        corpus.splits = split_by_piece(corpus.ids, corpus.labels, val_fraction)
    if not len(corpus):
        raise UserError(f"{source}: its only MIDI file could not be read" if len(pieces) == 1 else
                        f"{source}: none of the {len(pieces)} MIDI files could be read")
    corpus.save(table_dir)
    return corpus


def _stat(path: Path) -> tuple[int, int]:
    try:
        s = path.stat()
        return s.st_size, int(s.st_mtime)
    except OSError:
        return -1, -1


def is_note_table(name: str | Path) -> bool:
    """Whether ``name`` is a folder holding a prepared note table (``pieces.json`` and ``notes.npz``)."""
    return (Path(name) / "pieces.json").is_file() and (Path(name) / "notes.npz").is_file()


def load_corpus(name: str = "music21-small", jobs: int = 2, val_fraction: float = 0.1) -> Corpus:
    """``music21-small`` (default), ``music21`` (everything), a folder of MIDI files, a CSV, or a prepared note table
    (a folder holding ``pieces.json`` and ``notes.npz``, as this function caches them: it travels to a machine that
    lacks music21 or the MIDI files)."""
    from nexttoken.midi.music21_corpus import prepare_music21

    if name in MUSIC21_NAMES:
        corpus = prepare_music21("small" if name == "music21-small" else "full", jobs, val_fraction)
    elif is_note_table(name):
        corpus = Corpus.load(Path(name))
    else:
        corpus = prepare_user(Path(name), jobs, val_fraction)
    if corpus.skipped:
        warn(f"{corpus.skipped} file(s) could not be read and were skipped")
    return corpus
