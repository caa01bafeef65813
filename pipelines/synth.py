"""A seeded synthetic AniList world, written to the raw store, with its ground truth.

Why: AniList cannot be reached from CI or a fresh laptop, and a real crawl has no ground
truth. This world has AniList's shape (formats, studios, genres, tags, franchises and
their relations, long-tailed popularity and activity, personal rating scales, list
statuses and times) and a known generative model, so every stage runs offline and
evaluation can report the generator's own reference rows. It is built so that no one kind of model is favoured
by construction: side features (genre, format, studio, year) carry taste, and so does
structure only the lists show (franchises, watching cohorts, seasons), which
item-item models such as EASE exploit on real data.

The catalog. Titles get a format, a studio (Zipf output, a house style and favourite
genres), 1-6 genres, tags, a release season and an exposure (a power law over a latent
appeal: how visible the title is on the site, not counted from lists). About 3 in 10
continue a franchise: a TV/ONA root gets 2nd/3rd seasons and movies (SEQUEL/PREQUEL,
in release order) and OVAs, specials and music videos (SIDE_STORY/PARENT), each aired a
few seasons after the one before, with the root's genres, its studio (mostly), style
and latent taste; the relations are written to ``media_relations``.

Taste. Each anime ``a`` and user ``u`` get a vector; true affinity is their dot
product ``aff(u, a) = U[u] . A[a]`` with

    A[a] = [genres_a / |genres_a|, onehot(format_a), style_a, latent_a, recency_a, quality_a]
    U[u] = [genre_taste_u,          format_taste_u,  style_u, latent_u, recency_u, 1]

so a user's genre and format taste, a studio's style and the title's year carry signal
a side-feature model can use; ``latent`` is taste no feature explains.

Which titles a user adds. The log-odds of user ``u`` adding title ``a`` are

    POPULARITY_BIAS * log_exposure_a + TASTE_BIAS * aff(u, a)
      + COHORT_BIAS * [a in the hidden title set of u's cohort]
      + SEASONAL_BIAS * seasonal_u * [a aired after u joined]

Cohorts are groups of users (friends, a forum, a club; about 60 users each, most users
in one) who share a hidden set of titles across genres and studios: co-watching that
only the lists show, so item-item co-occurrence carries signal ids can learn and side
features cannot. ``seasonal_u`` is how much the user follows the airing season. A list
is drawn without replacement with these keys plus Gumbel noise (Gumbel top-k), then
franchises act on it: a sequel or side story brings its prequel/parent onto the list
(unless the user is among the few who watch it standalone), and a user who liked a
title (its perceived score, below) adds its sequels with high probability and its side
stories less often, repeatedly along the franchise. These last steps depend on the
user's own list, so they have no per-(user, title) closed form.

Entries. The perceived quality is ``aff + noise``; it sets the status (DROPPED when the
title disappoints; a title whose sequel the user went on to add is finished), the
POINT_100 score ``mean_u + spread_u * (aff + noise - centre) / scale`` on the user's
own scale and rounding, and favourites. Times come after the account and the airing
date: for titles that aired while the user was a member, seasonal watchers add them a
few weeks after release (``created_at`` clusters after each season starts); the rest are
added soon after, or any time since; a sequel is added after its prequel was added and
watched; completion follows the start by about the watch time.

The media table is what AniList would show as of the crawl (``NOW``), counted from the
world's own lists: ``popularity`` = entries of the title (all statuses), ``favourites``
= entries marked favourite, ``mean_score`` = mean non-zero score (NULL if none),
``average_score`` = that mean shrunk toward the site mean for titles few people scored.

The ground truth (``U``, ``A``, exposure, cohorts, seasonality, scale and noise
parameters) is saved beside the store as ``<db>.truth.npz``; ``Truth.affinity``
recomputes any user's affinity to any title and ``Truth.adding_log_odds`` the log-odds
above (the evaluation's "generator's odds": everything but the franchise steps).

The future. The world goes on for ``future_days`` after the crawl (issue #19: a daily
prediction service needs days to predict), written beside the store as
``<db>.future.db`` and held back from it, on random streams of its own, so the store
and the truth are the same, byte for byte, with or without it. Titles appear (about one
a day per 1,000 in the catalog): continuations of franchises whose latest title aired
at least half a year ago and originals, drawn as the catalog's are and airing from the
moment they appear. Each day, a user is active with a chance that grows with their list
length and fades with the time since their list last changed; an active user finishes
titles (DROPPED when it disappoints, else COMPLETED, scored on their own scale by the
rule above), watches the next episode of an airing one, starts a planned one, scores a
finished one, or adds a title by the truth's log-odds; fans of a continuation's prequel
and seasonal watchers add the new titles within days. Every change is a new version of
the entry, at its time of day (UTC); ``read_future`` gives them with the new titles,
their relations and truth (``Future``), and ``Future.day_outcomes`` each day's
completions, drops and new scores (``outcomes``). ``tests/anilist_server.py`` serves the
store and its future as of a clock, so the real client's ``refresh`` brings one day at a
time into a crawled store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipelines import atomic, store
from pipelines.arrays import find_sorted
from pipelines.errors import InputError, StoreError

GENRES = (
    "Action", "Adventure", "Comedy", "Drama", "Ecchi", "Fantasy", "Hentai", "Horror",
    "Mahou Shoujo", "Mecha", "Music", "Mystery", "Psychological", "Romance", "Sci-Fi",
    "Slice of Life", "Sports", "Supernatural", "Thriller",
)
# How often each genre appears on AniList titles (relative), Hentai kept rare.
_GENRE_WEIGHTS = np.array([
    20, 12, 22, 14, 5, 14, 1.5, 3, 2, 5, 4, 5, 3, 10, 9, 9, 4, 7, 2.5])
FORMATS = ("TV", "MOVIE", "OVA", "ONA", "SPECIAL", "TV_SHORT", "MUSIC")
_FORMAT_SHARES = np.array([0.34, 0.12, 0.13, 0.14, 0.12, 0.07, 0.08])
SOURCES = ("ORIGINAL", "MANGA", "LIGHT_NOVEL", "VISUAL_NOVEL", "VIDEO_GAME", "NOVEL",
           "WEB_NOVEL", "OTHER")
_SOURCE_SHARES = np.array([0.30, 0.32, 0.12, 0.06, 0.07, 0.05, 0.04, 0.04])
SEASONS = ("WINTER", "SPRING", "SUMMER", "FALL")
# Tags, each tied to the genre it most often comes with.
TAGS = {
    "Action": ("Super Power", "Swordplay", "Martial Arts", "Gunfights"),
    "Adventure": ("Travel", "Treasure Hunt", "Survival"),
    "Comedy": ("Parody", "Slapstick", "Gag Humor", "Surreal Comedy"),
    "Drama": ("Tragedy", "Coming of Age", "Family Life"),
    "Ecchi": ("Fan Service", "Harem"),
    "Fantasy": ("Isekai", "Magic", "Dragons", "Elf"),
    "Hentai": ("Nudity",),
    "Horror": ("Gore", "Zombie", "Body Horror"),
    "Mahou Shoujo": ("Magical Girl Transformation", "Idol"),
    "Mecha": ("Real Robot", "Super Robot", "Space"),
    "Music": ("Band", "Musical Theater"),
    "Mystery": ("Detective", "Conspiracy", "Amnesia"),
    "Psychological": ("Philosophy", "Mind Games", "Unreliable Narrator"),
    "Romance": ("Love Triangle", "Boys' Love", "Yuri", "Heterosexual"),
    "Sci-Fi": ("Time Manipulation", "Cyberpunk", "Post-Apocalyptic", "Aliens"),
    "Slice of Life": ("Iyashikei", "School", "Cute Girls Doing Cute Things", "Food"),
    "Sports": ("Baseball", "Basketball", "Volleyball", "Team Sports"),
    "Supernatural": ("Youkai", "Ghost", "Vampire", "Demons"),
    "Thriller": ("Crime", "Revenge", "Terrorism"),
}
_WORDS = (
    "Sora", "Hoshi", "Kaze", "Yume", "Tsuki", "Hikari", "Kage", "Hana", "Umi", "Yoru",
    "Kokoro", "Mirai", "Sekai", "Tenshi", "Akuma", "Ken", "Shiro", "Kuro", "Ao", "Aka",
    "Natsu", "Fuyu", "Haru", "Aki", "Tori", "Ryuu", "Kitsune", "Neko", "Inu", "Hime",
    "Oujo", "Senpai", "Gakkou", "Mahou", "Senki", "Monogatari", "Densetsu", "Kiseki",
    "Tabi", "Uta",
)
_STUDIO_PARTS = ("Sun", "Moon", "Bones", "Gear", "Pierrot", "Kyo", "Madhou", "Trigg",
                 "Wit", "Shaft", "Ufo", "Mappa", "Lerch", "Feel", "Silver", "Cloud",
                 "Arts", "Link", "Zero", "Lapin")
STYLE_DIM = 8
LATENT_DIM = 8

# The world's "now": fixed, so the same seed gives the same store on any date.
NOW = int(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp())
_DAY = 86_400
POPULARITY_BIAS = 0.55  # exposure: weight of log exposure ...
TASTE_BIAS = 1.6  # ... of true affinity in which titles a user adds ...
COHORT_BIAS = 2.5  # ... of the user's cohort's hidden titles ...
SEASONAL_BIAS = 0.8  # ... and of titles that aired while a seasonal watcher was a member
COHORT_SIZE = 60  # users per cohort, on average
COHORT_TITLES = 40  # hidden titles a cohort shares
COHORT_SHARE = 0.8  # share of users in a cohort
FRANCHISE_SHARE = 0.35  # share of titles that continue a franchise
STANDALONE = 0.04  # chance a user watches a sequel without its prequel
_MAIN_FORMATS = (0, 1, 3, 5)  # TV, MOVIE, ONA, TV_SHORT continue the main line (SEQUEL)
_USER_CHUNK = 512  # users generated per block: bounds memory, and part of the seed stream
_BASE_LENGTH = 0.7  # list length drawn before franchises add prequels and sequels


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Size and seed of the world. Defaults: a demo world (~3k users, 2k anime, ~300k
    entries) that generates in well under 30 s.

    Attributes:
      users: number of users.
      anime: number of anime in the catalog.
      entries_per_user: mean list length (roughly: franchises add prequels and sequels
        to a drawn list); lengths are log-normal (long-tailed), capped at 80% of the
        catalog before franchises act.
      activity_sigma: spread of log list length (1.1: ~20% of users under 20 entries,
        ~1% over 1,000 at the default mean).
      seed: everything random derives from it.
      future_days: days after the crawl the world goes on for, held back from the store
        in ``<db>.future.db`` (``read_future``); 0: no future. Not recorded in the store,
        which is the same whatever it is.
    """

    users: int = 3000
    anime: int = 2000
    entries_per_user: float = 110.0
    activity_sigma: float = 1.1
    seed: int = 0
    future_days: int = 7

    def __post_init__(self):
        if self.users < 1 or self.anime < 10:
            raise InputError(
                f"Need at least 1 user and 10 anime. Received: users={self.users}, "
                f"anime={self.anime}.")
        if self.entries_per_user <= 0:
            raise InputError(
                f"`entries_per_user` must be positive. Received: {self.entries_per_user}.")
        if not 0 <= self.future_days <= 366:
            raise InputError(
                f"`future_days` must be between 0 (no future) and 366. Received: "
                f"{self.future_days}.")


