"""Titles first listed after training: the candidate tower places them from their
metadata (``RetrievalConfig.cold_start_dropout``), the evaluation measures them apart
(``protocol.new_title_slice``), and serving adds them to the catalog without retraining
(``Recommender.with_titles``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import features, protocol, store
from pipelines.artifact import RetrievalArtifact
from pipelines.errors import InputError
from pipelines.tables import FeatureTables
from serving import Filters, Recommender


@pytest.fixture(scope="module")
def rec(tiny_scored):
    return Recommender.from_pretrained(str(tiny_scored[0]))


@pytest.fixture(scope="module")
def world(tiny_db):
    conn = store.connect(tiny_db, readonly=True)
    try:
        return store.read_media(conn), store.read_relations(conn)
    finally:
        conn.close()


def test_cold_start_dropout_is_what_brings_new_titles_to_the_candidates(
        tiny_features, tiny_history_model):
    """On the tiny world's test period, ranking known and new titles together: the
    default two-tower (cold-start dropout 0.25) puts a new title of theirs among the
    top 100 for most users with one, and finds more of all their titles (Recall@100,
    paired CI above zero) than the same model trained without it, whose new titles meet
    an untrained id row and reach no one's top 100."""
    from pipelines import train_retrieval
    from pipelines.config import RetrievalConfig

    tables = FeatureTables.load(tiny_features)
    config = RetrievalConfig(max_epochs=10, batch_size=256)
    assert RetrievalArtifact(tiny_history_model[0]).config["retrieval"] == config.to_dict()
    assert config.cold_start_dropout == 0.25
    model = RetrievalArtifact(tiny_history_model[0]).for_tables(tables)
    got = protocol.new_title_slice(model.queries, model.candidate_embeddings,
                                   model.embed_titles(tables.new_anime), tables, "test")
    off, _ = train_retrieval.train(tables, RetrievalConfig(max_epochs=10, batch_size=256,
                                                           cold_start_dropout=0.0), progress=False)
    base = protocol.new_title_slice(
        *(train_retrieval.embed(t, raw) for t, raw in (
            (off.query_tower, tables.user_raw), (off.candidate_tower, tables.anime_raw),
            (off.candidate_tower, tables.new_anime_raw))), tables, "test")
    assert got["titles"] >= 5 and got["users"] >= 50
    assert got["catalog"]["new_hit@100"] > 0.5 > base["catalog"]["new_hit@100"]
    assert 0 < got["catalog"]["new_share"] < 0.25
    gain = protocol.paired_bootstrap(got["catalog_per_user"]["recall@100"],
                                     base["catalog_per_user"]["recall@100"])
    assert gain["ci"][0] > 0, gain


def test_with_titles_adds_the_stores_new_titles_as_the_feature_stage_would(rec, world):
    media, _ = world
    fresh = rec.with_titles(media)
    new = np.setdiff1d(media["media_id"], rec.anime["media_id"])
    assert len(new) >= 10
    np.testing.assert_array_equal(fresh.new_titles, new)
    assert len(rec.anime) + len(new) == len(fresh.anime) == len(fresh.index.ids)
    assert len(rec.new_titles) == 0 and len(rec.index.ids) == len(rec.anime)   # unchanged
    # The known titles keep their rows and embeddings; the new ones come after them, as
    # the feature stage builds a title no one has listed, placed by the candidate tower.
    n = len(rec.anime)
    np.testing.assert_array_equal(fresh.index.embeddings[:n], rec.index.embeddings)
    rows = features.new_title_rows(media[media["media_id"].isin(new)],
                                   features.FeatureConfig.from_dict(rec.schema["config"]))
    np.testing.assert_array_equal(fresh.anime["media_id"].to_numpy()[n:], rows["media_id"])
    assert (fresh.anime["train_count"].to_numpy()[n:] == 0).all()
    np.testing.assert_allclose(fresh.index.embeddings[n:], rec.retrieval.embed_titles(rows),
                               atol=1e-6)
    # Placed by their metadata: new titles of different genres land apart.
    assert len(np.unique(np.round(fresh.index.embeddings[n:], 4), axis=0)) > len(new) // 2
    # Adding them again adds nothing.
    again = fresh.with_titles(media)
    assert len(again.anime) == len(fresh.anime)


def test_new_titles_are_served_and_scored(rec, world):
    media, _ = world
    fresh = rec.with_titles(media)
    users = rec.users["user_id"].to_numpy()[:100]
    before = rec.recommend(users, k=100)
    after = fresh.recommend(users, k=100)
    assert not before["anime_id"].isin(fresh.new_titles).any()
    shown = after[after["anime_id"].isin(fresh.new_titles)]
    assert len(shown) > 0
    assert shown["predicted_score"].between(1, 100).all()
    # The fallback orders by training watches: a new title has none, so it comes last.
    popular = fresh.popular([1], k=len(fresh.anime), filters=Filters(exclude_adult=False))
    assert popular["anime_id"].tail(len(fresh.new_titles)).isin(fresh.new_titles).all()
    assert set(fresh.similar_anime(int(fresh.new_titles[0]), k=5)["anime_id"]).isdisjoint(
        {int(fresh.new_titles[0])})


def test_the_stores_relations_make_a_new_sequel_part_of_its_franchise(rec, world):
    media, relations = world
    if "related_ids" not in rec.anime:
        pytest.skip("the tiny world's model has no relations")
    fresh = rec.with_titles(media, relations)
    new = set(fresh.new_titles.tolist())
    known = set(rec.anime["media_id"].tolist())
    linked = relations[relations["media_id"].isin(new) & relations["related_id"].isin(known)]
    assert len(linked) > 0
    title, other = (int(x) for x in linked.iloc[0][["media_id", "related_id"]])
    row = fresh.anime.set_index("media_id").loc[title]
    assert other in list(row["related_ids"])
    # Without the store's relations a new title relates to nothing.
    bare = rec.with_titles(media).anime.set_index("media_id").loc[title]
    assert list(bare["related_ids"]) == []


@pytest.mark.parametrize("media, message", [
    ([1, 2], "must be a pandas DataFrame"),
    (pd.DataFrame({"media_id": [1]}), "lacks the columns"),
])
def test_bad_media_is_named(rec, media, message):
    with pytest.raises(InputError, match=message):
        rec.with_titles(media)


def test_repeated_or_missing_ids_are_named(rec, world):
    media, _ = world
    with pytest.raises(InputError, match="must be unique"):
        rec.with_titles(pd.concat([media.head(2), media.head(1)]))
    with pytest.raises(InputError, match="integer ids"):
        rec.with_titles(media.head(2).assign(media_id=[1.5, 2.5]))
