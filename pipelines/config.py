"""Configuration of the data stages, as frozen dataclasses that round-trip through JSON.

The feature config is saved into the feature tables' ``schema.json`` (and from there into
every model's ``config.json``), so what produced a table is always recorded beside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any

from pipelines.errors import InputError

class _JsonConfig:
    """``to_dict``/``from_dict`` for frozen config dataclasses (tuples <-> JSON lists)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    # Keys renamed since models were first saved: {old: new}. Old configs still load.
    _RENAMED: dict[str, str] = {}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = {cls._RENAMED.get(k, k): v for k, v in data.items()}
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise InputError(f"Unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(fields)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


PROTOCOLS = ("as_of", "per_user")
# Which held-out entries are targets (FeatureConfig.targets).
TARGETS = ("changed", "added")
# What a ranker can read of each candidate besides its features (pipelines/candidates.py).
SIGNALS = ("similarity", "ease", "similarity_rank", "ease_rank", "franchise")
EASE_SIGNALS = ("ease", "ease_rank")
# The signals read from the relations between titles (``anime.parquet``'s ``related_ids``):
# a source without relations (the Kaggle dumps) has none of them.
RELATION_SIGNALS = ("franchise",)
# Which of a candidate's relations (AniList's types, from the candidate's side: its
# PREQUEL is the title it continues) make a watched title count toward its ``franchise``
# signal.
FRANCHISE_RELATIONS = ("PREQUEL", "PARENT")


def parse_time(value: str, name: str = "time") -> int:
    """An ISO date or datetime (UTC unless it names a zone) as unix seconds.

    Raises:
      InputError: ``value`` is not an ISO date/datetime.
    """
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"`{name}` must be an ISO date or datetime such as 2025-06-01 or "
                         f"2025-06-01T12:00. Received: {value!r}.") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())


STATUSES = ("COMPLETED", "CURRENT", "PAUSED", "DROPPED", "REPEATING", "PLANNING")

# The ranker's listwise losses, by name: the keys of ``ranking.losses.LOSSES`` (which
# asserts it at import). Named here so validating a config or building the CLI never
# imports TensorFlow.
LOSS_NAMES = ("approx_ndcg", "list_mle", "softmax", "mse")


# A title's entries in the last this many days before the cutoff: how much it is watched
# now (``recent_7d``, ``recent_30d`` in ``pipelines.features.FEATURES``), as of the query
# time of the lists the ranker learns from, of the walk-forward test's and of the release's.
# AniList's MediaListCollection returns at most this many of a list's most recently
# updated entries: the crawler's cap, and the longest history serving accepts.
LIST_CAP = 11_000
RECENT_WINDOWS = (7, 30)
RECENT_FEATURES = tuple(f"recent_{days}d" for days in RECENT_WINDOWS)
# A title's features counted from the entries (``features._anime_table``), and what they
# are for a title with none: how a new title looks to the candidate tower (its cold-start
# dropout trains on titles made to look so, ``towers.model.as_new_titles``).
COUNTED_TITLE_FEATURES = {"popularity": 0.0, "favourites": 0.0, "average_score": float("nan"),
                          "train_count": 0.0, **{name: 0.0 for name in RECENT_FEATURES}}

