"""The two-tower retrieval model: a query tower (user), a candidate tower (anime) and a
TFRS in-batch softmax task with sampling-bias (logQ) correction.

The query tower reads the user's history (when the schema has one and
``config.history``) through the candidate tower's title-id embedding: one table, so a
user is described by the titles they watched in the same space the titles are learned
in, and the exported query tower carries that table's weights (the two SavedModels each
hold a copy)."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from pipelines.config import COUNTED_TITLE_FEATURES, RetrievalConfig
from towers.features import FeatureEncoder


def as_new_titles(titles: dict, rate: float) -> dict:
    """Raw candidate features with each row, at ``rate``, made to look like a title
    first listed after the cutoff: its id out of the vocabulary (the shared OOV row) and
    its counted statistics those of a title with no entries (``COUNTED_TITLE_FEATURES``).
    The candidate tower trained on them places a new title by its metadata; the id
    passed to the loss (accidental hits) stays the true one."""
    ids = titles["media_id"]
    new = tf.random.uniform(tf.shape(ids)) < rate
    out = dict(titles, media_id=tf.where(new, tf.constant(-1, ids.dtype), ids))
    for name, value in COUNTED_TITLE_FEATURES.items():
        if name in out:
            x = out[name]
            out[name] = tf.where(new, tf.fill(tf.shape(x), tf.constant(value, x.dtype)), x)
    return out


class Tower(tf.keras.Model):
    """Raw features of one entity -> L2-normalised embedding ``[batch, embedding_dim]``."""

    def __init__(self, schema: dict, entity: str, config: RetrievalConfig,
                 titles: tuple | None = None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = FeatureEncoder(schema, entity, config.features, id_dim=config.id_dim,
                                      category_dim=config.category_dim, history=config.history,
                                      titles=titles, name=f"{entity}_features")
        self.dense = [tf.keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")
                      for i, units in enumerate(config.hidden)]
        self.out = tf.keras.layers.Dense(config.embedding_dim, name="embedding")

    def call(self, features: dict) -> tf.Tensor:
        x = self.encoder(features)
        for layer in self.dense:
            x = layer(x)
        return tf.math.l2_normalize(self.out(x), axis=-1)


class TwoTowerModel(tfrs.Model):
    """``compute_loss`` takes a batch dict with the user's and the anime's raw features
    (keys as in the schema), plus ``sampling_probability`` ``[batch]``: each positive
    title's share of the training interactions, for the logQ correction."""

    def __init__(self, schema: dict, config: RetrievalConfig):
        super().__init__()
        self.config = config
        self.candidate_tower = Tower(schema, "anime", config, name="candidate_tower")
        titles = self.candidate_tower.encoder.id_layers("media_id")
        self.query_tower = Tower(schema, "user", config, titles, name="query_tower")
        self.user_keys = self.query_tower.encoder.raw_names
        self.anime_keys = self.candidate_tower.encoder.raw_names
        # The training loss only: evaluation ranks all titles in numpy (pipelines/
        # train_retrieval.py), apart from this task (DESIGN.md: TFRS raises at evaluation
        # with remove_accidental_hits unless candidate ids are passed).
        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature,
            remove_accidental_hits=config.remove_accidental_hits)

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        # A pair's own title stays in its user's history (every positive is one of the
        # user's training titles). Leaving it out (weight 0), as a guard against the query
        # holding the answer, was measured worse on validation: Recall@100 -0.036 [-0.044,
        # -0.027] against the model without a history, where keeping it ties (seed 0,
        # bench/history_ablation.py): the tower learns "near what you watched", which is
        # what the next titles are.
        query = self.query_tower({k: features[k] for k in self.user_keys})
        titles = {k: features[k] for k in self.anime_keys}
        if training and self.config.cold_start_dropout > 0 and self.config.features == "all":
            titles = as_new_titles(titles, self.config.cold_start_dropout)
        candidate = self.candidate_tower(titles)
        probability = features["sampling_probability"] if self.config.logq_correction else None
        return self.task(query, candidate, candidate_sampling_probability=probability,
                         candidate_ids=features["media_id"], compute_metrics=False,
                         compute_batch_metrics=False)
