"""What a grokked network built: curves, embedding maps, Fourier spectrum and Nanda et al.'s progress measures.

    nexttoken grok analyze RUN

- curves.png: train/validation accuracy and loss against steps on log axes (Power et al. Figure 1);
- embedding_map.png / unembedding_map.png: the element embeddings and the output-layer rows projected to 2-D
  (principal components), coloured by residue (the circle of modular addition) or, for S5, by coset of the
  stabiliser of 4 (Figure 3);
- fourier_spectrum.png: norm of the embedding in each Fourier frequency; the few key frequencies stand out;
- key_frequency_circle.png: the embedding projected on cos/sin of the strongest key frequency;
- progress_measures.png: restricted and excluded loss, train/validation loss and weight norm over the kept
  snapshots (Nanda et al. 2023, https://arxiv.org/abs/2301.05217), for x+y and x-y.

Restricted loss keeps, of the logits as a function of (a, b), only the constant and the cos/sin(w_k (a ± b)) terms
of the key frequencies; excluded loss removes exactly those terms and is measured on the training set.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from nexttoken.errors import UserError
from nexttoken.grok.data import PERMS, make_table, split, vocab_size
from nexttoken.grok.ensemble import model_config
from nexttoken.grok.train import member_configs
from nexttoken.model import GPT
from nexttoken.plots import figure, plot_metrics, principal_components, save
from nexttoken.progress import Progress
from nexttoken.files import atomic_write_json, load_tensors
from nexttoken.runs import Run


def load_member(run: Run, member: int = 0, snapshot: Path | None = None) -> GPT:
    """The GPT of one member of a finished (or running) run, from its checkpoint or from a weight snapshot."""
    cfg = member_configs(run)[member]
    model = GPT(replace(model_config(cfg, vocab_size(cfg.op, cfg.p)), attention="sdpa"))
    if snapshot is not None:
        tensors, _ = load_tensors(snapshot)
        weights = {k.removeprefix("model."): v for k, v in tensors.items()}
    else:
        if not run.has_checkpoint():
            raise UserError(f"{run.path} has no checkpoint yet")
        tensors, meta = load_tensors(run.checkpoint_path)
        active = meta.get("active", list(range(len(tensors["flat"]))) if "flat" in tensors else [])
        if member not in active or "flat" not in tensors:
            raise UserError(f"{run.checkpoint_path} holds no weights of member {member} (it retired before the last "
                            f"checkpoint, or the file is not a grok checkpoint)")
        flat, offset, weights = tensors["flat"][active.index(member)], 0, {}
        if flat.ndim != 1 or flat.numel() != sum(p.numel() for p in model.parameters()):
            raise UserError(f"{run.checkpoint_path} does not fit this run (flat: {tuple(tensors['flat'].shape)}); it "
                            f"was written by another configuration")
        for name, p in model.named_parameters():
            weights[name] = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"the weights in {snapshot or run.checkpoint_path} do not fit the run's model "
                        f"({str(e).splitlines()[0][:120]})") from None
    return model.eval()


def plot_curves(run: Run) -> list[Path]:
    records = run.metrics()
    acc = plot_metrics(records, ["train_acc", "val_acc"], run.path / "curves.png", logx=True, ylabel="accuracy",
                       title="accuracy (Power et al. Fig. 1)")
    loss = plot_metrics(records, ["train_loss", "val_loss"], run.path / "loss.png", logx=True, logy=True,
                        ylabel="cross-entropy", title="loss")
    return [p for p in (acc, loss) if p is not None]


def fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """Orthonormal Fourier basis over Z_p, rows: constant, then cos k, sin k for k = 1..(p-1)/2."""
    a = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, p // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * a / p), torch.sin(2 * math.pi * k * a / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True), names


def frequency_norms(embedding: torch.Tensor) -> torch.Tensor:
    """Norm of an element embedding (p, d) in each frequency k = 1..(p-1)/2 (cos and sin together)."""
    p = embedding.shape[0]
    basis, _ = fourier_basis(p)
    coeff = basis @ embedding.double()  # (1 + 2K, d)
    return (coeff[1::2].pow(2).sum(1) + coeff[2::2].pow(2).sum(1)).sqrt()  # (K,)


def key_frequencies(embedding: torch.Tensor, share: float = 0.9, most: int = 8) -> list[int]:
    """The fewest frequencies holding ``share`` of the (non-constant) embedding energy, at most ``most``."""
    energy = frequency_norms(embedding).pow(2)
    order = torch.argsort(energy, descending=True)
    cum = energy[order].cumsum(0) / energy.sum()
    n = int((cum < share).sum()) + 1
    return sorted(int(k) + 1 for k in order[: min(n, most)])


def plot_map(points: torch.Tensor, colours: list[int], title: str, cbar: str, path: Path, labels: list[str]) -> Path:
    fig, ax = figure(5.5, 5.0)
    xy = principal_components(points, k=2)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap="hsv" if len(set(colours)) > 12 else "tab10", s=28)
    if len(labels) <= 120:
        for (x, y), text in zip(xy.tolist(), labels):
            ax.annotate(text, (x, y), fontsize=6, alpha=0.7)
    fig.colorbar(sc, ax=ax, label=cbar)
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return save(fig, path)


@torch.no_grad()
def answer_logits(model, p: int, op: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Element logits (p, p, p) of the model for every pair (a, b), and the correct answers (p, p)."""
    table = make_table(op, p)
    model = model.to(device)
    logits = model(table.inputs.to(device), last_only=True)[0][:, 0, :p].double().cpu()  # (p*p, p)
    return logits.view(p, p, p), table.answers.view(p, p)


