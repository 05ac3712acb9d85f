"""User-facing errors.

Anything the user can fix (a bad path, a sparsity outside ``[0, 1)``, a module pattern that
matches nothing) raises :class:`SieveError` with one line naming the problem. The CLI prints that
line and exits with status 2; every other exception is a bug and keeps its traceback.
"""


class SieveError(Exception):
    """A problem with the user's input, reported as one clear line."""
