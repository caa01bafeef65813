"""Publish to and load from a stand-in Hugging Face Hub on 127.0.0.1, through the real
huggingface_hub client (nothing patched)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines import publish
from pipelines.errors import InputError
from serving import Recommender
from tests.hub_server import HubStandIn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # a fresh, private cache
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    with HubStandIn() as server:
        yield server


def _recs(rec, users):
    return rec.recommend(users, k=10)


def test_push_then_load_gives_the_local_models_recommendations(hub, tiny_ranked, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_ranked[0], model)
    result = publish.run(model, "tester/anime", endpoint=hub.url)
    assert result["url"].endswith(result["commit"]) and "recall@100" in result["message"]
    assert set(hub.authorizations) == {"Bearer hf_secret_token_123"}
    # The card is in the commit only: the model directory is left as it was.
    assert not (model / "README.md").exists()
    remote_dir = Recommender.from_pretrained("tester/anime", endpoint=hub.url).directory
    card = (remote_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: tensorflow") and 'from_pretrained("tester/anime")' in card

    local = Recommender.from_pretrained(str(model))
    remote = Recommender.from_pretrained("tester/anime", endpoint=hub.url)
    assert remote.directory != model
    users = local.users["user_id"].to_numpy()[:25]
    pd.testing.assert_frame_equal(_recs(remote, users), _recs(local, users))
    # A damaged file in the cache (a cache of its own: blobs are shared by content) is
    # named, never served: the manifest travels with the model.
    own = {"endpoint": hub.url, "cache_dir": str(tmp_path / "cache")}
    cached = Recommender.from_pretrained("tester/anime", **own).directory
    blob = (cached / "index" / "candidate_embeddings.npy").resolve()
    blob.write_bytes(blob.read_bytes()[:1000])
    with pytest.raises(InputError, match=r"candidate_embeddings.npy is damaged: 1,000 bytes"):
        Recommender.from_pretrained("tester/anime", local_files_only=True, **own)


def test_revisions_are_pinned_and_the_cache_works_offline(hub, tiny_ranked, tiny_model, tmp_path):
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    shutil.copytree(tiny_ranked[0], first_dir)
    shutil.copytree(tiny_model[0], second_dir)  # no ranker: other recommendations
    first = publish.run(first_dir, "tester/anime", endpoint=hub.url)["commit"]
    second = publish.run(second_dir, "tester/anime", endpoint=hub.url)["commit"]
    assert first != second

    users = Recommender.from_pretrained(str(first_dir)).users["user_id"].to_numpy()[:25]
    # The first revision ranked (its ranker forced on: on the tiny world the ranking stage
    # may decide to serve retrieval order), the second has no ranker at all.
    want_first = _recs(Recommender.from_pretrained(str(first_dir), use_ranker=True), users)
    want_second = _recs(Recommender.from_pretrained(str(second_dir)), users)
    assert not want_first.equals(want_second)
    latest = Recommender.from_pretrained("tester/anime", endpoint=hub.url)
    assert latest.ranker is None, "the second push removed the first model's ranker"
    pd.testing.assert_frame_equal(_recs(latest, users), want_second)
    pinned = Recommender.from_pretrained("tester/anime", revision=first, endpoint=hub.url,
                                         use_ranker=True)
    pd.testing.assert_frame_equal(_recs(pinned, users), want_first)

    # With no server at all, the cached pinned revision still loads.
    hub.__exit__(None, None, None)
    offline = Recommender.from_pretrained("tester/anime", revision=first, endpoint=hub.url,
                                          local_files_only=True, use_ranker=True)
    pd.testing.assert_frame_equal(_recs(offline, users), want_first)
    with pytest.raises(InputError, match="not in the local cache"):
        Recommender.from_pretrained("tester/never-downloaded", endpoint=hub.url,
                                    local_files_only=True)


def test_clear_errors_for_missing_repos_revisions_and_files(hub, tiny_ranked, tmp_path):
    with pytest.raises(InputError, match="No model repo 'tester/nothing'"):
        Recommender.from_pretrained("tester/nothing", endpoint=hub.url)
    model = tmp_path / "model"
    shutil.copytree(tiny_ranked[0], model)
    publish.run(model, "tester/anime", endpoint=hub.url)
    with pytest.raises(InputError, match="no revision 'f00d"):
        Recommender.from_pretrained("tester/anime", revision="f00d" * 10, endpoint=hub.url)
    # A repo missing a file (e.g. an interrupted manual upload) is refused by name.
    partial = tmp_path / "partial"
    shutil.copytree(tiny_ranked[0], partial)
    shutil.rmtree(partial / "index")
    with pytest.raises(InputError, match=r"missing \['index"):
        publish.run(partial, "tester/partial", endpoint=hub.url)
    # No Hub at all: one named error, and the model directory as it was.
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with pytest.raises(InputError, match=f"the Hub at {nowhere} could not be reached"):
        publish.run(model, "tester/anime", endpoint=nowhere)
    assert not (model / "README.md").exists()


def test_publish_cli_never_prints_the_token(hub, tiny_ranked, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_ranked[0], model)
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_secret_token_123",
           "HF_HOME": str(tmp_path / "cli_home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "pipelines", "publish", "--model", str(model),
                             "--repo", "tester/cli"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "hf_secret_token_123" not in result.stdout + result.stderr
    assert "commit" in result.stdout and hub.url in result.stdout
    assert "tester/cli" in hub.repos
