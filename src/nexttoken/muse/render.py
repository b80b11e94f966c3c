"""Listen to and look at pieces: WAV through a General MIDI soundfont, and a piano-roll PNG.

Rendering uses symusic's built-in synthesizer (pinned below 0.6, whose renderer raises a TypeError) with a local
``.sf2`` file: ``--soundfont PATH``, else ``$NEXTTOKEN_SOUNDFONT``, else the Debian/Ubuntu soundfonts
(``apt-get install timgm6mb-soundfont`` or ``fluid-soundfont-gm``). Nothing is ever downloaded.
"""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path

import numpy as np

from nexttoken.errors import UserError
from nexttoken.muse.encoding import FAMILIES, Notes, notes_to_score
from nexttoken.plots import figure, save
from nexttoken.runs import atomic_write_bytes

SOUNDFONT_PLACES = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",  # 6 MB, quick to load
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
)


def find_soundfont(path: str | Path | None = None) -> Path | None:
    """The soundfont to use: the given path (which must exist), else the environment, else a system one, else None."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"soundfont {p} not found")
        return p
    env = os.environ.get("NEXTTOKEN_SOUNDFONT")
    for candidate in ([env] if env else []) + list(SOUNDFONT_PLACES):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def render_wav(notes: Notes, path: str | Path, soundfont: Path, sample_rate: int = 22050) -> Path:
    """Synthesize ``notes`` to a 16-bit stereo WAV file (written atomically)."""
    import symusic

    synth = symusic.Synthesizer(sf_path=str(soundfont), sample_rate=sample_rate)
    audio = np.asarray(synth.render(notes_to_score(notes), stereo=True))  # (2, samples)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    pcm = (audio / max(peak, 1e-9) * 0.9 * 32767).astype("<i2").T.copy()  # (samples, 2), normalised
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


COLORS = dict(zip(FAMILIES, ("#1f77b4", "#17becf", "#8c564b", "#ff7f0e", "#7f7f7f", "#2ca02c", "#9467bd",
                              "#d62728", "#bcbd22", "#e377c2", "#000000")))


def piano_roll(notes: Notes, path: str | Path, title: str = "", prime_seconds: float = 0.0) -> Path:
    """Notes as horizontal bars (time x pitch), one colour per instrument family; the prime is shaded."""
    fig, ax = figure(9, 3.6)
    for f in np.unique(notes.family):
        sel = notes.family == f
        ax.barh(notes.pitch[sel], notes.end[sel] - notes.start[sel], left=notes.start[sel], height=0.8,
                color=COLORS[FAMILIES[f]], label=FAMILIES[f], linewidth=0)
    if prime_seconds > 0:
        ax.axvspan(0, prime_seconds, color="#ffd54f", alpha=0.3, label="prime")
    if len(notes):
        ax.set_ylim(notes.pitch.min() - 2, notes.pitch.max() + 2)
        ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title, fontsize=9)
    return save(fig, path)
