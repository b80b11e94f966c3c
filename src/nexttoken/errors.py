"""The one exception type that means "the user asked for something that cannot be done"."""


class UserError(Exception):
    """Bad input (missing file, wrong option, corrupt data): the CLI prints the message on one line, exit code 2."""
