"""The exceptions the CLI turns into one line on stderr instead of a traceback."""


class UserError(Exception):
    """Bad input (missing file, wrong option, corrupt data): the CLI prints the message on one line, exit code 2."""


class Interrupted(KeyboardInterrupt):
    """Work stopped by Ctrl-C or SIGTERM after saving what it had; the message says how to continue (exit code 130)."""