@dataclasses.dataclass(frozen=True)
class FeatureConfig(_JsonConfig):
    """How the raw store becomes feature tables.

    Attributes:
      protocol: ``"as_of"`` (default): one global time cutoff T for everyone, as a model
        trained today and used tomorrow sees the data: train = entries before T,
        validation = ``[T, T+h)``, test = ``[T+h, T+2h)``; users, titles, vocabularies and
        statistics are those of T. ``"per_user"``: the last fractions of each user's own
        list by time (lets other users' later entries into training; kept to compare).
        Either way, lists without usable times are split at random per user (seeded).
      as_of: the cutoff T as an ISO date or datetime in UTC (``"2025-06-01"``); None =
        the time by which ``1 - validation_fraction - test_fraction`` of the timed entries
        had happened, at midnight UTC.
      targets: under a cutoff, which held-out entries are targets. ``"added"`` (the
        default): only entries added in the period, as serving sees them; the others
        are history the period's rankings leave out, as serving does (``listed_before``;
        a score given in the period stays a score label). ``"changed"``: every entry
        whose newest change falls in the period, an entry added before it and finished
        in it included, although serving hides it (it is on the list). Either way the
        split counts them.
      horizon_days: the length h of the validation and of the test period; None = half
        the time from T to the last entry (whole days), so the two periods cover the rest.
      validation_fraction: the share of entries held out for validation: where the
        default as-of cutoff falls, and per user in the random and per-user splits.
      test_fraction: the share of entries held out for test, likewise.
      min_entries_to_split: in the random and per-user splits, users with fewer entries
        keep all of them in train.
      time_columns: an entry's time: the first non-NULL of these columns. The default
        puts ``updated_at`` first (when the entry reached the status and score we see),
        so no training entry carries a score or status given after the cutoff. A user
        with any entry lacking all of them is split randomly (seeded).
      interaction_statuses: list statuses that count as positive interactions for
        retrieval (the user watched the title).
      min_interaction_score: additionally require score >= this for an interaction
        (0 keeps unscored entries; scores are POINT_100).
      label_statuses: statuses whose scores are graded relevance labels for ranking;
        only entries with score > 0 are labelled.
      top_tags: how many of a title's highest-ranked tags become its tag feature.
      min_tag_rank: AniList tag rank (0-100) below which a tag is ignored.
      min_vocab_count: a studio/tag/source value must occur on at least this many
        training titles to get its own vocabulary entry (rarer values map to OOV).
      affinity_prior: pseudo-count that shrinks a user's genre/format score affinity
        toward 0 when the user has few scored titles of that genre/format.
      history_length: how many of a user's watched training titles (interaction
        statuses) make up the history feature: the highest-weighted ones (0 leaves the
        feature out). See ``pipelines.features.user_features`` for the weights.
      history_half_life_days: a history title's weight halves with every this many days
        between it and the user's newest title (lists without times: no decay).
      seed: seed of the random split used where entry times are missing.
      fold_validation: the walk-forward evaluation's tables (``pipelines/walk_forward.py``):
        the validation period joins training, so every method is fitted on, and queried
        with, entries before ``T + h`` and tested on ``[T + h, T + 2h)`` (the same test
        period as the tables without it); lists split at random put their validation
        part in train. There is no validation split: settings come from the tables
        without it.
      final: the served model's tables (``walk_forward.release``): every entry is
        training data, validation and test periods (or parts, for lists split at
        random) included; no validation or test split. The cutoff and period are the
        selection tables', kept for the record.
    """

    protocol: str = "as_of"
    targets: str = "added"
    as_of: str | None = None
    horizon_days: float | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    min_entries_to_split: int = 5
    time_columns: tuple[str, ...] = ("updated_at", "completed_at", "created_at")
    interaction_statuses: tuple[str, ...] = ("COMPLETED", "CURRENT", "REPEATING")
    min_interaction_score: int = 0
    label_statuses: tuple[str, ...] = ("COMPLETED", "CURRENT", "PAUSED", "DROPPED", "REPEATING")
    top_tags: int = 8
    min_tag_rank: int = 50
    min_vocab_count: int = 2
    affinity_prior: float = 3.0
    history_length: int = 50
    history_half_life_days: float = 365.0
    seed: int = 0
    fold_validation: bool = False
    final: bool = False

    def __post_init__(self):
        if self.history_length < 0:
            raise InputError(f"`history_length` must be >= 0 (0 = no history feature). "
                             f"Received: history_length={self.history_length}.")
        if not self.history_half_life_days > 0:
            raise InputError(f"`history_half_life_days` must be positive. "
                             f"Received: {self.history_half_life_days}.")
        if not 0 <= self.min_interaction_score <= 100:
            raise InputError(f"`min_interaction_score` must be a POINT_100 score from 0 to 100 "
                             f"(0: any). Received: {self.min_interaction_score}.")
        if self.min_entries_to_split < 0:
            raise InputError(f"`min_entries_to_split` must be >= 0. Received: "
                             f"{self.min_entries_to_split}.")
        if self.protocol not in PROTOCOLS:
            raise InputError(f"`protocol` must be one of {list(PROTOCOLS)}. "
                             f"Received: {self.protocol!r}.")
        if self.targets not in TARGETS:
            raise InputError(f"`targets` must be one of {list(TARGETS)}. "
                             f"Received: {self.targets!r}.")
        if self.as_of is not None:
            parse_time(self.as_of, "as_of")
        if self.horizon_days is not None and not self.horizon_days > 0:
            raise InputError(f"`horizon_days` must be positive. Received: {self.horizon_days}.")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise InputError(f"`{name}` must be in [0, 1). Received: {name}={value}.")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise InputError(
                "validation_fraction + test_fraction must leave some entries for train. "
                f"Received: {self.validation_fraction} + {self.test_fraction}."
            )
        for name in ("interaction_statuses", "label_statuses"):
            unknown = set(getattr(self, name)) - set(STATUSES)
            if unknown:
                raise InputError(
                    f"`{name}` has unknown statuses {sorted(unknown)}; "
                    f"valid statuses are {list(STATUSES)}."
                )
        bad_time = set(self.time_columns) - {"created_at", "updated_at", "completed_at"}
        if bad_time or not self.time_columns:
            raise InputError(
                "`time_columns` must be a non-empty subset of created_at, updated_at, "
                f"completed_at. Received: {list(self.time_columns)}."
            )


