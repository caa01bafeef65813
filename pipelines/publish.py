"""Model directory -> Hugging Face Hub model repo, with a model card, in one commit.

    python -m pipelines publish --model data/model --repo your-name/anirank-demo [--private]

The token comes from ``HF_TOKEN`` or ``huggingface-cli login`` (never printed or logged).
The repo is created if needed; the model card (``README.md``: YAML metadata with
library_name, tags, datasets and metrics, how to load, the evaluation table) is written
into the model directory and the whole directory is uploaded as one commit whose
message carries the headline metrics. Load it back with
``serving.Recommender.from_pretrained("your-name/anirank-demo", revision=...)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from pipelines import atomic
from pipelines.errors import InputError
from pipelines.features import describe_split
from pipelines.formatting import num

REQUIRED = ("config.json", "metrics.json", "anime.parquet", "query_tower", "candidate_tower", "index")


def _headline(metrics: dict) -> dict:
    r = metrics.get("retrieval", {}).get("model", {})
    out = {"recall@100": r.get("recall@100"), "ndcg@10": r.get("ndcg@10"),
           "factorized_top_100": r.get("factorized", {}).get("top_100")}
    e2e = metrics.get("ranking", {}).get("end_to_end", {}).get("ranked")
    if e2e:
        out.update({"end_to_end_ndcg@10": e2e["ndcg@10"], "end_to_end_mrr": e2e["mrr"]})
    return {k: v for k, v in out.items() if v is not None and v == v}  # v == v: not NaN


def model_card(model_dir: Path, repo_id: str) -> str:
    """README.md of the repo: YAML metadata + how to load + the evaluation tables."""
    metrics = json.loads((model_dir / "metrics.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    head = _headline(metrics)
    schema = config["feature_schema"]
    # The card's example runs as written: a real user, title and id of this model.
    anime = pd.read_parquet(model_dir / "anime.parquet", columns=["media_id", "title", "train_count"])
    top = anime.sort_values("train_count", ascending=False, kind="stable").iloc[:2]
    example_title, example_id = top["title"].iloc[0], int(top["media_id"].iloc[1])
    example_user = int(pd.read_parquet(model_dir / "users.parquet", columns=["user_id"])["user_id"].iloc[0])
    dropped = ["Left out of the model, for lack of data in the source: " + "; ".join(
        f"`{name}` ({reason})" for name, reason in schema.get("dropped_features", {}).items())
        + ".", ""] if schema.get("dropped_features") else []
    yaml = ["---", "library_name: tensorflow", "tags:", "- recommender-system", "- anime",
            "- two-tower", "- tensorflow-recommenders", "- scann", "- learning-to-rank",
            "datasets:", "- anilist", "metrics:", "- recall", "- ndcg", "model-index:",
            f"- name: {repo_id.split('/')[-1]}", "  results:", "  - task:",
            "      type: recommendation", "    dataset:", "      name: anirank feature tables",
            f"      type: {config.get('data_fingerprint', 'unknown')}", "    metrics:"]
    for name, value in head.items():
        yaml += [f"    - type: {name}", f"      value: {value:.4f}"]
    yaml.append("---")
    r = metrics.get("retrieval", {})
    rows = [("two-tower", r.get("model")), ("two-tower, ids only", r.get("ids_only")),
            ("most popular", r.get("popularity")), ("EASE (item-item, closed form)", r.get("ease"))]
    table = ["| model | Recall@10 | Recall@100 | NDCG@10 | NDCG@100 |", "|---|---|---|---|---|"]
    for name, m in rows:
        if m:
            table.append(f"| {name} | " + " | ".join(
                num(m[k]) for k in ("recall@10", "recall@100", "ndcg@10", "ndcg@100")) + " |")
    e2e = metrics.get("ranking", {}).get("end_to_end")
    if e2e:
        table += ["", "| end to end (retrieve 100, rank) | NDCG@10 | Recall@10 | MRR |",
                  "|---|---|---|---|"]
        for name in ("ranked", "retrieval_order"):
            m = e2e[name]
            table.append(f"| {name.replace('_', ' ')} | " + " | ".join(
                num(m[k]) for k in ("ndcg@10", "recall@10", "mrr")) + " |")
    body = [
        f"# {repo_id.split('/')[-1]}", "",
        "A two-stage anime recommender from [anirank](https://github.com/anirank): a "
        "two-tower retrieval model (TensorFlow Recommenders) with user and anime side "
        "features, a candidate index over every title, and a listwise ranker trained for "
        "NDCG.", "", "## Load it", "", "```python",
        "from serving import Recommender", "",
        f'rec = Recommender.from_pretrained("{repo_id}")  # pin revision="<commit sha>" to freeze it',
        f"rec.recommend([{example_user}], k=10)  # a user in the training data",
        f"rec.recommend_for_history([({example_title!r}, 90), ({example_id}, None)], k=10)",
        f"rec.similar_anime({example_id}, k=10)",
        "```", "", "Batch jobs: `python -m serving.batch --model " + repo_id +
        " --users all --out recs/`.", "",
        "## Evaluation", "",
        f"Test split: {describe_split(schema)}; titles the user had before the test period "
        "are excluded from every ranking.", "", *table, "", *dropped,
        f"Versions: {json.dumps(config.get('versions', {}), sort_keys=True)}. "
        f"Data fingerprint: `{config.get('data_fingerprint')}`.", "",
        "This repo also holds `users.parquet` and `seen.parquet` (per-user features and list "
        "titles of the training data), which `recommend(user_ids)` needs. Publish a model "
        "trained on real users' lists only where their terms allow it.", ""]
    return "\n".join(yaml + [""] + body)


def run(model: str | os.PathLike, repo_id: str, *, private: bool = False,
        token: str | None = None, endpoint: str | None = None,
        commit_message: str | None = None) -> dict:
    """Stage function behind ``python -m pipelines publish``. Returns commit id and URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    model_dir = Path(model)
    missing = [f for f in REQUIRED if not (model_dir / f).exists()]
    if missing:
        raise InputError(f"{model_dir} is not a complete model directory: missing {missing}. "
                         "Train it first (`python -m pipelines run`).")
    card = model_card(model_dir, repo_id)
    atomic.write_text(model_dir / "README.md", card)
    head = _headline(json.loads((model_dir / "metrics.json").read_text()))
    message = commit_message or "anirank model: " + ", ".join(f"{k} {v:.4f}" for k, v in head.items())
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), repo_type="model",
                                 commit_message=message, ignore_patterns=[".*", "**/.*"],
                                 # The repo mirrors the directory: files of an older model go.
                                 delete_patterns=["*"])
    except HfHubHTTPError as err:
        # The message names the request, never the token.
        raise InputError(f"Publishing to {repo_id} failed: {err}") from None
    return {"repo": repo_id, "commit": info.oid, "url": info.commit_url, "message": message}
