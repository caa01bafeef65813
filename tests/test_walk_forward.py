"""The walk-forward test (pipelines/walk_forward.py): every compared method fitted on, and
queried with, the same entries, on the selection run's test period."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipelines import artifact, evaluate, walk_forward
from pipelines.errors import InputError
from pipelines.tables import FeatureTables


@pytest.fixture(scope="module")
def walked(tiny_db, tiny_features, tiny_scored, tmp_path_factory):
    """The tiny model's (ranker, score head) selection report (standalone) and its
    walk-forward run."""
    root = tmp_path_factory.mktemp("walk")
    model = root / "model"
    shutil.copytree(tiny_scored[0], model)
    selection = evaluate.run(model, tiny_features, progress=False)   # into model/report
    metrics = walk_forward.run(tiny_db, tiny_features, model, root / "work", progress=False)
    return {"model": model, "work": root / "work", "selection": selection, "walked": metrics}


def test_the_selection_report_says_its_methods_saw_different_entries(walked, tiny_features):
    data = walked["selection"]["data"]
    split = FeatureTables.load(tiny_features).schema["split"]
    before_t = f"entries before {split['periods']['train'][1]}"
    ranker = f"entries before {split['periods']['validation'][1]}"
    assert data["same_data"] is False
    for name in ("two-tower", "EASE", "iALS", "most popular"):
        assert data["methods"][name] == {"fitted_on": before_t, "history": before_t}
    # The ranker learned from the validation period: later than every other row.
    assert data["methods"]["ranked"]["fitted_on"] == f"{before_t} (stage one); {ranker} (ranker)"


def test_every_walk_forward_method_is_fitted_on_and_queried_with_the_same_entries(walked,
                                                                                   tiny_features):
    data = walked["walked"]["data"]
    selection = FeatureTables.load(tiny_features)
    t_plus_h = selection.schema["split"]["periods"]["validation"][1]
    assert data["same_data"] is True
    expected = {"fitted_on": f"entries before {t_plus_h}", "history": f"entries before {t_plus_h}"}
    assert set(data["methods"]) >= {"two-tower", "EASE", "iALS", "most popular", "ranked"}
    assert all(m == expected for m in data["methods"].values()), data["methods"]


def test_the_refit_sees_the_validation_period_and_tests_on_the_same_period(walked, tiny_features):
    selection = FeatureTables.load(tiny_features)
    refit = FeatureTables.load(walked["work"] / "features")
    assert refit.schema["split"]["periods"]["test"] == selection.schema["split"]["periods"]["test"]
    assert refit.pairs("validation").empty

    def ids(tables, split):
        inter = tables.interactions
        part = inter[(inter["split"] == split) & inter["is_interaction"]]
        return set(zip(part["user_id"], part["media_id"]))

    # Everything the selection run trained or validated on is training data here, and the
    # test entries are the selection test's (plus those of users and titles new since T).
    assert ids(refit, "train") >= ids(selection, "train") | ids(selection, "validation")
    assert ids(refit, "test") >= ids(selection, "test")
    saved = json.loads((walked["work"] / "model" / "metrics.json").read_text())["retrieval"]
    chosen = json.loads((walked["model"] / "metrics.json").read_text())["retrieval"]
    # Refit with the settings validation chose: warm from the selection model for
    # WARM_EPOCHS epochs (bench/warm_refit.py), EASE's lambda.
    assert saved["training"]["epochs"] == walk_forward.WARM_EPOCHS
    assert saved["training"]["warm_start"]["ids"]["user_id"] == [
        len(selection.users), len(refit.users) - len(selection.users)]
    assert saved["training"]["refit"] is True and "validation_recall@100" not in saved["training"]["history"][0]
    assert saved["ease"]["lambda"] == chosen["ease"]["lambda"]
    assert saved["training"]["train_pairs"] == len(refit.pairs("train"))
    # The test queries' histories run through T + h: users' training titles grew.
    grown = refit.users.set_index("user_id")["n_train"].reindex(selection.users["user_id"])
    assert (grown.to_numpy() >= selection.users["n_train"].to_numpy()).all()
    assert (grown.to_numpy() > selection.users["n_train"].to_numpy()).any()


def test_the_headline_is_in_the_models_metrics_and_report(walked):
    metrics = json.loads((walked["model"] / "metrics.json").read_text())
    wf = metrics["walk_forward"]
    assert wf["data"]["same_data"] is True
    d = wf["ranking"]["differences"]["ranked - EASE"]["ndcg@10"]
    e2e = wf["ranking"]["end_to_end"]
    assert np.isfinite(d["difference"]) and d["ci"][0] <= d["difference"] <= d["ci"][1]
    assert e2e["ranked"]["ndcg@10"] == pytest.approx(
        d["difference"] + wf["retrieval"]["curves"]["EASE"]["ndcg@10"], abs=1e-9)
    # The headline judges what the model serves (the tiny model's own decision).
    served = wf["ranking"]["served"]
    assert served == artifact.ORDER_KEYS[json.loads(
        (walked["model"] / "config.json").read_text())["serving"]["order"]]
    text = walk_forward.format_summary(walked["walked"])
    label = served.replace("_", " ")
    assert "fitted on and queried with the same entries" in text
    assert f"{label} - EASE (refit)" in text and f"{label} - iALS (refit)" in text
    # iALS refit on the walk-forward entries with the selection run's settings.
    assert wf["retrieval"]["ials"]["settings"] == metrics["retrieval"]["ials"]["settings"]
    report = (walked["work"] / "model" / "report" / "report.md").read_text()
    assert "Every compared method is fitted on, and queried with, the same entries." in report
    # The selection report carries the headline: the served order against every baseline
    # and every other order of the same candidates.
    selection_report = (walked["model"] / "report" / "report.md").read_text()
    verdicts = evaluate.baseline_verdicts(wf["ranking"]["differences"], served)
    rivals = [*evaluate.BASELINES, *(label for key, label in
                                     [*evaluate.REORDERERS.items(), ("ranked", "ranker's order")]
                                     if key != served)]
    assert len(verdicts) == len(rivals)
    assert all(name in line for name, line in zip(rivals, verdicts))
    assert all(line in selection_report for line in verdicts)


def test_the_score_head_is_refit_and_compared_on_the_same_scores(walked):
    """The walk-forward test refits the score head on the scores before T + h with the
    selection run's epochs and lambda, and reports it beside the score baselines fitted
    on the same scores, on the same test entries, with its per-user CI."""
    wf = json.loads((walked["model"] / "metrics.json").read_text())["walk_forward"]
    chosen = json.loads((walked["model"] / "metrics.json").read_text())["scores"]["training"]
    assert (walked["work"] / "model" / "scorer").exists()
    scores = wf["scores"]
    head = evaluate.HEAD
    assert head in scores["predictors"] and scores["best_baseline"] in scores["predictors"]
    d = scores["differences"][f"{head} - {scores['best_baseline']}"]["per_user"]
    assert d["ci"][0] <= d["difference"] <= d["ci"][1] and d["users"] > 10
    refit = FeatureTables.load(walked["work"] / "features")
    assert scores["entries"] == int((refit.interactions["split"].eq("test")
                                     & refit.interactions["is_label"]).sum())
    assert f"{head} - {scores['best_baseline']} (refit), squared error per user" in \
        walk_forward.format_summary(walked["walked"])
    refit_run = json.loads((walked["work"] / "model" / "metrics.json").read_text())["scores"]["refit"]
    assert refit_run["refit"] is True and refit_run["epochs"] == chosen["best_epoch"]
    assert refit_run["train_entries"] == int((refit.interactions["split"].eq("train")
                                              & refit.interactions["is_label"]).sum())


def test_walk_forward_tables_are_refused_as_the_selection_tables(walked):
    with pytest.raises(InputError, match="walk-forward tables already"):
        walk_forward.run(None, walked["work"] / "features", walked["work"] / "model",
                         walked["work"] / "again", progress=False)


@pytest.fixture(scope="module")
def released(walked, tiny_db, tiny_features):
    """The served model after ``release`` (the walk-forward run's model directory)."""
    summary = walk_forward.release(tiny_db, tiny_features, walked["model"], walked["work"],
                                   progress=False)
    return {**walked, "summary": summary}


def test_the_released_model_learned_from_every_entry_and_knows_todays_users(released,
                                                                           tiny_db,
                                                                           tiny_features):
    from pipelines import retrain, store
    from serving import Recommender

    model, work = released["model"], released["work"]
    config = json.loads((model / "config.json").read_text())
    conn = store.connect(tiny_db, readonly=True)
    try:
        newest = store.newest_entry_time(conn, ("updated_at", "completed_at", "created_at"))
        entries = store.read_entries(conn)
    finally:
        conn.close()
    assert config["trained_through"] == pd.Timestamp(newest, unit="s", tz="UTC").isoformat()
    # The blend is refit on the release ranker's lists (the newest period), not copied.
    chosen = json.loads((work / "selection" / "config.json").read_text())
    assert config["blend"] == released["summary"]["ranking"]["blend"] != chosen["blend"]
    assert config["serving"] == chosen["serving"]
    selection = FeatureTables.load(tiny_features)
    final = FeatureTables.load(work / "final" / "features")
    assert final.pairs("validation").empty and final.pairs("test").empty
    # Every user with an entry of a listed title is served, also those whose first entry
    # came after the selection cutoff; each knows their newest titles.
    served = Recommender.from_pretrained(str(model))
    assert set(final.users["user_id"]) > set(selection.users["user_id"])
    newcomer = sorted(set(final.users["user_id"]) - set(selection.users["user_id"]))[0]
    assert served.known([newcomer]).all()
    top = served.recommend([newcomer], k=10)
    theirs = set(entries.loc[entries["user_id"] == newcomer, "media_id"])
    assert len(top) == 10 and not set(top["anime_id"]) & theirs   # their whole list is seen
    # The ranker learned from the newest period's lists, over the walk-forward stage one.
    metrics = json.loads((model / "metrics.json").read_text())
    end = selection.schema["split"]["periods"]["test"][1]
    assert metrics["release"]["ranking"]["fitted_on"] == f"entries before {end}"
    assert metrics["release"]["scores"]["refit"] is True
    assert metrics["walk_forward"]["data"]["same_data"] is True   # the recipe's numbers kept
    assert (model / "ranker").exists() and (model / "scorer").exists()
    assert served.scorer is not None and served.serving == config["serving"]
    # The model it replaced is kept; the daily loop's retrain moves the selection cutoff.
    kept = json.loads((work / "selection" / "config.json").read_text())
    assert kept["data_fingerprint"] == selection.schema["fingerprint"]
    moved = retrain.feature_config(config, newest + 3 * 86_400)
    assert moved.final is False and moved.fold_validation is False
    assert pd.Timestamp(moved.as_of) > pd.Timestamp(selection.schema["split"]["as_of"], unit="s")
    assert "newest at" in (model / "report" / "report.md").read_text()


def test_a_warm_start_copies_each_known_ids_row_and_every_other_weight(walked, tiny_scored):
    import tensorflow as tf

    from pipelines import artifact, train_retrieval
    from pipelines.config import RetrievalConfig
    from towers.model import TwoTowerModel

    model_dir = tiny_scored[0]   # the selection model (walked["model"] may be released by now)
    tables = FeatureTables.load(walked["work"] / "features")
    config = RetrievalConfig.from_dict(artifact.read_json(model_dir, "config.json")["retrieval"])
    old_vocab = artifact.read_json(model_dir, "config.json")["feature_schema"]["vocab"]
    towers = [artifact.load_saved_model(model_dir / t) for t in ("query_tower", "candidate_tower")]
    old = {v.name: v.numpy() for t in towers for v in t.signatures["serving_default"].variables}
    model = TwoTowerModel(tables.schema, config)
    info = train_retrieval.warm_start(model, tables, model_dir)
    new = {v.name: v.numpy() for v in model.variables}
    newcomers = 0
    for vocab in ("user_id", "media_id"):
        name = next(n for n in new if n.endswith(f"{vocab}_embedding/embeddings:0"))
        new_ids, old_ids = tables.schema["vocab"][vocab], old_vocab[vocab]
        for uid in (old_ids[0], old_ids[-1]):   # the same id's row, wherever it moved
            np.testing.assert_array_equal(new[name][1 + new_ids.index(uid)],
                                          old[name][1 + old_ids.index(uid)])
        np.testing.assert_array_equal(new[name][0], old[name][0])   # out of vocabulary
        fresh = [u for u in new_ids if u not in set(old_ids)]
        for uid in fresh[:3]:   # ids new since the earlier model: fresh rows, not copies
            row = new[name][1 + new_ids.index(uid)]
            assert not any(np.array_equal(row, r) for r in old[name])
        assert info["ids"][vocab] == [len(new_ids) - len(fresh), len(fresh)]
        newcomers += len(fresh)
    assert newcomers > 0
    np.testing.assert_array_equal(new["query_tower/hidden_0/kernel:0"],
                                  old["query_tower/hidden_0/kernel:0"])
    assert info["weights"] == len(model.variables) - 2   # all but the two id tables
    tf.keras.backend.clear_session()
