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
from collections.abc import Iterator
from pathlib import Path


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{suffix}")


@contextlib.contextmanager
def directory(out: str | os.PathLike) -> Iterator[Path]:
    """``with directory(out) as tmp:`` write into ``tmp``; on success ``tmp`` replaces
    ``out`` (a previous ``out`` is removed), on error ``tmp`` is deleted and ``out`` is
    left as it was."""
    out = Path(out)
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


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replaces a text file whole (write a sibling, then rename)."""
    path = Path(path)
    tmp = _sibling(path, "tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
