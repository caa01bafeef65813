"""Named errors. Each says what was wrong, what was received, and how to fix it."""


class AnirankError(Exception):
    """Base class of every error anirank raises on purpose."""


class InputError(AnirankError, ValueError):
    """Raised when a file, table or argument a stage was given is not what it needs
    (missing columns, unknown CSV format, an empty store, a bad option value)."""


class StoreError(AnirankError):
    """Raised when the raw store cannot be used: wrong schema version, not a SQLite file,
    or a store that a stage expected to be empty is not."""
