"""``python -m pipelines``: one subcommand per stage, and ``run`` for the whole job.

Each subcommand is a thin layer over the stage's ``run()`` function, which can be called
from Python with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines import __version__, _env  # noqa: F401  (before anything imports TensorFlow)
from pipelines.config import (EASE_SIGNALS, LOSS_NAMES, PROTOCOLS, RELATION_SIGNALS, TARGETS,
                              FeatureConfig, RankingConfig, RetrievalConfig, ScoreConfig)
from pipelines.errors import AnirankError, InputError, os_error_line

DEFAULT_DB = "data/anirank.db"
DEFAULT_FEATURES = "data/features"
DEFAULT_MODEL = "data/model"
QUIET_HELP = "no progress bars (may come before or after the stage)"
COLD_HELP = ("refit the two-tower from scratch for the selection run's best epoch count "
             "(default: warm, from the model one period earlier, for a few epochs: "
             "bench/warm_refit.py shows it matches on validation)")

STAGES = """\
stages (data flows top to bottom; each reads what the one before it wrote):
  synth           seeded synthetic AniList world -> raw store (+ ground truth)
  import-kaggle   Kaggle MyAnimeList CSV dumps -> raw store
  features        raw store -> Parquet feature tables (split, user/anime features, vocab)
  train-retrieval feature tables -> two-tower model, ScaNN index, test metrics (model dir)
  train-ranking   feature tables + retrieval model -> listwise ranker, metrics (model dir)
  train-scores    feature tables + model dir -> score head (predicted_score), its RMSE/MAE
  evaluate        model dir + feature tables -> report (metrics.json, report.md, plots)
  walk-forward    the test with every method on the same data: stage one refit with the
                  chosen settings on the validation period too, the ranker over it, the
                  report (the headline numbers)
  release         the served model refit on every entry with the chosen settings (the
                  ranker on the newest period), replacing the model directory
  publish         model dir -> Hugging Face Hub model repo (model card, one commit)
  run             the whole job on the embedded default data: synth, features, retrieval,
                  ranking, score head, evaluation report, walk-forward test, release
  daily           one day of the daily loop: refresh the tracked users, score what they
                  did that day against yesterday's predictions, keep it, serve tomorrow