def _check_training(config) -> None:
    """A stage's optimiser settings: a learning rate > 0 (finite), patience >= 0."""
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise InputError(f"`learning_rate` must be a positive number. Received: "
                         f"learning_rate={config.learning_rate}.")
    if config.patience < 0:
        raise InputError(f"`patience` must be >= 0. Received: patience={config.patience}.")


@dataclasses.dataclass(frozen=True)
class RetrievalConfig(_JsonConfig):
    """The two-tower retrieval model and its training.

    Attributes:
      features: ``"all"`` (ids + side features) or ``"ids"`` (the ablation).
      history: give the query tower the user's history (the weighted mean of the
        candidate tower's embeddings of their watched training titles) when the
        feature tables have it; False is the ablation. ``features="ids"`` never has it.
      id_dim: embedding size of user and anime ids.
      category_dim: embedding size of categorical and multi-valued features.
      hidden: sizes of the dense layers of each tower, before the output layer.
      embedding_dim: size of the output embeddings.
      temperature: softmax temperature over L2-normalised embeddings (cosine scores).
      logq_correction: subtract log(sampling probability) of each in-batch candidate
        (its share of training interactions) from its logit: corrects the popularity
        bias of in-batch negatives.
      remove_accidental_hits: do not treat another row's copy of the positive title as
        a negative.
      batch_size, learning_rate: Adam on the in-batch softmax loss.
      max_epochs, patience: early stopping on validation Recall@``eval_k``; the best
        epoch's weights are kept.
      validation_users: how many validation users (sampled, seeded) are scored after
        each epoch; 0 = all.
      eval_k: the K of the early-stopping metric.
      cold_start_dropout: the share of training pairs whose title is shown to the
        candidate tower as a new title would be (its id out of the vocabulary, its
        counted statistics those of a title with no entries), so the tower learns to
        place titles it has never seen from their metadata (DropoutNet, Volkovs et al.
        2017). 0 = off: a new title's id then meets an untrained embedding row, and no
        new title reached any user's top 100 on the default world's validation; 0.25 put
        one there for 67% of the users with one and raised Recall@100 over known and new
        titles together by +0.11 (``bench/cold_start.py``, which chose it).
      seed: initialisation, shuffling and sampling.
    """

    features: str = "all"
    history: bool = True
    id_dim: int = 32
    category_dim: int = 16
    hidden: tuple[int, ...] = (128,)
    embedding_dim: int = 64
    temperature: float = 0.05
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    batch_size: int = 1024
    learning_rate: float = 0.003
    max_epochs: int = 30
    patience: int = 3
    validation_users: int = 2000
    eval_k: int = 100
    cold_start_dropout: float = 0.25
    seed: int = 0

    def __post_init__(self):
        if self.features not in ("all", "ids"):
            raise InputError(f"`features` must be 'all' or 'ids'. Received: {self.features!r}.")
        for name in ("embedding_dim", "batch_size", "max_epochs", "eval_k", "id_dim"):
            if getattr(self, name) <= 0:
                raise InputError(f"`{name}` should be a positive integer. "
                                 f"Received: {name}={getattr(self, name)}.")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"`temperature` must be positive. Received: {self.temperature}.")
        _check_training(self)
        if not 0 <= self.cold_start_dropout < 1:
            raise InputError("`cold_start_dropout` must be in [0, 1). "
                             f"Received: cold_start_dropout={self.cold_start_dropout}.")


