"""The model card tells the truth: metadata that parses, the data source and split as the
schema records them, no invented links; and its "Use the towers directly" code, run as
published against the stand-in Hub with TensorFlow and huggingface_hub alone, gives the
retrieval stage's own top 10."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from pipelines import __version__, publish
from pipelines.features import describe_split
from serving import Filters, Recommender
from tests.hub_server import HubStandIn


def _schema(model_dir):
    return json.loads((model_dir / "config.json").read_text())["feature_schema"]


def test_card_metadata_and_text_match_the_schema(tiny_ranked):
    model_dir = tiny_ranked[0]
    schema = _schema(model_dir)
    text = publish.model_card(model_dir, "tester/anime")
    card = ModelCard(text)
    assert card.data.library_name == "tensorflow"
    assert card.data.datasets is None                   # no Hub data set was used
    (result, *others) = card.data.eval_results
    assert result.dataset_type == "synthetic" == schema["source"]["kind"]
    assert result.dataset_name == schema["source"]["description"]
    assert "seed 7" in result.dataset_name              # conftest's tiny world
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert result.metric_type == "recall@100"
    assert result.metric_value == round(metrics["retrieval"]["model"]["recall@100"], 4)
    assert f"Test split: {describe_split(schema)};" in text
    assert describe_split(schema).startswith("as of ")
    assert "github.com" not in text and "anilist" not in (card.data.datasets or [])
    assert f"made with anirank {__version__}" in text
    assert "pip install <path to an anirank checkout>" in text
    # Title statistics are counted from training entries: no snapshot caveat.
    assert "snapshots" not in text
    assert "Trained on a synthetic world" in text

    linked = ModelCard(publish.model_card(model_dir, "tester/anime",
                                          source_url="https://example.org/anirank.git"))
    assert 'pip install "anirank @ git+https://example.org/anirank.git"' in linked.text


@pytest.mark.parametrize("trained", ["tiny_model", "tiny_history_model"])
def test_towers_directly_with_tensorflow_alone(trained, request, tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    # Retrieval only (no ranker); with and without the history (two list inputs).
    shutil.copytree(request.getfixturevalue(trained)[0], model_dir)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with HubStandIn() as hub:
        publish.run(model_dir, "tester/towers", endpoint=hub.url, token="x")
        card = (Recommender.from_pretrained("tester/towers", endpoint=hub.url).directory
                / "README.md").read_text()
        (snippet,) = re.findall(r"## Use the towers directly\n.*?```python\n(.*?)```", card, re.S)
        # Run as a user would: another directory, anirank not imported (checked after).
        check = "\nimport sys\nassert not {'pipelines', 'towers', 'ranking', 'serving'} & set(sys.modules)\n"
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home")}
        env.pop("PYTHONPATH", None)
        done = subprocess.run([sys.executable, "-c", snippet + check], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    top10 = json.loads(done.stdout.strip().splitlines()[-1])
    user = int(re.search(r"^user_id = (\d+)$", snippet, re.M).group(1))
    rec = Recommender.from_pretrained(str(model_dir))
    assert rec.ranker is None
    ranked = Filters(entry_points=False, per_franchise=None)   # the card's snippet: no franchise rule
    assert top10 == rec.recommend([user], k=10, filters=ranked)["anime_id"].tolist()
