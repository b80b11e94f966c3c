"""Run a function on untrusted files in worker processes, so that a parser's crash or hang costs one file, not the run.

Parsers of user files (libsndfile for audio, symusic for MIDI) are C code that a damaged file can crash with a
segmentation fault or send into an endless loop. ``map_isolated`` calls ``fn(item)`` in long-lived child processes;
a child that dies or runs past ``timeout`` is replaced and its item gets a verdict ("crashed (SIGSEGV)", "timed out
after 30 s") instead of taking the caller down. A Python exception raised by ``fn`` is a verdict too. Verdicts come
back in the order of the items; a progress callback sees each one as it is made.

    for path, outcome in zip(paths, map_isolated(parse_file, paths, timeout=60, workers=2)):
        if not outcome.ok:
            print(f"skipped {path}: {outcome.error}")  # e.g. "crashed (SIGSEGV)"
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

from nexttoken.errors import UserError


@dataclass
class Outcome:
    value: Any = None
    error: str | None = None  # why the item has no value: an exception's message, a crash or a timeout

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"


def _serve(fn: Callable, conn) -> None:
    """The child's loop: one item in, one (ok, value or message) out, until the parent sends None.

    A stop message rather than the pipe's end: forked children hold copies of each other's pipes, so a closed pipe
    does not reach the child as an end of file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    faulthandler.disable()  # a crash is reported as the item's verdict, not as a stack dump on the terminal
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        (item,) = message
        try:
            reply = (True, fn(item))
        except Exception as e:  # any failure of fn is this item's verdict
            reply = (False, _describe(e))
        try:
            conn.send(reply)
        except Exception as e:  # a value that cannot be pickled
            conn.send((False, f"cannot return the result: {_describe(e)}"))


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"crashed ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"crashed (signal {-exitcode})"
    return f"worker exited with code {exitcode}"


class _Worker:
    def __init__(self, ctx, fn: Callable) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(fn, child), daemon=True)
        self.process.start()
        child.close()
        self.index: int | None = None
        self.started = 0.0

    def submit(self, index: int, item: Any) -> None:
        self.index, self.started = index, time.monotonic()
        self.conn.send((item,))

    def stop(self, kill: bool = False) -> None:
        """Ask the child to exit; ``kill``, or a child still busy after a second, is killed."""
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:  # it is gone already
                pass
        self.conn.close()
        self.process.join(timeout=1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def map_isolated(fn: Callable, items: Sequence, timeout: float = 60.0, workers: int = 1,
                 on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """``Outcome`` of ``fn(item)`` for every item, each computed in a child process that a crash or a hang of ``fn``
    cannot take the caller down with. ``fn`` reaches the children by fork where the platform has it (otherwise it
    must be importable); items and results travel pickled through a pipe. ``on_done(i, outcome)`` follows every
    item, in the order they finish."""
    outcomes: list[Outcome | None] = [None] * len(items)
    if not items:
        return []
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = [_Worker(ctx, fn) for _ in range(max(1, min(workers, len(items))))]
    queue = iter(range(len(items)))

    def finish(worker: _Worker, outcome: Outcome) -> None:
        outcomes[worker.index] = outcome
        if on_done is not None:
            on_done(worker.index, outcome)
        worker.index = None

    def feed(worker: _Worker) -> None:
        i = next(queue, None)
        if i is not None:
            worker.submit(i, items[i])

    try:
        for w in pool:
            feed(w)
        while any(w.index is not None for w in pool):
            busy = [w for w in pool if w.index is not None]
            deadline = min(w.started for w in busy) + timeout
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                         timeout=max(0.0, deadline - time.monotonic()))
            for k, w in enumerate(pool):
                if w.index is None:
                    continue
                if w.conn in ready or w.conn.poll():  # a reply first: a child may exit right after sending it
                    try:
                        ok, value = w.conn.recv()
                        outcome = Outcome(value=value) if ok else Outcome(error=value)
                    except (EOFError, OSError):  # it died halfway through sending
                        w.process.join()
                        outcome = Outcome(error=_exit_reason(w.process.exitcode))
                    finish(w, outcome)
                    if w.process.is_alive():
                        feed(w)
                        continue
                elif w.process.sentinel in ready:
                    w.process.join()
                    finish(w, Outcome(error=_exit_reason(w.process.exitcode)))
                elif time.monotonic() - w.started >= timeout:
                    finish(w, Outcome(error=f"timed out after {timeout:g} s"))
                else:
                    continue
                w.stop(kill=True)  # the child is dead or stuck: a fresh one for the items still to come
                w = pool[k] = _Worker(ctx, fn)
                feed(w)
    finally:
        for w in pool:
            w.stop()
    return outcomes  # type: ignore[return-value]
