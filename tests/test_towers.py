"""towers.features and towers.model on a hand-made schema: what each feature kind encodes
to (by hand), the raw formats, L2-normalised tower outputs, and a two-tower loss that
falls on a planted problem."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from pipelines.config import RetrievalConfig
from pipelines.errors import InputError
from towers.features import FeatureEncoder, input_signature, raw_features
from towers.model import Tower, TwoTowerModel


def _spec(entity, kind, name, vocab=None, transform="none"):
    return {"entity": entity, "kind": kind, "name": name, "vocab": vocab, "transform": transform}


# The anime have one feature of each kind; the users an id and a numeric feature. Shaped
# like a real schema.json (pipelines/features.py writes it), with only what encoders read.
SCHEMA = {
    "features": [
        _spec("user", "id", "user_id", "user_id"),
        _spec("user", "numeric", "mean_score"),
        _spec("anime", "id", "media_id", "media_id"),
        _spec("anime", "categorical", "format", "format"),
        _spec("anime", "multi", "genres", "genres"),
        _spec("anime", "numeric", "episodes", transform="log1p"),
        _spec("anime", "vector", "mood", "moods"),
    ],
    "vocab": {
        "user_id": [1, 2, 3, 4, 5, 6, 7, 8],
        "media_id": [10, 20, 30, 40, 50, 60, 70, 80],
        "format": ["TV"],                          # one value: anything else is OOV
        "genres": ["Action", "Comedy", "Drama"],
        "moods": ["calm", "tense"],
    },
    "stats": {
        "user": {"mean_score": {"mean": 70.0, "std": 10.0, "missing": 0.0}},
        "anime": {"episodes": {"mean": 1.0, "std": 0.5, "missing": 0.5},
                  "mood": {"mean": 0.2, "std": 0.4, "missing": 0.0}},
    },
}
ID_DIM, CATEGORY_DIM = 4, 3
WIDTH = ID_DIM + CATEGORY_DIM + CATEGORY_DIM + 1 + 2   # id, format, genres, episodes, mood
# Column blocks of the anime encoding, in the schema's feature order.
ID, FORMAT, GENRES, EPISODES, MOOD = (slice(0, 4), slice(4, 7), slice(7, 10), 10, slice(11, 13))

E2 = math.exp(2.0) - 1.0   # log1p -> 2 -> (2 - 1) / 0.5 = 2
ANIME = {
    "media_id": np.array([10, 20, 99, 30], np.int64),                 # 99: unknown id
    "format": np.array(["TV", "", "MOVIE", "TV"], object),            # "" missing, MOVIE unknown
    "genres": np.array([["Action", "Drama", ""], ["", "", ""],
                        ["Zombie", "", ""], ["Comedy", "", ""]], object),  # Zombie unknown
    "episodes": np.array([E2, np.nan, -5.0, math.e - 1.0], np.float32),
    "mood": np.array([[0.6, 0.2], [np.nan, -0.2], [0.2, 0.2], [1.0, 0.0]], np.float32),
}


def _encoder(entity="anime", use="all"):
    return FeatureEncoder(SCHEMA, entity, use, id_dim=ID_DIM, category_dim=CATEGORY_DIM)


def _table(encoder, name):
    """The embedding table of feature ``name``: ``[rows, dim]``."""
    [weights] = [w for w in encoder.weights if f"{name}_embedding" in w.name]
    return weights.numpy()


def _encode(encoder, raw):
    return encoder({k: tf.constant(v) for k, v in raw.items()}).numpy()


def test_output_width_is_the_sum_of_the_parts():
    got = _encode(_encoder(), ANIME)
    assert got.shape == (4, WIDTH)
    assert _encode(_encoder("user"), {"user_id": np.array([1, 2]),
                                      "mean_score": np.array([70.0, 80.0], np.float32)}
                   ).shape == (2, ID_DIM + 1)
    assert _encoder(use="ids").specs == [SCHEMA["features"][2]]
    assert [s["name"] for s in _encoder(use="side").specs] == ["format", "genres", "episodes", "mood"]


def test_numeric_and_vector_features_by_hand():
    got = _encode(_encoder(), ANIME)
    # episodes: log1p, then (x - 1) / 0.5. e^2 - 1 -> 2 -> 2; NaN -> 0 (the training
    # mean); negative -> log1p(0) = 0 -> (0 - 1) / 0.5 = -2; e - 1 -> 1 -> 0.
    np.testing.assert_allclose(got[:, EPISODES], [2.0, 0.0, -2.0, 0.0], atol=1e-6)
    # mood: (x - 0.2) / 0.4 elementwise, NaN -> 0.
    np.testing.assert_allclose(got[:, MOOD], [[1.0, 0.0], [0.0, -1.0], [0.0, 0.0], [2.0, -0.5]],
                               atol=1e-6)
    # A std of 0 in the stats standardises by 1 instead of dividing by zero.
    flat = {**SCHEMA, "stats": {"user": {"mean_score": {"mean": 70.0, "std": 0.0}}}}
    user = FeatureEncoder(flat, "user", "side")
    np.testing.assert_allclose(_encode(user, {"mean_score": np.array([72.0], np.float32)}), [[2.0]])


def test_unknown_ids_and_categories_share_the_out_of_vocabulary_row():
    encoder = _encoder()
    got = _encode(encoder, ANIME)
    ids, formats = _table(encoder, "media_id"), _table(encoder, "format")
    assert ids.shape == (8 + 1, ID_DIM) and formats.shape == (1 + 2, CATEGORY_DIM)
    # IntegerLookup: 0 = OOV, then the vocabulary in order (10 -> 1, 20 -> 2, 30 -> 3).
    np.testing.assert_allclose(got[:, ID], ids[[1, 2, 0, 3]])
    # StringLookup without a mask: 0 = OOV, "TV" -> 1. Missing ("") and unknown ("MOVIE")
    # are both OOV: one learned "other" row.
    np.testing.assert_allclose(got[:, FORMAT], formats[[1, 0, 0, 1]])


def test_multi_valued_features_mean_pool_without_the_padding():
    encoder = _encoder()
    got = _encode(encoder, ANIME)
    genres = _table(encoder, "genres")
    # With "" as the mask token: 0 = padding, 1 = OOV, Action 2, Comedy 3, Drama 4.
    assert genres.shape == (3 + 2, CATEGORY_DIM)
    np.testing.assert_allclose(got[0, GENRES], (genres[2] + genres[4]) / 2, rtol=1e-6)
    np.testing.assert_allclose(got[1, GENRES], 0.0)              # nothing but padding
    np.testing.assert_allclose(got[2, GENRES], genres[1])        # an unknown genre counts, as OOV
    np.testing.assert_allclose(got[3, GENRES], genres[3])
    # More padding changes nothing.
    wider = {**ANIME, "genres": np.concatenate([ANIME["genres"], np.full((4, 2), "", object)], 1)}
    np.testing.assert_allclose(_encode(encoder, wider), got)


def test_raw_features_and_input_signature_shapes():
    table = pd.DataFrame({
        "media_id": [10, 20, 30],
        "format": ["TV", None, "OVA"],
        "genres": [["Action", "Drama", "Comedy"], [], ["Drama"]],
        "episodes": [12, None, "n/a"],
        "mood": [np.array([0.1, 0.2]), np.array([0.3, 0.4]), np.array([0.5, 0.6])],
    })
    specs = _encoder().specs
    raw = raw_features(table, specs, {"genres": 2})
    assert raw["media_id"].dtype == np.int64 and raw["media_id"].shape == (3,)
    assert raw["format"].tolist() == ["TV", "", "OVA"]
    assert raw["genres"].tolist() == [["Action", "Drama"], ["", ""], ["Drama", ""]]  # cut to 2
    assert raw["episodes"].dtype == np.float32
    np.testing.assert_array_equal(raw["episodes"], [12.0, np.nan, np.nan])
    assert raw["mood"].shape == (3, 2) and raw["mood"].dtype == np.float32
    with pytest.raises(InputError, match="no column 'media_id'"):
        raw_features(table.drop(columns="media_id"), specs, {"genres": 2})

    sig = input_signature(specs, SCHEMA, {"genres": 2})
    assert {k: (s.shape.as_list(), s.dtype) for k, s in sig.items()} == {
        "media_id": ([None], tf.int64), "format": ([None], tf.string),
        "genres": ([None, 2], tf.string), "episodes": ([None], tf.float32),
        "mood": ([None, 2], tf.float32)}
    # The raw arrays are what the signature takes and the encoder encodes.
    assert _encode(_encoder(), raw).shape == (3, WIDTH)


CONFIG = RetrievalConfig(id_dim=ID_DIM, category_dim=CATEGORY_DIM, hidden=(16,), embedding_dim=8,
                         temperature=0.1, seed=0)


def test_tower_rows_are_l2_normalised():
    tf.keras.utils.set_random_seed(0)
    tower = Tower(SCHEMA, "anime", CONFIG)
    got = tower({k: tf.constant(v) for k, v in ANIME.items()}).numpy()
    assert got.shape == (4, CONFIG.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_two_tower_loss_is_finite_and_falls_on_a_planted_problem():
    # Eight users, eight titles; user i watched title i. One batch of the eight pairs:
    # each title is the other users' in-batch negative, so the loss can only fall by
    # pulling each user to their own title.
    tf.keras.utils.set_random_seed(0)
    model = TwoTowerModel(SCHEMA, CONFIG)
    rng = np.random.default_rng(0)
    batch = {
        "user_id": tf.constant(SCHEMA["vocab"]["user_id"], tf.int64),
        "mean_score": tf.constant(rng.normal(70, 10, 8), tf.float32),
        "media_id": tf.constant(SCHEMA["vocab"]["media_id"], tf.int64),
        "format": tf.constant(["TV", ""] * 4),
        "genres": tf.constant([["Action", ""], ["Comedy", "Drama"]] * 4),
        "episodes": tf.constant(rng.uniform(1, 50, 8), tf.float32),
        "mood": tf.constant(rng.random((8, 2)), tf.float32),
        "sampling_probability": tf.constant(np.full(8, 1 / 8), tf.float32),
    }
    optimizer = tf.keras.optimizers.Adam(0.005)
    values = []
    for _ in range(50):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        values.append(float(loss))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    assert np.isfinite(values).all()
    assert values[-1] < 0.25 * values[0], values   # seeded: about 26 -> 0.9
    # And each user's own title is now their best match.
    query = model.query_tower({k: batch[k] for k in model.user_keys})
    candidate = model.candidate_tower({k: batch[k] for k in model.anime_keys})
    assert np.argmax(query.numpy() @ candidate.numpy().T, axis=1).tolist() == list(range(8))


# The users of SCHEMA with a history of at most 3 titles, embedded with the titles' ids.
HISTORY_SCHEMA = {**SCHEMA, "features": [
    *SCHEMA["features"], _spec("user", "history", "history", "media_id") | {"length": 3}]}


def _history_batch(ids, weights):
    return {"user_id": tf.constant([1] * len(ids), tf.int64),
            "mean_score": tf.constant([70.0] * len(ids)),
            "history": tf.constant(ids, tf.int64),
            "history_weight": tf.constant(weights, tf.float32)}


def test_history_is_the_masked_weighted_mean_of_the_title_embeddings():
    titles = _encoder()   # the candidate side: its media_id table is the history's
    user = FeatureEncoder(HISTORY_SCHEMA, "user", id_dim=ID_DIM,
                          titles=titles.id_layers("media_id"))
    assert user.raw_names == ["user_id", "mean_score", "history", "history_weight"]
    got = user(_history_batch(
        [[10, 30, -1],       # two titles and padding
         [20, -1, -1],       # one title
         [99, 20, -1],       # 99 is no title of the vocabulary: masked like padding
         [-1, -1, -1]],      # no history: the zero vector
        [[1.5, 0.5, 0.0], [0.7, 0.0, 0.0], [2.0, 0.7, 0.0], [0.0, 0.0, 0.0]])).numpy()
    table = _table(titles, "media_id")   # IntegerLookup: 10 -> 1, 20 -> 2, 30 -> 3
    history = slice(ID_DIM + 1, None)
    np.testing.assert_allclose(got[0, history], (1.5 * table[1] + 0.5 * table[3]) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(got[1, history], table[2], rtol=1e-6)
    np.testing.assert_allclose(got[2, history], table[2], rtol=1e-6)
    np.testing.assert_allclose(got[3, history], 0.0)
    # One table, not a copy: the user encoder trains the candidate tower's title ids.
    [shared] = [w for w in user.weights if "media_id_embedding" in w.name]
    assert shared is [w for w in titles.weights if "media_id_embedding" in w.name][0]


def test_history_padding_of_any_length_changes_nothing():
    tf.keras.utils.set_random_seed(0)
    model = TwoTowerModel(HISTORY_SCHEMA, CONFIG)
    one = model.query_tower(_history_batch([[20, -1, -1]], [[1.3, 0.0, 0.0]])).numpy()
    for width in (1, 7, 50):  # the same history, padded to any width (a wider signature)
        ids = [[20] + [-1] * (width - 1)]
        weights = [[1.3] + [0.0] * (width - 1)]
        np.testing.assert_allclose(model.query_tower(_history_batch(ids, weights)).numpy(), one,
                                   rtol=1e-6)
    # Padding with a real title id is still padding when its weight is 0.
    np.testing.assert_allclose(
        model.query_tower(_history_batch([[20, 30, 10]], [[1.3, 0.0, 0.0]])).numpy(), one, rtol=1e-6)
    # Only the weights' ratios matter (the mean divides by their sum).
    np.testing.assert_allclose(
        model.query_tower(_history_batch([[20, 30, -1]], [[1.0, 2.0, 0.0]])).numpy(),
        model.query_tower(_history_batch([[20, 30, -1]], [[0.5, 1.0, 0.0]])).numpy(), rtol=1e-5)
    # And the history does move the user.
    other = model.query_tower(_history_batch([[30, -1, -1]], [[1.3, 0.0, 0.0]])).numpy()
    assert not np.allclose(other, one)


def test_without_history_the_query_tower_ignores_it():
    tf.keras.utils.set_random_seed(0)
    model = TwoTowerModel(HISTORY_SCHEMA, dataclasses.replace(CONFIG, history=False))
    assert model.user_keys == ["user_id", "mean_score"]
    ids_only = TwoTowerModel(HISTORY_SCHEMA, dataclasses.replace(CONFIG, features="ids"))
    assert ids_only.user_keys == ["user_id"]
    a = model.query_tower(_history_batch([[20, -1, -1]], [[1.3, 0.0, 0.0]])).numpy()
    b = model.query_tower(_history_batch([[30, 10, -1]], [[1.0, 1.0, 0.0]])).numpy()
    np.testing.assert_allclose(a, b)


def test_history_raw_features_pad_and_cut_to_the_length():
    users = pd.DataFrame({"history": [np.array([10, 20]), np.array([], np.int64),
                                      np.array([30, 10, 20, 40])],
                          "history_weight": [np.array([1.5, 1.0], np.float32),
                                             np.array([], np.float32),
                                             np.array([2.0, 1.5, 1.0, 0.5], np.float32)]})
    specs = [s for s in HISTORY_SCHEMA["features"] if s["kind"] == "history"]
    raw = raw_features(users, specs, {})
    np.testing.assert_array_equal(raw["history"], [[10, 20, -1], [-1, -1, -1], [30, 10, 20]])
    np.testing.assert_array_equal(raw["history_weight"],
                                  np.array([[1.5, 1.0, 0], [0, 0, 0], [2.0, 1.5, 1.0]], np.float32))
    sig = input_signature(specs, HISTORY_SCHEMA, {})
    assert {k: (s.shape.as_list(), s.dtype) for k, s in sig.items()} == {
        "history": ([None, 3], tf.int64), "history_weight": ([None, 3], tf.float32)}



def test_cold_start_dropout_shows_a_share_of_titles_as_new_ones():
    """``as_new_titles``: about ``rate`` of the rows get an id outside every vocabulary and
    the counted statistics of a title no one has listed; the other rows and the other
    features are untouched."""
    from pipelines.config import COUNTED_TITLE_FEATURES
    from towers.model import as_new_titles

    tf.random.set_seed(0)
    n = 20_000
    titles = {"media_id": tf.range(1, n + 1, dtype=tf.int64),
              "popularity": tf.fill([n], 50.0), "average_score": tf.fill([n], 70.0),
              "recent_30d": tf.fill([n], 3.0), "episodes": tf.fill([n], 12.0)}
    out = {k: v.numpy() for k, v in as_new_titles(titles, 0.25).items()}
    new = out["media_id"] == -1
    assert abs(new.mean() - 0.25) < 0.01
    np.testing.assert_array_equal(out["media_id"][~new], np.arange(1, n + 1)[~new])
    for name in ("popularity", "recent_30d"):
        assert COUNTED_TITLE_FEATURES[name] == 0 and (out[name][new] == 0).all()
        assert (out[name][~new] == titles[name].numpy()[0]).all()
    assert np.isnan(out["average_score"][new]).all() and (out["average_score"][~new] == 70).all()
    assert (out["episodes"] == 12).all()   # metadata stays: it is what places a new title


def test_cold_start_dropout_must_be_a_share():
    for rate in (-0.1, 1.0):
        with pytest.raises(InputError, match="cold_start_dropout"):
            RetrievalConfig(cold_start_dropout=rate)
