"""ranking.model.Ranker: the factorised serving halves (``project_anime`` once per
catalog title, ``score_projected`` per request) compute the same scores as ``call``."""

import numpy as np
import pytest
import tensorflow as tf

from pipelines.config import SIGNALS, RankingConfig
from ranking.model import Ranker

CROSS_INPUTS = ("genre_share", "genre_affinity", "format_share", "format_affinity")


def _random_raw(specs, schema, rows, rng, width=3):
    """Random raw features of ``specs`` with leading shape ``rows``: known and unknown
    ids and values, missing values and padding, as the towers take them."""
    out = {}
    for spec in specs:
        name, kind = spec["name"], spec["kind"]
        vocab = schema["vocab"].get(spec["vocab"]) if spec["vocab"] else None
        if kind == "id":
            out[name] = rng.choice(np.array([*vocab, -1], np.int64), size=rows)
        elif kind == "categorical":
            out[name] = rng.choice(np.array([*vocab, "", "unknown"], object), size=rows)
        elif kind == "multi":
            out[name] = rng.choice(np.array([*vocab[:4], "", "", "unknown"], object),
                                   size=(*rows, width))
        elif kind == "numeric":
            values = rng.normal(1.0, 2.0, size=rows).astype(np.float32)
            out[name] = np.where(rng.random(rows) < 0.2, np.nan, values).astype(np.float32)
        else:
            out[name] = rng.random((*rows, len(vocab))).astype(np.float32)
    return out


def test_an_untrained_residual_ranker_is_retrieval_order(small_schema):
    """Score = retrieval_weight x similarity + ease_weight x ease + a correction, with
    ease_weight and the correction's output layer starting at zero: before training,
    every list comes back in retrieval order, with the retrieval logit as its score,
    whatever the other signals say; a ranker without the residual does not."""
    rng = np.random.default_rng(1)
    batch, size = 4, 9
    orders = {}
    for residual in (True, False):
        tf.keras.utils.set_random_seed(0)
        ranker = Ranker(small_schema, RankingConfig(residual=residual, hidden=(16, 8)))
        user = _random_raw(ranker.user_encoder.specs, small_schema, (batch,),
                           np.random.default_rng(2))
        items = _random_raw(ranker.anime_encoder.specs, small_schema, (batch, size),
                            np.random.default_rng(3))
        signals = {name: rng.normal(size=(batch, size)).astype(np.float32) for name in SIGNALS}
        similarity = signals["similarity"]
        features = {k: tf.constant(v) for k, v in {**user, **items, **signals}.items()}
        scores = ranker(features).numpy()
        if residual:
            np.testing.assert_array_equal(scores, 20.0 * similarity)
            assert float(ranker.retrieval_weight.numpy()) == 20.0
        orders[residual] = (np.argsort(-scores, 1), np.argsort(-similarity, 1))
    assert np.array_equal(*orders[True])
    assert not np.array_equal(*orders[False])
    with pytest.raises(Exception, match="needs\n?.*'similarity' in `signals`"):
        RankingConfig(signals=("ease",))
    with pytest.raises(Exception, match="`signals` must be distinct names"):
        RankingConfig(signals=("similarity", "popularity"))


@pytest.mark.parametrize("signals, crosses, use_ids", [
    (SIGNALS, True, False), ((), True, False), (("similarity",), False, False),
    (("ease", "ease_rank"), False, True)],
    ids=["signals+crosses", "crosses", "similarity", "ids-only-blocks+ease"])
def test_serving_halves_equal_the_plain_call(small_schema, signals, crosses, use_ids):
    schema = small_schema
    if not crosses:  # without the user taste vectors the ranker has no crosses
        schema = {**schema, "features": [f for f in schema["features"]
                                         if f["name"] not in CROSS_INPUTS]}
    config = RankingConfig(signals=signals, residual="similarity" in signals,
                           use_ids=use_ids, hidden=(16, 8), id_dim=4, category_dim=3)
    tf.keras.utils.set_random_seed(0)
    ranker = Ranker(schema, config)
    assert (len(ranker._crosses) > 0) == crosses

    rng = np.random.default_rng(0)
    batch, size, catalog = 3, 5, 7
    user = _random_raw(ranker.user_encoder.specs, schema, (batch,), rng)
    titles = _random_raw(ranker.anime_encoder.specs, schema, (catalog,), rng)
    rows = rng.integers(0, catalog, size=(batch, size))             # each list's titles
    values = {name: rng.normal(size=(batch, size)).astype(np.float32) for name in signals}
    lists = {k: v[rows] for k, v in titles.items()}                 # [batch, size, ...]
    tensors = lambda raw: {k: tf.constant(v) for k, v in raw.items()}  # noqa: E731

    features = tensors({**user, **lists, **values})
    ranker(features)  # builds the layers
    # Random weights everywhere (biases too), so every block of the first layer counts.
    for weight in ranker.trainable_weights:
        weight.assign(rng.normal(0.0, 0.3, weight.shape).astype(np.float32))

    expected = ranker(features).numpy()
    projected = ranker.project_anime(tensors(titles))                # [catalog, d]
    got = ranker.score_projected(tensors({**user, **values}),
                                 tf.gather(projected, rows)).numpy()
    assert got.shape == expected.shape == (batch, size)
    assert np.abs(expected).max() > 0.1   # not a trivially zero comparison
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # And the unfactorised halves, from the same encodings.
    encoded = tf.gather(ranker.encode_anime(tensors(titles)), rows)
    np.testing.assert_allclose(ranker.score_encoded(features, encoded).numpy(), expected,
                               rtol=1e-5, atol=1e-5)
