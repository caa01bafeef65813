"""Named errors. Each says what was wrong, what was received, and how to fix it."""

import errno
import re


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


# What each file-system error means for the path it names, and what to do about it.
_OS_FIXES = {
    errno.ENOENT: "does not exist: check the path (a folder an output goes in must exist)",
    errno.ENOTDIR: "has a file where the path needs a folder: pick another path",
    errno.EISDIR: "is a folder where a file is needed: give a file",
    errno.EEXIST: "already exists (a file where a folder is needed, or an output never "
                  "overwritten): pick another path or remove it",
    errno.EACCES: "is not allowed to this user: pick a path you can write (or read)",
    errno.EPERM: "is not allowed to this user: pick a path you can write (or read)",
    errno.EROFS: "is on a read-only file system: pick a writable path",
    errno.ENOSPC: "cannot be written: the disk is full; free space and rerun (the step "
                  "resumes or starts again; nothing half-written is kept)",
}


def os_error_line(err: OSError) -> str:
    """A file-system error as the one line a command prints after ``error:``: the path,
    what is wrong with it and the fix (the entry points' last resort, after every
    input they check themselves)."""
    where = str(err.filename) if err.filename is not None else "a file"
    # An atomic write's hidden sibling (pipelines.atomic: ".NAME.1a2b3c4d.tmp") is named
    # as the output it stands for.
    where = re.sub(r"(^|/)\.([^/]+)\.[0-9a-f]{8}\.[a-z]+$", r"\1\2", where)
    fix = _OS_FIXES.get(err.errno, f"cannot be used ({err.strerror or err})")
    return f"{where} {fix}."
