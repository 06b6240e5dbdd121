"""The one exception type for user mistakes: the CLI prints its message as a single line."""


class UserError(Exception):
    """Bad input (config, paths, files): reported as one line, never with a traceback."""
