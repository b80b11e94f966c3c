"""The exceptions the CLI turns into one line on stderr instead of a traceback, and the one-line warning."""

import contextlib
import signal
import sys
from typing import Iterator


class UserError(Exception):
    """Bad input (missing file, wrong option, corrupt data): the CLI prints the message on one line, exit code 2."""


class Interrupted(KeyboardInterrupt):
    """Work stopped by Ctrl-C or SIGTERM after saving what it had; the message says how to continue. The exit code is
    the shell's for the signal that stopped it (130 for Ctrl-C, 143 for SIGTERM), so a scheduler sees which it was.

    ``where`` says where it stopped, ``how`` what continues it. A loop knows the first; the command that ran it knows
    the whole command line, so it re-raises with ``resumed_by``.

    >>> str(Interrupted("stopped at step 7", "--resume runs/x").resumed_by("nexttoken jukebox train --resume runs"))
    'stopped at step 7; continue with: nexttoken jukebox train --resume runs'
    >>> str(Interrupted("").resumed_by("nexttoken instruct pipeline --out runs/p"))  # stopped between two steps
    'continue with: nexttoken instruct pipeline --out runs/p'
    """

    def __init__(self, where: str, how: str = "", signum: int = signal.SIGINT) -> None:
        cont = f"continue with{':' if how.startswith('nexttoken') else ''} {how}" if how else ""
        super().__init__("; ".join(part for part in (where, cont) if part))
        self.where, self.how, self.signum = where, how, signum

    def resumed_by(self, how: str) -> "Interrupted":
        return Interrupted(self.where, how, self.signum)


@contextlib.contextmanager
def continue_with(how: str) -> Iterator[None]:
    """An ``Interrupted`` raised inside leaves with ``how`` as what continues it (the command that ran the loop)."""
    try:
        yield
    except Interrupted as e:
        raise e.resumed_by(how) from None


_SAID: set[str] = set()  # the ``once`` keys of warnings given in this command


def warn(message: str, *, once: str | None = None) -> None:
    """``nexttoken: warning: message`` on stderr. ``once``: a key; a warning under a key already said in this command
    (since ``forget_warnings``) is not said again, so a fact every stage would repeat reads once."""
    if once is not None:
        if once in _SAID:
            return
        _SAID.add(once)
    print(f"nexttoken: warning: {message}", file=sys.stderr)


def forget_warnings() -> None:
    """A new command starts: every ``once`` warning may be said again (the CLI calls it; tests run many commands in
    one process)."""
    _SAID.clear()
