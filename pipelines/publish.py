"""Model directory -> Hugging Face Hub model repo, with a model card, in one commit.

    python -m pipelines publish --model data/model --repo your-name/anirank-demo [--private]

The token comes from ``HF_TOKEN`` or ``hf auth login`` (never printed or logged). The
repo is created if needed; the model card (``README.md``: YAML metadata with library_name,
tags and metrics; how to install and load it; the towers used with TensorFlow alone; the
training data and split as the schema records them; evaluation; limitations) goes into
the commit only (the model directory is left as it was), and the whole directory, its
manifest checked first (``artifact.check_manifest``: a damaged model is not published),
is uploaded as one commit whose message carries the headline metrics. Load it back with
``serving.Recommender.from_pretrained("your-name/anirank-demo", revision=...)``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from pipelines import __version__, artifact
from pipelines.config import RankingConfig
from pipelines.errors import InputError
from pipelines.features import describe_split
from pipelines.formatting import END_TO_END_COLUMNS, RETRIEVAL_COLUMNS, retrieval_rows, table



def _headline(metrics: dict) -> dict:
    r = metrics.get("retrieval", {}).get("model", {})
    out = {"recall@100": r.get("recall@100"), "ndcg@10": r.get("ndcg@10"),
           "factorized_top_100": r.get("factorized", {}).get("top_100")}
    e2e = metrics.get("ranking", {}).get("end_to_end", {}).get("ranked")
    if e2e:
        out.update({"end_to_end_ndcg@10": e2e["ndcg@10"], "end_to_end_mrr": e2e["mrr"]})
    return {k: v for k, v in out.items() if v is not None and v == v}  # v == v: not NaN


# How to use the towers with TensorFlow and huggingface_hub alone (no anirank installed),
# e.g. to put the title embeddings into your own vector database. Tested as published.
TOWERS_SNIPPET = """\
import numpy as np
import pandas as pd
import tensorflow as tf
from huggingface_hub import snapshot_download

path = snapshot_download("{repo_id}")  # pin revision="<commit sha>" to freeze it


def embed(tower, table):
    \"\"\"Rows of a Parquet table -> embeddings, through the tower's raw-feature signature.\"\"\"
    fn = tf.saved_model.load(f"{{path}}/{{tower}}").signatures["serving_default"]
    inputs = {{}}
    for name, spec in fn.structured_input_signature[1].items():
        column = table[name]
        if spec.dtype == tf.string and spec.shape.rank == 2:   # genres, tags: padded with ""
            width = spec.shape[1]
            inputs[name] = tf.constant([(list(v) + [""] * width)[:width] for v in column])
        elif name in ("history", "history_weight"):            # watched titles, weights
            width, pad = spec.shape[1], -1 if spec.dtype == tf.int64 else 0.0   # padding
            inputs[name] = tf.constant([(list(v) + [pad] * width)[:width] for v in column],
                                       spec.dtype)
        elif spec.dtype == tf.string:                          # one category; "" = missing
            inputs[name] = tf.constant(column.fillna("").astype(str).tolist())
        elif spec.shape.rank == 2:                             # taste vectors
            inputs[name] = tf.constant(np.stack(column.to_numpy()), tf.float32)
        else:                                                  # ids and numbers; NaN = missing
            kind = "float64" if spec.dtype.is_floating else "int64"
            inputs[name] = tf.constant(column.to_numpy(kind), spec.dtype)
    return fn(**inputs)["embedding"].numpy()


anime = pd.read_parquet(f"{{path}}/anime.parquet")
users = pd.read_parquet(f"{{path}}/users.parquet")
seen = pd.read_parquet(f"{{path}}/seen.parquet")
catalog = embed("candidate_tower", anime)                 # one row per title of anime.parquet
user_id = {user_id}
query = embed("query_tower", users[users["user_id"] == user_id])[0]
scores = catalog @ query                                  # higher = better
scores[anime["media_id"].isin(seen.loc[seen["user_id"] == user_id, "media_id"]).to_numpy()] = -np.inf
scores[anime["is_adult"].fillna(0).to_numpy() > 0] = -np.inf   # as Recommender does by default
top10 = anime["media_id"].to_numpy()[np.argsort(-scores, kind="stable")[:10]]
print(top10.tolist())
"""

# Anime features that feature tables written before anirank counted them from the
# training entries took from the media table: a snapshot from the crawl or the dump, not
# as of the training cutoff, so offline metrics that use them are optimistic.
SNAPSHOT_FEATURES = ("popularity", "favourites", "average_score")


def _examples(model_dir: Path) -> tuple[int, str, int]:
    """A real user id, title and title id of this model, so the card's code runs as written."""
    anime = pd.read_parquet(model_dir / "anime.parquet", columns=["media_id", "title", "train_count"])
    top = anime.sort_values("train_count", ascending=False, kind="stable").iloc[:2]
    user = pd.read_parquet(model_dir / "users.parquet", columns=["user_id"])["user_id"].iloc[0]
    return int(user), str(top["title"].iloc[0]), int(top["media_id"].iloc[1])


