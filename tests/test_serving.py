"""Serving from a local model directory: recommend (seen excluded, filters), cold start
from a history, similar titles, clear errors on damaged models, and the batch job
(resumable after SIGKILL, unknown users flagged, bad rows reported)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import artifact
from pipelines.candidates import Generator
from pipelines.config import RankingConfig
from pipelines.errors import InputError
from pipelines.tables import load
from serving import Filters, Recommender, batch
from tests.worlds import TINY_RANKING

ROOT = Path(__file__).resolve().parents[1]

# The ranked order itself: the franchise rules (serving/franchise.py) off.
RANKED = Filters(entry_points=False, per_franchise=None)


# `python -m serving.batch ARGS`, except that os.replace, about to put part-00003.parquet
# in place, prints so and waits for the test's SIGKILL instead.
_STOP_BEFORE_PART_3 = """
import os, runpy, sys, time
replace = os.replace
def stopping(src, dst, *args, **kwargs):
    if os.path.basename(dst) == "part-00003.parquet":
        print("stopped before part-00003.parquet", flush=True)
        time.sleep(3600)
    return replace(src, dst, *args, **kwargs)
os.replace = stopping
sys.argv = ["serving.batch", *sys.argv[1:]]
runpy.run_module("serving.batch", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def rec(tiny_ranked):
    return Recommender.from_pretrained(str(tiny_ranked[0]))


def test_recommend_excludes_seen_and_ranks(rec):
    users = rec.users["user_id"].to_numpy()[:20]
    out = rec.recommend(users, k=10)
    assert list(out.columns) == ["user_id", "rank", "anime_id", "title", "score", "predicted_score"]
    assert out["score"].dtype == np.float32
    assert (out.groupby("user_id").size() == 10).all()
    seen = pd.read_parquet(rec.directory / "seen.parquet")
    pairs = set(map(tuple, seen[["user_id", "media_id"]].to_numpy()))
    assert not [p for p in zip(out["user_id"], out["anime_id"]) if p in pairs]
    for _, g in out.groupby("user_id"):
        assert g["rank"].tolist() == list(range(1, 11))
        assert (np.diff(g["score"].to_numpy()) <= 1e-6).all()
    with_seen = rec.recommend(users[:5], k=10, exclude_seen=False)
    assert [p for p in zip(with_seen["user_id"], with_seen["anime_id"]) if p in pairs]


def test_recommend_leaves_out_more_titles_when_asked(rec):
    """``exclude``: per user, titles left out besides the training list (what the daily
    loop passes: titles added since); the rest of the list moves up, in the same order."""
    users = rec.users["user_id"].to_numpy()[:6]
    before = rec.recommend(users, k=10)
    top = before.groupby("user_id")["anime_id"].apply(list)
    exclude = [top[u][:3] + [999_999_999] for u in users]  # an id outside the catalog too
    after = rec.recommend(users, k=10, exclude=exclude)
    for u, removed in zip(users, exclude):
        got = after[after["user_id"] == u]["anime_id"].tolist()
        assert not set(got) & set(removed)
        assert got[:7] == top[u][3:]
    with pytest.raises(InputError, match="one list of anime ids per user"):
        rec.recommend(users, exclude=exclude[:2])


def test_filters(rec):
    anime = rec.anime.set_index("media_id")
    users = rec.users["user_id"].to_numpy()[:10]
    banned = tuple(rec.recommend(users[:1], k=3)["anime_id"])
    cap = float(anime["popularity"].median())  # leaves out the more popular half
    f = Filters(formats=("TV", "ONA"), min_year=2000, max_year=2024, max_popularity=cap,
                exclude_ids=banned)
    out = rec.recommend(users, k=5, filters=f)
    a = anime.loc[out["anime_id"]]
    assert a["format"].isin(["TV", "ONA"]).all()
    assert a["season_year"].between(2000, 2024).all() and (a["popularity"] <= cap).all()
    assert not a["is_adult"].astype(bool).any() and not set(banned) & set(out["anime_id"])


def test_cold_start_from_a_history(rec):
    anime = rec.anime
    history = [(anime["title"].iloc[0], 90), (int(anime["media_id"].iloc[1]), None),
               ("No Such Anime", 70)]
    with pytest.warns(UserWarning, match="No Such Anime"):
        out = rec.recommend_for_history(history, k=8)
    assert out.attrs["unknown"] == ["No Such Anime"]
    assert len(out) == 8 and (out["source"] == "model").all() and out["score"].notna().all()
    assert not {int(anime["media_id"].iloc[0]), int(anime["media_id"].iloc[1])} & set(out["anime_id"])
    # An empty history: the popularity fallback, still k titles, no model score.
    fallback = rec.recommend_for_history([], k=4)
    assert list(fallback.columns) == ["rank", "anime_id", "title", "score", "predicted_score",
                                      "source"]
    assert len(fallback) == 4 and (fallback["source"] == "popularity").all()
    assert fallback["score"].isna().all()
    order = anime.set_index("media_id").loc[fallback["anime_id"], "train_count"].to_numpy()
    assert (np.diff(order) <= 0).all()


def test_a_known_users_list_through_recommend_for_history_is_that_user(tiny_history_model,
                                                                      tiny_features):
    # The same path: a known user's training list (titles, scores, times), given as a new
    # user's history, builds the same features, history included, as the feature stage
    # stored for them; the only difference is the user id (a new user has the unknown-id
    # embedding). With the id put back, the same query and the same recommendations.
    rec = Recommender.from_pretrained(str(tiny_history_model[0]))
    query_inputs = rec.retrieval.query_tower.structured_input_signature[1]
    assert {"history", "history_weight"} <= {t.name for t in query_inputs.values()}
    inter = load(tiny_features)["interactions"]
    train = inter[inter["split"] == "train"]
    # recommend_for_history takes watched titles: a user whose training list is all
    # COMPLETED (statuses enter the counts), with a history longer than one title.
    completed = train.groupby("user_id")["status"].agg(lambda s: (s == "COMPLETED").all())
    sizes = train.groupby("user_id").size()
    user = int(sizes[completed & (sizes > 3)].sort_values().index[-1])
    mine = train[train["user_id"] == user].sample(frac=1.0, random_state=0)  # order is no input
    entries = [(int(m), int(sc) or None, int(t))
               for m, sc, t in zip(mine["media_id"], mine["score"], mine["time"])]
    row = rec._user_row.get_loc(user)
    known = {k: v[row:row + 1] for k, v in rec._user_raw.items()}
    new = rec._history_features([([e[0] for e in entries], [e[1] or 0 for e in entries],
                                  [e[2] for e in entries])])
    assert set(new) == set(known) and "history" in new
    for name in known:
        if name != "user_id":
            np.testing.assert_allclose(new[name], known[name], rtol=1e-6, err_msg=name)
    assert new["user_id"].tolist() == [-1]
    new["user_id"] = known["user_id"]
    np.testing.assert_allclose(rec.retrieval.embed_users(new), rec.retrieval.embed_users(known),
                               atol=1e-6)
    seen = [rec._seen[row]]
    history = [rec._anime_row.get_indexer([e[0] for e in entries])]   # EASE's input
    np.testing.assert_array_equal(np.sort(history[0]), np.sort(rec._history[row]))
    got = rec._recommend_raw(new, seen, history, 10, 100, Filters().allowed(rec.anime))
    want = rec.recommend([user], k=10)
    assert rec.anime["media_id"].to_numpy()[got[0][0]].tolist() == want["anime_id"].tolist()
    # Without times the history weighs by score alone: another history, another query.
    untimed = rec._history_features([([e[0] for e in entries], [e[1] or 0 for e in entries],
                                      [None] * len(entries))])
    assert not np.allclose(untimed["history_weight"], known["history_weight"])
    # The public call takes the same triples.
    out = rec.recommend_for_history(entries, k=10)
    assert len(out) == 10 and (out["source"] == "model").all()
    assert not set(out["anime_id"]) & set(mine["media_id"])


def test_similar_anime_matches_brute_force(rec):
    emb, ids = rec.index.embeddings, rec.index.ids
    out = rec.similar_anime(int(ids[0]), k=5)
    scores = emb[1:] @ emb[0]
    assert out["anime_id"].tolist() == ids[1:][np.argsort(-scores)[:5]].tolist()
    with pytest.raises(InputError, match="not in this model"):
        rec.similar_anime(-5)


def test_unknown_users_and_bad_arguments(rec):
    with pytest.raises(InputError, match="not in the training data"):
        rec.recommend([123456789])
    with pytest.raises(InputError, match=r"`k` must be an int >= 1. Received: k=0"):
        rec.recommend(rec.users["user_id"][:1], k=0)


def _damaged(source, tmp_path, name, damage, manifest=False):
    """A copy of the model ``source`` with ``damage(directory)`` done to it, and its
    manifest rewritten to match when ``manifest`` (a damage saved as the model)."""
    copy = tmp_path / name
    shutil.copytree(source, copy)
    damage(copy)
    if manifest:
        artifact.write_manifest(copy)
    return str(copy)


def _ranked_without_ranker(directory):
    """A config that serves the ranker, and no ranker/ (an incomplete copy)."""
    config = json.loads((directory / "config.json").read_text())
    config["serving"] = {"order": "ranked", "why": "set by the test"}
    (directory / "config.json").write_text(json.dumps(config))
    shutil.rmtree(directory / "ranker")


def test_damaged_models_give_clear_errors(tiny_ranked, tmp_path):
    """Every file is checked against the manifest (size, sha256) before anything is
    read: a missing, truncated or altered file is named. Damage saved with its manifest
    (as a buggy writer would) still gets a named error from the loader."""
    source = tiny_ranked[0]

    def truncate(name):
        def damage(d):
            data = (d / name).read_bytes()
            (d / name).write_bytes(data[: len(data) // 2])
        return damage

    cases = {
        "truncated embeddings": (truncate("index/candidate_embeddings.npy"),
                                 r"candidate_embeddings.npy is damaged: [\d,]+ bytes, saved "
                                 r"with [\d,]+ \(truncated\)"),
        "truncated titles": (truncate("anime.parquet"), r"anime.parquet is damaged: .*truncated"),
        "missing ids": (lambda d: (d / "index" / "candidate_ids.npy").unlink(),
                        "candidate_ids.npy is missing from the model"),
        "missing ranker": (lambda d: shutil.rmtree(d / "ranker"),
                           r"ranker/.* is missing from the model"),
        "altered config": (lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"tensorflow": "2.', '"tensorflow": "1.')),
            "config.json is damaged: its content is not the one the model was saved with"),
        "no manifest": (lambda d: (d / artifact.MANIFEST).unlink(),
                        "has no manifest.json"),
    }
    for name, (damage, message) in cases.items():
        with pytest.raises(InputError, match=message):
            Recommender.from_pretrained(_damaged(source, tmp_path, name.replace(" ", "_"), damage))
    saved = {
        "query_tower is missing or corrupt": lambda d: (
            d / "query_tower" / "saved_model.pb").write_bytes(b"not a protobuf"),
        r"missing \['index/candidate_ids.npy'\]": lambda d: (
            d / "index" / "candidate_ids.npy").unlink(),
        "config.json is corrupt": lambda d: (d / "config.json").write_text("{not json"),
        "saved with TensorFlow 1": cases["altered config"][0],
        "serves the ranker, but the model has no ranker/": _ranked_without_ranker,
    }
    for i, (message, damage) in enumerate(saved.items()):
        with pytest.raises(InputError, match=message):
            Recommender.from_pretrained(_damaged(source, tmp_path, f"saved{i}", damage, True))
    # Files the manifest does not list are not the model's (a Hub repo's README.md).
    extra = _damaged(source, tmp_path, "extra", lambda d: (d / "README.md").write_text("card"))
    assert len(Recommender.from_pretrained(extra).recommend(
        Recommender.from_pretrained(str(source)).users["user_id"][:2], k=3)) == 6


def test_batch_job_output_flags_and_resume(tiny_ranked, rec, tmp_path):
    users = rec.users["user_id"].to_numpy()[:300]
    listing = tmp_path / "users.csv"
    listing.write_text("user_id\n" + "\n".join(map(str, users)) + "\n999999999\nnot-a-user\n\n")
    clean = tmp_path / "clean"
    summary = batch.run(str(tiny_ranked[0]), str(listing), clean, k=5, chunk_size=10, progress=False)
    assert summary["users"] == 301 and summary["popularity_fallback_users"] == 1
    assert summary["invalid_row_count"] == 1 and summary["invalid_rows"][0][1] == "not-a-user"
    out = batch.read_output(clean)
    assert (out.loc[out["user_id"] == 999999999, "source"] == "popularity").all()
    # score has one meaning: the model's score; NaN where the popularity fallback answered.
    assert out.loc[out["source"] == "popularity", "score"].isna().all()
    assert out.loc[out["source"] == "model", "score"].notna().all()
    pd.testing.assert_frame_equal(out[out["source"] == "popularity"].drop(columns="source")
                                  .reset_index(drop=True), rec.popular([999999999], k=5))
    known = out[out["source"] == "model"]
    expected = rec.recommend(users, k=5)
    # float32 scores of other batch sizes differ in the last bits: absolute tolerance, as
    # a relative one fails on scores near 0.
    pd.testing.assert_frame_equal(known.drop(columns="source").reset_index(drop=True), expected,
                                  atol=1e-6)

    # Killed mid-way (SIGKILL), then rerun: the same parts, byte for byte in content.
    # The job runs as the command line does, in a child whose os.replace stops before
    # putting part 3 in place (its temporary file written), says so on stdout and waits:
    # the kill lands there, after exactly parts 0-2, whatever the machine's speed.
    killed = tmp_path / "killed"
    arguments = ["--model", str(tiny_ranked[0]), "--users", str(listing), "--out", str(killed),
                 "--k", "5", "--chunk-size", "10", "--quiet"]
    command = [sys.executable, "-m", "serving.batch", *arguments]
    proc = subprocess.Popen([sys.executable, "-c", _STOP_BEFORE_PART_3, *arguments], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline() == "stopped before part-00003.parquet\n", "never got there"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    parts = sorted(p.name for p in killed.glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(3)]
    assert not (killed / batch.DONE).exists(), "killed mid-way"
    assert [p.name.split(".")[1] for p in killed.glob(".*.tmp")] == ["part-00003"], \
        "the killed part's temporary file is left"
    with pytest.raises(InputError, match="did not finish"):
        batch.read_output(killed)
    # And what a kill during another part's write leaves.
    (killed / ".part-00029.parquet.0badf00d.tmp").write_bytes(b"PAR1 half a file")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    pd.testing.assert_frame_equal(batch.read_output(killed), batch.read_output(clean))
    assert not list(killed.glob(".*.tmp"))

    # Another job's output directory is refused: other users, or a retrained model.
    with pytest.raises(InputError, match="different job"):
        batch.run(str(tiny_ranked[0]), "all", killed, k=5, chunk_size=10, progress=False)
    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_ranked[0], retrained)
    emb = np.load(retrained / "index" / "candidate_embeddings.npy")
    np.save(retrained / "index" / "candidate_embeddings.npy", emb[::-1].copy())
    artifact.write_manifest(retrained)   # saved so, as a retrained model would be
    first = tmp_path / "first"
    batch.run(str(tiny_ranked[0]), "all", first, k=5, chunk_size=500, progress=False)
    manifest = (first / batch.MANIFEST).read_text()
    (first / batch.MANIFEST).write_text(manifest.replace(str(tiny_ranked[0]), str(retrained)))
    with pytest.raises(InputError, match="different job"):
        batch.run(str(retrained), "all", first, k=5, chunk_size=500, progress=False)


def _assert_top_of(rec, got, scores_of, **tolerance):
    """Each user's rows of ``got`` are their top 10 by ``scores_of(user row)`` over the whole
    catalog, leaving out what they have seen and adult titles, scored with those scores."""
    adult = rec.anime["is_adult"].fillna(0).to_numpy() > 0
    media = rec.anime["media_id"].to_numpy()
    for user, recs in got.groupby("user_id", sort=False):
        row = rec._user_row.get_loc(user)
        scores = scores_of(row)
        seen = set(rec._seen[row])
        allowed = [i for i in np.argsort(-scores, kind="stable")
                   if media[i] not in seen and not adult[i]][:10]
        assert recs["anime_id"].tolist() == media[allowed].tolist()
        np.testing.assert_allclose(recs["score"], scores[allowed], **tolerance)


def test_served_order_follows_the_ranking_stage_and_retrieval_order_is_exact(tiny_ranked):
    model_dir = tiny_ranked[0]
    config = json.loads((model_dir / "config.json").read_text())
    default = Recommender.from_pretrained(str(model_dir))
    assert default.serving == config["serving"]
    assert (default.ranker is None) == (config["serving"]["order"] != "ranked")
    plain = Recommender.from_pretrained(str(model_dir), use_ranker=False)
    ranked = Recommender.from_pretrained(str(model_dir), use_ranker=True)
    assert plain.ranker is None and ranked.ranker is not None
    users = plain.users["user_id"].to_numpy()[:25]
    got = plain.recommend(users, k=10, filters=RANKED)
    # Retrieval order: each user's unseen titles by query . candidate, score = that dot.
    queries = plain.retrieval.embed_users(plain._user_raw)
    embeddings = plain.retrieval.candidate_embeddings
    _assert_top_of(plain, got, lambda row: queries[row] @ embeddings.T, rtol=1e-5, atol=1e-6)
    assert not ranked.recommend(users, k=10, filters=RANKED)["anime_id"].equals(got["anime_id"])


def _serving(model_dir, tmp_path, name, order, blend=None):
    """A copy of ``model_dir`` whose config.json serves ``order`` (and ``blend``)."""
    copy = tmp_path / name
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["serving"] = {"order": order, "why": "set by the test"}
    if blend is not None:
        config["blend"] = blend
    (copy / "config.json").write_text(json.dumps(config))
    artifact.write_manifest(copy)
    return Recommender.from_pretrained(str(copy))


def test_eases_order_and_the_blend_are_served_as_decided(tiny_ranked, tmp_path):
    model_dir = tiny_ranked[0]
    ease = _serving(model_dir, tmp_path, "ease", "ease")
    assert ease.ranker is None and ease.serving["order"] == "ease"
    users = ease.users["user_id"].to_numpy()[:25]
    got = ease.recommend(users, k=10, filters=RANKED)
    # EASE's order: each user's unseen titles by x_u B over the whole catalog (its top 10
    # are among the candidates: EASE adds its own), score = that product.
    weights = np.load(model_dir / "ease.npy")

    def ease_scores(row):
        x = np.zeros(len(ease.anime), np.float32)
        x[ease._history[row]] = 1.0
        return x @ weights

    _assert_top_of(ease, got, ease_scores, rtol=1e-4, atol=1e-5)
    # A blend that weighs one signal alone serves that signal's order: the similarity
    # alone is retrieval order, EASE's score alone EASE's order.
    config = json.loads((model_dir / "config.json").read_text())
    names = config["blend"]["names"]
    assert names[-1] == "log_popularity" and {"similarity", "ease"} <= set(names)

    def only(alone):
        return {"names": names, "mean": [0.0] * len(names), "scale": [1.0] * len(names),
                "weights": [float(n == alone) for n in names]}

    plain = Recommender.from_pretrained(str(model_dir), use_ranker=False)
    for name, expected in (("similarity", plain.recommend(users, k=10, filters=RANKED)), ("ease", got)):
        blended = _serving(model_dir, tmp_path, f"blend-{name}", "blend", only(name))
        assert blended.ranker is None and blended._blend is not None
        out = blended.recommend(users, k=10, filters=RANKED)
        assert out["anime_id"].tolist() == expected["anime_id"].tolist(), name
    with pytest.raises(InputError, match="no `blend` weights"):
        broken = tmp_path / "broken"
        shutil.copytree(model_dir, broken)
        config["serving"] = {"order": "blend", "why": "test"}
        del config["blend"]
        (broken / "config.json").write_text(json.dumps(config))
        artifact.write_manifest(broken)
        Recommender.from_pretrained(str(broken))


def test_catalog_encoded_once_scores_like_the_raw_ranker(tiny_ranked):
    fast = Recommender.from_pretrained(str(tiny_ranked[0]), use_ranker=True)
    assert fast._encoded is not None and len(fast._encoded) == len(fast.anime)
    assert fast.xla, "the side-feature ranker compiles with XLA"
    users = fast.users["user_id"].to_numpy()[:40]
    encoded = fast.recommend(users, k=10)
    # Batches padded to a power of two score like unpadded ones (7 -> 8 rows, 1 -> 1).
    one = pd.concat([fast.recommend(users[i:i + 1], k=10) for i in range(7)], ignore_index=True)
    pd.testing.assert_frame_equal(one, encoded[encoded["user_id"].isin(users[:7])], atol=1e-5)
    empty = fast.recommend([], k=10)
    assert len(empty) == 0 and list(empty.columns) == list(encoded.columns)
    fast._encoded = None  # fall back to the raw serving_default signature
    raw = fast.recommend(users, k=10)
    pd.testing.assert_frame_equal(encoded, raw, atol=1e-5)


def test_the_franchise_signal_is_served_from_the_model_dirs_relations(tiny_ranked, tmp_path):
    """The tiny world has franchises: the ranker reads the franchise signal, and serving
    computes it from the model directory's own files (anime.parquet's relations, the
    training history in seen.parquet) as counted by hand; a ranker whose signal the
    directory cannot feed is refused by name."""
    rec = Recommender.from_pretrained(str(tiny_ranked[0]), use_ranker=True)
    assert "franchise" in rec.ranking_config.signals and "franchise" in rec._signals
    continues = {m: {r for r, t in zip(ids, types) if t in ("PREQUEL", "PARENT")}
                 for m, ids, types in zip(rec.anime["media_id"], rec.anime["related_ids"],
                                          rec.anime["related_types"])}
    media = rec.anime["media_id"].to_numpy()
    seen = pd.read_parquet(tiny_ranked[0] / "seen.parquet")
    watched = seen[seen["history"]].groupby("user_id")["media_id"].agg(set)
    rows = np.arange(60)
    generate = Generator(rec.index, rec._ease, 100, rec._ease_candidates, rec._signals,
                         rec._relations)
    cand = generate(rec.retrieval.embed_users({k: v[rows] for k, v in rec._user_raw.items()}),
                    [rec._history[r] for r in rows], [rec._seen[r] for r in rows])
    expected = [[np.log1p(len(continues[media[c]] & watched.get(user, set()))) if c >= 0 else 0
                 for c in cand_rows] for user, cand_rows in zip(rec.users["user_id"], cand.rows)]
    np.testing.assert_allclose(cand.signals["franchise"], expected, rtol=1e-6)
    assert (cand.signals["franchise"] > 0).any(), "no candidate continues a watched title"

    broken = tmp_path / "model"
    shutil.copytree(tiny_ranked[0], broken)
    config = json.loads((broken / "config.json").read_text())
    del config["feature_schema"]["relations"]
    (broken / "config.json").write_text(json.dumps(config))
    artifact.write_manifest(broken)
    with pytest.raises(InputError, match=r"reads the candidate signals \['franchise'\]"):
        Recommender.from_pretrained(str(broken), use_ranker=True)


def test_ranker_with_id_lookups_falls_back_from_xla(tiny_model, tiny_features, tmp_path):
    """Id embeddings need hash-table lookups, which XLA cannot compile: the scorer runs
    as a plain graph and still scores like the raw signature."""
    from pipelines import train_ranking

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model[0], model_dir)
    train_ranking.run(tiny_features, model_dir,
                      RankingConfig(**{**TINY_RANKING, "max_epochs": 1, "use_ids": True}),
                      compare_losses=False, with_ablations=False, progress=False)
    rec = Recommender.from_pretrained(str(model_dir), use_ranker=True)
    assert rec._encoded is not None and not rec.xla
    users = rec.users["user_id"].to_numpy()[:20]
    encoded = rec.recommend(users, k=10)
    rec._encoded = None
    pd.testing.assert_frame_equal(encoded, rec.recommend(users, k=10), atol=1e-5)


def test_batch_reports_duplicates_and_invalid_rows_and_reruns_count_true(tiny_ranked, rec, tmp_path,
                                                                         capsys):
    users = rec.users["user_id"].to_numpy()[:30]
    listing = tmp_path / "users.csv"
    rows = ["user_id", *map(str, users[:3]), "abc", str(users[0]), "999999999", "2.5",
            *map(str, users[3:]), str(users[1]), ""]
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "recs"
    command = ["--model", str(tiny_ranked[0]), "--users", str(listing), "--out", str(out),
               "--k", "4", "--chunk-size", "8", "--quiet"]
    assert batch.main(command) == 0
    printed = capsys.readouterr()
    assert "2 duplicate users and 2 invalid input rows skipped" in printed.out
    warning = printed.err.strip()
    assert warning.startswith("warning: 2 input rows are not user ids") and warning.count("\n") == 0
    assert "row 4: 'abc', row 7: '2.5'" in warning and str(out / batch.INVALID) in warning
    invalid = pd.read_csv(out / batch.INVALID, dtype={"value": str})
    assert invalid.to_dict("list") == {"row": [4, 7], "value": ["abc", "2.5"]}

    first = json.loads((out / batch.DONE).read_text())
    assert first["users"] == 31 and first["duplicate_users"] == 2
    assert first["popularity_fallback_users"] == 1 and first["model_users"] == 30
    assert first["model_rows"] == 120 and first["popularity_rows"] == 4
    # A rerun over finished parts reports what the output holds, not what it wrote.
    (out / batch.DONE).unlink()
    (out / "part-00001.parquet").unlink()
    batch.run(str(tiny_ranked[0]), str(listing), out, k=4, chunk_size=8, progress=False)
    again = json.loads((out / batch.DONE).read_text())
    assert again["parts_written"] == 1 and again["parts_skipped"] == 3
    volatile = ("seconds", "parts_written", "parts_skipped")
    assert {k: v for k, v in again.items() if k not in volatile} == \
        {k: v for k, v in first.items() if k not in volatile}


def test_genre_filters(rec):
    users = rec.users["user_id"].to_numpy()[:5]
    genres = rec.anime["genres"].explode().value_counts().index
    keep, drop = genres[0], genres[1]
    out = rec.recommend(users, k=10, filters=Filters(genres=keep, exclude_genres=(drop,)))
    listed = rec.anime.set_index("media_id").loc[out["anime_id"], "genres"].map(list)
    assert len(out) == 50 and all(keep in g and drop not in g for g in listed)
    allowed = Filters(genres=(keep, drop), exclude_adult=False).allowed(rec.anime)
    either = rec.anime["genres"].map(lambda g: keep in list(g) or drop in list(g)).to_numpy()
    np.testing.assert_array_equal(allowed, either)   # at least one of them
    with pytest.raises(InputError, match=r"genres of this model's catalog.*unknown: \['Cooking'\]"):
        Filters(exclude_genres="Cooking").allowed(rec.anime)
    with pytest.raises(InputError, match=r"`genres` must be a string or a non-empty sequence"):
        Filters(genres=())


def test_history_ids_and_the_nearest_history_title(rec):
    user = int(rec.users["user_id"].iloc[4])
    seen = pd.read_parquet(rec.directory / "seen.parquet")
    mine = seen[(seen["user_id"] == user) & seen["history"]]["media_id"]
    assert sorted(rec.history_ids(user).tolist()) == sorted(mine.tolist())
    with pytest.raises(InputError, match="not in the training data"):
        rec.history_ids(-5)
    # Oracle: cosine of the candidate embeddings, by brute force.
    ids = rec.anime["media_id"].to_numpy()
    history = [int(i) for i in ids[:12]] + [999_999_999]   # one id outside the catalog
    asked = ids[5:40]
    emb = rec.index.embeddings / np.linalg.norm(rec.index.embeddings, axis=1, keepdims=True)
    row = {int(m): r for r, m in enumerate(ids)}
    want = []
    for a in asked:
        options = [h for h in history[:12] if h != a]    # never its own reason
        want.append(max(options, key=lambda h: emb[row[int(a)]] @ emb[row[h]]))
    np.testing.assert_array_equal(rec.nearest_in_history(asked, history), want)
    assert rec.nearest_in_history(asked[:3], []).tolist() == [-1, -1, -1]
    assert rec.nearest_in_history([ids[0]], [ids[0]]).tolist() == [-1]
    with pytest.raises(InputError, match="not in this model's catalog"):
        rec.nearest_in_history([999_999_999], history)


def test_reasons_for_a_batch_are_each_persons_own(rec):
    """rec.reasons for several people at once: for each, the liked titles only (unscored,
    or at least their mean score), and the same answers as asking about them alone,
    whatever the block the cosines are taken in."""
    ids = rec.anime["media_id"].to_numpy()
    people = [(ids[0:8], [90, 20, 0, 70, 40, 100, 0, 10]),   # mean of the scored 55
              (ids[20:26], [None] * 6),
              (ids[:0], []),
              (ids[40:41], [30])]
    asked = [ids[30:40], ids[0:12], ids[50:53], ids[40:44]]
    liked = [[ids[0], ids[2], ids[3], ids[5], ids[6]], list(ids[20:26]), [], [ids[40]]]
    got = rec.reasons(asked, people)
    for (after, near), mine, titles in zip(got, liked, asked):
        np.testing.assert_array_equal(after, rec.continues(titles, mine))
        np.testing.assert_array_equal(near, rec.nearest_in_history(titles, mine))
    assert (got[1][1] != ids[0:12]).all() and (got[2][1] == -1).all()
    users = np.repeat(np.arange(4), [len(a) for a in asked])
    rows = rec._anime_row.get_indexer(np.concatenate(asked))
    pools = [rec._anime_row.get_indexer(m) for m in liked]
    np.testing.assert_array_equal(rec._nearest(users, rows, pools, block=20),
                                  rec._nearest(users, rows, pools))
    with pytest.raises(InputError, match="one entry per person"):
        rec.reasons(asked, people[:2])
