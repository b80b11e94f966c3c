"""The few plot helpers every domain uses: metric curves from a run folder, a 2-D map of embeddings by their principal
components, and a headless matplotlib whose files are written atomically.

Names come from the user's folders in any script, and matplotlib's own font (DejaVu Sans) has no Chinese, Japanese or
Korean. matplotlib lists the machine's fonts once, in a cache that never sees a font installed later, and draws from
one family unless told several, warning once per missing letter. So ``save`` looks, the first time a letter is
missing, for an installed font that has it and draws the figure again with that font behind the usual one; a letter
no font has is one warning per command, not a warning per letter and plot.
"""

from __future__ import annotations

import functools
import io
import re
import warnings
from pathlib import Path
from typing import Sequence


@functools.cache
def pyplot():
    """matplotlib's pyplot, headless (every plot is written as a PNG); imported by the first plot rather than by
    every command that may draw one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(width: float = 6.0, height: float = 4.0):
    fig, ax = pyplot().subplots(figsize=(width, height), dpi=110)
    return fig, ax


def save(fig, path: str | Path) -> Path:
    """Write the figure as PNG atomically (a unique temporary name, then a rename) and close it."""
    from matplotlib.text import Text

    from nexttoken.errors import warn
    from nexttoken.files import atomic_write_bytes

    png, missing = _render(fig)
    if missing:
        _look_for_fonts(missing)
    if missing and _FALLBACK:
        for text in fig.findobj(Text):
            text.set_fontfamily([*text.get_fontfamily(), *_FALLBACK])
        png, missing = _render(fig)
    pyplot().close(fig)
    if missing:
        warn(f"no installed font draws {''.join(sorted(missing))!r}, so plots show such letters as boxes; a font "
             "that has them (for Chinese, Japanese and Korean: Noto Sans CJK, package fonts-noto-cjk) is used once "
             "installed", once="plot glyphs")
    atomic_write_bytes(path, png)
    return Path(path)


_FALLBACK: list[str] = []  # families found for letters the default font lacks, drawn behind it
_SOUGHT: set[str] = set()  # letters already looked for among the installed fonts


def _render(fig) -> tuple[bytes, set[str]]:
    """The figure as PNG, and the letters its font could not draw (matplotlib warns once per letter)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    missing = set()
    for w in caught:
        glyph = re.match(r"Glyph (\d+) ", str(w.message))
        if glyph:
            missing.add(chr(int(glyph.group(1))))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return buf.getvalue(), missing


def _look_for_fonts(letters: set[str]) -> None:
    """Add to ``_FALLBACK`` installed fonts that draw ``letters`` (listed for matplotlib where its cache lacks them);
    each letter is looked for once."""
    from matplotlib import font_manager, ft2font

    wanted = letters - _SOUGHT
    _SOUGHT.update(letters)
    if not wanted:
        return
    listed = {f.fname for f in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        try:
            font = ft2font.FT2Font(path)
        except (OSError, RuntimeError, ValueError):  # a font file matplotlib cannot read
            continue
        has = {c for c in wanted if font.get_char_index(ord(c))}
        if not has:
            continue
        if path not in listed:
            font_manager.fontManager.addfont(path)
        family = font_manager.FontProperties(fname=path).get_name()
        if family not in _FALLBACK:
            _FALLBACK.append(family)
        wanted -= has
        if not wanted:
            return


def principal_components(x, k: int = 2):
    """Rows of ``x`` (n, d) projected on their first ``k`` principal components (n, k), as float64.

    >>> import torch
    >>> principal_components(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), k=1).abs().flatten().round(decimals=4)
    tensor([1.4142, 0.0000, 1.4142], dtype=torch.float64)
    """
    import torch

    x = torch.as_tensor(x).double()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:k].T


def plot_metrics(
    records: Sequence[dict],
    keys: Sequence[str],
    path: str | Path,
    *,
    x: str = "step",
    logx: bool = False,
    logy: bool = False,
    ylabel: str = "",
    title: str = "",
) -> Path | None:
    """One line per metric key against ``x``; records missing a key are skipped. None when nothing to plot."""
    fig, ax = figure()
    drawn = False
    for key in keys:
        pts = [(r[x], r[key]) for r in records if r.get(key) is not None and x in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=key, marker="." if len(pts) < 50 else None)
            drawn = True
    if not drawn:
        pyplot().close(fig)
        return None
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)