def _positions(sorted_ids: np.ndarray, ids, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    pos, found = find_sorted(sorted_ids, ids)
    unknown = ~found
    if unknown.any():
        raise InputError(f"{unknown.sum()} {what} ids are not in this world, "
                         f"e.g. {ids[unknown][:3].tolist()}.")
    return pos


@dataclasses.dataclass(frozen=True)
class Truth:
    """The generator's ground truth for one world.

    Attributes:
      user_ids: ``[num_users]`` AniList-style user ids, sorted.
      media_ids: ``[num_anime]`` media ids, sorted.
      user_vectors: ``[num_users, d]``; ``anime_vectors``: ``[num_anime, d]``.
      user_mean, user_spread: ``[num_users]`` personal rating scale (POINT_100).
      centre, scale: affinity -> standard score normalisation shared by all users.
      noise_sd: standard deviation of the per-entry noise added to affinity.
      log_exposure: ``[num_anime]`` the generator's exposure term (log of how visible a
        title is on the site), not the store's ``popularity`` (which counts the lists).
      user_cohort: ``[num_users]`` each user's cohort (row of ``cohort_titles``), -1 if
        in none.
      cohort_titles: ``[num_cohorts, k]`` the hidden titles (rows of ``anime_vectors``)
        each cohort shares.
      user_seasonal: ``[num_users]`` how much each user follows the airing season.
      user_joined: ``[num_users]`` account creation (Unix seconds).
      release: ``[num_anime]`` start of each title's airing season (Unix seconds).
      prequel: ``[num_anime]`` row of each title's prequel (SEQUEL) or parent
        (SIDE_STORY) in its franchise, -1 for a franchise's first title or a standalone.
    """

    user_ids: np.ndarray
    media_ids: np.ndarray
    user_vectors: np.ndarray
    anime_vectors: np.ndarray
    user_mean: np.ndarray
    user_spread: np.ndarray
    centre: float
    scale: float
    noise_sd: float
    log_exposure: np.ndarray
    user_cohort: np.ndarray
    cohort_titles: np.ndarray
    user_seasonal: np.ndarray
    user_joined: np.ndarray
    release: np.ndarray
    prequel: np.ndarray

    def user_index(self, user_ids) -> np.ndarray:
        """Rows of ``user_vectors`` (and the per-user arrays) of ``user_ids``.

        Raises:
          InputError: an id is not in this world.
        """
        return _positions(self.user_ids, user_ids, "user")

    def anime_index(self, media_ids) -> np.ndarray:
        """Rows of ``anime_vectors`` of ``media_ids``.

        Raises:
          InputError: an id is not in this world.
        """
        return _positions(self.media_ids, media_ids, "media")

    def affinity(self, user_ids, media_ids) -> np.ndarray:
        """True (noise-free) affinity of each ``(user_ids[i], media_ids[i])`` pair."""
        u, a = self.user_index(user_ids), self.anime_index(media_ids)
        return np.einsum("ij,ij->i", self.user_vectors[u], self.anime_vectors[a])

    def expected_score(self, user_ids, media_ids) -> np.ndarray:
        """Noise-free POINT_100 score each user would give each title (unrounded)."""
        u = self.user_index(user_ids)
        z = (self.affinity(user_ids, media_ids) - self.centre) / self.scale
        return np.clip(self.user_mean[u] + self.user_spread[u] * z, 1, 100)

    def in_cohort(self, u: np.ndarray, a: np.ndarray) -> np.ndarray:
        """``[len(u), len(a)]`` bool: title row ``a[j]`` is in the hidden set of user row
        ``u[i]``'s cohort."""
        member = np.zeros((len(self.cohort_titles) + 1, len(self.media_ids)), bool)
        member[np.arange(len(self.cohort_titles))[:, None], self.cohort_titles] = True
        return member[np.asarray(self.user_cohort)[u]][:, a]  # cohort -1: the empty row

    def log_odds(self, u: np.ndarray, a: np.ndarray,
                 affinity: np.ndarray | None = None) -> np.ndarray:
        """``[len(u), len(a)]``: the adding log-odds of user rows ``u`` for title rows
        ``a`` (``affinity``: their ``[len(u), len(a)]`` affinity, if already computed)."""
        if affinity is None:
            affinity = self.user_vectors[u] @ self.anime_vectors[a].T
        keys = TASTE_BIAS * affinity + POPULARITY_BIAS * self.log_exposure[a][None, :]
        keys = keys + COHORT_BIAS * self.in_cohort(u, a)
        aired = self.release[a][None, :] >= self.user_joined[u][:, None]
        return keys + SEASONAL_BIAS * self.user_seasonal[u][:, None] * aired

    def adding_log_odds(self, user_ids, media_ids) -> np.ndarray:
        """``[len(user_ids), len(media_ids)]``: the generator's log-odds (before its
        Gumbel noise) that each user adds each title to their list: exposure, taste,
        cohort and seasonal terms (see the module docstring): the evaluation's
        "generator's odds", a reference a recommender is shown beside (not a ceiling).

        The franchise steps (a sequel brings its prequel, a liked title its sequels)
        depend on the user's own list and have no per-(user, title) closed form: the
        odds are the part of the generator before them. The exposure term is the
        truth's own (``log_exposure``), never the store's popularity, which counts the
        generated lists.
        """
        return self.log_odds(self.user_index(user_ids), self.anime_index(media_ids))

    def save(self, path: str | os.PathLike) -> None:
        # A crash leaves the old truth or none, never a truncated file under the name.
        with atomic.file(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Truth":
        """Reads a saved truth.

        Raises:
          InputError: the file is the truth of a world written by an older anirank.
        """
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(f"{path} is not a synthetic world's truth file ({type(err).__name__}"
                             f": {str(err)[:100]}); pass the <store>.truth.npz that `synth` "
                             "wrote beside the store.") from None
        if not hasattr(data, "files"):
            raise InputError(f"{path} is not a synthetic world's truth file (one array, not "
                             "an .npz archive); pass the <store>.truth.npz that `synth` wrote.")
        with data:
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in data.files]
            if missing:
                raise InputError(
                    f"{path} is the ground truth of a world written by an older anirank "
                    f"(it lacks {', '.join(missing)}); regenerate the world with "
                    "`python -m pipelines synth` (and rebuild its features and model).")
            return cls(**{f.name: (data[f.name].item() if data[f.name].ndim == 0
                                   else data[f.name]) for f in dataclasses.fields(cls)})


def truth_path(db: str | os.PathLike) -> Path:
    """Where the ground truth of the world in ``db`` lives."""
    return Path(f"{db}.truth.npz")


# ---------------------------------------------------------------------------------------
# The catalog.

def _season_start(year: np.ndarray, season: np.ndarray) -> np.ndarray:
    months = np.array([1, 4, 7, 10])[season]
    stamps = pd.to_datetime(pd.DataFrame({"year": year, "month": months, "day": 1}))
    return (stamps.astype("int64") // 10**9).to_numpy()


def _ordinal(k: int) -> str:
    ending = {1: "st", 2: "nd", 3: "rd"}.get(k if k < 20 else k % 10, "th")
    return f"{k}{ending}"


_SIDE_SUFFIX = {2: "OVA", 4: "Specials", 6: "Music Video"}


def _make_franchises(rng: np.random.Generator, fmt: np.ndarray, season_index: np.ndarray,
                     quality: np.ndarray) -> dict:
    """Groups titles into franchises: TV/ONA roots, continued by sequels (TV, ONA,
    TV_SHORT, MOVIE: the main line, each the SEQUEL of the one before) and side stories
    (OVA, SPECIAL, MUSIC: SIDE_STORY of the latest main-line title), each airing two or more
    seasons (five on average) after the title before it, never after now. Better titles get more sequels.

    Returns:
      ``parent`` (row of the prequel/parent, -1: none), ``root``, ``depth``, ``season_index``
      (year * 4 + season, moved for titles that joined a franchise), ``suffix`` (title
      suffix, "" for none) and ``edges`` (``(parent, child, relation)`` rows).
    """
    n = len(fmt)
    t_now = 2026 * 4 + 3
    can_root = np.isin(fmt, [0, 3]) & (season_index <= t_now - 2) & (rng.random(n) < 0.6)
    p_child = min(1.0, FRANCHISE_SHARE * n / max(int((~can_root).sum()), 1))
    is_child = ~can_root & (rng.random(n) < p_child)
    roots, children = np.flatnonzero(can_root), np.flatnonzero(is_child)
    gaps = 2 + rng.poisson(3, n)  # seasons after the title before
    tie = rng.random(n)
    parent, root, depth = np.full(n, -1), np.arange(n), np.zeros(n, int)
    season_index = season_index.copy()
    suffix = [""] * n
    edges = []
    if len(roots) and len(children):
        w = np.exp(1.5 * quality[roots])
        assign = roots[rng.choice(len(roots), len(children), p=w / w.sum())]
        current = -1
        for j in np.lexsort((tie[children], assign)):  # by franchise, random order
            c, r = children[j], assign[j]
            if r != current:
                current, cursor, last_main, seasons, movies = r, season_index[r], r, 1, 0
                side = {}
            cursor += gaps[c]
            if cursor > t_now:
                continue  # would air after now: stays a title of its own
            season_index[c], parent[c], root[c] = cursor, last_main, r
            depth[c] = depth[last_main] + 1
            if fmt[c] in _MAIN_FORMATS:
                if fmt[c] == 1:
                    movies += 1
                    suffix[c] = " Movie" + (f" {movies}" if movies > 1 else "")
                else:
                    seasons += 1
                    suffix[c] = f" {_ordinal(seasons)} Season"
                edges.append((last_main, c, "SEQUEL"))
                last_main = c
            else:
                side[fmt[c]] = side.get(fmt[c], 0) + 1
                count = side[fmt[c]]
                suffix[c] = f" {_SIDE_SUFFIX[fmt[c]]}" + (f" {count}" if count > 1 else "")
                edges.append((last_main, c, "SIDE_STORY"))
    return dict(parent=parent, root=root, depth=depth, season_index=season_index,
                suffix=suffix, edges=edges)


def _draw_genres(studio_genre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[titles, genres]`` bool: 1-6 genres per title, drawn without replacement (Gumbel
    top-k) from the global genre shares tilted by each title's studio's favourites
    (``studio_genre``: the studio's row per title)."""
    n = len(studio_genre)
    k = rng.choice(np.arange(1, 7), n, p=[0.12, 0.24, 0.27, 0.2, 0.11, 0.06])
    logits = np.log(_GENRE_WEIGHTS / _GENRE_WEIGHTS.sum()) + studio_genre
    keys = logits + rng.gumbel(size=logits.shape)
    order = np.argsort(-keys, axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(len(GENRES))[None, :].repeat(n, 0), axis=1)
    return ranks < k[:, None]


def _episodes_and_duration(fmt: np.ndarray, rng: np.random.Generator):
    """Episode counts and minutes per episode, by format."""
    n = len(fmt)
    episodes = np.select(
        [fmt == 0, fmt == 1, fmt == 2, fmt == 3, fmt == 4, fmt == 5],
        [rng.choice([12, 13, 24, 25, 26, 50, 64], n, p=[.38, .2, .12, .1, .1, .06, .04]),
         np.ones(n, int), rng.integers(1, 7, n), rng.integers(1, 25, n),
         rng.integers(1, 7, n), rng.integers(8, 27, n)],
        default=1)
    duration = np.select(
        [fmt == 0, fmt == 1, fmt == 2, fmt == 3, fmt == 4, fmt == 5],
        [rng.choice([23, 24, 25], n), rng.integers(45, 150, n), rng.integers(24, 50, n),
         rng.integers(3, 26, n), rng.integers(5, 26, n), rng.integers(2, 11, n)],
        default=rng.integers(3, 6, n))
    return episodes, duration


_TAG_POOL = [(t, GENRES.index(g)) for g, ts in TAGS.items() for t in ts]


def _draw_tags(genre_hot: np.ndarray, rng: np.random.Generator) -> list[list[dict]]:
    """Each title's tags (``{"name", "rank"}``): mostly from its genres, ranked 40-100."""
    n = len(genre_hot)
    tag_genre = np.array([g for _, g in _TAG_POOL])
    tag_logits = np.where(genre_hot[:, tag_genre], 2.5, -1.5) + rng.gumbel(size=(n, len(_TAG_POOL)))
    n_tags = rng.integers(2, 9, n)
    tag_order = np.argsort(-tag_logits, axis=1)
    tag_rank = rng.integers(40, 101, (n, 8))
    tag_rank = -np.sort(-tag_rank, axis=1)
    return [[{"name": _TAG_POOL[j][0], "rank": int(r)}
             for j, r in zip(tag_order[i, :n_tags[i]], tag_rank[i])] for i in range(n)]


def _title_bases(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` made-up romaji titles (a franchise's titles add suffixes to its root's)."""
    words = np.array(_WORDS)
    w = rng.integers(0, len(words), (n, 3))
    pattern = rng.integers(0, 3, n)
    base = []
    for i in range(n):  # string formatting of 2k-15k titles: cheap, done once
        a, b, c = words[w[i]]
        base.append((f"{a} no {b}", f"{a} {b} {c}", f"{a} to {b} no {c}")[pattern[i]])
    return base


def _descriptions(fmt: np.ndarray, genre_hot: np.ndarray, studios) -> list[str]:
    genre_names = np.array(GENRES)
    return [f"A {fm.lower().replace('_', ' ')} {' / '.join(g).lower()} story from {s}."
            for fm, g, s in zip(np.array(FORMATS)[fmt], [genre_names[r] for r in genre_hot],
                                studios)]


def _make_catalog(cfg: SynthConfig, rng: np.random.Generator) -> dict:
    n = cfg.anime
    id_space = max(200_000, 10 * n)
    media_id = np.sort(rng.choice(id_space, n, replace=False) + 1)
    fmt = rng.choice(len(FORMATS), n, p=_FORMAT_SHARES)

    # Studios: long-tailed output (Zipf), each with a house style and favourite genres.
    n_studios = max(20, n // 6)
    studio_w = 1.0 / np.arange(1, n_studios + 1) ** 1.1
    studio = rng.choice(n_studios, n, p=studio_w / studio_w.sum())
    parts = rng.integers(0, len(_STUDIO_PARTS), (n_studios, 2))
    studio_names = np.array([
        f"{_STUDIO_PARTS[a]}{_STUDIO_PARTS[b].lower()} {'Studio' if i % 3 else 'Animation'}"
        + (f" {i // 400 + 1}" if i >= 400 else "")
        for i, (a, b) in enumerate(parts)])
    studio_style = rng.normal(0, 1, (n_studios, STYLE_DIM))
    studio_genre = rng.normal(0, 1.0, (n_studios, len(GENRES)))

    genre_hot = _draw_genres(studio_genre[studio], rng)

    # Year skews recent (most anime ever made aired in the last 15 years).
    year = np.clip(2026 - np.floor(rng.exponential(11.0, n)).astype(int), 1970, 2026)
    season = rng.integers(0, 4, n)
    quality = rng.normal(0, 0.5, n)
    latent = rng.normal(0, 1, (n, LATENT_DIM))
    style_noise = rng.normal(0, 0.4, (n, STYLE_DIM))
    appeal_noise = rng.normal(0, 0.8, n)

    # Franchises: continuations take after their root (genres, mostly the studio,
    # style, latent taste, quality) and air after the title before them.
    fr = _make_franchises(rng, fmt, year * 4 + season, quality)
    child, root, depth = fr["parent"] >= 0, fr["root"], fr["depth"]
    year, season = fr["season_index"] // 4, fr["season_index"] % 4
    genre_hot[child] = genre_hot[root[child]]
    same_studio = child & (rng.random(n) < 0.85)
    studio[same_studio] = studio[root[same_studio]]
    quality[child] = quality[root[child]] + rng.normal(0, 0.25, child.sum())
    latent[child] = latent[root[child]] + rng.normal(0, 0.35, (child.sum(), LATENT_DIM))
    style = studio_style[studio] + style_noise
    style[child] = style[root[child]] + 0.5 * style_noise[child]

    release = _season_start(year, season)
    airing = (year == 2026) & (season == 3) & np.isin(fmt, [0, 3, 5])
    status = np.where(airing, "RELEASING", "FINISHED")

    episodes, duration = _episodes_and_duration(fmt, rng)
    source = rng.choice(len(SOURCES), n, p=_SOURCE_SHARES)
    recency = (year - 2012) / 12.0

    # Exposure: a true power law over a latent appeal rank (quality, recency, format);
    # a continuation is about as visible as its root, less so further down the line.
    format_appeal = np.array([1.0, 0.6, -0.3, 0.0, -0.6, -0.4, -1.2])[fmt]
    appeal = quality + 0.25 * recency + format_appeal + appeal_noise
    appeal[child] = appeal[root[child]] - 0.3 * depth[child] + 0.5 * appeal_noise[child]
    rank = np.empty(n, int)
    rank[np.argsort(-appeal)] = np.arange(1, n + 1)
    exposure = np.maximum(np.round(3.5e6 * rank ** -1.05 * (2000 / n) ** -0.05), 30)

    vectors = np.hstack([
        genre_hot / genre_hot.sum(1, keepdims=True),
        np.eye(len(FORMATS))[fmt],
        style / np.sqrt(STYLE_DIM),
        latent / np.sqrt(LATENT_DIM),
        recency[:, None],
        quality[:, None],
    ])

    tags = _draw_tags(genre_hot, rng)
    base = _title_bases(n, rng)
    titles = [base[root[i]] + fr["suffix"][i] for i in range(n)]
    has_english = rng.random(n) < 0.55
    has_english[child] = has_english[root[child]]
    genre_names = np.array(GENRES)

    media = pd.DataFrame({
        "media_id": media_id,
        "id_mal": np.where(rng.random(n) < 0.85, media_id + rng.integers(-50, 50, n), -1),
        "title_romaji": titles,
        "title_english": [t.replace(" no ", " of ") if e else None
                          for t, e in zip(titles, has_english)],
        "format": np.array(FORMATS)[fmt],
        "status": status,
        "episodes": np.where(airing, -1, episodes),
        "duration": duration,
        "source": np.array(SOURCES)[source],
        "season": np.array(SEASONS)[season],
        "season_year": year,
        "is_adult": genre_hot[:, GENRES.index("Hentai")],
        "country": rng.choice(["JP", "CN", "KR"], n, p=[0.9, 0.07, 0.03]),
        "studio": studio_names[studio],
        "genres": [genre_names[row].tolist() for row in genre_hot],
        "tags": tags,
        "description": _descriptions(fmt, genre_hot, studio_names[studio]),
    })
    for column in ("id_mal", "episodes"):  # -1 marks unknown: NULL in the store
        media[column] = media[column].astype("Int64").mask(media[column] < 0)

    inverse = {"SEQUEL": "PREQUEL", "SIDE_STORY": "PARENT"}
    edges = fr["edges"]
    relations = pd.DataFrame({
        "media_id": media_id[[p for p, _, _ in edges] + [c for _, c, _ in edges]],
        "related_id": media_id[[c for _, c, _ in edges] + [p for p, _, _ in edges]],
        "relation_type": [r for _, _, r in edges] + [inverse[r] for _, _, r in edges],
    }).sort_values(["media_id", "related_id"], ignore_index=True)
    return dict(media=media, vectors=vectors, release=release,
                log_exposure=np.log(exposure), parent=fr["parent"], depth=depth,
                relations=relations, format=fmt, airing=airing,
                episodes=media["episodes"].fillna(-1).to_numpy(np.int64),
                duration=duration, media_id=media_id,
                # What the future's new titles take after (continue_world): the studios,
                # each title's own draws, its franchise root and its title's stem.
                studio=studio, studio_names=studio_names, studio_style=studio_style,
                studio_genre=studio_genre, genre_hot=genre_hot, quality=quality,
                latent=latent, style=style, appeal=appeal, root=root,
                base=[base[r] for r in root], has_english=has_english)


# ---------------------------------------------------------------------------------------
# The users.

def _make_users(cfg: SynthConfig, rng: np.random.Generator, n_anime: int):
    n = cfg.users
    # Ids from a stream of their own: a change to how the catalog is drawn keeps them.
    user_id = np.sort(np.random.default_rng([cfg.seed, 3]).choice(
        max(7_000_000, 10 * n), n, replace=False) + 1)
    # Taste: a mixture of archetypes (shounen fans, romance fans, ...) plus personal noise.
    archetypes = rng.normal(0, 1.5, (12, len(GENRES)))
    genre_taste = archetypes[rng.integers(0, 12, n)] + rng.normal(0, 0.7, (n, len(GENRES)))
    format_taste = rng.normal(0, 0.45, (n, len(FORMATS))) + np.array(
        [0.3, 0.2, -0.1, 0.0, -0.2, -0.1, -0.4])
    style = rng.normal(0, 1.0, (n, STYLE_DIM)) / np.sqrt(STYLE_DIM) * 1.8
    latent = rng.normal(0, 1.0, (n, LATENT_DIM)) / np.sqrt(LATENT_DIM) * 2.2
    recency = rng.normal(0.1, 0.25, n)
    vectors = np.hstack([genre_taste, format_taste, style, latent, recency[:, None],
                         np.ones((n, 1))])

    # Rating scale: some rate everything 70-90, some use the whole range; and how they
    # round (AniList score formats POINT_100 / POINT_10 / POINT_5).
    mean = np.clip(rng.normal(74, 7, n), 45, 95)
    spread = np.clip(np.exp(rng.normal(np.log(13), 0.45, n)), 3, 35)
    rounding = rng.choice([1, 10, 20], n, p=[0.55, 0.38, 0.07])
    p_score = np.where(rng.random(n) < 0.07, 0.0, rng.beta(6, 1.2, n))
    uses_favourites = rng.random(n) < 0.6

    mu = np.log(cfg.entries_per_user) - cfg.activity_sigma ** 2 / 2
    length = np.exp(rng.normal(mu, cfg.activity_sigma, n))
    length = np.clip(np.round(length), 1, max(1, int(0.8 * n_anime))).astype(int)
    joined = rng.integers(int(dt.datetime(2015, 1, 1).timestamp()), NOW - 30 * _DAY, n)

    # Cohorts (most users in one) and how closely each user follows the airing season
    # (about 40% are seasonal watchers).
    n_cohorts = max(1, int(round(n / COHORT_SIZE)))
    cohort = np.where(rng.random(n) < COHORT_SHARE, rng.integers(0, n_cohorts, n), -1)
    seasonal = np.where(rng.random(n) < 0.4, rng.uniform(0.5, 0.95, n), rng.uniform(0, 0.2, n))
    return dict(user_id=user_id, vectors=vectors, mean=mean, spread=spread,
                rounding=rounding, p_score=p_score, uses_favourites=uses_favourites,
                length=length, joined=joined, cohort=cohort, n_cohorts=n_cohorts,
                seasonal=seasonal)


def _cohort_titles(n_cohorts: int, catalog: dict, rng: np.random.Generator) -> np.ndarray:
    """``[n_cohorts, k]``: each cohort's hidden titles, drawn across genres and studios
    from the titles that start a franchise or stand alone, mildly favouring visible ones."""
    entry = np.flatnonzero(catalog["parent"] < 0)
    k = min(COHORT_TITLES, max(1, len(entry) // 4))
    keys = 0.3 * catalog["log_exposure"][entry][None, :] + rng.gumbel(
        size=(n_cohorts, len(entry)))
    return np.sort(entry[np.argpartition(-keys, k - 1, axis=1)[:, :k]], axis=1)


def _top_k(keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``[rows, anime]`` bool: the ``lengths[i]`` largest keys of each row."""
    on = np.zeros(keys.shape, bool)
    for i, (row, k) in enumerate(zip(keys, lengths)):
        on[i, np.argpartition(-row, k - 1)[:k]] = True
    return on


def _lists(keys: np.ndarray, lengths: np.ndarray, z: np.ndarray, catalog: dict,
           rng: np.random.Generator) -> np.ndarray:
    """``[rows, anime]`` bool: the titles on each user's list. ``keys`` are the adding
    log-odds with their Gumbel noise, ``z`` the perceived standard scores. A drawn sequel
    or side story brings its prequel/parent (unless the user watches it standalone); a
    title liked enough brings its sequels and side stories, along the franchise."""
    on = _top_k(keys, np.maximum(np.round(lengths * _BASE_LENGTH), 1).astype(int))
    parent = catalog["parent"]
    has_parent = parent >= 0
    if not has_parent.any():
        return on
    up = np.where(has_parent, parent, 0)
    standalone = rng.random(on.shape) < STANDALONE
    follow = rng.random(on.shape)
    # Sequels are followed if the user liked what came before; side stories less often.
    main = np.isin(catalog["format"], _MAIN_FORMATS)
    offset = np.where(main, 0.8, -1.0)[None, :]
    p_follow = 1 / (1 + np.exp(-(2.5 * z[:, up] + offset)))
    for _ in range(int(catalog["depth"].max())):
        need = on & has_parent[None, :] & ~standalone
        rows, cols = np.nonzero(need)
        on[rows, parent[cols]] = True
    for _ in range(int(catalog["depth"].max())):
        add = ~on & has_parent[None, :] & on[:, up] & (follow < p_follow)
        if not add.any():
            break
        on |= add
    return on


def _make_entries(users: dict, sl: slice, catalog: dict, truth: Truth,
                  rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """The list entries of users ``sl`` (who added what, with status, score and times)
    and the catalog row of each entry's title."""
    rows = np.arange(sl.start, sl.stop)
    n_anime = len(catalog["media_id"])
    aff = users["vectors"][sl] @ catalog["vectors"].T                # [chunk, n_anime]
    keys = truth.log_odds(rows, np.arange(n_anime), aff)
    keys += rng.gumbel(size=keys.shape)
    perceived = aff + rng.normal(0, truth.noise_sd, aff.shape)
    z_all = (perceived - truth.centre) / truth.scale
    on = _lists(keys, users["length"][sl], z_all, catalog, rng)
    local, anime = np.nonzero(on)  # ordered by user, then title (= media_id order)
    u = local + sl.start
    m = len(anime)
    z = z_all[local, anime]
    # Each entry's prequel/parent entry on the same list (-1: none), and whether the
    # user went on to add something that continues the title.
    position = np.full(on.shape, -1, np.int64)
    position[local, anime] = np.arange(m)
    parent = catalog["parent"][anime]
    before = np.where(parent >= 0, position[local, np.maximum(parent, 0)], -1)
    continued = np.zeros(m, bool)
    continued[before[before >= 0]] = True

    fmt = catalog["format"][anime]
    episodes = catalog["episodes"][anime]             # -1 = unknown (still airing)
    release = catalog["release"][anime]
    airing = catalog["airing"][anime]

    # Times: added after both the account and the airing date. A seasonal watcher adds a
    # title that aired while they were a member a few weeks after its release; otherwise
    # half are added soon after that (the backlog on joining), half any time since.
    joined = users["joined"][u]
    lo = np.maximum(joined, release)
    delay = np.where(rng.random(m) < 0.5, rng.beta(1.0, 2.5, m), rng.random(m))
    created = lo + ((NOW - lo) * delay).astype(np.int64)
    in_season = (release >= joined) & (rng.random(m) < users["seasonal"][u])
    fraction = rng.random(m)  # where in the time left a late addition falls
    soon = release + rng.exponential(20 * _DAY, m).astype(np.int64)
    soon = np.where(soon > NOW, release + ((NOW - release) * fraction).astype(np.int64), soon)
    created = np.where(in_season, soon, created)
    # Completion takes roughly the watch time at 1-3 hours a day, plus slack; a title
    # that continues another is added after that one was added and watched.
    minutes = np.maximum(episodes, 1) * catalog["duration"][anime]
    watch = (minutes / rng.uniform(60, 180, m) * _DAY
             + rng.exponential(7 * _DAY, m)).astype(np.int64)
    gap = rng.exponential(14 * _DAY, m).astype(np.int64)
    depth = catalog["depth"][anime]
    for d in range(1, int(depth.max(initial=0)) + 1):
        at = np.flatnonzero((depth == d) & (before >= 0))
        p = before[at]
        after = created[p] + watch[p] + gap[at]
        late = after > NOW  # then some time between the prequel's start and now
        after[late] = created[p][late] + ((NOW - created[p][late])
                                          * (0.3 + 0.7 * fraction[at][late])).astype(np.int64)
        created[at] = np.maximum(created[at], after)
    recent = (NOW - created) < 120 * _DAY

    # Status.
    r = rng.random(m)
    planning = r < 0.08 + 0.15 * recent
    # Titles that disappoint (low affinity relative to what a user usually picks) get dropped.
    dropped = ~planning & (rng.random(m) < 1 / (1 + np.exp(2.0 * z + 3.6)))
    rest = ~planning & ~dropped
    r2 = rng.random(m)
    current = rest & (airing | (recent & (fmt == 0) & (r2 < 0.5)) | (r2 < 0.03))
    paused = rest & ~current & (r2 > 0.96)
    repeating = rest & ~current & ~paused & (z > 1.0) & (rng.random(m) < 0.03)
    # A title the user went on to continue was (nearly always) finished first.
    finished_first = continued & ~repeating & (rng.random(m) < 0.95)
    planning, dropped, current, paused = (
        s & ~finished_first for s in (planning, dropped, current, paused))
    status = np.select([planning, dropped, current, paused, repeating],
                       ["PLANNING", "DROPPED", "CURRENT", "PAUSED", "REPEATING"],
                       default="COMPLETED")
    finished = (status == "COMPLETED") | (status == "REPEATING")

    # Scores: the user's scale and rounding; unscored = 0; never for PLANNING.
    p = users["p_score"][u] * np.select([finished, dropped], [1.0, 0.35], default=0.5)
    scored = ~planning & (rng.random(m) < p)
    raw = users["mean"][u] + users["spread"][u] * z
    step = users["rounding"][u]
    score = np.clip(np.round(raw / step) * step, step, 100).astype(np.int64)
    score = np.where(scored, score, 0)

    known_eps = episodes > 0
    partial = np.floor(rng.random(m) * np.where(known_eps, episodes, 12)).astype(np.int64)
    progress = np.select([planning, finished], [0, episodes], default=partial)
    progress = np.where(finished & ~known_eps, -1, progress)
    repeat = np.where(status == "REPEATING", 1 + rng.poisson(0.5, m),
                      np.where(finished & (z > 1.2), rng.poisson(0.3, m), 0))

    completed = np.where(finished, np.minimum(created + watch, NOW), -1)
    touched = np.maximum(created, completed)
    later = rng.random(m) < 0.3
    updated = np.where(planning, created, np.minimum(
        touched + (later * rng.exponential(30 * _DAY, m)).astype(np.int64), NOW))

    # Favourites: a user's best-loved finished titles (up to 10), if they use favourites.
    eligible = finished & (z > 1.0) & users["uses_favourites"][u]
    fav_order = np.lexsort((-z, ~eligible, local))
    rank = np.empty(m, np.int64)
    starts = np.searchsorted(local[fav_order], local[fav_order], side="left")
    rank[fav_order] = np.arange(m) - starts
    is_favourite = eligible & (rank < 10)

    frame = pd.DataFrame({
        "user_id": users["user_id"][u],
        "media_id": catalog["media_id"][anime],
        "score": score,
        "status": status,
        "progress": progress,
        "repeat": repeat,
        "is_favourite": is_favourite.astype(np.int64),
        "created_at": created,
        "updated_at": updated,
        "completed_at": completed,
    })
    for column in ("progress", "completed_at"):
        frame[column] = frame[column].astype("Int64").mask(frame[column] < 0)
    return frame, anime


def _media_stats(media: pd.DataFrame, count: np.ndarray, favourites: np.ndarray,
                 score_sum: np.ndarray, raters: np.ndarray) -> pd.DataFrame:
    """The media table's list statistics, counted from the world's entries the way
    AniList reports them: popularity (entries, any status), favourites, meanScore (mean
    non-zero score, NULL without one) and averageScore (that mean shrunk toward the site
    mean for titles few people scored)."""
    media = media.copy()
    media["popularity"] = count.astype(np.int64)
    media["favourites"] = favourites.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = score_sum / raters
    site_mean = score_sum.sum() / max(raters.sum(), 1)
    average = (score_sum + site_mean * 20) / (raters + 20)
    media["mean_score"] = np.where(raters > 0, np.round(mean), np.nan)
    media["average_score"] = np.where(raters > 0, np.round(average), np.nan)
    media["fetched_at"] = NOW
    return media


# ---------------------------------------------------------------------------------------
# The future: the world after the crawl, day by day, held back from the store.

_SLACK = 600  # seconds left free at the end of each future day: times never spill over
_NEW_TITLES_PER_DAY = 1 / 1000  # titles appearing a day, per catalog title (2,000: 2) ...
_MIN_NEW_TITLES_PER_DAY = 0.5  # ... and at least this many, so small worlds get some
_SEQUEL_SHARE = 0.45  # share of new titles that continue a franchise
# Formats of new titles: continuations (MOVIE, ONA, TV_SHORT continue the main line;
# OVA, SPECIAL are side stories) and originals (late-starting TV, movies, ONA drops, ...).
_SEQUEL_FORMATS = np.array([0.0, 0.4, 0.15, 0.2, 0.2, 0.05, 0.0])
_ORIGINAL_FORMATS = np.array([0.1, 0.25, 0.15, 0.3, 0.1, 0.0, 0.1])
_ACTIVE = 0.25  # chance a user of an average list length is active on a given day ...
_IDLE_DAYS = 45.0  # ... fading by e per this many days since their list last changed
_ACTIONS = 1.0  # mean extra actions of an active user of average list length (Poisson)
_DROP_OFFSET = 3.0  # a title finished or given up: DROPPED with 1 / (1 + exp(2 z + this))
# What an action of an active user does (relative weights; an action without anything to
# act on adds a title instead).
_ACTION_WEIGHTS = {"finish": 1.0, "episode": 0.6, "start": 0.25, "score": 0.08, "add": 0.7}
_ACTION_KINDS = tuple(_ACTION_WEIGHTS)
_PAUSED_SHARE = 0.1  # share of "finish" actions of a user with titles paused that act on one
OUTCOME_KINDS = ("completed", "dropped", "scored")


def future_path(db: str | os.PathLike) -> Path:
    """Where the future of the world in ``db`` lives (``<db>.future.db``)."""
    return Path(f"{db}.future.db")


def _world_config(cfg: SynthConfig) -> dict:
    """The config the store records: the future's length is not part of the store (the
    store is the same whatever ``future_days`` is)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "future_days"}


def _new_titles(catalog: dict, days: int, rng: np.random.Generator) -> dict:
    """The titles that appear on the site during the future's ``days``, in order of
    appearance: continuations of franchises (a movie, an ONA season, an OVA after the
    latest main-line title of a franchise whose last title aired at least half a year
    ago; better-liked and more visible franchises first) and originals, each with the
    catalog's attributes drawn the catalog's way, airing from the moment it appears.

    Returns:
      ``media`` and ``relations`` frames (the store's columns; ``fetched_at`` = when the
      title appears, its list statistics those of a title nobody has listed yet), and
      per title: ``vectors``, ``log_exposure``, ``appear``, ``parent`` (catalog row of
      its prequel/parent, -1: none), ``format``, ``episodes`` (-1: unknown, still
      airing), ``duration``, ``airing``, ``media_id``.
    """
    n_old = len(catalog["media_id"])
    per_day = rng.poisson(max(_MIN_NEW_TITLES_PER_DAY, n_old * _NEW_TITLES_PER_DAY), days)
    k = int(per_day.sum())
    appear = np.sort(NOW + np.repeat(np.arange(days), per_day) * _DAY
                     + rng.integers(1, _DAY - _SLACK, k))
    fmt_old, parent_old = catalog["format"], catalog["parent"]
    main_old = np.isin(fmt_old, _MAIN_FORMATS)
    continued = np.zeros(n_old, bool)
    continued[parent_old[(parent_old >= 0) & main_old]] = True
    # A franchise goes on from its latest main-line title; a series (TV, ONA) may start one.
    series_root = np.isin(fmt_old[catalog["root"]], [0, 3])
    tips = np.flatnonzero(main_old & series_root & ~continued & ~catalog["airing"]
                          & (catalog["release"] <= NOW - 180 * _DAY))
    sequel = rng.random(k) < _SEQUEL_SHARE
    sequel &= np.cumsum(sequel) <= len(tips)  # each franchise continued once at most
    parent = np.full(k, -1)
    if sequel.any():
        w = np.exp(1.5 * catalog["quality"][tips] + 0.5 * catalog["log_exposure"][tips])
        parent[sequel] = rng.choice(tips, int(sequel.sum()), replace=False, p=w / w.sum())
    fmt = np.where(sequel, rng.choice(len(FORMATS), k, p=_SEQUEL_FORMATS),
                   rng.choice(len(FORMATS), k, p=_ORIGINAL_FORMATS))
    root = np.where(sequel, catalog["root"][np.maximum(parent, 0)], -1)
    at_root = np.maximum(root, 0)

    # Originals: a studio (the catalog's Zipf output), its genres and style; sequels:
    # the root's genres, mostly its studio, its style, taste and quality, as in the catalog.
    n_studios = len(catalog["studio_names"])
    studio_w = 1.0 / np.arange(1, n_studios + 1) ** 1.1
    studio = rng.choice(n_studios, k, p=studio_w / studio_w.sum())
    studio = np.where(sequel & (rng.random(k) < 0.85), catalog["studio"][at_root], studio)
    genre_hot = _draw_genres(catalog["studio_genre"][studio], rng)
    genre_hot[sequel] = catalog["genre_hot"][root[sequel]]
    quality = np.where(sequel, catalog["quality"][at_root] + rng.normal(0, 0.25, k),
                       rng.normal(0, 0.5, k))
    noise = rng.normal(0, 1, (k, LATENT_DIM))
    latent = np.where(sequel[:, None], catalog["latent"][at_root] + 0.35 * noise, noise)
    style_noise = rng.normal(0, 0.4, (k, STYLE_DIM))
    style = np.where(sequel[:, None], catalog["style"][at_root] + 0.5 * style_noise,
                     catalog["studio_style"][studio] + style_noise)
    episodes, duration = _episodes_and_duration(fmt, rng)
    airing = np.isin(fmt, [0, 3, 5])  # series air week by week from their first day
    episodes = np.where(airing, -1, episodes)
    recency = np.full(k, (2026 - 2012) / 12.0)
    format_appeal = np.array([1.0, 0.6, -0.3, 0.0, -0.6, -0.4, -1.2])[fmt]
    appeal_noise = rng.normal(0, 0.8, k)
    depth = np.where(sequel, catalog["depth"][np.maximum(parent, 0)] + 1, 0)
    appeal = np.where(sequel, catalog["appeal"][at_root] - 0.3 * depth + 0.5 * appeal_noise,
                      quality + 0.25 * recency + format_appeal + appeal_noise)
    # Exposure by the catalog's power law, at the rank the title's appeal would have.
    rank = 1 + (catalog["appeal"][None, :] > appeal[:, None]).sum(1)
    exposure = np.maximum(np.round(3.5e6 * rank ** -1.05 * (2000 / n_old) ** -0.05), 30)
    vectors = np.hstack([genre_hot / genre_hot.sum(1, keepdims=True),
                         np.eye(len(FORMATS))[fmt], style / np.sqrt(STYLE_DIM),
                         latent / np.sqrt(LATENT_DIM), recency[:, None], quality[:, None]])
    tags = _draw_tags(genre_hot, rng)
    base = _title_bases(k, rng)
    has_english = np.where(sequel, catalog["has_english"][at_root], rng.random(k) < 0.55)
    media_id = catalog["media_id"].max() + np.cumsum(rng.integers(1, 60, k))
    id_mal = np.where(rng.random(k) < 0.85, media_id + rng.integers(-50, 50, k), -1)
    source = rng.choice(len(SOURCES), k, p=_SOURCE_SHARES)
    country = rng.choice(["JP", "CN", "KR"], k, p=[0.9, 0.07, 0.03])

    titles, edges = [], []
    for j in range(k):
        if not sequel[j]:
            titles.append(base[j])
            continue
        family = np.flatnonzero(catalog["root"] == root[j])
        same = fmt_old[family]
        if fmt[j] in _MAIN_FORMATS:
            if fmt[j] == 1:
                movies = int((same == 1).sum()) + 1
                suffix = " Movie" + (f" {movies}" if movies > 1 else "")
            else:
                suffix = f" {_ordinal(int(np.isin(same, [0, 3, 5]).sum()) + 1)} Season"
            edges.append((parent[j], j, "SEQUEL"))
        else:
            count = int((same == fmt[j]).sum()) + 1
            suffix = f" {_SIDE_SUFFIX[fmt[j]]}" + (f" {count}" if count > 1 else "")
            edges.append((parent[j], j, "SIDE_STORY"))
        titles.append(catalog["base"][parent[j]] + suffix)

    media = pd.DataFrame({
        "media_id": media_id, "id_mal": id_mal, "title_romaji": titles,
        "title_english": [t.replace(" no ", " of ") if e else None
                          for t, e in zip(titles, has_english)],
        "format": np.array(FORMATS)[fmt],
        "status": np.where(airing, "RELEASING", "FINISHED"),
        "episodes": episodes, "duration": duration, "source": np.array(SOURCES)[source],
        "season": "FALL", "season_year": 2026,
        # Nobody has listed it yet when it appears: AniList shows no scores, and the
        # stand-in serves the row as it was then (the world's statistics stay the crawl's).
        "average_score": np.nan, "mean_score": np.nan, "popularity": 0, "favourites": 0,
        "is_adult": genre_hot[:, GENRES.index("Hentai")], "country": country,
        "studio": catalog["studio_names"][studio],
        "genres": [np.array(GENRES)[row].tolist() for row in genre_hot], "tags": tags,
        "description": _descriptions(fmt, genre_hot, catalog["studio_names"][studio]),
        "fetched_at": appear,
    })
    for column in ("id_mal", "episodes"):
        media[column] = media[column].astype("Int64").mask(media[column] < 0)
    inverse = {"SEQUEL": "PREQUEL", "SIDE_STORY": "PARENT"}
    old_ids = catalog["media_id"]
    relations = pd.DataFrame({
        "media_id": [old_ids[p] for p, _, _ in edges] + [media_id[c] for _, c, _ in edges],
        "related_id": [media_id[c] for _, c, _ in edges] + [old_ids[p] for p, _, _ in edges],
        "relation_type": [r for _, _, r in edges] + [inverse[r] for _, _, r in edges],
    }, columns=list(store.RELATION_COLUMNS)).astype({"media_id": "int64", "related_id": "int64"})
    relations = relations.sort_values(["media_id", "related_id"], ignore_index=True)
    return dict(media=media, relations=relations, vectors=vectors,
                log_exposure=np.log(exposure), appear=appear, parent=parent, format=fmt,
                prequel_id=np.where(parent >= 0, old_ids[np.maximum(parent, 0)], -1),
                episodes=episodes.astype(np.int64), duration=duration, airing=airing,
                media_id=media_id)


def _with_new_titles(catalog: dict, new: dict) -> dict:
    """The catalog's per-title arrays over the old titles and then the new ones:
    ``appear`` (0 for titles that exist at the crawl), ``release`` (a new title's is the
    moment it appears), ``parent`` (rows into these arrays), ``airing`` (airing at the
    crawl, or a series that appears), ``vectors``, ``log_exposure``, ``format``,
    ``episodes``, ``media_id``."""
    n_old = len(catalog["media_id"])
    return dict(
        appear=np.concatenate([np.zeros(n_old, np.int64), new["appear"]]),
        release=np.concatenate([catalog["release"], new["appear"]]),
        parent=np.concatenate([catalog["parent"], new["parent"]]),
        airing=np.concatenate([catalog["airing"], new["airing"]]),
        vectors=np.vstack([catalog["vectors"], new["vectors"]]),
        log_exposure=np.concatenate([catalog["log_exposure"], new["log_exposure"]]),
        format=np.concatenate([catalog["format"], new["format"]]),
        episodes=np.concatenate([catalog["episodes"], new["episodes"]]),
        media_id=np.concatenate([catalog["media_id"], new["media_id"]]))


def _extend_truth(truth: Truth, media_id, vectors, log_exposure, release,
                  prequel_rows) -> Truth:
    """``truth`` with titles appended (their ids above every old id, so ``media_ids``
    stays sorted); ``prequel_rows``: rows in the extended arrays, -1 for none."""
    return dataclasses.replace(
        truth, media_ids=np.concatenate([truth.media_ids, media_id]),
        anime_vectors=np.vstack([truth.anime_vectors, vectors]),
        log_exposure=np.concatenate([truth.log_exposure, log_exposure]),
        release=np.concatenate([truth.release, release]),
        prequel=np.concatenate([truth.prequel, prequel_rows]))


def _future_versions(users: dict, sl: slice, entries: pd.DataFrame, rows: np.ndarray,
                     world: dict, truth: Truth, days: int,
                     rng: np.random.Generator) -> pd.DataFrame:
    """Every new version of the list entries of users ``sl`` in the ``days`` after the
    crawl (``entries``: their lists at the crawl, ``rows``: each entry's title row in
    ``world``, the catalog with the new titles).

    Each day a user is active with a chance that grows with their list length and fades
    with the time since their list last changed; an active user takes 1 + Poisson actions
    at random times of the day: finish a title they watch (DROPPED if it disappoints,
    else COMPLETED, scored on their scale by the store's rule), watch the next episode of
    an airing one, start a planned one, score a finished one, or add a title (drawn by
    the truth's adding log-odds with Gumbel noise, among the titles out by then; a
    continuation mostly after its prequel, sooner after a liked one; seasonal watchers
    favour what is airing now). Besides, when a new title appears, users who liked its
    prequel add it (the store's franchise rule), and seasonal watchers add new titles
    that suit them, a day or two later.

    Returns:
      ``ENTRY_COLUMNS`` rows, one per change, ``updated_at`` its time, ordered by user
      and time.
    """
    n_users = sl.stop - sl.start
    rows_u = np.arange(sl.start, sl.stop)
    n_titles = len(world["media_id"])
    aff = users["vectors"][sl] @ world["vectors"].T
    keys0 = truth.log_odds(rows_u, np.arange(n_titles), aff)
    z_taste = (aff - truth.centre) / truth.scale
    parent = world["parent"]
    has_parent = parent >= 0
    up = np.maximum(parent, 0)
    side = has_parent & ~np.isin(world["format"], _MAIN_FORMATS)
    fresh = world["release"] >= NOW - 60 * _DAY  # airing this season, or new
    # Python lists for what the per-entry loops below read (numpy's item access is slow).
    airing, episodes, release = (world[k].tolist() for k in ("airing", "episodes", "release"))
    new_rows = np.flatnonzero(world["appear"] > 0)
    mean, spread = users["mean"][sl], users["spread"][sl]
    step, p_score = users["rounding"][sl], users["p_score"][sl]
    seasonal = users["seasonal"][sl]

    # Each user's list: {title row: [status, score, progress, repeat, favourite,
    # created, updated, completed]} (-1 for an unknown progress or completion time).
    user_of = entries["user_id"].to_numpy()
    first = np.searchsorted(user_of, users["user_id"][sl], side="left")
    last = np.searchsorted(user_of, users["user_id"][sl], side="right")
    columns = [entries[c].to_numpy() if c == "status" else
               entries[c].fillna(-1).to_numpy(np.int64) if c in ("progress", "completed_at")
               else entries[c].to_numpy(np.int64)
               for c in ("status", "score", "progress", "repeat", "is_favourite",
                         "created_at", "updated_at", "completed_at")]
    latest = np.array([columns[6][a:b].max() if b > a else users["joined"][sl.start + i]
                       for i, (a, b) in enumerate(zip(first, last))])
    columns = [c.tolist() for c in columns]  # Python values: the loop below is per entry
    row_list = np.asarray(rows).tolist()
    length = users["length"][sl] / users["length"].mean()

    # Events: (user, time, kind, title row); kind "act" picks its title when it happens.
    events: list[tuple[int, int, str, int]] = []
    idle_days = (NOW - latest) / _DAY
    p_active = np.minimum(0.9, _ACTIVE * length ** 0.6 * np.exp(-idle_days / _IDLE_DAYS))
    for d in range(days):
        active = np.flatnonzero(rng.random(n_users) < p_active)
        n_actions = 1 + rng.poisson(_ACTIONS * length[active] ** 0.5)
        who = np.repeat(active, n_actions)
        when = NOW + d * _DAY + rng.integers(1, _DAY - _SLACK, len(who))
        events += [(int(i), int(t), "act", -1) for i, t in zip(who, when)]
    end = NOW + days * _DAY
    for j in new_rows:
        appear = int(world["appear"][j])
        if has_parent[j]:  # fans of the prequel: the store's rule for following a title
            p = parent[j]
            on = np.array([a < b and p in rows[a:b] for a, b in zip(first, last)])
            z = z_taste[:, p] + rng.normal(0, truth.noise_sd / truth.scale, n_users)
            p_add = on / (1 + np.exp(-(2.5 * z + (-1.0 if side[j] else 0.8))))
        else:  # seasonal watchers, by taste and how visible the title is
            boost = 0.5 * (world["log_exposure"][j] - np.median(world["log_exposure"]))
            p_add = seasonal / (1 + np.exp(-(TASTE_BIAS * z_taste[:, j] + boost - 2.5)))
        adds = np.flatnonzero(rng.random(n_users) < p_add)
        when = appear + rng.exponential(1.5 * _DAY, len(adds)).astype(np.int64)
        events += [(int(i), int(t), "add", int(j)) for i, t in zip(adds, when) if t <= end - _SLACK]
    events.sort()

    out = []
    lists: dict[int, dict] = {}
    perceived: dict[tuple[int, int], float] = {}

    def z_of(i: int, a: int) -> float:  # the user's perceived standard score of title a
        if (i, a) not in perceived:
            noise = rng.normal(0, truth.noise_sd)
            perceived[(i, a)] = float((aff[i, a] + noise - truth.centre) / truth.scale)
        return perceived[(i, a)]

    def score_of(i: int, a: int) -> int:
        raw = mean[i] + spread[i] * z_of(i, a)
        return int(np.clip(np.round(raw / step[i]) * step[i], step[i], 100))

    def aired(a: int, t: int) -> int:  # episodes out by time t (a series: one a week)
        if not airing[a]:
            return episodes[a]
        return (t - release[a]) // (7 * _DAY) + 1

    def started(a: int) -> int:  # progress of a title just started: its first episode
        return int(episodes[a] != 1)

    previous_t = {}
    for i, t, kind, a in events:
        t = max(t, previous_t.get(i, 0) + 1)  # one change a second at most, per user
        previous_t[i] = t
        if i not in lists:
            a0, b0 = first[i], last[i]
            lists[i] = _UserList(dict(zip(row_list[a0:b0],
                                          map(list, zip(*(c[a0:b0] for c in columns))))))
        user_list = lists[i]
        entry_list = user_list.entries
        if kind == "act":
            kind, a = _act(t, user_list, world, airing, keys0[i], rng, fresh, has_parent,
                           up, seasonal[i], p_score[i], aired)
        if kind == "add":
            if a in entry_list:
                continue
            status = "CURRENT" if rng.random() < 0.65 else "PLANNING"
            entry_list[a] = [status, 0, started(a) if status == "CURRENT" else 0,
                             0, 0, t, t, -1]
        elif kind == "finish":
            e = entry_list[a]
            z = z_of(i, a)
            if e[0] == "PAUSED":
                e[0] = "DROPPED" if rng.random() < 1 / (1 + np.exp(2 * z + 1.0)) else "CURRENT"
            elif rng.random() < 1 / (1 + np.exp(2 * z + _DROP_OFFSET)):
                e[0] = "DROPPED"
                if e[1] == 0 and rng.random() < p_score[i] * 0.35:
                    e[1] = score_of(i, a)
            else:
                e[3] += e[0] == "REPEATING"
                e[0], e[2], e[7] = "COMPLETED", episodes[a], t
                if e[1] == 0 and rng.random() < p_score[i]:
                    e[1] = score_of(i, a)
        elif kind == "episode":
            entry_list[a][2] += 1
        elif kind == "start":
            entry_list[a][0], entry_list[a][2] = "CURRENT", started(a)
        elif kind == "score":
            entry_list[a][1] = score_of(i, a)
        entry_list[a][6] = t
        user_list.changed(a)
        out.append((int(users["user_id"][sl.start + i]), int(world["media_id"][a]),
                    *entry_list[a][1:], entry_list[a][0]))
    frame = pd.DataFrame(out, columns=["user_id", "media_id", "score", "progress", "repeat",
                                       "is_favourite", "created_at", "updated_at",
                                       "completed_at", "status"])
    frame = frame[list(store.ENTRY_COLUMNS)]
    for column in ("progress", "completed_at"):
        frame[column] = frame[column].astype("Int64").mask(frame[column] < 0)
    return frame


class _UserList:
    """One user's list as the future goes on: ``entries`` ``{title row: [status, score,
    progress, repeat, favourite, created, updated, completed]}``, and apart the titles
    still open (neither COMPLETED nor DROPPED) and the completed ones without a score,
    so an action looks at a handful of entries rather than the whole list."""

    def __init__(self, entries: dict):
        self.entries = entries
        self.open = {a for a, e in entries.items() if e[0] not in ("COMPLETED", "DROPPED")}
        self.unscored = {a for a, e in entries.items() if e[0] == "COMPLETED" and e[1] == 0}

    def changed(self, a: int) -> None:
        """Files title ``a`` again after its entry changed."""
        status, score = self.entries[a][:2]
        if status in ("COMPLETED", "DROPPED"):
            self.open.discard(a)
        else:
            self.open.add(a)
        if status == "COMPLETED" and score == 0:
            self.unscored.add(a)
        else:
            self.unscored.discard(a)


def _act(t, user_list, world, airing, keys, rng, fresh, has_parent, up, seasonal, p_score,
         aired) -> tuple[str, int]:
    """What one action of an active user does at time ``t``: ``(kind, title row)``."""
    entry_list = user_list.entries
    finishing, paused, episodes, planned = [], [], [], []
    unscored = sorted(user_list.unscored) if p_score > 0 else []
    for a in sorted(user_list.open):
        e = entry_list[a]
        status = e[0]
        if status in ("CURRENT", "REPEATING"):
            if airing[a]:
                if e[2] < aired(a, t):
                    episodes.append(a)
            else:
                finishing.append(a)
        elif status == "PAUSED":
            paused.append(a)
        elif status == "PLANNING":
            planned.append(a)
    # A paused title is taken up again (or given up) less often than one being watched.
    if paused and (not finishing or rng.random() < _PAUSED_SHARE):
        finishing = paused
    choices = {"finish": finishing, "episode": episodes, "start": planned,
               "score": unscored, "add": [None]}
    weights = np.array([_ACTION_WEIGHTS[k] * bool(choices[k]) for k in _ACTION_KINDS])
    kind = _ACTION_KINDS[rng.choice(len(_ACTION_KINDS), p=weights / weights.sum())]
    if kind != "add":
        return kind, int(rng.choice(choices[kind]))
    # A title to add: the truth's log-odds with Gumbel noise over the titles out by now
    # and not on the list; a continuation rarely without its prequel, more often after a
    # prequel finished; seasonal watchers favour what airs this season.
    on = np.zeros(len(keys), bool)
    on[list(entry_list)] = True
    finished = np.zeros(len(keys), bool)
    finished[[a for a, e in entry_list.items() if e[0] in ("COMPLETED", "REPEATING")]] = True
    k = keys + rng.gumbel(size=len(keys)) + 1.5 * seasonal * fresh
    k = k + np.where(has_parent, np.where(finished[up], 1.0, np.where(on[up], 0.0, -4.0)), 0.0)
    k[on | (world["appear"] > t)] = -np.inf
    return "add", int(np.argmax(k))


def outcomes(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """What changed on the lists between two states of them, as issue #19's daily
    predictions count outcomes: the entries of ``after`` that became COMPLETED (new, or
    from any other status, REPEATING included), became DROPPED, or got a score (non-zero
    where it was 0 or the entry was new; a changed score is not counted).

    Args:
      before, after: list entries (at least ``user_id``, ``media_id``, ``status``,
        ``score``), e.g. a store's entries before and after a refresh.

    Returns:
      One row per (user_id, media_id) with an outcome, sorted: ``user_id``, ``media_id``
      and a bool column per kind (``OUTCOME_KINDS``); an entry can have several (most
      completions come with a score).
    """
    key = ["user_id", "media_id"]
    merged = after[key + ["status", "score"]].merge(
        before[key + ["status", "score"]], on=key, how="left", suffixes=("", "_before"))
    status = merged["status"].astype(str).to_numpy()
    was = merged["status_before"].astype(object).fillna("").astype(str).to_numpy()
    score = merged["score"].to_numpy(np.int64)
    had = merged["score_before"].fillna(0).to_numpy(np.int64)
    kinds = {"completed": (status == "COMPLETED") & (was != "COMPLETED"),
             "dropped": (status == "DROPPED") & (was != "DROPPED"),
             "scored": (score > 0) & (had == 0)}
    out = merged[key].assign(**kinds)
    any_kind = kinds["completed"] | kinds["dropped"] | kinds["scored"]
    return out[any_kind].sort_values(key, ignore_index=True)


def entries_as_of(entries: pd.DataFrame, versions: pd.DataFrame, now: int) -> pd.DataFrame:
    """``entries`` (e.g. the store's) with each (user, title)'s latest version of
    ``versions`` whose ``updated_at`` is at most ``now`` in its place (or added), ordered
    by (user_id, media_id): the lists as they are at ``now``."""
    key = ["user_id", "media_id"]
    shown = versions[versions["updated_at"] <= now]
    if shown.empty:
        return entries
    both = pd.concat([entries, shown.sort_values("updated_at", kind="stable")],
                     ignore_index=True)
    both = both.drop_duplicates(key, keep="last").sort_values(key, ignore_index=True)
    if isinstance(entries["status"].dtype, pd.CategoricalDtype):
        both["status"] = both["status"].astype("category")
    return both


@dataclasses.dataclass(frozen=True)
class Future:
    """A world's future: what happens on its users' lists and to its catalog in the days
    after the crawl (``NOW``), held back from the store (see ``read_future``).

    Day ``d`` (1 .. ``days``) is the span ``(start + (d - 1) * 86400, start + d * 86400]``
    (``day_span``): the UTC calendar day ``d - 1`` days after the crawl's.

    Attributes:
      start: the crawl time (``NOW``): everything here happens after it.
      days: how many days it covers.
      versions: every new version of a list entry (``store.ENTRY_COLUMNS``), ordered by
        ``updated_at`` (then user, title): a new entry's first version, then one per
        change; ``updated_at`` is when it happened.
      media: the titles that appear (``store.MEDIA_COLUMNS``), ``fetched_at`` the moment
        each appears (AniList has it from then on).
      relations: their relations to the catalog, both directions (``RELATION_COLUMNS``).
      titles: their ground truth (``media_id``, ``release``, ``log_exposure``,
        ``prequel_id``, ``vector``); ``extend`` adds them to the world's ``Truth``.
    """

    start: int
    days: int
    versions: pd.DataFrame
    media: pd.DataFrame
    relations: pd.DataFrame
    titles: pd.DataFrame

    @property
    def end(self) -> int:
        return self.start + self.days * _DAY

    def day_span(self, day: int) -> tuple[int, int]:
        """``(after, until)``: day ``day`` holds the times ``after < t <= until``.

        Raises:
          InputError: ``day`` is not one of 1 .. ``days``.
        """
        if not 1 <= day <= self.days:
            raise InputError(f"This future covers days 1 to {self.days} after the crawl; "
                             f"day {day} is not one of them.")
        after = self.start + (day - 1) * _DAY
        return after, after + _DAY

    def day_versions(self, day: int) -> pd.DataFrame:
        """The entry versions of day ``day`` (see ``day_span``)."""
        after, until = self.day_span(day)
        on = (self.versions["updated_at"] > after) & (self.versions["updated_at"] <= until)
        return self.versions[on].reset_index(drop=True)

    def entries_as_of(self, entries: pd.DataFrame, now: int) -> pd.DataFrame:
        """The store's ``entries`` as they are at ``now`` (see ``entries_as_of``)."""
        return entries_as_of(entries, self.versions, now)

    def media_as_of(self, now: int) -> pd.DataFrame:
        """The new titles that exist at ``now`` (appeared at or before it)."""
        return self.media[self.media["fetched_at"] <= now].reset_index(drop=True)

    def day_outcomes(self, entries: pd.DataFrame, day: int) -> pd.DataFrame:
        """Day ``day``'s outcomes (``outcomes``): the lists at its end against the lists
        at its start, ``entries`` being the store's (at least the entries the day
        changes)."""
        after, until = self.day_span(day)
        touched = self.day_versions(day)[["user_id", "media_id"]].drop_duplicates()
        base = entries.merge(touched, on=["user_id", "media_id"])
        earlier = self.versions[self.versions["updated_at"] <= until].merge(
            touched, on=["user_id", "media_id"])
        return outcomes(entries_as_of(base, earlier, after),
                        entries_as_of(base, earlier, until))

    def extend(self, truth: Truth) -> Truth:
        """The world's ``truth`` with the new titles added (``affinity``,
        ``expected_score`` and ``adding_log_odds`` then answer for them too)."""
        if self.titles.empty:
            return truth
        ids = np.concatenate([truth.media_ids, self.titles["media_id"].to_numpy()])
        prequel = self.titles["prequel_id"]
        rows = np.full(len(prequel), -1)
        known = prequel.notna().to_numpy()
        rows[known] = find_sorted(ids, prequel[known].to_numpy(np.int64))[0]
        return _extend_truth(truth, self.titles["media_id"].to_numpy(),
                             np.array(self.titles["vector"].tolist()),
                             self.titles["log_exposure"].to_numpy(),
                             self.titles["release"].to_numpy(), rows)


def read_future(db: str | os.PathLike, path: str | os.PathLike | None = None) -> Future:
    """Reads the future of the synthetic world in the store ``db`` (from ``path``,
    default ``future_path(db)``).

    Raises:
      StoreError: there is no future file, or it belongs to another world than ``db``'s
        (the store was regenerated with other settings and ``--future-days 0``).
    """
    path = Path(path) if path is not None else future_path(db)
    if not path.exists():
        raise StoreError(
            f"No future at {path}. Generate the world with one: `python -m pipelines synth "
            f"--db {db} --future-days 7`.")
    conn = store.connect(db, readonly=True)
    try:
        world = store.source(conn)
    finally:
        conn.close()
    conn = store.connect(path, readonly=True)
    try:
        if store.get_meta(conn, "future_of") != world:
            raise StoreError(
                f"{path} is the future of another world than the one in {db}; regenerate "
                f"both with `python -m pipelines synth --db {db}`.")
        return Future(start=int(store.get_meta(conn, "future_start")),
                      days=int(store.get_meta(conn, "future_days")),
                      versions=store.read_entry_versions(conn),
                      media=store.read_media(conn), relations=store.read_relations(conn),
                      titles=store.read_title_truth(conn))
    finally:
        conn.close()


def generate(db: str | os.PathLike, config: SynthConfig = SynthConfig(), *,
             progress: bool = True) -> dict:
    """Writes a synthetic world to the raw store ``db``, its truth beside it and, with
    ``config.future_days``, its future (``future_path(db)``, read by ``read_future``).

    The store is built in a temporary file and renamed into place only when complete,
    so a crash never leaves a half-written store under ``db``. An existing synthetic
    store at ``db`` is replaced; any other existing store is refused (it may hold a crawl).
    The future is written the same way and renamed into place after the store; the old
    world's future is deleted before the store is replaced, so a crash may leave a store
    without its future but never with another world's.

    The future draws on random streams of its own: the store and the truth are the same,
    byte for byte, whatever ``future_days`` is.

    Returns:
      A summary dict: counts, seconds, paths; ``future``: its path, days, entry versions,
      new titles, each day's outcomes (``day_outcomes``) and the seconds it added.
    """
    start = time.perf_counter()
    db = Path(db)
    if db.exists():
        conn = store.connect(db, readonly=True)
        try:
            held = store.source(conn)
        finally:
            conn.close()
        if held is None or not held.startswith("synth"):
            raise StoreError(
                f"{db} already holds a raw store that is not synthetic "
                f"(source={held}); refusing to overwrite it. Pass another --db.")
    cfg = config
    rng = np.random.default_rng([cfg.seed, 0])
    catalog = _make_catalog(cfg, rng)
    users = _make_users(cfg, rng, cfg.anime)
    truth = Truth(
        user_ids=users["user_id"], media_ids=catalog["media_id"],
        user_vectors=users["vectors"], anime_vectors=catalog["vectors"],
        user_mean=users["mean"], user_spread=users["spread"],
        centre=0.0, scale=1.0, noise_sd=0.45,
        log_exposure=catalog["log_exposure"], user_cohort=users["cohort"],
        cohort_titles=_cohort_titles(users["n_cohorts"], catalog, rng),
        user_seasonal=users["seasonal"], user_joined=users["joined"],
        release=catalog["release"], prequel=catalog["parent"])

    # Affinity -> standard score. Scores are given to titles users chose to add, so the
    # centre and scale are those of affinity over what users add: measured on a pilot
    # draw of lists (before franchises act) for a sample of users (its own random
    # stream, not the real lists).
    pilot = np.arange(min(cfg.users, 2000))
    sample = users["vectors"][pilot] @ catalog["vectors"].T
    keys = truth.log_odds(pilot, np.arange(cfg.anime), sample)
    keys += np.random.default_rng([cfg.seed, 2]).gumbel(size=keys.shape)
    picked = sample[_top_k(keys, users["length"][pilot])]
    truth = dataclasses.replace(truth, centre=float(picked.mean()),
                                scale=float(picked.std()))

    days = cfg.future_days
    future_seconds = 0.0
    if days:
        clock = time.perf_counter()
        new = _new_titles(catalog, days, np.random.default_rng([cfg.seed, 10]))
        world = _with_new_titles(catalog, new)
        future_truth = _extend_truth(
            truth, new["media_id"], new["vectors"], new["log_exposure"], new["appear"],
            new["parent"])
        versions, day_counts = [], np.zeros((days, len(OUTCOME_KINDS)), np.int64)
        future_seconds += time.perf_counter() - clock

    count = np.zeros(cfg.anime)
    favourites, score_sum, raters = np.zeros(cfg.anime), np.zeros(cfg.anime), np.zeros(cfg.anime)
    n_entries = 0
    future_file = future_path(db)
    with contextlib.ExitStack() as stack:
        # Entered first, left last: the future is renamed into place after the store.
        future_tmp = (stack.enter_context(atomic.file(future_file, companions=("-wal", "-shm")))
                      if days else None)
        tmp = stack.enter_context(atomic.file(db, companions=("-wal", "-shm")))
        conn = store.connect(tmp, durable=False)  # durability comes from the rename
        with store.transaction(conn):
            store.claim_source(conn, "synth", db, _world_config(cfg))
        chunks = range(0, cfg.users, _USER_CHUNK)
        for i, first in enumerate(tqdm(chunks, desc="synth users", unit="block",
                                       disable=not progress)):
            sl = slice(first, min(first + _USER_CHUNK, cfg.users))
            entries, anime = _make_entries(users, sl, catalog, truth,
                                           np.random.default_rng([cfg.seed, 1, i]))
            score = entries["score"].to_numpy()
            count += np.bincount(anime, minlength=cfg.anime)
            favourites += np.bincount(anime, entries["is_favourite"].to_numpy(), cfg.anime)
            score_sum += np.bincount(anime, score, cfg.anime)
            raters += np.bincount(anime, score > 0, cfg.anime)
            last_update = entries.groupby("user_id")["updated_at"].max()
            profile = pd.DataFrame({"user_id": users["user_id"][sl]})
            profile["name"] = [f"user{uid}" for uid in profile["user_id"]]
            profile["created_at"] = users["joined"][sl]
            profile["updated_at"] = profile["user_id"].map(last_update).astype("Int64")
            for column in ("anime_count", "mean_score", "std_score", "minutes_watched",
                           "episodes_watched"):
                profile[column] = np.nan  # filled from the entries below
            profile["fetched_at"] = NOW
            with store.transaction(conn):
                store.upsert_users(conn, profile)
                store.upsert_entries(conn, entries)
            n_entries += len(entries)
            if days:  # this block's users go on with their lists after the crawl
                clock = time.perf_counter()
                changes = _future_versions(users, sl, entries, anime, world, future_truth,
                                           days, np.random.default_rng([cfg.seed, 11, i]))
                versions.append(changes)
                ahead = Future(NOW, days, changes.sort_values("updated_at", kind="stable"),
                               new["media"], new["relations"], pd.DataFrame())
                touched = entries.merge(changes[["user_id", "media_id"]].drop_duplicates())
                for d in range(days):
                    found = ahead.day_outcomes(touched, d + 1)
                    day_counts[d] += found[list(OUTCOME_KINDS)].sum().to_numpy()
                future_seconds += time.perf_counter() - clock
        # The media table as AniList shows it at the crawl: counted from the lists.
        with store.transaction(conn):
            store.upsert_media(conn, _media_stats(catalog["media"], count, favourites,
                                                  score_sum, raters))
            store.upsert_relations(conn, catalog["relations"])
            store.refresh_user_stats(conn)
        store.checkpoint(conn)
        conn.close()
        truth.save(truth_path(db))
        if days:
            clock = time.perf_counter()
            versions = pd.concat(versions, ignore_index=True).sort_values(
                ["updated_at", "user_id", "media_id"], ignore_index=True)
            _write_future(future_tmp, cfg, days, versions, new)
            future_seconds += time.perf_counter() - clock
        for suffix in ("", "-wal", "-shm"):  # the old world's future never outlives it
            Path(f"{future_file}{suffix}").unlink(missing_ok=True)
    summary = {
        "db": str(db), "truth": str(truth_path(db)), "users": cfg.users,
        "anime": cfg.anime, "entries": n_entries,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if days:
        # Day d holds the times (NOW + (d - 1) days, NOW + d days]: here 0-based.
        changes = np.bincount((versions["updated_at"].to_numpy(np.int64) - NOW - 1) // _DAY,
                              minlength=days)
        appeared = np.bincount((new["appear"] - NOW - 1) // _DAY, minlength=days)
        summary["future"] = {
            "path": str(future_file), "days": days, "versions": len(versions),
            "new_titles": len(new["media_id"]),
            "per_day": [{"day": d + 1, "date": _date(NOW + d * _DAY),
                         "versions": int(changes[d]), "new_titles": int(appeared[d]),
                         **dict(zip(OUTCOME_KINDS, day_counts[d].tolist()))}
                        for d in range(days)],
            "seconds": round(future_seconds, 2)}
    return summary


def format_future(future: dict) -> str:
    """The future part of ``generate``'s summary, for the CLI: one line, then a table of
    each day's list changes, new titles and outcomes."""
    lines = [f"future: {future['days']} days after the crawl in {future['path']} "
             f"({future['versions']:,} list changes, new titles: {future['new_titles']:,}; "
             f"{future['seconds']} s of the time above), held back from the store:",
             "  day  date        changes  new titles  completed  dropped  scored"]
    for d in future["per_day"]:
        lines.append(f"  {d['day']:>3}  {d['date']}  {d['versions']:>7,}  {d['new_titles']:>10,}"
                     f"  {d['completed']:>9,}  {d['dropped']:>7,}  {d['scored']:>6,}")
    return "\n".join(lines)


def _date(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d")


def _write_future(path: Path, cfg: SynthConfig, days: int, versions: pd.DataFrame,
                  new: dict) -> None:
    """Writes the future file at ``path`` (a temporary name): the store's tables with the
    new titles and their relations, the entry versions, the new titles' truth, and in
    ``meta`` the span it covers and which world it continues."""
    conn = store.connect(path, durable=False)  # durability comes from the rename
    try:
        store.create_future_tables(conn)
        titles = pd.DataFrame({
            "media_id": new["media_id"], "release": new["appear"],
            "log_exposure": new["log_exposure"],
            "prequel_id": pd.Series(new["prequel_id"], dtype="Int64").mask(
                new["prequel_id"] < 0),
            "vector": list(new["vectors"])})
        with store.transaction(conn):
            store.set_meta(conn, "future_of", f"synth:{json.dumps(_world_config(cfg))}")
            store.set_meta(conn, "future_start", NOW)
            store.set_meta(conn, "future_end", NOW + days * _DAY)
            store.set_meta(conn, "future_days", days)
            store.upsert_media(conn, new["media"])
            store.upsert_relations(conn, new["relations"])
            store.insert_entry_versions(conn, versions)
            store.insert_title_truth(conn, titles)
        store.checkpoint(conn)
    finally:
        conn.close()


def run(db: str | os.PathLike = "data/anirank.db", *, users: int = 3000, anime: int = 2000,
        entries_per_user: float = 110.0, seed: int = 0, future_days: int = 7,
        progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines synth``."""
    cfg = SynthConfig(users=users, anime=anime, entries_per_user=entries_per_user, seed=seed,
                      future_days=future_days)
    return generate(db, cfg, progress=progress)
