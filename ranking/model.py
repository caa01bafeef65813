"""The listwise ranker: scores a list of titles for one user.

Inputs (raw features, as the towers take them; see ``towers/features.py``): the user's
features with shape ``[batch]`` (``[batch, width]`` for vectors), each title feature
with a list dimension ``[batch, list]`` (``[batch, list, width]`` for genres/tags), and
each of ``config.signals`` ``[batch, list]``: what the candidate generators say of each
title for the user (``similarity``, the two-tower score; ``ease``, EASE's; their ranks;
``franchise``, how many watched titles it continues; ``pipelines/candidates.py``), read
by the MLP. Output: scores ``[batch, list]``. Padded list items are
the caller's to mask.

With ``config.residual`` (the default) the score is the retrieval logit plus a learned
correction, ``retrieval_weight * similarity + ease_weight * ease + mlp(...)``, where
``ease_weight`` and the correction's output layer start at zero: an untrained ranker
orders every list exactly as retrieval does, and training has to earn each change.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

from pipelines.config import RankingConfig
from ranking import losses
from towers.features import FeatureEncoder


class Ranker(tf.keras.Model):
    """User encoder + title encoder (the towers' ``FeatureEncoder``) + a scoring MLP per
    (user, title) pair."""

    def __init__(self, schema: dict, config: RankingConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        use = "all" if config.use_ids else "side"
        # The history is the retrieval model's input, not the ranker's: the retrieval
        # score (``similarity``) already carries it.
        self.user_encoder = FeatureEncoder(schema, "user", use, id_dim=config.id_dim,
                                           category_dim=config.category_dim, history=False,
                                           name="user_features")
        self.anime_encoder = FeatureEncoder(schema, "anime", use, id_dim=config.id_dim,
                                            category_dim=config.category_dim,
                                            name="anime_features")
        self.user_keys = [s["name"] for s in self.user_encoder.specs]
        self.anime_keys = [s["name"] for s in self.anime_encoder.specs]
        # Taste x title crosses, given explicitly (an MLP over concatenations learns
        # products slowly): the user's genre/format share and affinity, read at the
        # title's genres (mean over them) and format.
        self._crosses = []
        for vector, title_feature in (("genre", "genres"), ("format", "format")):
            if {f"{vector}_share", title_feature} <= {s["name"] for s in schema["features"]}:
                vocab = [v for v in schema["vocab"][vector + "s" if vector == "genre" else vector]
                         if v != ""]
                lookup = tf.keras.layers.StringLookup(
                    vocabulary=vocab, output_mode="multi_hot", num_oov_indices=1,
                    name=f"{title_feature}_multi_hot")
                self._crosses.append((vector, title_feature, lookup, len(vocab)))
        self.mlp = [tf.keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")
                    for i, units in enumerate(config.hidden)]
        self.signals = tuple(config.signals)
        self.residual = config.residual and config.use_similarity
        zero = "zeros" if self.residual else "glorot_uniform"
        self.score = tf.keras.layers.Dense(1, kernel_initializer=zero, name="score")
        self.retrieval_weight = self.add_weight(
            name="retrieval_weight", shape=(), trainable=self.residual,
            initializer=tf.keras.initializers.Constant(
                config.retrieval_weight if self.residual else 0.0))
        self.ease_weight = self.add_weight(
            name="ease_weight", shape=(), initializer="zeros",
            trainable=self.residual and "ease" in self.signals)

    def _output(self, x: tf.Tensor, features: dict) -> tf.Tensor:
        """The last layer: the correction, plus the weighted candidate scores if residual."""
        correction = tf.squeeze(self.score(x), -1)
        if not self.residual:
            return correction
        out = correction + self.retrieval_weight * tf.cast(features["similarity"], tf.float32)
        if "ease" in self.signals:
            out += self.ease_weight * tf.cast(features["ease"], tf.float32)
        return out

    def _signals(self, features: dict) -> list:
        """The candidate signals, each ``[b, l]`` float32."""
        return [tf.cast(features[name], tf.float32) for name in self.signals]

    def encode_anime(self, features: dict) -> tf.Tensor:
        """Raw title features ``[n]`` (``[n, width]`` for genres/tags) -> ``[n, d]``: the
        title's encoding and its normalised genre/format indicators for the crosses.
        It does not depend on the user, so serving computes it once per catalog."""
        parts = [self.anime_encoder({k: features[k] for k in self.anime_keys})]
        for _, title_feature, lookup, _ in self._crosses:
            values = tf.reshape(features[title_feature], [tf.shape(parts[0])[0], -1])
            hot = lookup(values)[:, 1:]                                # drop the OOV slot
            parts.append(hot / tf.maximum(tf.reduce_sum(hot, -1, keepdims=True), 1.0))
        return tf.concat(parts, axis=-1)

    def score_encoded(self, features: dict, anime: tf.Tensor) -> tf.Tensor:
        """User raw features ``[b]``, encoded titles ``[b, l, d]`` (from
        :meth:`encode_anime`) and the signals ``[b, l]`` -> scores ``[b, l]``."""
        user = self.user_encoder({k: features[k] for k in self.user_keys})       # [b, du]
        size = tf.shape(anime)[1]
        widths = [width for *_, width in self._crosses]
        encoded, *hots = tf.split(anime, [-1, *widths], axis=-1) if widths else (anime,)
        parts = [tf.repeat(user[:, None, :], size, axis=1), encoded]
        for (vector, *_), hot in zip(self._crosses, hots):
            for kind in ("share", "affinity"):
                taste = tf.cast(features[f"{vector}_{kind}"], tf.float32)  # [b, width]
                parts.append(tf.einsum("bw,blw->bl", taste, hot)[..., None])
        parts += [signal[..., None] for signal in self._signals(features)]
        x = tf.concat(parts, axis=-1)
        for layer in self.mlp:
            x = layer(x)
        return self._output(x, features)

    # Serving halves with the first layer factorised: its kernel splits by input block,
    # [user | title | crosses | signals] @ W = user @ Wu + title @ Wt + ..., so the
    # title block (the bulk of the inputs) is multiplied once per catalog title instead
    # of once per (user, title) pair. Same function as call(), fewer FLOPs per request.
    def _first_layer_blocks(self):
        kernel = self.mlp[0].kernel
        n_tail = 2 * len(self._crosses) + len(self.signals)
        return kernel, n_tail

    def project_anime(self, features: dict) -> tf.Tensor:
        """Like :meth:`encode_anime`, with the title encoding already multiplied by its
        block of the first layer: ``[n, hidden_0 + cross widths]``."""
        encoded = self.encode_anime(features)
        widths = [width for *_, width in self._crosses]
        kernel, n_tail = self._first_layer_blocks()
        title, *hots = tf.split(encoded, [-1, *widths], axis=-1) if widths else (encoded,)
        d_title = title.shape[-1]
        d_user = kernel.shape[0] - d_title - n_tail
        projected = tf.matmul(title, kernel[d_user:d_user + d_title])
        return tf.concat([projected, *hots], axis=-1)

    def score_projected(self, features: dict, anime: tf.Tensor) -> tf.Tensor:
        """Scores ``[b, l]`` from user features and :meth:`project_anime` rows ``[b, l, d]``."""
        user = self.user_encoder({k: features[k] for k in self.user_keys})       # [b, du]
        widths = [width for *_, width in self._crosses]
        kernel, n_tail = self._first_layer_blocks()
        projected, *hots = tf.split(anime, [-1, *widths], axis=-1) if widths else (anime,)
        d_user = user.shape[-1]
        tail = []
        for (vector, *_), hot in zip(self._crosses, hots):
            for kind in ("share", "affinity"):
                taste = tf.cast(features[f"{vector}_{kind}"], tf.float32)
                tail.append(tf.einsum("bw,blw->bl", taste, hot))
        tail += self._signals(features)
        x = (tf.matmul(user, kernel[:d_user])[:, None, :] + projected
             + self.mlp[0].bias)
        if tail:
            x += tf.einsum("blt,th->blh", tf.stack(tail, -1), kernel[kernel.shape[0] - n_tail:])
        x = self.mlp[0].activation(x)
        for layer in self.mlp[1:]:
            x = layer(x)
        return self._output(x, features)

    def call(self, features: dict) -> tf.Tensor:
        first = features[self.anime_keys[0]]
        batch, size = tf.shape(first)[0], tf.shape(first)[1]
        # Encode every (list, item) as one row, then restore the list dimension.
        flat = {k: tf.reshape(features[k], tf.concat([[-1], tf.shape(features[k])[2:]], 0))
                for k in self.anime_keys}
        anime = self.encode_anime(flat)
        anime = tf.reshape(anime, [batch, size, anime.shape[-1]])
        return self.score_encoded(features, anime)


class RankingModel(tfrs.Model):
    """Training wrapper: ``compute_loss`` on a batch with the ranker's inputs plus
    ``relevance`` ``[batch, list]`` and ``mask`` ``[batch, list]``."""

    def __init__(self, schema: dict, config: RankingConfig):
        super().__init__()
        self.config = config
        self.ranker = Ranker(schema, config, name="ranker")
        loss = losses.get(config.loss)
        if config.loss == "approx_ndcg":
            temperature = config.approx_temperature
            self._loss = lambda y, s, m: loss(y, s, m, temperature=temperature)
        else:
            self._loss = loss

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        scores = self.ranker(features)
        return self._loss(features["relevance"], scores, features["mask"])
