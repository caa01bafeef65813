"""Atomic replacement of output directories and files.

A stage writes everything into a temporary sibling and renames it into place only when
it is complete, so a crash never leaves a half-written directory under the real name
(the same idea as huggingface_hub's ``_download_to_tmp_and_move``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from pipelines.errors import InputError


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{suffix}")


@contextlib.contextmanager
def directory(out: str | os.PathLike) -> Iterator[Path]:
    """``with directory(out) as tmp:`` write into ``tmp``; on success ``tmp`` replaces
    ``out`` (a previous ``out`` is removed), on error ``tmp`` is deleted and ``out`` is
    left as it was. An ``out`` that is a file, not a directory, is an InputError: it is
    never replaced (a mistyped path must not cost a file)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a directory: an output directory goes there. "
                         "Pick another path (the file is left as it is).")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = _sibling(out, "old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def file(path: str | os.PathLike, companions: Sequence[str] = ()) -> Iterator[Path]:
    """``with file(path) as tmp:`` write the file ``tmp``; on success ``tmp`` replaces
    ``path``, on error it is deleted and ``path`` is left as it was.

    Args:
      companions: suffixes of files a writer keeps beside its file (SQLite's ``-wal`` and
        ``-shm``): the temporary file's are deleted with it, and ``path``'s before the
        rename, so the new file never inherits stale ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        for suffix in companions:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        for suffix in ("", *companions):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replaces a text file whole (write a sibling, then rename)."""
    with file(path) as tmp:
        tmp.write_text(text)
