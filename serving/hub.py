"""Repo id or local directory -> a local model directory (Hugging Face Hub download).

``snapshot_download`` caches by commit: a pinned revision (a commit sha) loads with no
request once cached, and ``HF_HUB_OFFLINE=1`` loads from the cache with no server.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import InputError


def resolve(repo_id_or_dir: str, revision: str | None = None, **kwargs) -> Path:
    """A local directory is used as is; anything else is a Hub model repo id."""
    local = Path(repo_id_or_dir)
    if local.is_dir():
        if revision is not None:
            raise InputError(f"{repo_id_or_dir} is a local directory; `revision` applies to Hub repos.")
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        return Path(snapshot_download(repo_id=str(repo_id_or_dir), revision=revision,
                                      repo_type="model", **kwargs))
    except RepositoryNotFoundError:
        raise InputError(f"No model repo {repo_id_or_dir!r} on the Hub (or no access: set "
                         "HF_TOKEN for a private repo), and no such local directory.") from None
    except RevisionNotFoundError:
        raise InputError(f"Repo {repo_id_or_dir!r} has no revision {revision!r}.") from None
    except LocalEntryNotFoundError:
        raise InputError(f"{repo_id_or_dir!r} (revision {revision}) is not in the local cache "
                         "and the Hub cannot be reached (offline?).") from None
    except ValueError as err:  # e.g. a malformed repo id
        raise InputError(f"{repo_id_or_dir!r} is neither a local directory nor a valid Hub "
                         f"repo id ({err}).") from None
