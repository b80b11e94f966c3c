"""Several processes, one per GPU, as torchrun starts them (``torchrun --nproc_per_node N -m nexttoken ...``): the
process group, and the few collective steps a command needs around its training.

``training.fit`` trains through PyTorch's DistributedDataParallel; what lies around a loop is here, so that every
domain runs under torchrun the same way:

- one process writes: rank 0 claims the run folder (``Run(..., enabled=dist.is_main)``) and the others write nothing;
- ``main_first``: rank 0 does a piece of work that leaves files (a rendered corpus, encoded codes) while the others
  wait, then they read what it wrote instead of doing it again at the same time;
- ``gather``: work shared out by rank (``items[dist.rank::dist.world_size]``) comes back whole and in order;
  ``broadcast``: what rank 0 decided (a folder named by its clock, a plan read from its files) reaches every process;
- ``average_gradients``, ``all_sum`` and ``mean_over``: what a loop outside ``fit`` (PPO) needs to keep its replicas
  equal, to normalise over every process's batch and to log the statistics of all processes;
- ``any_rank``: a stop request that reached one process stops all of them at the same step.

Everything is torch.distributed (NCCL on CUDA, gloo on CPU); with one process every helper is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as torch_dist

from nexttoken.errors import UserError

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every ``world_size``-th from its rank on (``gather`` undoes it).

        >>> Dist(rank=1, world_size=3).share(list("abcdefg"))
        ['b', 'e']
        """
        return list(items[self.rank :: self.world_size])

    def own_seed(self, seed: int) -> int:
        """A seed of this process's own for random work it does on its share (``seed`` itself with one process).

        >>> Dist().own_seed(7), Dist(rank=1, world_size=2).own_seed(7) != 7
        (7, True)
        """
        return seed + (self.rank << 40)


def init_distributed(device_name: str = "auto") -> Dist:
    """Read torchrun's environment; start the process group when there is more than one process."""
    from nexttoken.training import pick_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if world_size > 1:
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise UserError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', world_size)} processes on this "
                                f"machine but it has {torch.cuda.device_count()} GPU(s); pass --nproc_per_node "
                                f"{torch.cuda.device_count()}")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    """End the process group at the end of a command: every process waits until all are done with their collectives,
    so none tears its connections down under another (gloo aborts the process when a peer vanishes mid-exit), and the
    group goes before the interpreter's own teardown."""
    if torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()


@contextlib.contextmanager
def main_first(dist: Dist) -> Iterator[None]:
    """Rank 0 runs the block first; the others run it after, when what rank 0 wrote (a cache, a folder) is there to
    read. Should rank 0 fail, torchrun ends the waiting processes."""
    if not dist.is_main:
        barrier(dist)
    yield
    if dist.is_main:
        barrier(dist)


def gather(dist: Dist, mine: list[T]) -> list[T]:
    """The whole list from every process's ``dist.share`` of it, in the original order.

    >>> gather(Dist(), ["a", "b"])
    ['a', 'b']
    """
    if not dist.enabled:
        return list(mine)
    shares: list = [None] * dist.world_size
    torch_dist.all_gather_object(shares, mine)
    out = []
    for i in range(max(len(s) for s in shares)):
        out += [s[i] for s in shares if i < len(s)]
    return out


def broadcast(dist: Dist, value: T) -> T:
    """Rank 0's ``value`` on every process (what the others pass is ignored).

    >>> broadcast(Dist(), "runs/sweep")
    'runs/sweep'
    """
    if not dist.enabled:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def average_gradients(dist: Dist, params: Sequence[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the processes (one flat all-reduce), as DDP would; parameters
    without a gradient count as zero on every process, so the replicas stay equal."""
    if not dist.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch_dist.all_reduce(flat)
    flat /= dist.world_size
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
        offset += g.numel()


def mean_over(dist: Dist, values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes (every process passes the same keys)."""
    if not dist.enabled or not values:
        return dict(values)
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(t)
    return dict(zip(values, (t / dist.world_size).tolist()))


def any_rank(dist: Dist, flag: bool) -> bool:
    """True on every process when it is true on any (a Ctrl-C that reached one process stops them all together)."""
    if not dist.enabled:
        return flag
    t = torch.tensor([float(flag)], device=dist.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item())


def all_sum(dist: Dist, t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes (a new tensor; ``t`` itself with one process)."""
    if not dist.enabled:
        return t
    t = t.clone()
    torch_dist.all_reduce(t)
    return t