def model_card(model_dir: Path, repo_id: str, source_url: str | None = None) -> str:
    """README.md of the repo: YAML metadata (``huggingface_hub.ModelCardData``), how to
    install and load it, the towers without anirank, the training data as the schema
    records it, the evaluation tables and the limitations."""
    from huggingface_hub import EvalResult, ModelCardData

    metrics = artifact.read_json(model_dir, artifact.METRICS)
    config = artifact.read_json(model_dir, artifact.CONFIG)
    schema = config["feature_schema"]
    source = schema.get("source")
    if not isinstance(source, dict):   # feature tables from before the source was recorded
        source = {"kind": source or "unknown", "description": "a raw store of unknown origin"}
    name = repo_id.split("/")[-1]
    served = artifact.served_order(config)
    data = ModelCardData(
        library_name="tensorflow", model_name=name, metrics=["recall", "ndcg"],
        tags=["recommender-system", "anime", "two-tower", "tensorflow-recommenders", "scann",
              "learning-to-rank", f"anirank-{source['kind']}"],
        eval_results=[EvalResult(task_type="recommendation", dataset_type=source["kind"],
                                 dataset_name=source["description"], metric_type=metric,
                                 metric_value=round(value, 4))
                      for metric, value in _headline(metrics).items()])

    tables = [table(retrieval_rows(metrics["retrieval"]), RETRIEVAL_COLUMNS, label="test split")]
    e2e = metrics.get("ranking", {}).get("end_to_end")
    if e2e:
        tables.append(table([(name.replace("_", " "), e2e[name])
                             for name in ("ranked", "retrieval_order")], END_TO_END_COLUMNS,
                            label=f"end to end (retrieve {e2e['candidates']}, rank)"))
    scores = (metrics.get("scores") or {}).get("test")
    if scores:
        tables.append(table(list(scores["predictors"].items()), [("RMSE", "rmse"), ("MAE", "mae")],
                            label=f"predicted score, POINT_100 ({scores['entries']:,} test scores)"))

    user, title, anime_id = _examples(model_dir)
    install = (f'pip install "anirank @ git+{source_url}"' if source_url else
               "pip install <path to an anirank checkout>   # or the wheel `pip wheel --no-deps .` builds there")
    dropped = schema.get("dropped_features") or {}
    used = {f["name"] for f in schema["features"]}
    counted = "protocol" in (schema.get("split") or {})  # titles' statistics from training entries
    snapshot = [] if counted else [f for f in SNAPSHOT_FEATURES if f in used]
    limits = [
        "- `users.parquet` and `seen.parquet` hold per-user data of the training lists "
        "(features and titles), which `recommend(user_ids)` needs. Publish a model trained "
        "on real people's lists only where their terms allow it."]
    if snapshot:
        limits.append(f"- The title features {', '.join(f'`{f}`' for f in snapshot)} are "
                      "snapshots taken when the data was collected, after the training "
                      "cutoff: offline metrics that use them are optimistic.")
    if source["kind"] == "synthetic":
        limits.append("- Trained on a synthetic world: the numbers show that the method "
                      "works where the generator's assumptions hold, not how it does on "
                      "real users.")
    if dropped:
        limits.append("- Left out for lack of data in the source: " + "; ".join(
            f"`{f}` ({why})" for f, why in dropped.items()) + ".")
    body = [
        f"# {name}", "",
        f"A two-stage anime recommender made with anirank {config.get('versions', {}).get('anirank', __version__)}: "
        "a two-tower retrieval model (TensorFlow Recommenders) with user and anime side "
        "features, a candidate index over every title, and a listwise ranker trained for "
        "NDCG." + (" A score head predicts the POINT_100 score a user would give a title "
                   "(`predicted_score` in every recommendation; `rec.predict_scores(user_ids, "
                   "anime_ids)` for any pairs)." if scores else "")
        + (f" Source code: {source_url}." if source_url else ""), "",
        "## Install", "", "```bash", install, "```", "",
        "## Load it", "", "```python", "from serving import Recommender", "",
        f'rec = Recommender.from_pretrained("{repo_id}")  # pin revision="<commit sha>" to freeze it',
        f"rec.recommend([{user}], k=10)  # a user of the training data",
        f"rec.recommend_for_history([({title!r}, 90), ({anime_id}, None)], k=10)  # anyone, from a list",
        f"rec.similar_anime({anime_id}, k=10)",
        *([f"rec.predict_scores([{user}], [{anime_id}])  # the score the user would give it"]
          if scores else []), "```", "",
        f"Batch jobs: `python -m serving.batch --model {repo_id} --users all --out recs/`.", "",
        "## Use the towers directly", "",
        "The towers are TensorFlow SavedModels whose `serving_default` signature takes raw "
        "features by name; with TensorFlow and huggingface_hub alone (no anirank), this "
        "embeds the catalog and one user and takes the user's top 10 titles by dot product, "
        "the retrieval stage's answer" + (", which is also what this model serves:"
                                          if served["order"] == "retrieval" else
                                          f" ({artifact.ORDER_NAMES[served['order']]} then "
                                          "reorders the candidates):"), "",
        "```python", TOWERS_SNIPPET.format(repo_id=repo_id, user_id=user).rstrip(), "```", "",
        "## What it serves", "",
        (f"The ranker's order of the candidates ({_candidates(config)}; each with its "
         "two-tower and EASE scores and ranks)" if served["order"] == "ranked" else
         f"{artifact.ORDER_NAMES[served['order']][0].upper()}"
         f"{artifact.ORDER_NAMES[served['order']][1:]} of the candidates (the ranker is kept "
         "in the repo but not served)")
        + f": {served['why']}. `from_pretrained(..., use_ranker=True)` or `False` overrides it. "
        "Then the franchise rules, where the data records relations between titles: a title "
        "whose prequel or parent show the user has not watched gives way to the franchise's "
        "entry point, and one title a franchise in every 10 "
        "(`Filters(entry_points=False, per_franchise=None)` keeps the order as ranked).", "",
        "## Training data", "",
        f"Trained on {source['description']}. Test split: {describe_split(schema)}; titles "
        "the user had before the test period are excluded from every ranking.", "",
        "## Evaluation", "", "\n\n".join(tables), "",
        f"Versions: {json.dumps(config.get('versions', {}), sort_keys=True)}. "
        f"Data fingerprint: `{config.get('data_fingerprint')}`.", "",
        "## Limitations", "", *limits, ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def _candidates(config: dict) -> str:
    """What the ranker reorders, from ``config.json``."""
    ranking = RankingConfig.from_dict(config["ranking"])
    return (f"the two-tower's top {ranking.num_candidates}"
            + (f" and up to {ranking.ease_candidates} more from EASE" if ranking.ease_candidates
               else ""))


def run(model: str | os.PathLike, repo_id: str, *, private: bool = False,
        token: str | None = None, endpoint: str | None = None,
        commit_message: str | None = None, source_url: str | None = None) -> dict:
    """Stage function behind ``python -m pipelines publish``. Returns commit id and URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    model_dir = Path(model)
    artifact.check_complete(model_dir)
    artifact.check_manifest(model_dir)
    card = model_card(model_dir, repo_id, source_url)
    head = _headline(artifact.read_json(model_dir, artifact.METRICS))
    message = commit_message or "anirank model: " + ", ".join(f"{k} {v:.4f}" for k, v in head.items())
    api = HfApi(endpoint=endpoint, token=token)
    # The commit is the model directory plus its card: staged beside it (hard links,
    # same file system), so the model directory itself is never written to.
    with tempfile.TemporaryDirectory(dir=model_dir.resolve().parent,
                                     prefix=f".{model_dir.name}.publish-") as staging:
        folder = Path(staging) / model_dir.name
        shutil.copytree(model_dir, folder, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(".*", "README.md"))
        (folder / "README.md").write_text(card)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                     commit_message=message, ignore_patterns=[".*", "**/.*"],
                                     # The repo mirrors the directory: files of an older model go.
                                     delete_patterns=["*"])
        except HfHubHTTPError as err:
            # The message names the request, never the token.
            raise InputError(f"Publishing to {repo_id} failed: {err}") from None
        except Exception as err:
            if not _network_error(err):
                raise
            raise InputError(f"Publishing to {repo_id} failed: the Hub at "
                             f"{endpoint or os.environ.get('HF_ENDPOINT', 'https://huggingface.co')} "
                             f"could not be reached ({type(err).__name__}: {err}). Check the "
                             "network (or --endpoint / HF_ENDPOINT) and run it again; nothing "
                             "was published.") from None
    return {"repo": repo_id, "commit": info.oid, "url": info.commit_url, "message": message}


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _network_error(err: Exception) -> bool:
    """An error of the connection to the Hub (the HTTP client's transport errors, a
    socket's), not of this code."""
    module = type(err).__module__.split(".")[0]
    return isinstance(err, (OSError, TimeoutError)) or module in (
        "httpx", "httpx2", "httpcore", "requests", "urllib3")
