"""User-facing errors: the CLI prints these as one line, without a traceback."""


class GrowError(ValueError):
    """Bad input or an impossible request, detected before any work is done."""
