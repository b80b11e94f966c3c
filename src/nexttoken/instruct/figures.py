"""The instruct domain's figures: PPO's health over training, and InstructGPT's Figure 1 (win rate against a fixed
reference, by model size and method) in miniature."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nexttoken.plots import pyplot, save

HEALTH = (("reward", "reward (normalised RM score)"), ("kl", "KL(policy || SFT) per response"),
          ("entropy", "entropy per token (nats)"), ("clip_frac", "clipped ratio share"),
          ("value_loss", "value loss"), ("response_length", "response length (tokens)"))
METHOD_STYLE = {"base": ("tab:gray", "o"), "few_shot": ("tab:olive", "s"), "sft": ("tab:blue", "^"),
                "ppo": ("tab:red", "D"), "ppo_ptx": ("tab:orange", "v"), "dpo": ("tab:green", "P")}
METHOD_LABEL = {"base": "base (GPT)", "few_shot": "base, few-shot", "sft": "SFT", "ppo": "PPO", "ppo_ptx": "PPO-ptx",
                "dpo": "DPO"}


def plot_ppo_health(records: Sequence[dict], path: str | Path, title: str = "PPO",
                    target_kl: float = 0.0) -> Path | None:
    """Six panels against the iteration: reward, KL to the SFT model (with the adaptive controller's target and beta,
    when it steered), entropy, clip fraction, value loss, length."""
    records = [r for r in records if "reward" in r]
    if not records:
        return None
    fig, axes = pyplot().subplots(2, 3, figsize=(11, 5.5), dpi=100)
    steps = [r["step"] for r in records]
    for ax, (key, label) in zip(axes.flat, HEALTH):
        ax.plot(steps, [r.get(key, float("nan")) for r in records], color="tab:blue")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("iteration", fontsize=8)
        if key == "kl" and target_kl > 0:
            ax.axhline(target_kl, color="tab:blue", linestyle=":", linewidth=1)
            beta = ax.twinx()
            beta.plot(steps, [r.get("kl_coef", float("nan")) for r in records], color="tab:orange", linewidth=1)
            beta.set_ylabel("beta (orange); target dotted", fontsize=8)
    fig.suptitle(title)
    return save(fig, path)


def plot_win_rates(rows: Sequence[dict], path: str | Path, reference: str = "") -> Path:
    """Win rate against the reference (y) by non-embedding parameters (x, log), one line per method; ``rows`` have
    ``method``, ``params``, ``win_rate`` and ``ci95``."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.4), dpi=110)
    for method, (colour, marker) in METHOD_STYLE.items():
        pts = sorted((r["params"], r["win_rate"], r["ci95"]) for r in rows if r["method"] == method)
        if pts:
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, color=colour, marker=marker, capsize=3, label=METHOD_LABEL[method],
                        linestyle="--" if method == "dpo" else "-")
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel(f"win rate against {reference}" if reference else "win rate against the reference")
    ax.set_title("InstructGPT Figure 1 in miniature (held-out labeler)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
