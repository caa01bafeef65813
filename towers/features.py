"""Feature encoding built from the saved feature schema. Defined once: the towers and the
ranking model both build their inputs with :class:`FeatureEncoder`.

Raw feature formats (what the SavedModel signatures take, and what :func:`raw_features`
produces from the Parquet tables), per row:

- ``id``: int64 scalar (unknown ids map to a shared out-of-vocabulary embedding).
- ``categorical``: string scalar, ``""`` when missing.
- ``multi``: string ``[width]``, padded with ``""`` (width saved in the model config).
- ``numeric``: float32 scalar, NaN when missing (encoded as the training mean).
- ``vector``: float32 ``[len(vocab)]``.
- ``history``: two arrays, ``name`` int64 ``[length]`` (title ids, padded with -1) and
  ``name + "_weight"`` float32 ``[length]`` (padded with 0): the fixed width keeps a
  batch of users one dense array. Padding, and ids outside the vocabulary, are masked.

A model's inputs are :func:`raw_names` of its specs (one per spec, two for a history).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

from pipelines.errors import InputError

KINDS = ("id", "categorical", "multi", "numeric", "vector", "history")


def feature_specs(schema: dict, entity: str, use: str = "all",
                  history: bool = True) -> list[dict]:
    """The feature specs of ``entity`` ("user" / "anime") a model uses.

    Args:
      use: ``"all"`` for every feature, ``"ids"`` for the id alone (the ablation: no
        history either), ``"side"`` for every feature but the id.
      history: keep the history feature (when the schema has one).
    """
    if use not in ("all", "ids", "side"):
        raise InputError(f"`use` must be 'all', 'ids' or 'side'. Received: use={use!r}.")
    specs = [f for f in schema["features"] if f["entity"] == entity]
    keep = {"all": lambda f: True, "ids": lambda f: f["kind"] == "id",
            "side": lambda f: f["kind"] != "id"}[use]
    return [f for f in specs if keep(f) and (history or f["kind"] != "history")]


def raw_names(specs: list[dict]) -> list[str]:
    """The raw input names of ``specs``: each spec's name, and a history's weights."""
    return [n for s in specs
            for n in ((s["name"], s["name"] + "_weight") if s["kind"] == "history"
                      else (s["name"],))]


def multi_widths(anime: pd.DataFrame, schema: dict) -> dict[str, int]:
    """Padded width of each multi-valued anime feature: its longest list (at least 1)."""
    return {f["name"]: max(1, int(anime[f["name"]].map(len).max() or 1))
            for f in feature_specs(schema, "anime") if f["kind"] == "multi"}


def raw_features(table: pd.DataFrame, specs: list[dict], widths: dict[str, int]) -> dict:
    """Columns of a feature table -> numpy arrays in the raw formats above, one per spec."""
    out = {}
    for spec in specs:
        name, kind = spec["name"], spec["kind"]
        if name not in table:
            raise InputError(f"The feature table has no column {name!r}; it has "
                             f"{list(table.columns)}. Rebuild it with `python -m pipelines features`.")
        column = table[name]
        if kind == "id":
            out[name] = column.to_numpy(np.int64)
        elif kind == "categorical":
            out[name] = column.fillna("").astype(str).to_numpy(object)
        elif kind == "multi":
            width = widths[name]
            padded = np.full((len(table), width), "", dtype=object)
            for i, values in enumerate(column):  # titles, not entries: tens of thousands
                values = list(values)[:width]
                padded[i, : len(values)] = values
            out[name] = padded
        elif kind == "numeric":
            out[name] = pd.to_numeric(column, errors="coerce").to_numpy(np.float32)
        elif kind == "vector":
            out[name] = np.stack(column.to_numpy()).astype(np.float32)
        elif kind == "history":
            out[name], out[name + "_weight"] = _pad_history(
                column, table[name + "_weight"], spec["length"])
        else:
            raise InputError(f"Unknown feature kind {kind!r} of {name!r}; known: {KINDS}.")
    return out


def _pad_history(ids: pd.Series, weights: pd.Series, length: int) -> tuple[np.ndarray, np.ndarray]:
    """List columns -> ``[rows, length]`` ids (-1 padding) and weights (0 padding)."""
    sizes = np.minimum(ids.map(len).to_numpy(np.int64), length) if len(ids) else np.zeros(0, int)
    padded_ids = np.full((len(ids), length), -1, np.int64)
    padded_weights = np.zeros((len(ids), length), np.float32)
    if sizes.sum():
        rows = np.repeat(np.arange(len(ids)), sizes)
        cols = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        padded_ids[rows, cols] = np.concatenate([np.asarray(v)[:length] for v in ids])
        padded_weights[rows, cols] = np.concatenate([np.asarray(v)[:length] for v in weights])
    return padded_ids, padded_weights


def input_signature(specs: list[dict], schema: dict, widths: dict[str, int]) -> dict:
    """``tf.TensorSpec``s (batch dimension first) of the raw features of ``specs``."""
    sig = {}
    for spec in specs:
        name, kind = spec["name"], spec["kind"]
        if kind == "id":
            sig[name] = tf.TensorSpec([None], tf.int64, name=name)
        elif kind == "categorical":
            sig[name] = tf.TensorSpec([None], tf.string, name=name)
        elif kind == "multi":
            sig[name] = tf.TensorSpec([None, widths[name]], tf.string, name=name)
        elif kind == "numeric":
            sig[name] = tf.TensorSpec([None], tf.float32, name=name)
        elif kind == "history":
            sig[name] = tf.TensorSpec([None, spec["length"]], tf.int64, name=name)
            weight = name + "_weight"
            sig[weight] = tf.TensorSpec([None, spec["length"]], tf.float32, name=weight)
        else:
            sig[name] = tf.TensorSpec([None, len(schema["vocab"][spec["vocab"]])], tf.float32,
                                      name=name)
    return sig


class FeatureEncoder(tf.keras.layers.Layer):
    """Raw features of one entity -> one dense vector ``[batch, output_dim]``.

    Ids and categorical values are looked up in the training vocabularies and embedded;
    multi-valued features (genres, tags) are embedded and mean-pooled over their
    non-padding values; numeric features are ``log1p``-transformed where the spec says
    so and standardised with the training statistics (missing -> 0, the mean); vector
    features are standardised likewise. A history is the weighted mean of its titles'
    id embeddings (``titles``: the candidate tower's, shared), padding and unknown ids
    masked; an empty history is the zero vector.

    Args:
      schema: the feature schema (``schema.json``).
      entity: ``"user"`` or ``"anime"``.
      use: ``"all"``, ``"ids"`` or ``"side"`` (:func:`feature_specs`).
      history: encode the history feature (when the schema has one).
      titles: ``(lookup, embedding)`` of the title ids a history is embedded with
        (:meth:`id_layers` of the title encoder); None = a table of its own.
      id_dim: embedding size of ids; ``category_dim`` of categorical / multi features.
    """

    def __init__(self, schema: dict, entity: str, use: str = "all", id_dim: int = 32,
                 category_dim: int = 16, history: bool = True, titles: tuple | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.specs = feature_specs(schema, entity, use, history)
        self.raw_names = raw_names(self.specs)
        stats = schema["stats"][entity]
        self._lookups, self._embeddings, self._norms = {}, {}, {}
        for spec in self.specs:
            name, kind = spec["name"], spec["kind"]
            if kind == "history":
                if titles is None:
                    vocab = np.asarray(schema["vocab"][spec["vocab"]], np.int64)
                    titles = (tf.keras.layers.IntegerLookup(vocabulary=vocab,
                                                            name=f"{name}_lookup"),
                              tf.keras.layers.Embedding(len(vocab) + 1, id_dim,
                                                        name=f"{name}_embedding"))
                self._lookups[name], self._embeddings[name] = titles
                if not titles[1].built:  # its table is read directly (see _history)
                    with tf.name_scope(titles[1].name):
                        titles[1].build((None,))
            elif kind == "id":
                vocab = np.asarray(schema["vocab"][spec["vocab"]], np.int64)
                self._lookups[name] = tf.keras.layers.IntegerLookup(
                    vocabulary=vocab, name=f"{name}_lookup")
                self._embeddings[name] = tf.keras.layers.Embedding(
                    len(vocab) + 1, id_dim, name=f"{name}_embedding")
            elif kind in ("categorical", "multi"):
                vocab = [v for v in schema["vocab"][spec["vocab"]] if v != ""]
                extra = {"mask_token": ""} if kind == "multi" else {}
                self._lookups[name] = tf.keras.layers.StringLookup(
                    vocabulary=vocab, name=f"{name}_lookup", **extra)
                self._embeddings[name] = tf.keras.layers.Embedding(
                    len(vocab) + 2, category_dim, name=f"{name}_embedding")
            else:
                s = stats[name]
                self._norms[name] = (float(s["mean"]), float(s["std"]) or 1.0,
                                     spec.get("transform", "none"))

    def _history(self, name: str, ids: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        """The masked weighted mean ``[batch, id_dim]`` of a history's title embeddings,
        as a sparse ``[batch, titles]`` weight matrix times the embedding table: its
        gradient is one dense ``[titles, id_dim]`` product. Gathering ``[batch, length,
        id_dim]`` rows and scattering their gradients back (the same numbers) trained at
        0.56-0.60x the examples/s of the model without a history; this, 0.87-0.93x
        (default world, 2 shared cores, bench/history_ablation.py)."""
        ids = self._lookups[name](ids)                                 # [batch, length], 0 = OOV
        weight = tf.cast(weight, tf.float32) * tf.cast(tf.not_equal(ids, 0), tf.float32)
        shape = tf.shape(ids, out_type=tf.int64)
        rows = tf.repeat(tf.range(shape[0]), shape[1])
        table = self._embeddings[name].embeddings
        weights = tf.sparse.SparseTensor(tf.stack([rows, tf.reshape(ids, [-1])], 1),
                                         tf.reshape(weight, [-1]),
                                         tf.stack([shape[0], tf.shape(table, out_type=tf.int64)[0]]))
        total = tf.sparse.sparse_dense_matmul(weights, table)
        return tf.math.divide_no_nan(total, tf.reduce_sum(weight, 1, keepdims=True))

    def id_layers(self, name: str) -> tuple:
        """``(lookup, embedding)`` of the id feature ``name``, to share with a history."""
        return self._lookups[name], self._embeddings[name]

    def call(self, inputs: dict) -> tf.Tensor:
        parts = []
        for spec in self.specs:
            name, kind = spec["name"], spec["kind"]
            x = inputs[name]
            if kind == "history":
                parts.append(self._history(name, x, inputs[name + "_weight"]))
            elif kind in ("id", "categorical"):
                parts.append(self._embeddings[name](self._lookups[name](x)))
            elif kind == "multi":
                ids = self._lookups[name](x)                           # [batch, width]
                mask = tf.cast(tf.not_equal(ids, 0), tf.float32)[..., None]
                vectors = self._embeddings[name](ids) * mask
                parts.append(tf.reduce_sum(vectors, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0))
            else:
                mean, std, transform = self._norms[name]
                x = tf.cast(x, tf.float32)
                if transform == "log1p":
                    x = tf.math.log1p(tf.maximum(x, 0.0))
                z = (x - mean) / std
                z = tf.where(tf.math.is_nan(z), tf.zeros_like(z), z)
                parts.append(z[:, None] if kind == "numeric" else z)
        return tf.concat(parts, axis=-1)


def apply_in_blocks(fn, raw: dict, names, batch_size: int = 4096) -> np.ndarray:
    """``fn({name: tensor}) -> tensor`` over the rows of raw feature arrays, a block at a
    time (bounded memory), concatenated: ``[rows, ...]``. Only ``names`` are passed in.
    Serves the Keras towers at training time and the SavedModel signatures at serving."""
    n = len(next(iter(raw.values())))
    # At least one (possibly empty) block, so an empty input still has the output's shape.
    return np.concatenate([
        np.asarray(fn({k: tf.constant(raw[k][start:start + batch_size]) for k in names}))
        for start in range(0, max(n, 1), batch_size)])
