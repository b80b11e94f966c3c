"""The grokking section of `nexttoken demo`: a small run that memorises, then generalises, and its analysis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from nexttoken.grok.evaluate import analyze
from nexttoken.grok.cli import summary_line
from nexttoken.grok.train import PRESETS, GrokConfig, TrainOptions, start, train
from nexttoken.report import Section


def section(out: Path, device: torch.device) -> Section:
    """x+y mod 31 at 50% data, modern preset, with weight snapshots for the progress measures; about a minute on a
    2-core CPU (docs/grok.md)."""
    cfg = replace(GrokConfig(), **PRESETS["modern"], op="x+y", p=31, frac=0.5, steps=2000)
    options = TrainOptions(snapshots=12)
    with start(cfg, options, out / f"{cfg.op}-mod-{cfg.p}", device) as run:  # named in its progress bar
        summary = train(cfg, run, device, options=options, progress=True)
        paths = analyze(run, device)
    section = Section("Grokking (Power et al. 2022)")
    section.text(
        f"A 2-layer transformer (the 'modern' preset) learns {cfg.op} mod {cfg.p} from {cfg.frac:.0%} of the table "
        f"with AdamW and weight decay 1: it fits the training set long before it generalises. "
        f"{summary_line(summary)}. The sudden dips are Adam's loss spikes ('slingshots'), common once the loss is tiny."
    )
    section.table([{k: summary[k] for k in ("op", "p", "frac", "steps_to_train_99", "steps_to_val_99",
                                             "wall_s_to_val_99", "final_train_acc", "final_val_acc", "device")}])
    for p in paths:
        section.image(p, p.stem.replace("_", " "))
    return section
