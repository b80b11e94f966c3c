"""What a grokking ensemble needs in memory, checked against what the machine has before anything is built or written.

A table holds p^2 equations, so `--p 30011` asks for 9e8 rows: without this check the process takes every byte of
RAM until the kernel kills it. The estimate counts the table while it is built, each member's padded copies of its
table and training rows, the weights with the optimiser and Grokfast state, and the activations of a step and of an
evaluation chunk; it errs on the generous side.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from nexttoken.errors import UserError
from nexttoken.grok.data import BUILD_BYTES_PER_ROW, TABLE_BYTES_PER_ROW, table_size, vocab_size

if TYPE_CHECKING:
    from nexttoken.grok.train import GrokConfig

GIB = 2**30


def bytes_needed(configs: list[GrokConfig], eval_chunk: int = 4096) -> tuple[int, int]:
    """(host, device) bytes an ensemble of ``configs`` (one model shape) needs, about."""
    from nexttoken.grok.ensemble import model_config
    from nexttoken.model import GPT

    c0, E = configs[0], len(configs)
    cfg = model_config(c0, vocab_size(c0.op, c0.p))
    with torch.device("meta"):
        params = sum(p.numel() for p in GPT(cfg).parameters())
    sizes = {(c.op, c.p): table_size(c.op, c.p) for c in configs}
    rows = max(sizes.values())
    n_train = [max(1, round(c.frac * sizes[c.op, c.p])) for c in configs]
    batch = max(min(c.batch_size, max(1, n // 2)) if c.batch_size else n for c, n in zip(configs, n_train))
    data = E * (TABLE_BYTES_PER_ROW * (rows + max(n_train)) + 2 * rows)  # padded tables, training rows, masks
    host = sum(BUILD_BYTES_PER_ROW * n for n in sizes.values()) + E * 8 * rows + data + 2 * E * 4 * params
    # fp32 (E, P) tensors: weights, initial weights, Adam's two moments, the gradient and the step's temporaries
    states = 8 + (c0.grokfast == "ema") + (c0.grokfast_window + 1 if c0.grokfast == "ma" else 0)
    d, h, T = cfg.n_embd, cfg.hidden, cfg.block_size
    step_row = 4 * T * cfg.n_layer * (10 * d + 3 * h)  # activations a step keeps for its backward pass
    eval_row = 4 * T * (4 * d + 2 * h) + 4 * 3 * cfg.vocab_size  # one layer at a time, then the logits
    chunk = min(rows, eval_chunk)
    device = data + 4 * E * params * states + E * (batch * step_row + chunk * eval_row)
    return host, device


def available_bytes(device: torch.device) -> tuple[int, int]:
    """(host, device) bytes free now; on a CPU both are the machine's available memory."""
    host = _host_available()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return host, free
    return host, host


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(configs: list[GrokConfig], device: torch.device, eval_chunk: int = 4096) -> None:
    """A UserError naming the limit when an ensemble of ``configs`` would not fit in ``device``'s memory."""
    host_free, device_free = available_bytes(device)
    if not _fits(configs, device, eval_chunk, host_free, device_free):
        host, dev = bytes_needed(configs, eval_chunk)
        needed, free, where = (host, host_free, "host") if host > host_free else (dev, device_free, device.type)
        if device.type != "cuda":
            needed, free, where = host + dev, host_free, "host"
        c0 = configs[0]
        runs = f"{len(configs)} runs of " if len(configs) > 1 else ""
        task = c0.op if c0.op.startswith("s5:") else f"{c0.op} mod {c0.p}"
        limit = _largest_p(configs, device, eval_chunk, host_free, device_free)
        hint = (f"the largest p that fits is about {limit:,}" if limit and not c0.op.startswith("s5:")
                else "train fewer runs at once (--max-ensemble) or a smaller model")
        raise UserError(f"{runs}{task} ({table_size(c0.op, c0.p):,} equations) needs about {needed / GIB:.1f} GiB of "
                        f"{where} memory, more than the {free / GIB:.1f} GiB available; {hint}")


def _fits(configs, device, eval_chunk, host_free, device_free) -> bool:
    host, dev = bytes_needed(configs, eval_chunk)
    if device.type != "cuda":
        return host + dev <= host_free
    return host <= host_free and dev <= device_free


def _largest_p(configs, device, eval_chunk, host_free, device_free) -> int | None:
    """The largest modulus at which the same ensemble fits (None if not even p = 2 does)."""
    def fits(p: int) -> bool:
        return _fits([replace(c, p=p) for c in configs], device, eval_chunk, host_free, device_free)

    lo, hi = 2, max(c.p for c in configs)
    if not fits(lo):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
