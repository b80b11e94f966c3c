"""The few plot helpers every domain uses: metric curves from a run folder, and a headless matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; every plot is written as a PNG
import matplotlib.pyplot as plt  # noqa: E402


def figure(width: float = 6.0, height: float = 4.0):
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return fig, ax


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


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
        plt.close(fig)
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
