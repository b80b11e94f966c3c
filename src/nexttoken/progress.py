"""Progress of long work: a tqdm bar on a terminal, and a line every few seconds in the run's log file and on stderr
when stderr is not a terminal (a log, nohup, CI), with the rate and the time left.

    with Progress(total=600, desc="train", log=run.log_path) as bar:
        for step in ...:
            bar.update(1, loss=2.31)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable


def _duration(seconds: float) -> str:
    """
    >>> _duration(75), _duration(4000)
    ('1m15s', '1h06m')
    """
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts work done out of ``total`` (which may change, as a time budget re-plans it). A postfix value may be a
    tensor on a GPU: it is read only when shown (reading waits for the GPU), a few times a second at most."""

    SHOW_S = 0.25  # seconds between reads of the postfix for the bar

    def __init__(self, total: int, desc: str = "", *, initial: int = 0, enabled: bool = True,
                 log: Path | None = None, every_s: float = 5.0, unit: str = "step",
                 clock: Callable[[], float] = time.monotonic, stream=None) -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.enabled, self.log, self.every_s, self.clock = enabled, log, every_s, clock
        self.stream = stream or sys.stderr
        self.postfix: dict[str, object] = {}
        self.start_n, self.t0 = initial, clock()
        self.last_line, self.lined_n = self.t0, None  # when the last line was written, and at what count
        self.shown_at = -float("inf")  # when the bar last read the postfix
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, unit=unit, file=self.stream)

    def set_total(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        self.postfix.update(postfix)
        now = self.clock()
        if self.bar is not None:
            self.bar.update(n)
            if postfix and now - self.shown_at >= self.SHOW_S:
                self.shown_at = now
                self.bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
        if self.enabled and now - self.last_line >= self.every_s:
            self.last_line, self.lined_n = now, self.n
            self.write(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extras = "".join(f" {k} {_fmt(v)}" for k, v in self.postfix.items())
        eta = f", {_duration(left)} left" if left == left else ""
        return f"{self.desc}: {self.unit} {self.n:,}/{self.total:,}{pct}{extras} | {_duration(elapsed)} elapsed{eta}"

    def announce(self) -> None:
        """A line now, for work whose first update comes late (one long batch): what the wait is for."""
        if self.enabled:
            self.write(self.line())

    def write(self, text: str) -> None:
        """A line for the log file, and for stderr when no bar shows progress there."""
        if self.log is not None:
            try:
                with open(self.log, "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            except OSError:
                self.log = None  # a progress log is never worth failing the work for
        if not self.tty and self.enabled:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled and self.n > self.start_n and self.n != self.lined_n:  # not the last line twice
            self.write(self.line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(v: object) -> str:
    """
    >>> import torch; _fmt(2.314159), _fmt(torch.tensor(2.314159)), _fmt(7)
    ('2.314', '2.314', '7')
    """
    if hasattr(v, "item"):  # a tensor or a numpy scalar
        v = v.item()
    return f"{v:.4g}" if isinstance(v, float) else str(v)
