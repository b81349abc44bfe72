"""User-facing errors: a mistake the user can fix, told in one line (the CLI exits 2)."""


class TinygraphError(Exception):
    """Base of every error whose message is meant for the user, not a traceback."""
