"""Batches built ahead of the training loop by forked worker processes, so the accelerator never waits for the CPU."""

from __future__ import annotations

import sys
from typing import Callable

import torch

BatchFn = Callable[[int], dict]


class Prefetch:
    """``batch_fn`` run ahead of the loop by forked worker processes, so the accelerator never waits for the CPU.

    The workers inherit ``batch_fn`` (and the data it reads) through fork, so nothing large is pickled; batches come
    back as numpy arrays. Since a batch depends on its step alone, the batches are exactly those of ``batch_fn``.
    """

    def __init__(self, batch_fn: BatchFn, workers: int, ahead: int | None = None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.batch_fn = batch_fn
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                        initializer=_prefetch_init, initargs=(batch_fn,))
        self.ahead = ahead or 2 * workers
        self.pending: dict = {}
        self.broken = False

    def __call__(self, step: int) -> dict:
        from concurrent.futures.process import BrokenProcessPool

        if self.broken:
            return self.batch_fn(step)
        try:
            for s in range(step, step + self.ahead + 1):
                if s not in self.pending:
                    self.pending[s] = self.pool.submit(_prefetch_batch, s)
            for s in [s for s in self.pending if s < step]:  # a resumed or re-planned loop skipped them
                self.pending.pop(s).cancel()
            return {k: torch.from_numpy(v) for k, v in self.pending.pop(step).result().items()}
        except (BrokenProcessPool, OSError) as e:  # a worker died (killed, out of memory): go on without them
            print(f"nexttoken: batch workers stopped ({type(e).__name__}); building batches in the loop", file=sys.stderr)
            self.broken = True
            self.close()
            return self.batch_fn(step)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


_PREFETCH_FN: BatchFn | None = None


def _prefetch_init(batch_fn: BatchFn) -> None:
    global _PREFETCH_FN
    _PREFETCH_FN = batch_fn
    torch.set_num_threads(1)


def _prefetch_batch(step: int) -> dict:
    return {k: v.numpy() for k, v in _PREFETCH_FN(step).items()}
