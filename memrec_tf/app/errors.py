"""The errors the `memrec` command reports in one line."""


class UsageError(ValueError):
    """A problem with the options or the files the user gave (exit status 2)."""