def restricted_excluded(logits: torch.Tensor, answers: torch.Tensor, keys: list[int], sign: int,
                        train_mask: torch.Tensor) -> tuple[float, float]:
    """Nanda's restricted loss (all pairs) and excluded loss (training pairs) for logits (p, p, p) over (a, b, c)."""
    p = logits.shape[0]
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None] + sign * a[None, :]) % p  # a + b or a - b for each pair
    directions = []
    for k in keys:
        directions += [torch.cos(2 * math.pi * k * s / p), torch.sin(2 * math.pi * k * s / p)]
    D = torch.stack([d.flatten() / d.flatten().norm() for d in directions])  # (2K, p*p), orthonormal
    flat = logits.reshape(p * p, p)  # (pairs, c)
    key_part = D.T @ (D @ flat)  # the key-frequency terms of every output's logit function
    const = flat.mean(0, keepdim=True)
    restricted = const + key_part
    excluded = flat - key_part
    y = answers.flatten()
    r_loss = F.cross_entropy(restricted, y).item()
    m = train_mask.flatten()
    e_loss = F.cross_entropy(excluded[m], y[m]).item()
    return r_loss, e_loss


def progress_measures(run: Run, device) -> list[dict]:
    cfg = member_configs(run)[0]
    if cfg.op not in ("x+y", "x-y"):
        return []
    p = cfg.p
    sign = 1 if cfg.op == "x+y" else -1
    final = load_member(run)
    keys = key_frequencies(final.tok_emb.weight[:p].detach())
    table = make_table(cfg.op, p)
    tr, _ = split(len(table), cfg.frac, cfg.seed)
    train_mask = torch.zeros(p * p, dtype=torch.bool)
    train_mask[tr] = True
    train_mask = train_mask.view(p, p)
    rows = []
    snapshots = run.snapshots()
    with Progress(len(snapshots), "analyze: progress measures", unit="snapshot", log=run.log_path) as bar:
        for step, path in snapshots:
            model = load_member(run, snapshot=path)
            logits, answers = answer_logits(model, p, cfg.op, device)
            r_loss, e_loss = restricted_excluded(logits, answers, keys, sign, train_mask)
            flat, y = logits.reshape(-1, p), answers.flatten()
            m = train_mask.flatten()
            rows.append({
                "step": step,
                "restricted_loss": r_loss,
                "excluded_loss": e_loss,
                "train_loss": F.cross_entropy(flat[m], y[m]).item(),
                "val_loss": F.cross_entropy(flat[~m], y[~m]).item(),
                "weight_norm": math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in model.parameters())),
            })
            bar.update(1)
    return rows


def analyze(run: Run, device) -> list[Path]:
    cfg = member_configs(run)[0]
    paths = plot_curves(run)
    model = load_member(run)
    s5 = cfg.op.startswith("s5:")
    n = 120 if s5 else cfg.p
    emb = model.tok_emb.weight[:n].detach()
    unemb = model.head.weight[:n].detach()
    if s5:
        colours = [perm[4] for perm in PERMS]
        labels = ["".join(map(str, perm)) for perm in PERMS]
        cbar, how = "x(4): coset of the stabiliser of 4", "cosets of a subgroup"
    else:
        colours, labels, cbar, how = list(range(n)), [str(i) for i in range(n)], "residue", "residues"
    paths.append(plot_map(unemb, colours, f"output-layer rows, PCA ({how})", cbar, run.path / "unembedding_map.png",
                          labels))
    paths.append(plot_map(emb, colours, f"token embeddings, PCA ({how})", cbar, run.path / "embedding_map.png", labels))
    if not s5:
        norms = frequency_norms(emb)
        keys = key_frequencies(emb)
        fig, ax = figure()
        ks = list(range(1, len(norms) + 1))
        ax.bar(ks, norms.tolist(), color=["C3" if k in keys else "C0" for k in ks])
        ax.set_xlabel("frequency k (w_k = 2 pi k / p)")
        ax.set_ylabel("embedding norm")
        ax.set_title(f"Fourier spectrum of the embedding; key frequencies {keys}")
        paths.append(save(fig, run.path / "fourier_spectrum.png"))
        k = max(keys, key=lambda k: float(norms[k - 1]))
        basis, _ = fourier_basis(n)
        coeff = basis[2 * k - 1 : 2 * k + 1] @ emb.double()  # (2, d): the cos k and sin k directions
        proj = emb.double() @ coeff.T  # (p, 2)
        fig, ax = figure(5.5, 5.0)
        sc = ax.scatter(proj[:, 0], proj[:, 1], c=[(k * a) % n for a in range(n)], cmap="hsv", s=30)
        for a, (x, y) in enumerate(proj.tolist()):
            ax.annotate(str(a), (x, y), fontsize=7)
        fig.colorbar(sc, ax=ax, label=f"{k} a mod {n}")
        ax.set_title(f"embedding on cos/sin of key frequency {k}: a circle")
        ax.set_aspect("equal")
        paths.append(save(fig, run.path / "key_frequency_circle.png"))
    measures = progress_measures(run, device)
    if measures:
        fig, ax = figure(6.5, 4.2)
        for key in ("train_loss", "val_loss", "restricted_loss", "excluded_loss"):
            ax.plot([r["step"] for r in measures], [r[key] for r in measures], marker=".", label=key)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in measures], [r["weight_norm"] for r in measures], color="gray", ls="--",
                 label="weight norm")
        ax2.set_ylabel("weight norm")
        ax.legend(loc="lower left", fontsize=8)
        ax.set_title("progress measures (Nanda et al. 2023)")
        paths.append(save(fig, run.path / "progress_measures.png"))
        atomic_write_json(run.path / "progress_measures.json", measures)
    return paths

