"""The composer tokens' embeddings of a trained run: a cosine-similarity heatmap and a map of their first two
principal components, as MuseNet's blog drew the composers it learned.

    nexttoken muse embeddings RUN          # RUN/composer_similarity.png (+ .csv) and RUN/composer_map.png
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from nexttoken.errors import UserError
from nexttoken.muse.train import check_out, load_run
from nexttoken.plots import figure, principal_components, save
from nexttoken.files import atomic_write_text


def composer_map(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Write the heatmap, its CSV and the 2-D map into ``out`` (default: the run folder); returns the two images."""
    check_out(out)
    model, encoding, cfg, run = load_run(run_dir, torch.device("cpu"))
    names = cfg.composers
    if len(names) < 2:
        raise UserError(f"{run_dir}: the run has only {len(names)} composer; a map needs two or more")
    emb = model.token_embeddings(torch.tensor([encoding.composer_id(c) for c in names]))  # (composers, n_embd)
    unit = torch.nn.functional.normalize(emb, dim=1)
    sim = (unit @ unit.T).numpy()
    out = out or run.path
    fig, ax = figure(1.2 + 0.45 * len(names), 1.0 + 0.4 * len(names))
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("composer tokens: cosine similarity", fontsize=9)
    heat = save(fig, out / "composer_similarity.png")
    xy = principal_components(emb, k=2).numpy()  # (composers, 2)
    fig, ax = figure(5, 4)
    ax.scatter(xy[:, 0], xy[:, 1])
    for (x, y), n in zip(xy, names):
        ax.annotate(n, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_title("composer tokens: first two principal components", fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    m = save(fig, out / "composer_map.png")
    table = io.StringIO()
    np.savetxt(table, sim, delimiter=",", header=",".join(names), fmt="%.4f")
    atomic_write_text(out / "composer_similarity.csv", table.getvalue())
    return [heat, m]