@dataclasses.dataclass(frozen=True)
class RankingConfig(_JsonConfig):
    """The listwise ranker and its training lists.

    Attributes:
      loss: ``approx_ndcg`` (default: NDCG is what we report), ``list_mle``,
        ``softmax`` or ``mse`` (pointwise baseline).
      approx_temperature: smoothness of ApproxNDCG's ranks (smaller: closer to NDCG).
      relevance_scale: graded relevance = POINT_100 score / this (100 -> 5 at 20);
        retrieved titles the user has not interacted with have relevance 0.
      labelled_per_list: relevant retrieved titles kept per list.
      missed_per_list: the user's scored titles of the period that retrieval missed,
        added to each list (graded signal beyond the retrieved few; 0 = train only on
        what serving shows).
      negatives_per_list: retrieved titles the user did not watch, per list (with
        ``labelled_per_list``, the mix of relevant and not that ranking sees at serving).
      max_lists_per_user: lists per user, each with fresh negatives and missed titles.
      num_candidates: retrieval top-K the negatives come from (and end-to-end evaluation
        ranks).
      ease_candidates: titles EASE adds to the two-tower's ``num_candidates`` (its top
        ones the two-tower did not return; 0 = the two-tower's alone). A model without
        EASE (too many titles) has none.
      signals: what the ranker reads of each candidate besides its features
        (``SIGNALS``: ``similarity`` the two-tower score, ``ease`` EASE's score,
        ``similarity_rank`` / ``ease_rank`` its log rank in each generator's list,
        ``franchise`` how many of the user's watched titles it continues;
        ``pipelines/candidates.py``). A model without EASE drops the EASE ones; one
        whose source has no relations between titles, the franchise one. All on by
        default (the franchise signal chosen on validation: README).
      residual: score = ``retrieval_weight`` x the retrieval score (+ a weight x the EASE
        score, starting at 0) + a learned correction whose output layer starts at zero,
        so an untrained ranker reproduces retrieval order exactly and training has to
        earn every change (needs ``similarity`` in ``signals``).
      retrieval_weight: the retrieval score's initial weight (trainable): 20 = 1 / the
        retrieval model's softmax temperature, its own logit scale.
      use_ids: give the ranker user and title id embeddings too (off by default: the
        retrieval score already carries the id signal, and ids overfit the few lists).
      fit_split: the split whose lists the ranker learns from. ``validation`` (default):
        titles the retrieval model never trained on, so the similarity feature means the
        same at training as at serving (on ``train`` lists retrieval has memorised the
        positives and the ranker learns to over-trust it).
      holdout_users: share of the fit split's users held out: half of them for early
        stopping, half for the validation end to end every setting is chosen on.
      hidden: the scoring MLP's layer sizes.
      id_dim, category_dim: embedding sizes (as the towers').
      batch_size: lists per batch. learning_rate: Adam.
      max_epochs, patience: early stopping on validation NDCG@10, best weights kept.
      seed: list sampling, shuffling and initialisation, and which users are held out
        (by a generator of their own: the same users whatever the list settings, so
        runs with different settings compare paired on the same users).
    """

    _RENAMED = {"candidates": "num_candidates"}  # config.json of models before 0.1.0

    loss: str = "approx_ndcg"
    approx_temperature: float = 0.1
    relevance_scale: float = 20.0
    labelled_per_list: int = 5
    missed_per_list: int = 0  # chosen on validation (bench/ranker_settings.py, README)
    negatives_per_list: int = 40  # chosen on validation (bench/ranker_settings.py, README)
    max_lists_per_user: int = 4
    num_candidates: int = 100
    ease_candidates: int = 0  # chosen on validation (bench/ranker_settings.py, README)
    signals: tuple[str, ...] = SIGNALS
    residual: bool = True
    retrieval_weight: float = 20.0
    use_ids: bool = False
    fit_split: str = "validation"
    holdout_users: float = 0.2
    hidden: tuple[int, ...] = (128, 64)
    id_dim: int = 32
    category_dim: int = 16
    batch_size: int = 128
    learning_rate: float = 0.0003
    max_epochs: int = 20
    patience: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSS_NAMES:
            raise InputError(f"`loss` must be one of {sorted(LOSS_NAMES)}. Received: {self.loss!r}.")
        _check_training(self)
        for name in ("labelled_per_list", "max_lists_per_user", "num_candidates", "batch_size",
                     "max_epochs"):
            if getattr(self, name) <= 0:
                raise InputError(f"`{name}` should be a positive integer. "
                                 f"Received: {name}={getattr(self, name)}.")
        if self.fit_split not in ("train", "validation"):
            raise InputError(f"`fit_split` must be 'train' or 'validation'. Received: {self.fit_split!r}.")
        if not 0.0 < self.holdout_users < 1.0:
            raise InputError(f"`holdout_users` must be in (0, 1). Received: {self.holdout_users}.")
        for name in ("negatives_per_list", "missed_per_list"):
            if getattr(self, name) < 0:
                raise InputError(f"`{name}` must be >= 0. Received: {name}={getattr(self, name)}.")
        if self.ease_candidates < 0:
            raise InputError(f"`ease_candidates` must be >= 0. Received: {self.ease_candidates}.")
        unknown = [s for s in self.signals if s not in SIGNALS]
        if unknown or len(set(self.signals)) != len(self.signals):
            raise InputError(f"`signals` must be distinct names from {list(SIGNALS)}. "
                             f"Received: signals={list(self.signals)!r}.")
        if self.residual and not self.use_similarity:
            raise InputError("`residual` adds a correction to the retrieval score, so it needs "
                             "'similarity' in `signals`; pass residual=False to rank without it.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = dict(data)
        # Models from before the hybrid candidates read the retrieval score alone.
        if "signals" not in data:
            data["signals"] = ["similarity"] if data.pop("use_similarity", True) else []
            data.setdefault("ease_candidates", 0)
        return super().from_dict(data)

    @property
    def use_similarity(self) -> bool:
        return "similarity" in self.signals

    @property
    def candidate_label(self) -> str:
        """The candidates a ranker reorders, for tables: ``top-100 + 50 EASE`` (the
        two-tower's top 100 and up to 50 more from EASE)."""
        return f"top-{self.num_candidates}" + (f" + {self.ease_candidates} EASE"
                                               if self.ease_candidates else "")

    @property
    def list_size(self) -> int:
        return self.labelled_per_list + self.negatives_per_list + self.missed_per_list


@dataclasses.dataclass(frozen=True)
class ScoreConfig(_JsonConfig):
    """The score head: predicts the POINT_100 score a user gives a title.

    Attributes:
      bias_lambdas: the ridge strengths tried for the user + title biases the head
        starts from (the one of the lowest validation RMSE is used, as the baseline's).
      hidden: layer sizes of the interaction MLP over [user features, title features,
        taste x title crosses]; its output layer starts at zero, so the untrained head
        is exactly the global mean + the ridge biases.
      category_dim: embedding size of categorical / multi-valued features.
      held_out_features: train on each entry's user and title score features recomputed
        without that entry's score (``train_scores.held_out_inputs``), as they are for
        every pair the head predicts after training.
      user_scale: a per-user scale of the title biases, ``(1 + s_user) * b_title``
        (starting at 0, L2 as the biases): users with a wide rating range move more
        with a title's quality.
      factors: width of the user and title id factors whose dot product is added
        (matrix factorisation on top of the biases; 0 = none). Their dot product starts
        at zero (title factors at zero, user factors small and random).
      factor_l2: L2 on the factors, as a ridge lambda (divided by the number of training
        scores, as the biases').
      dropout: dropout on the MLP's hidden layers.
      batch_size, learning_rate: Adam on the mean squared error.
      max_epochs, patience: early stopping on validation RMSE; the best epoch's weights
        are kept (epoch 0, the untrained head, counts: the head is never worse than the
        biases on validation).
      seed: initialisation and shuffling.
    """

    bias_lambdas: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0)
    hidden: tuple[int, ...] = (128, 64)   # chosen on validation RMSE (README)
    category_dim: int = 8
    held_out_features: bool = True
    user_scale: bool = False
    factors: int = 128                    # with factor_l2 and learning_rate: chosen on
    factor_l2: float = 0.1                # validation RMSE (README)
    dropout: float = 0.0
    batch_size: int = 1024
    learning_rate: float = 0.003
    max_epochs: int = 20
    patience: int = 2
    seed: int = 0

    def __post_init__(self):
        _check_training(self)
        for name in ("batch_size", "max_epochs", "category_dim"):
            if getattr(self, name) <= 0:
                raise InputError(f"`{name}` should be a positive integer. "
                                 f"Received: {name}={getattr(self, name)}.")
        if not self.bias_lambdas or any(not l > 0 for l in self.bias_lambdas):
            raise InputError(f"`bias_lambdas` must be positive ridge strengths. "
                             f"Received: {list(self.bias_lambdas)}.")
        if self.factors < 0 or self.patience < 0:
            raise InputError(f"`factors` and `patience` must be >= 0. Received: "
                             f"factors={self.factors}, patience={self.patience}.")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"`dropout` must be in [0, 1). Received: {self.dropout}.")
