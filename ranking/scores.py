"""The score head: the POINT_100 score a user would give a title.

    predicted = mu + b_user + b_title + <f_user, f_title> + mlp([user, title, crosses])

``mu``, ``b_user`` and ``b_title`` (id embeddings of width 1, L2-regularised) start at
the ridge user + title biases fitted on the training scores (``pipelines.baselines``),
the strongest score baseline; the id factors ``f`` (matrix factorisation, L2) start with
a zero dot product (title factors at zero) and the interaction MLP's output layer at
zero: the untrained head *is* that baseline, and training has to earn every change. The MLP reads
the user and title features through the towers' :class:`FeatureEncoder` (side features
only: the ids' part is the biases and, optionally, the factors) and the taste x title
crosses the ranker uses (the user's genre/format share and affinity read at the title's
genres and format), so it can learn what additive biases cannot: a user's spread
(``std_score``) times a title's quality, tastes by genre.

Inputs (the raw features of ``towers/features.py``, one row per (user, title) pair):
every user feature and every title feature, each ``[batch]`` (``[batch, width]`` for
vectors, genres, tags). Output: ``[batch]`` scores (unclipped in training; :meth:`predict`
and the exported signature clip to [1, 100], the POINT_100 range).

A separate model, not a second head on the ranker's or the two-tower's encoders
(TFRS's multitask pattern shares them): the ranker learns from lists of the validation
period and the towers from who watched what, while this head needs every training score;
a shared encoder would be trained on one of those data sets for the other's task.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from pipelines.config import ScoreConfig
from towers.features import FeatureEncoder

LOW, HIGH = 1.0, 100.0   # the POINT_100 range predictions are clipped to


def _id_embedding(vocab, width: int, init: np.ndarray | None, l2: float, name: str):
    """``(lookup, embedding)``: ids -> rows ``[len(vocab) + 1, width]`` (row 0: ids not in
    the vocabulary), initialised to ``init`` (``[len(vocab), width]``; OOV row 0)."""
    lookup = tf.keras.layers.IntegerLookup(vocabulary=np.asarray(vocab, np.int64),
                                           name=f"{name}_lookup")
    if init is None:
        initializer = tf.keras.initializers.RandomNormal(stddev=0.01)
    else:
        table = np.concatenate([np.zeros((1, width)), np.asarray(init, np.float64).reshape(-1, width)])
        initializer = tf.keras.initializers.Constant(table.astype(np.float32))
    embedding = tf.keras.layers.Embedding(
        len(vocab) + 1, width, embeddings_initializer=initializer,
        embeddings_regularizer=tf.keras.regularizers.L2(l2) if l2 > 0 else None, name=name)
    return lookup, embedding


class ScoreModel(tfrs.Model):
    """Biases + interactions, trained with ``tfrs.tasks.Ranking`` (MSE, RMSE metric).

    Args:
      schema: the feature schema.
      config: a :class:`ScoreConfig`.
      biases: ``(mu, b_user [num users of the vocabulary], b_title [num titles])``, in
        the schema's vocabulary order: where the biases start.
      bias_l2: the L2 weight of the bias embeddings: the ridge ``lambda`` / the number of
        training scores, so that the mean squared error plus it is the ridge objective
        divided by that number (the starting biases are its minimum).
      factor_l2: likewise for the factors.
    """

    def __init__(self, schema: dict, config: ScoreConfig, biases: tuple, bias_l2: float = 0.0,
                 factor_l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        mu, b_user, b_title = biases
        self.mu = self.add_weight(name="mu", shape=(), trainable=True,
                                  initializer=tf.keras.initializers.Constant(float(mu)))
        user_vocab, title_vocab = schema["vocab"]["user_id"], schema["vocab"]["media_id"]
        self.user_bias = _id_embedding(user_vocab, 1, b_user, bias_l2, "user_bias")
        self.title_bias = _id_embedding(title_vocab, 1, b_title, bias_l2, "title_bias")
        # Per user, how far their scores stretch titles' biases (1 + scale): users with a
        # wide rating range move more with a title's quality. Starts at 0 (plain biases).
        self.user_scale = (_id_embedding(user_vocab, 1, np.zeros(len(user_vocab)), bias_l2,
                                         "user_scale") if config.user_scale else None)
        self.factors = None
        if config.factors:
            # User factors start small and random, title factors at zero: their dot
            # product starts at exactly 0 and both learn (Adam scales the small gradients).
            self.factors = (_id_embedding(user_vocab, config.factors, None, factor_l2, "user_factors"),
                            _id_embedding(title_vocab, config.factors,
                                          np.zeros((len(title_vocab), config.factors)),
                                          factor_l2, "title_factors"))
        # The history is the query tower's (ranking/model.py skips it likewise).
        self.user_encoder = FeatureEncoder(schema, "user", "side", history=False,
                                           category_dim=config.category_dim, name="user_features")
        self.anime_encoder = FeatureEncoder(schema, "anime", "side",
                                            category_dim=config.category_dim, name="anime_features")
        self.user_keys = [s["name"] for s in self.user_encoder.specs]
        self.anime_keys = [s["name"] for s in self.anime_encoder.specs]
        names = {s["name"] for s in schema["features"]}
        # Taste x title crosses, as the ranker's: the user's genre/format share and
        # affinity read at the title's genres (mean over them) and format.
        self._crosses = []
        for vector, title_feature in (("genre", "genres"), ("format", "format")):
            if {f"{vector}_share", f"{vector}_affinity", title_feature} <= names:
                vocab = [v for v in schema["vocab"]["genres" if vector == "genre" else "format"]
                         if v != ""]
                lookup = tf.keras.layers.StringLookup(vocabulary=vocab, output_mode="multi_hot",
                                                      num_oov_indices=1,
                                                      name=f"{title_feature}_multi_hot")
                self._crosses.append((vector, title_feature, lookup, len(vocab)))
        self.mlp = [tf.keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")
                    for i, units in enumerate(config.hidden)]
        self.dropout = tf.keras.layers.Dropout(config.dropout) if config.dropout else None
        self.interaction = tf.keras.layers.Dense(1, kernel_initializer="zeros", name="interaction")
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(),
                                       metrics=[tf.keras.metrics.RootMeanSquaredError()])

    def _bias(self, pair, ids) -> tf.Tensor:
        lookup, embedding = pair
        return embedding(lookup(ids))

    def encode_titles(self, features: dict) -> tf.Tensor:
        """Raw title features ``[n]`` (with ``media_id``) -> ``[n, d]``: the title's bias,
        factors, encoding and normalised genre/format indicators (for the crosses). It
        does not depend on the user, so serving computes it once per catalog."""
        ids = features["media_id"]
        parts = [self._bias(self.title_bias, ids)]
        if self.factors is not None:
            parts.append(self._bias(self.factors[1], ids))
        parts.append(self.anime_encoder({k: features[k] for k in self.anime_keys}))
        for _, title_feature, lookup, _ in self._crosses:
            values = tf.reshape(features[title_feature], [tf.shape(ids)[0], -1])
            hot = lookup(values)[:, 1:]                                    # drop the OOV slot
            parts.append(hot / tf.maximum(tf.reduce_sum(hot, -1, keepdims=True), 1.0))
        return tf.concat(parts, axis=-1)

    def score_encoded(self, features: dict, titles: tf.Tensor,
                      training: bool = False) -> tf.Tensor:
        """Raw user features ``[b]`` and their titles' :meth:`encode_titles` rows
        ``[b, d]`` -> unclipped predictions ``[b]``."""
        user_ids = features["user_id"]
        widths = [1, self.config.factors if self.factors is not None else 0, -1,
                  *[width for *_, width in self._crosses]]
        title_bias, title_factors, encoded, *hots = tf.split(titles, widths, axis=-1)
        title_bias = tf.squeeze(title_bias, -1)
        if self.user_scale is not None:
            title_bias *= 1.0 + tf.squeeze(self._bias(self.user_scale, user_ids), -1)
        base = self.mu + tf.squeeze(self._bias(self.user_bias, user_ids), -1) + title_bias
        if self.factors is not None:
            base += tf.reduce_sum(self._bias(self.factors[0], user_ids) * title_factors, -1)
        parts = [self.user_encoder({k: features[k] for k in self.user_keys}), encoded]
        for (vector, *_), hot in zip(self._crosses, hots):
            for kind in ("share", "affinity"):
                taste = tf.cast(features[f"{vector}_{kind}"], tf.float32)
                parts.append(tf.reduce_sum(taste * hot, -1, keepdims=True))
        x = tf.concat(parts, axis=-1)
        for layer in self.mlp:
            x = layer(x)
            if self.dropout is not None:
                x = self.dropout(x, training=training)
        return base + tf.squeeze(self.interaction(x), -1)

    def call(self, features: dict, training: bool = False) -> tf.Tensor:
        return self.score_encoded(features, self.encode_titles(features), training=training)

    def predict_scores(self, features: dict) -> tf.Tensor:
        """Predictions ``[batch]`` clipped to the POINT_100 range [1, 100]."""
        return tf.clip_by_value(self(features), LOW, HIGH)

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        return self.task(labels=features["score"], predictions=self(features, training=training))
