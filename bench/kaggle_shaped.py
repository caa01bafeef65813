"""The default synthetic world exported as the 2017 Kaggle MyAnimeList dump would hold
it: no entry times (so the feature stage splits each user in seeded random order), no
studios, tags, sources or seasons, scores on 1-10 with -1 for watched but unscored, and
PLANNING entries left out. A real-shaped check that runs offline: the public dumps'
shape, on a world whose ground truth we know.

    .venv/bin/python bench/kaggle_shaped.py --db data/anirank.db --out /tmp/k17
    python -m pipelines import-kaggle --db /tmp/k17/store.db --anime /tmp/k17/anime.csv \
        --ratings /tmp/k17/rating.csv
    python -m pipelines features --db /tmp/k17/store.db --out /tmp/k17/features
    python -m pipelines train-retrieval --features /tmp/k17/features --model /tmp/k17/model
    python -m pipelines train-ranking --features /tmp/k17/features --model /tmp/k17/model
    python -m pipelines evaluate --features /tmp/k17/features --model /tmp/k17/model

``--users 1000 --scored-only`` writes the shape of the public dump that crashed
``train-scores`` (issue 33): about a thousand users, ratings 1-10 and no -1 (the
watched-but-unscored entries left out), no entry times, so a random split, and catalog
titles whose every rating falls in held-out parts of lists; then

    python -m pipelines train-scores --features /tmp/k17/features --model /tmp/k17/model
"""

import argparse
import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="data/anirank.db", help="a raw store (the default world)")
    parser.add_argument("--out", required=True, help="directory for anime.csv and rating.csv")
    parser.add_argument("--users", type=int, default=None,
                        help="keep this many users, drawn at random (seed 0) (default: all)")
    parser.add_argument("--scored-only", action="store_true",
                        help="ratings 1-10 only: leave out the watched-but-unscored entries "
                             "(-1), as the ratings file of a scores-only dump")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(args.db) as con:
        media = pd.read_sql("select media_id, title_romaji, format, episodes, genres from media", con)
        entries = pd.read_sql("select user_id, media_id, score from entries "
                              "where status != 'PLANNING'", con)
    if args.users is not None:
        users = np.sort(entries["user_id"].unique())
        keep = np.random.default_rng(0).choice(users, min(args.users, len(users)), replace=False)
        entries = entries[entries["user_id"].isin(keep)]
    if args.scored_only:
        entries = entries[entries["score"] > 0]
    members = entries.groupby("media_id").size()
    mean = entries[entries["score"] > 0].groupby("media_id")["score"].mean() / 10
    pd.DataFrame({
        "anime_id": media["media_id"], "name": media["title_romaji"],
        "genre": media["genres"].map(lambda g: ", ".join(json.loads(g)) if g else ""),
        "type": media["format"],
        "episodes": media["episodes"].fillna(0).astype(int).astype(str).replace("0", "Unknown"),
        "rating": media["media_id"].map(mean).round(2),
        "members": media["media_id"].map(members).fillna(0).astype(int),
    }).to_csv(out / "anime.csv", index=False)
    rating = np.where(entries["score"] > 0, np.clip(np.round(entries["score"] / 10), 1, 10), -1)
    pd.DataFrame({"user_id": entries["user_id"], "anime_id": entries["media_id"],
                  "rating": rating.astype(int)}).to_csv(out / "rating.csv", index=False)
    print(f"{len(media):,} titles, {entries['media_id'].nunique():,} of them rated, "
          f"{entries['user_id'].nunique():,} users, {len(entries):,} ratings in {out}")


if __name__ == "__main__":
    main()
