"""Named errors. Each says what was wrong, what was received, and how to fix it."""


class AnirankError(Exception):
    """Base class of every error anirank raises on purpose."""


class InputError(AnirankError, ValueError):
    """Raised when a file, table or argument a stage was given is not what it needs
    (missing columns, unknown CSV format, an empty store, a bad option value)."""


class NotInCatalog(InputError):
    """Raised when a title id or text, or every entry of a list, matches nothing in a
    model's catalog (the service's 404). ``candidates``: the titles a text partly
    matches, for the caller to choose from (the service's answer lists them)."""

    def __init__(self, message: str, candidates: list | None = None):
        super().__init__(message)
        self.candidates = list(candidates or [])


class StoreError(AnirankError):
    """Raised when the raw store cannot be used: wrong schema version, not a SQLite file,
    or a store that a stage expected to be empty is not."""