"""


def _add_synth_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("synthetic world")
    group.add_argument("--users", type=int, default=3000, help="number of users (default: %(default)s)")
    group.add_argument("--anime", type=int, default=2000, help="catalog size (default: %(default)s)")
    group.add_argument("--entries-per-user", type=float, default=110.0,
                       help="mean list length; lengths are long-tailed (default: 110). "
                            "--users 23000 --anime 15000 --entries-per-user 310 gives ~7M "
                            "entries, the size of the original AniList crawl")
    group.add_argument("--seed", type=_seed, default=0,
                       help="seed of the synthetic world: the same seed and sizes give the "
                            "same store (default: %(default)s)")
    group.add_argument("--future-days", type=int, default=7,
                       help="days the world goes on after the crawl (lists completed, "
                            "dropped, scored, titles added; new releases and sequels), held "
                            "back from the store in <db>.future.db for the stand-in AniList "
                            "server's clock (python -m tests.anilist_server --future); the "
                            "store is the same whatever it is; 0: none (default: %(default)s)")


def _add_feature_args(parser: argparse.ArgumentParser) -> None:
    defaults = FeatureConfig()
    group = parser.add_argument_group("features")
    group.add_argument("--out", default=DEFAULT_FEATURES,
                       help=f"feature table directory, replaced atomically (default: {DEFAULT_FEATURES})")
    group.add_argument("--protocol", choices=PROTOCOLS, default=defaults.protocol,
                       help="as_of: one time cutoff T for everyone (train before T, "
                            "validation [T, T+h), test [T+h, T+2h)), as a model trained today "
                            "and used tomorrow sees the data; per_user: the last fractions of "
                            "each user's own list by time. Lists without entry times are "
                            "split at random per user either way (default: %(default)s)")
    group.add_argument("--targets", choices=TARGETS, default=defaults.targets,
                       help="under a cutoff, which held-out entries are targets: changed = "
                            "every entry last changed in the period (a title added before "
                            "it and finished in it too); added = only titles added in the "
                            "period, the others left out of its rankings as serving hides "
                            "them (default: %(default)s)")
    group.add_argument("--as-of", metavar="DATE",
                       help="the cutoff T, an ISO date or datetime in UTC such as 2025-06-01 "
                            "(default: when 1 - validation - test fraction of the timed "
                            "entries had happened)")
    group.add_argument("--horizon-days", type=float,
                       help="length h of the validation and of the test period (default: "
                            "half the time from T to the last entry, so the two periods "
                            "cover the rest)")
    group.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction,
                       help="share of entries held out for validation: sets the default "
                            "cutoff, and the per-user share in the random and per_user "
                            "splits (default: %(default)s)")
    group.add_argument("--test-fraction", type=float, default=defaults.test_fraction,
                       help="share of entries held out for test, likewise (default: %(default)s)")
    group.add_argument("--min-entries-to-split", type=int, default=defaults.min_entries_to_split,
                       help="in the random and per_user splits, users with fewer entries "
                            "stay wholly in train (default: %(default)s)")
    group.add_argument("--interaction-statuses", default=",".join(defaults.interaction_statuses),
                       help="list statuses that count as watched, the positives of retrieval "
                            "(default: %(default)s)")
    group.add_argument("--min-interaction-score", type=int, default=defaults.min_interaction_score,
                       help="also require this POINT_100 score for an interaction; 0 keeps "
                            "unscored entries (default: %(default)s)")
    group.add_argument("--label-statuses", default=",".join(defaults.label_statuses),
                       help="statuses whose scores (when > 0) are ranking labels "
                            "(default: %(default)s)")
    group.add_argument("--history-length", type=int, default=defaults.history_length,
                       help="watched training titles in a user's history feature, the "
                            "highest-weighted (0: no history) (default: %(default)s)")
    group.add_argument("--history-half-life-days", type=float,
                       default=defaults.history_half_life_days,
                       help="a history title's weight halves every this many days before "
                            "the user's newest title (default: %(default)s)")
    group.add_argument("--split-seed", type=_seed, default=defaults.seed,
                       help="seed of the random train/validation/test split of users whose "
                            "entries have no times (default: %(default)s)")
    from pipelines.store import ENTRY_BLOCK

    group.add_argument("--block-entries", type=_block_entries, default=ENTRY_BLOCK,
                       help="entries read and processed at a time (whole users): memory "
                            "grows with it, not with the store; the tables are the same "
                            "whatever it is (default: %(default)s)")


# Each stage's outputs: (flag, attribute, kind); "store" is a file, "dir" a directory
# written whole (atomic), "batch" run's batch output.
OUTPUTS = {
    "synth": [("--db", "db", "store")], "import-kaggle": [("--db", "db", "store")],
    "features": [("--out", "out", "dir")], "train-retrieval": [("--model", "model", "dir")],
    "evaluate": [("--report", "report", "dir")], "walk-forward": [("--work", "work", "dir")],
    "release": [("--work", "work", "dir")], "daily": [("--out", "out", "dir")],
    "run": [("--db", "db", "store"), ("--out", "out", "dir"), ("--model", "model", "dir"),
            ("--walk-forward", "work", "dir"), ("--recommendations", "recommendations", "batch")],
}


def _check_outputs(args: argparse.Namespace) -> None:
    """A stage's settings (``run``: every stage's) and output paths checked before it
    writes or trains anything: a bad option, or an output that is a file or cannot be
    made, is named at once, not after the towers are trained."""
    if args.stage == "run":
        _feature_config(args), _retrieval_config(args), _ranking_config(args), _score_config(args)
    for flag, name, kind in OUTPUTS.get(args.stage, []):
        if getattr(args, name, None) is None:
            continue
        path = Path(getattr(args, name))
        if kind != "store" and path.exists() and not path.is_dir():
            raise InputError(f"{flag} {path} is a file, not a directory: pick another path "
                             "(the file is left as it is).")
        if kind == "batch" and path.exists():
            _check_batch_output(path)
        # The folder the output goes in, and that it takes new entries (an error here
        # names the path: see main).
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe"
        try:
            probe.mkdir(exist_ok=True)
        except OSError as err:
            raise InputError(f"{flag} {path} cannot be written ({err.strerror or err}): pick a "
                             "path in a folder you can write.") from None
        probe.rmdir()


def _check_batch_output(out: Path) -> None:
    """``run`` replaces its last batch output: only a batch job's files are removed."""
    from serving.batch import OUTPUT_NAMES

    if not (out.is_dir() and all(p.name in OUTPUT_NAMES or p.name.startswith(("part-", ".part-"))
                                 for p in out.iterdir())):
        raise InputError(f"--recommendations {out} holds something other than a batch job's "
                         "output, which `run` would replace: pick another path or remove it.")


