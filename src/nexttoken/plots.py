"""The few plot helpers every domain uses: metric curves from a run folder, a 2-D map of embeddings by their principal
components, and a headless matplotlib whose files are written atomically."""

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
    """Write the figure as PNG atomically (a unique temporary name, then a rename) and close it."""
    import io

    from nexttoken.runs import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


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
