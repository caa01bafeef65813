"""towers.features and towers.model on a hand-made schema: what each feature kind encodes
to (by hand), the raw formats, L2-normalised tower outputs, and a two-tower loss that
falls on a planted problem."""

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