def _seed(text: str) -> int:
    """A seed: a whole number from 0 to 2**32 - 1 (what numpy and TensorFlow take)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to {2**32 - 1} "
                                         f"(got {text!r})")
    return value


def _block_entries(text: str) -> int:
    from pipelines.store import ENTRY_BLOCK

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--block-entries must be a whole number of entries, "
                                         f"1 or more (got {text!r}); the default is "
                                         f"{ENTRY_BLOCK:,}")
    return value


def _add_retrieval_args(parser: argparse.ArgumentParser) -> None:
    d = RetrievalConfig()
    group = parser.add_argument_group("retrieval model")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"model directory, replaced atomically (default: {DEFAULT_MODEL})")
    group.add_argument("--ids-only", action="store_true",
                       help="train on user and anime ids alone (no side features)")
    group.add_argument("--no-history", action="store_true",
                       help="a query tower without the user's history (the weighted mean of "
                            "their watched titles' embeddings)")
    group.add_argument("--ablations", action="store_true",
                       help="also train the two-towers the report compares against: the "
                            "id-only one and the one without the history (about 2x the "
                            "stage's time; part of --evidence)")
    group.add_argument("--no-ease", action="store_true",
                       help="skip EASE: its baseline row and the second candidate generator "
                            "(the ranker then has the two-tower's candidates and signals "
                            "alone). Its cost grows with the titles cubed: 29 s at 4.8k "
                            "titles, 12 minutes and 8.6 GB at 14.4k on 2 cores "
                            "(docs/benchmarks.md, section 8)")
    group.add_argument("--embedding-dim", type=int, default=d.embedding_dim,
                       help="tower output size (default: %(default)s)")
    group.add_argument("--temperature", type=float, default=d.temperature,
                       help="softmax temperature over cosine scores (default: %(default)s)")
    group.add_argument("--no-logq", action="store_true",
                       help="turn off the sampling-bias (logQ) correction of in-batch negatives")
    group.add_argument("--cold-start-dropout", type=float, default=d.cold_start_dropout,
                       help="share of training pairs whose title the candidate tower sees as "
                            "a new title (id unknown, nothing counted), so titles first "
                            "listed after training are placed by their metadata; 0 turns it "
                            "off (default: %(default)s, chosen by bench/cold_start.py)")
    group.add_argument("--batch-size", type=int, default=d.batch_size,
                       help="training examples per batch; the other titles of a batch are "
                            "each example's negatives (default: %(default)s)")
    group.add_argument("--learning-rate", type=float, default=d.learning_rate,
                       help="Adam learning rate (default: %(default)s)")
    group.add_argument("--max-epochs", type=int, default=d.max_epochs,
                       help="upper bound; training stops early when validation Recall@100 "
                            "has not improved for --patience epochs (default: %(default)s)")
    group.add_argument("--patience", type=int, default=d.patience,
                       help="epochs without a better validation Recall@100 before training "
                            "stops; the best epoch's weights are kept (default: %(default)s)")
    group.add_argument("--train-seed", type=_seed, default=d.seed,
                       help="seed of the retrieval model's initialisation, shuffling and "
                            "validation sample (default: %(default)s)")
    group.add_argument("--input", choices=("auto", "memory", "stream"), default="auto",
                       help="where training reads its (user, title) pairs: memory (every "
                            "pair held and shuffled in this process) or stream (shard files "
                            "in a temporary directory, read through a bounded shuffle "
                            "buffer; memory does not grow with the pairs). auto: memory on "
                            "one machine, stream when TF_CONFIG names several workers, each "
                            "training on its share (README: Training on N machines) "
                            "(default: %(default)s)")


def _add_refit_args(parser: argparse.ArgumentParser, model_help: str, work_help: str) -> None:
    """The options of the stages that refit the selection run's model (walk-forward,
    release)."""
    parser.add_argument("--db", default=DEFAULT_DB,
                        help=f"raw store the features came from (default: {DEFAULT_DB})")
    parser.add_argument("--features", default=DEFAULT_FEATURES,
                        help=f"the selection run's feature tables (default: {DEFAULT_FEATURES})")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"{model_help} (default: {DEFAULT_MODEL})")
    parser.add_argument("--cold-refit", action="store_true", help=COLD_HELP)
    parser.add_argument("--work", default=None, help=work_help)


def _retrieval_config(args: argparse.Namespace) -> RetrievalConfig:
    return RetrievalConfig(
        features="ids" if args.ids_only else "all", history=not args.no_history,
        embedding_dim=args.embedding_dim,
        temperature=args.temperature, logq_correction=not args.no_logq,
        cold_start_dropout=args.cold_start_dropout, batch_size=args.batch_size, learning_rate=args.learning_rate,
        max_epochs=args.max_epochs, patience=args.patience, seed=args.train_seed)


def _add_ranking_args(parser: argparse.ArgumentParser) -> None:
    d = RankingConfig()
    group = parser.add_argument_group("ranking model")
    group.add_argument("--loss", default=d.loss, choices=sorted(LOSS_NAMES),
                       help="listwise loss of the saved ranker (default: %(default)s)")
    group.add_argument("--compare-losses", action="store_true",
                       help="also train one ranker per other loss on the same lists and "
                            "compare them on validation (part of --evidence)")
    group.add_argument("--labelled-per-list", type=int, default=d.labelled_per_list,
                       help="relevant titles per training list (default: %(default)s)")
    group.add_argument("--negatives-per-list", type=int, default=d.negatives_per_list,
                       help="retrieved titles the user did not watch, per list (default: %(default)s)")
    group.add_argument("--missed-per-list", type=int, default=d.missed_per_list,
                       help="scored titles of the period that retrieval missed, added to each "
                            "list; 0 trains only on what serving shows (default: %(default)s)")
    group.add_argument("--candidates", type=int, default=d.num_candidates,
                       help="the two-tower's top-K that ranking reorders (default: %(default)s)")
    group.add_argument("--ease-candidates", type=int, default=d.ease_candidates,
                       help="titles EASE adds to them (its top ones the two-tower missed; 0 = "
                            "none; a model without EASE has none) (default: %(default)s)")
    group.add_argument("--no-ease-signals", action="store_true",
                       help="the ranker does not read EASE's score and rank of each candidate")
    group.add_argument("--no-franchise-signal", action="store_true",
                       help="the ranker does not read how many watched titles each candidate "
                            "continues (a source without relations between titles has no such "
                            "signal anyway)")
    group.add_argument("--ranking-ablations", action="store_true",
                       help="also train the ablation rankers the report compares against "
                            "(EASE candidates switched, without the EASE signals, without "
                            "the franchise signal, without the residual form), each with its "
                            "paired CI (part of --evidence)")
    group.add_argument("--ranking-epochs", type=int, default=d.max_epochs,
                       help="upper bound; early stopping on held-out NDCG@10 (default: %(default)s)")
    group.add_argument("--ranking-seed", type=_seed, default=d.seed,
                       help="seed of the ranker's list sampling, shuffling and "
                            "initialisation (default: %(default)s)")


def _ranking_config(args: argparse.Namespace) -> RankingConfig:
    return RankingConfig(loss=args.loss, labelled_per_list=args.labelled_per_list,
                         negatives_per_list=args.negatives_per_list,
                         missed_per_list=args.missed_per_list, num_candidates=args.candidates,
                         ease_candidates=args.ease_candidates,
                         signals=tuple(s for s in RankingConfig().signals
                                       if not (args.no_ease_signals and s in EASE_SIGNALS
                                               or args.no_franchise_signal
                                               and s in RELATION_SIGNALS)),
                         max_epochs=args.ranking_epochs, seed=args.ranking_seed)


def _add_score_args(parser: argparse.ArgumentParser) -> None:
    d = ScoreConfig()
    group = parser.add_argument_group("score head")
    group.add_argument("--score-epochs", type=int, default=d.max_epochs,
                       help="upper bound; early stopping on validation RMSE (default: %(default)s)")
    group.add_argument("--score-seed", type=_seed, default=d.seed,
                       help="seed of the score head's initialisation and shuffling "
                            "(default: %(default)s)")


def _score_config(args: argparse.Namespace) -> ScoreConfig:
    return ScoreConfig(max_epochs=args.score_epochs, seed=args.score_seed)


def _feature_config(args: argparse.Namespace) -> FeatureConfig:
    return FeatureConfig(
        protocol=args.protocol, targets=args.targets, as_of=args.as_of,
        horizon_days=args.horizon_days,
        validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
        min_entries_to_split=args.min_entries_to_split,
        interaction_statuses=tuple(s.strip().upper() for s in args.interaction_statuses.split(",")),
        min_interaction_score=args.min_interaction_score,
        label_statuses=tuple(s.strip().upper() for s in args.label_statuses.split(",")),
        history_length=args.history_length,
        history_half_life_days=args.history_half_life_days, seed=args.split_seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines",
        description="anirank: two-stage anime recommendations. Runs the pipeline stages.",
        epilog=STAGES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    parser.add_argument("--version", action="version", version=f"anirank {__version__}",
                        help="print the anirank version and exit")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    # --quiet is also accepted after the stage. SUPPRESS: a stage that is not given it
    # leaves the value of the top-level option alone instead of resetting it to False.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help=QUIET_HELP)

    def add_stage(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    synth = add_stage(
        "synth", help="generate a seeded synthetic AniList world into the raw store",
        description="Writes a synthetic AniList-shaped world (anime, users, list entries) "
                    "into the raw store, built in a temporary file and renamed into place, "
                    "and its ground truth beside it as <db>.truth.npz. The same seed gives "
                    "the same store.")
    synth.add_argument("--db", default=DEFAULT_DB, help=f"raw store path (default: {DEFAULT_DB})")
    _add_synth_args(synth)

    kaggle = add_stage(
        "import-kaggle", help="import the Kaggle MyAnimeList CSV dumps into the raw store",
        description="Imports anime.csv and a ratings file (rating.csv, animelist.csv or "
                    "rating_complete.csv) from the 2017 or 2020 Kaggle MyAnimeList data "
                    "sets; the format is read from the header. Bad rows are counted by "
                    "reason and skipped. Re-importing the same files changes nothing.")
    kaggle.add_argument("--db", default=DEFAULT_DB, help=f"raw store path (default: {DEFAULT_DB})")
    kaggle.add_argument("--anime", required=True, help="path to anime.csv")
    kaggle.add_argument("--ratings",
                        help="path to rating.csv / animelist.csv / rating_complete.csv "
                             "(default: none; only the titles are imported)")

    features = add_stage(
        "features", help="raw store -> Parquet feature tables",
        description="Splits the entries into train/validation/test (by default at one "
                    "time cutoff for everyone, see --protocol), computes user features, "
                    "title statistics (popularity, favourites, mean score), vocabularies "
                    "and normalisation statistics from train only; writes "
                    "interactions/users/anime Parquet tables and schema.json.")
    features.add_argument("--db", default=DEFAULT_DB, help=f"raw store path (default: {DEFAULT_DB})")
    _add_feature_args(features)

    retrieval = add_stage(
        "train-retrieval", help="feature tables -> two-tower model + ScaNN index + metrics",
        description="Trains the two-tower retrieval model (in-batch softmax with logQ "
                    "correction, early stopping on validation Recall@100), evaluates it "
                    "on the test split against most-popular and an id-only two-tower, "
                    "measures ScaNN against brute force, and writes the model directory "
                    "(towers as SavedModels, index, config.json, metrics.json).")
    retrieval.add_argument("--features", default=DEFAULT_FEATURES,
                           help=f"feature table directory (default: {DEFAULT_FEATURES})")
    _add_retrieval_args(retrieval)

    ranking = add_stage(
        "train-ranking", help="feature tables + retrieval model -> listwise ranker + metrics",
        description="Builds lists of retrieved and relevant titles (validation period by "
                    "default), trains the listwise ranker (ApproxNDCG by default, one per "
                    "loss for the comparison), evaluates list NDCG on held-out titles and "
                    "end-to-end retrieve-then-rank on the test split, and adds ranker/ and "
                    "the metrics to the model directory.")
    ranking.add_argument("--features", default=DEFAULT_FEATURES,
                         help=f"feature table directory (default: {DEFAULT_FEATURES})")
    ranking.add_argument("--model", default=DEFAULT_MODEL,
                         help=f"model directory with a trained retrieval model (default: {DEFAULT_MODEL})")
    _add_ranking_args(ranking)

    scores = add_stage(
        "train-scores", help="feature tables + model dir -> score head + its RMSE/MAE",
        description="Trains the score head (the POINT_100 score a user gives a title: "
                    "ridge user + title biases plus an interaction MLP over user and title "
                    "features, fitted on the training scores, early-stopped on validation "
                    "RMSE), measures RMSE/MAE on the test scores beside the score "
                    "baselines, and adds scorer/ and the metrics to the model directory.")
    scores.add_argument("--features", default=DEFAULT_FEATURES,
                        help=f"feature table directory (default: {DEFAULT_FEATURES})")
    scores.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model directory with a trained retrieval model (default: {DEFAULT_MODEL})")
    _add_score_args(scores)

    evaluate = add_stage(
        "evaluate", help="model dir + feature tables -> evaluation report",
        description="Recomputes every metric from the saved towers, index and ranker on "
                    "the test split, beside popularity, random and (on synthetic data) "
                    "the generator's own reference rows, and writes <model>/report/ with "
                    "metrics.json, "
                    "report.md and PNG plots, atomically.")
    evaluate.add_argument("--model", default=DEFAULT_MODEL, help=f"model directory (default: {DEFAULT_MODEL})")
    evaluate.add_argument("--features", default=DEFAULT_FEATURES,
                          help=f"feature table directory (default: {DEFAULT_FEATURES})")
    evaluate.add_argument("--report", default=None, help="report directory (default: <model>/report)")
    evaluate.add_argument("--truth", default=None,
                          help="ground truth of a synthetic world (default: <db>.truth.npz "
                               "beside the store the features came from, if present)")

    walk = add_stage(
        "walk-forward", help="the test with every method on the same data (the headline)",
        description="The selection run's test compares methods on unequal data: the ranker "
                    "learned from the validation period while the two-tower, EASE and the "
                    "popularity baselines were fitted before it and queried with histories "
                    "that end at its start. This refits stage one with the settings chosen "
                    "on validation (the two-tower warm from it, EASE's lambda) on every entry "
                    "before the test period, reorders its candidates with the selection run's "
                    "ranker, and evaluates every method on the same test period: each fitted "
                    "on, and queried with, the same entries. Writes <work>/features, "
                    "<work>/model (with its full report) and the headline into "
                    "<model>/metrics.json (walk_forward) and <model>/report/report.md.")
    _add_refit_args(walk, "the selection run's model directory",
                    "where the walk-forward tables and refit model go, each replaced "
                    "atomically (default: walk_forward/ beside --model)")

    rel = add_stage(
        "release", help="the served model: refit on every entry (knows today)",
        description="After walk-forward: refits stage one on every entry of the store with "
                    "the settings the selection run chose (the two-tower warm from the "
                    "walk-forward one, EASE's lambda), the ranker on the newest period's "
                    "lists over the walk-forward stage one, and the score head on every score, then replaces the model "
                    "directory with it in one swap (the model it replaces is kept in "
                    "<work>/selection). config.json trained_through is the newest entry time "
                    "it learned from; its report and metrics are the walk-forward test's.")
    _add_refit_args(rel, "the selection run's model directory, replaced",
                    "the walk-forward run's directory (default: walk_forward/ beside --model)")

    publish = add_stage(
        "publish", help="model dir -> Hugging Face Hub model repo",
        description="Writes the model card (README.md) into the model directory and uploads "
                    "the directory to a Hub model repo in one commit (creating the repo if "
                    "needed). The token comes from HF_TOKEN or `hf auth login`; the "
                    "endpoint from HF_ENDPOINT (default: https://huggingface.co). To try "
                    "it with no network, see the README, \"Try it without network\".")
    publish.add_argument("--model", default=DEFAULT_MODEL, help=f"model directory (default: {DEFAULT_MODEL})")
    publish.add_argument("--repo", required=True, help="Hub repo id, e.g. your-name/anirank-demo")
    publish.add_argument("--private", action="store_true", help="create the repo private")
    publish.add_argument("--message", help="commit message (default: the headline metrics)")
    publish.add_argument("--source-url",
                         help="the anirank repository the card links to and installs from "
                              "(`pip install \"anirank @ git+URL\"`); default: no link, the "
                              "card says to install from a checkout")

    daily = add_stage(
        "daily", help="one day of the daily loop (safe to run from cron)",
        description="For day --date (UTC): refreshes the tracked users' AniList lists "
                    "(only the lists that changed), selects the entries completed, dropped "
                    "or scored that day and the titles added, predicts their scores with "
                    "the model and looks them up in the lists served the day before, "
                    "compares both with the baselines (user and title mean score, recent "
                    "popularity), stores it all in the raw store (one transaction per day: "
                    "a rerun replaces the day), serves the next day's lists and rewrites "
                    "the monitoring report.",
        epilog="cron, every day at 02:00 UTC for the day before: 0 2 * * * cd /srv/anirank && "
               ".venv/bin/python -m pipelines daily --date $(date -u -d yesterday +\\%F) "
               "--model your-name/anirank --revision <commit> --endpoint "
               "https://graphql.anilist.co --quiet")
    daily.add_argument("--date", default=None,
                       help="the day, YYYY-MM-DD in UTC (default: today in UTC)")
    daily.add_argument("--db", default=DEFAULT_DB, help=f"raw store path (default: {DEFAULT_DB})")
    daily.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"model directory or Hub repo id (default: {DEFAULT_MODEL})")
    daily.add_argument("--revision", default=None,
                       help="Hub revision to pin (a commit or tag; it also names the model in "
                            "the daily tables); default: the model files' digest")
    daily.add_argument("--endpoint", default=None,
                       help="AniList GraphQL endpoint to refresh from, e.g. "
                            "https://graphql.anilist.co (default: none, so required unless "
                            "--no-refresh: the daily job never talks to AniList unasked)")
    daily.add_argument("--rate", type=float, default=None,
                       help="AniList requests per minute (default: the client's, AniList's limit)")
    daily.add_argument("--no-refresh", action="store_true",
                       help="use the store as it is (kept fresh by other means)")
    daily.add_argument("--users", default=None,
                       help="file of user ids to track, one per line (default: the model's "
                            "training users)")
    daily.add_argument("--out", default="data/daily",
                       help="where served lists and the monitoring report go (default: %(default)s)")
    daily.add_argument("--k", type=int, default=100,
                       help="titles served per user, so hit@10 and hit@100 can be measured "
                            "(default: %(default)s)")
    daily.add_argument("--mae-threshold", type=float, default=None,
                       help="the MAE above which, for --alert-days days, the report asks for "
                            "a retrain (default: 1.25 x the model's test MAE)")
    daily.add_argument("--alert-days", type=int, default=3,
                       help="days in a row before an alert (default: %(default)s)")
    daily.add_argument("--retrain-if-degraded", action="store_true",
                       help="when the MAE has stayed above --mae-threshold for --alert-days "
                            "days: build features of the refreshed store, train a candidate "
                            "with the model's own configs and put it in service only if it is "
                            "no worse on validation (NDCG@10 and score MAE, paired bootstrap "
                            "CI); a local --model directory is replaced, a Hub model gets a "
                            "new commit (see --publish-repo). Written to "
                            "<out>/retrain/<date>/decision.json")
    daily.add_argument("--publish-repo", default=None,
                       help="Hub repo a released retrain is published to (default: the "
                            "--model repo when it is a Hub repo id; a local --model "
                            "directory is replaced in place)")

    run = add_stage(
        "run", help="the whole job on the default synthetic data",
        description="Generates the default synthetic world, builds its feature tables, "
                    "trains and evaluates the retrieval model, then the ranker, then the "
                    "score head, and writes the evaluation report.")
    run.add_argument("--db", default=DEFAULT_DB, help=f"raw store path (default: {DEFAULT_DB})")
    _add_synth_args(run)
    _add_feature_args(run)
    _add_retrieval_args(run)
    _add_ranking_args(run)
    _add_score_args(run)
    run.add_argument("--walk-forward", default=None, dest="work",
                     help="where the walk-forward test's tables and refit models go "
                          "(default: walk_forward/ beside --model)")
    run.add_argument("--cold-refit", action="store_true", help=COLD_HELP)
    run.add_argument("--evidence", action="store_true",
                     help="also train every comparison the report's evidence rests on: "
                          "--ablations, --compare-losses and --ranking-ablations (about 3x "
                          "the time; `make evidence`). Without it the report has the model, "
                          "its baselines (EASE, popularity, recent popularity, retrieval "
                          "order) and their paired CIs")
    run.add_argument("--recommendations", default="data/recommendations",
                     help="where the final batch job writes every user's top 10 "
                          "(default: %(default)s)")
    return parser


def _evidence(args: argparse.Namespace, comparison: str) -> bool:
    """Whether a stage trains ``comparison``: its own flag, or ``run --evidence``."""
    return bool(getattr(args, comparison, False) or getattr(args, "evidence", False))


def _single_machine(stage: str) -> None:
    """Raises an ``InputError`` when ``TF_CONFIG`` names several processes: only
    ``train-retrieval`` trains on several machines."""
    from pipelines import distribution

    where = distribution.cluster()
    if where.size > 1:
        raise InputError(f"{distribution.VARIABLE} names {where.size} processes, but `{stage}` "
                         "runs on one machine: only `train-retrieval` trains on several. Unset "
                         f"{distribution.VARIABLE} for `{stage}`.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.quiet
    try:
        if args.stage == "run":
            _single_machine("run")
        _check_outputs(args)
        if args.stage in ("synth", "run"):
            from pipelines import synth

            summary = synth.run(args.db, users=args.users, anime=args.anime,
                                entries_per_user=args.entries_per_user, seed=args.seed,
                                future_days=args.future_days, progress=progress)
            print(f"synthetic world: {summary['users']:,} users, {summary['anime']:,} anime, "
                  f"{summary['entries']:,} entries in {summary['db']} ({summary['seconds']} s); "
                  f"ground truth in {summary['truth']}")
            if "future" in summary:
                print(synth.format_future(summary["future"]))
        if args.stage == "import-kaggle":
            from pipelines import kaggle

            summary = kaggle.run(args.db, anime=args.anime, ratings=args.ratings,
                                 progress=progress)
            print(json.dumps(summary, indent=2))
        if args.stage in ("features", "run"):
            from pipelines import features

            summary = features.run(args.db, args.out, _feature_config(args), progress=progress,
                                   block_entries=args.block_entries)
            print(features.format_summary(summary))
        if args.stage in ("train-retrieval", "run"):
            from pipelines import train_retrieval

            source = args.out if args.stage == "run" else args.features
            metrics = train_retrieval.run(source, args.model, _retrieval_config(args),
                                          ablation=_evidence(args, "ablations"),
                                          with_ease=not args.no_ease, progress=progress,
                                          input=args.input)
            if "worker" in metrics:  # a non-chief process of a distributed training
                print(train_retrieval.format_worker(metrics))
                return 0
            print(train_retrieval.format_metrics(metrics))
            if args.stage == "train-retrieval":
                print(f"model in {args.model} (metrics: {args.model}/metrics.json)")
        if args.stage in ("train-ranking", "run"):
            from pipelines import train_ranking

            source = args.out if args.stage == "run" else args.features
            metrics = train_ranking.run(source, args.model, _ranking_config(args),
                                        compare_losses=_evidence(args, "compare_losses"),
                                        with_ablations=_evidence(args, "ranking_ablations"),
                                        progress=progress)
            print(train_ranking.format_metrics(metrics))
            print(f"model in {args.model} (metrics: {args.model}/metrics.json)")
        if args.stage in ("train-scores", "run"):
            from pipelines import train_scores

            source = args.out if args.stage == "run" else args.features
            metrics = train_scores.run(source, args.model, _score_config(args), progress=progress)
            print(train_scores.format_metrics(metrics))
            print(f"model in {args.model} (metrics: {args.model}/metrics.json)")
        if args.stage in ("evaluate", "run"):
            from pipelines import evaluate

            source = args.out if args.stage == "run" else args.features
            report = evaluate.run(args.model, source, getattr(args, "report", None),
                                  getattr(args, "truth", None), progress=progress)
            print(evaluate.format_summary(report))
        if args.stage in ("walk-forward", "release", "run"):
            from pipelines import walk_forward

            source = args.out if args.stage == "run" else args.features
            warm = None if args.cold_refit else walk_forward.WARM_EPOCHS
            if args.stage != "release":
                walked = walk_forward.run(args.db, source, args.model, args.work,
                                          warm_epochs=warm, progress=progress)
                print(walk_forward.format_summary(walked))
            if args.stage != "walk-forward":
                released = walk_forward.release(args.db, source, args.model, args.work,
                                                warm_epochs=warm, progress=progress)
                print(walk_forward.format_release(released))
        if args.stage == "run":
            import shutil

            from serving import batch

            # A new run is a new job: its batch output replaces the last run's, and only
            # a batch output is removed (a mistyped path must not cost a directory).
            out = Path(args.recommendations)
            if out.exists():
                _check_batch_output(out)
                shutil.rmtree(out)
            summary = batch.run(args.model, "all", args.recommendations, progress=progress)
            print(f"recommendations for {summary['users']:,} users in {summary['out']} "
                  f"({summary['seconds']} s)")
            print(f"report: {report['report']}/report.md")
        if args.stage == "daily":
            from pipelines import daily

            summary = daily.run(args.date, db=args.db, model=args.model, revision=args.revision,
                                endpoint=args.endpoint, users=args.users, out=args.out,
                                k=args.k, refresh=not args.no_refresh, rate=args.rate,
                                mae_threshold=args.mae_threshold, alert_days=args.alert_days,
                                progress=progress)
            print(daily.describe(summary))
            if args.retrain_if_degraded and summary["monitoring"]["degraded"]:
                from pipelines import retrain

                result = retrain.run(args.db, args.model, summary["day"], args.out,
                                     revision=args.revision, publish_repo=args.publish_repo,
                                     progress=progress)
                print(retrain.describe(result))
        if args.stage == "publish":
            from pipelines import publish

            result = publish.run(args.model, args.repo, private=args.private,
                                 commit_message=args.message, source_url=args.source_url)
            print(f"published {args.model} to {result['repo']}: commit {result['commit']}\n"
                  f"{result['url']}")
    except AnirankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:   # a path no check above named (e.g. an output in /proc)
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
