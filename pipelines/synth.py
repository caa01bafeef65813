"""A seeded synthetic AniList world, written to the raw store, with its ground truth.

Why: AniList cannot be reached from CI or a fresh laptop, and a real crawl has no ground
truth. This world has AniList's shape (formats, studios, genres, tags, long-tailed
popularity and activity, personal rating scales, list statuses and times) and a known
generative model, so every stage runs offline and evaluation can report an oracle.

The model. Each anime ``a`` and user ``u`` get a vector; true affinity is their dot
product ``aff(u, a) = U[u] . A[a]`` with

    A[a] = [genres_a / |genres_a|, onehot(format_a), style_a, latent_a, recency_a, quality_a]
    U[u] = [genre_taste_u,          format_taste_u,  style_u, latent_u, recency_u, 1]

so a user's genre and format taste, a studio's style (shared by its titles) and the
title's year all carry signal a side-feature model can use; ``latent`` is taste no
feature explains (only ids can learn it). Users put titles on their lists with
probability rising with popularity and affinity (Gumbel top-k sampling); the status
(DROPPED when the title disappoints), the POINT_100 score
``mean_u + spread_u * (aff + noise - centre) / scale`` on the user's own scale and
rounding, favourites and times (after the account and the airing date, completion after
the start) follow from it.

The ground truth (``U``, ``A``, scale and noise parameters) is saved beside the store as
``<db>.truth.npz``; ``Truth.affinity`` recomputes any user's affinity to any title.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
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
POPULARITY_BIAS = 0.55  # exposure: weight of log popularity ...
TASTE_BIAS = 1.6  # ... and of true affinity in which titles a user adds
_USER_CHUNK = 512  # users generated per block: bounds memory, and part of the seed stream


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Size and seed of the world. Defaults: a demo world (~3k users, 2k anime, ~300k
    entries) that generates in well under 30 s.

    Attributes:
      users: number of users.
      anime: number of anime in the catalog.
      entries_per_user: mean list length; lengths are log-normal (long-tailed), capped
        at 80% of the catalog.
      activity_sigma: spread of log list length (1.1: ~20% of users under 20 entries,
        ~1% over 1,000 at the default mean).
      seed: everything random derives from it.
    """

    users: int = 3000
    anime: int = 2000
    entries_per_user: float = 110.0
    activity_sigma: float = 1.1
    seed: int = 0

    def __post_init__(self):
        if self.users < 1 or self.anime < 10:
            raise InputError(
                f"Need at least 1 user and 10 anime. Received: users={self.users}, "
                f"anime={self.anime}.")
        if self.entries_per_user <= 0:
            raise InputError(
                f"`entries_per_user` must be positive. Received: {self.entries_per_user}.")


def _positions(sorted_ids: np.ndarray, ids, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    pos, found = find_sorted(sorted_ids, ids)
    unknown = ~found
    if unknown.any():
        raise InputError(f"{unknown.sum()} {what} ids are not in this world, "
                         f"e.g. {ids[unknown][:3].tolist()}.")
    return pos


def _adding_log_odds(affinity: np.ndarray, log_popularity: np.ndarray) -> np.ndarray:
    """The log-odds (before the Gumbel noise) that users add titles: ``affinity`` is
    ``[users, anime]``, ``log_popularity`` ``[anime]``."""
    return POPULARITY_BIAS * log_popularity[None, :] + TASTE_BIAS * affinity


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

    def adding_log_odds(self, user_ids, media_ids, popularity) -> np.ndarray:
        """``[len(user_ids), len(media_ids)]``: the generator's log-odds (before its
        Gumbel noise) that each user adds each title to their list, from the titles'
        ``popularity`` (``[len(media_ids)]``, as in the store; missing counts as 1).
        The oracle a recommender is measured against."""
        u, a = self.user_index(user_ids), self.anime_index(media_ids)
        log_pop = np.log(np.maximum(pd.Series(popularity).fillna(1).to_numpy(float), 1))
        return _adding_log_odds(self.user_vectors[u] @ self.anime_vectors[a].T, log_pop)

    def save(self, path: str | os.PathLike) -> None:
        # A crash leaves the old truth or none, never a truncated file under the name.
        with atomic.file(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Truth":
        with np.load(path) as data:
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


def _make_catalog(cfg: SynthConfig, rng: np.random.Generator):
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

    # Genres: 1-6 per title, drawn without replacement (Gumbel top-k) from the global
    # genre shares tilted by the studio's favourites.
    k = rng.choice(np.arange(1, 7), n, p=[0.12, 0.24, 0.27, 0.2, 0.11, 0.06])
    logits = np.log(_GENRE_WEIGHTS / _GENRE_WEIGHTS.sum()) + studio_genre[studio]
    keys = logits + rng.gumbel(size=logits.shape)
    order = np.argsort(-keys, axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(len(GENRES))[None, :].repeat(n, 0), axis=1)
    genre_hot = ranks < k[:, None]

    # Year skews recent (most anime ever made aired in the last 15 years).
    year = np.clip(2026 - np.floor(rng.exponential(11.0, n)).astype(int), 1970, 2026)
    season = rng.integers(0, 4, n)
    release = _season_start(year, season)
    airing = (year == 2026) & (season == 3) & np.isin(fmt, [0, 3, 5])
    status = np.where(airing, "RELEASING", "FINISHED")

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
    source = rng.choice(len(SOURCES), n, p=_SOURCE_SHARES)

    quality = rng.normal(0, 0.5, n)
    style = studio_style[studio] + rng.normal(0, 0.4, (n, STYLE_DIM))
    latent = rng.normal(0, 1, (n, LATENT_DIM))
    recency = (year - 2012) / 12.0

    # Popularity: a true power law over a latent appeal rank (quality, recency, format).
    format_appeal = np.array([1.0, 0.6, -0.3, 0.0, -0.6, -0.4, -1.2])[fmt]
    appeal = quality + 0.25 * recency + format_appeal + rng.normal(0, 0.8, n)
    rank = np.empty(n, int)
    rank[np.argsort(-appeal)] = np.arange(1, n + 1)
    popularity = np.maximum(np.round(3.5e6 * rank ** -1.05 * (2000 / n) ** -0.05), 30)
    popularity = popularity.astype(np.int64)

    vectors = np.hstack([
        genre_hot / genre_hot.sum(1, keepdims=True),
        np.eye(len(FORMATS))[fmt],
        style / np.sqrt(STYLE_DIM),
        latent / np.sqrt(LATENT_DIM),
        recency[:, None],
        quality[:, None],
    ])

    # Tags: mostly from the title's genres, ranked 40-100.
    tag_pool = [(t, GENRES.index(g)) for g, ts in TAGS.items() for t in ts]
    tag_genre = np.array([g for _, g in tag_pool])
    tag_logits = np.where(genre_hot[:, tag_genre], 2.5, -1.5) + rng.gumbel(size=(n, len(tag_pool)))
    n_tags = rng.integers(2, 9, n)
    tag_order = np.argsort(-tag_logits, axis=1)
    tag_rank = rng.integers(40, 101, (n, 8))
    tag_rank = -np.sort(-tag_rank, axis=1)

    words = np.array(_WORDS)
    w = rng.integers(0, len(words), (n, 3))
    pattern = rng.integers(0, 3, n)
    sequel = rng.random(n) < 0.12
    titles = []
    for i in range(n):  # string formatting of 2k-15k titles: cheap, done once
        a, b, c = words[w[i]]
        t = (f"{a} no {b}", f"{a} {b} {c}", f"{a} to {b} no {c}")[pattern[i]]
        titles.append(t + (" 2nd Season" if sequel[i] else ""))
    has_english = rng.random(n) < 0.55
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
        "popularity": popularity,
        "is_adult": genre_hot[:, GENRES.index("Hentai")],
        "country": rng.choice(["JP", "CN", "KR"], n, p=[0.9, 0.07, 0.03]),
        "studio": studio_names[studio],
        "genres": [genre_names[row].tolist() for row in genre_hot],
        "tags": [[{"name": tag_pool[j][0], "rank": int(r)}
                  for j, r in zip(tag_order[i, :n_tags[i]], tag_rank[i])] for i in range(n)],
        "description": [f"A {fm.lower().replace('_', ' ')} {' / '.join(g).lower()} story "
                        f"from {s}." for fm, g, s in
                        zip(np.array(FORMATS)[fmt], [genre_names[r] for r in genre_hot],
                            studio_names[studio])],
    })
    for column in ("id_mal", "episodes"):  # -1 marks unknown: NULL in the store
        media[column] = media[column].astype("Int64").mask(media[column] < 0)
    return media, vectors, release, popularity


# ---------------------------------------------------------------------------------------
# The users.

def _make_users(cfg: SynthConfig, rng: np.random.Generator, n_anime: int):
    n = cfg.users
    user_id = np.sort(rng.choice(max(7_000_000, 10 * n), n, replace=False) + 1)
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
    return dict(user_id=user_id, vectors=vectors, mean=mean, spread=spread,
                rounding=rounding, p_score=p_score, uses_favourites=uses_favourites,
                length=length, joined=joined)


def _pick(affinity: np.ndarray, log_popularity: np.ndarray, lengths: np.ndarray,
          rng: np.random.Generator) -> list[np.ndarray]:
    """Which titles each user adds: ``lengths[i]`` titles for row ``i`` of ``affinity``
    (``[users, anime]``), sampled without replacement (Gumbel top-k) with log-weights
    rising with popularity and affinity."""
    keys = _adding_log_odds(affinity, log_popularity)
    keys += rng.gumbel(size=keys.shape)
    return [np.argpartition(-row, k - 1)[:k] for row, k in zip(keys, lengths)]


def _make_entries(users: dict, sl: slice, catalog: dict, truth: Truth,
                  rng: np.random.Generator) -> pd.DataFrame:
    """The list entries of users ``sl``: who added what, with status, score and times."""
    vectors = users["vectors"][sl]
    lengths = users["length"][sl]
    aff = vectors @ catalog["vectors"].T                     # [chunk, n_anime]
    picks = _pick(aff, catalog["log_pop"], lengths, rng)
    local = np.repeat(np.arange(len(lengths)), lengths)
    anime = np.concatenate(picks)
    order = np.lexsort((catalog["media_id"][anime], local))
    local, anime = local[order], anime[order]
    u = local + sl.start
    m = len(anime)

    perceived = aff[local, anime] + rng.normal(0, truth.noise_sd, m)
    z = (perceived - truth.centre) / truth.scale

    fmt = catalog["format"][anime]
    episodes = catalog["episodes"][anime]             # -1 = unknown (still airing)
    release = catalog["release"][anime]
    airing = catalog["airing"][anime]

    # Times: added after both the account and the airing date; half soon after that
    # (seasonal watching, the backlog on joining), half any time since (catching up).
    lo = np.maximum(users["joined"][u], release)
    delay = np.where(rng.random(m) < 0.5, rng.beta(1.0, 2.5, m), rng.random(m))
    created = lo + ((NOW - lo) * delay).astype(np.int64)
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

    # Completion takes roughly the watch time at 1-3 hours a day, plus slack.
    minutes = np.maximum(episodes, 1) * catalog["duration"][anime]
    watch = (minutes / rng.uniform(60, 180, m) * _DAY + rng.exponential(7 * _DAY, m))
    completed = np.where(finished, np.minimum(created + watch.astype(np.int64), NOW), -1)
    touched = np.maximum(created, completed)
    later = rng.random(m) < 0.3
    updated = np.where(planning, created, np.minimum(
        touched + (later * rng.exponential(30 * _DAY, m)).astype(np.int64), NOW))

    # Favourites: a user's best-loved finished titles (up to 10), if they use favourites.
    eligible = finished & (z > 1.0) & users["uses_favourites"][u]
    fav_order = np.lexsort((-z, ~eligible, local))
    position = np.empty(m, np.int64)
    starts = np.searchsorted(local[fav_order], local[fav_order], side="left")
    position[fav_order] = np.arange(m) - starts
    is_favourite = eligible & (position < 10)

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
    return frame


def generate(db: str | os.PathLike, config: SynthConfig = SynthConfig(), *,
             progress: bool = True) -> dict:
    """Writes a synthetic world to the raw store ``db`` and its truth beside it.

    The store is built in a temporary file and renamed into place only when complete,
    so a crash never leaves a half-written store under ``db``. An existing synthetic
    store at ``db`` is replaced; any other existing store is refused (it may hold a crawl).

    Returns:
      A summary dict: counts, seconds, paths.
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
    media, anime_vectors, release, popularity = _make_catalog(cfg, rng)
    users = _make_users(cfg, rng, cfg.anime)

    # Affinity -> standard score. Scores are given to titles users chose to add, so the
    # centre and scale are those of affinity over what users add: measured on a pilot
    # draw of lists for a sample of users (its own random stream, not the real lists).
    pilot = slice(0, min(cfg.users, 2000))
    sample = users["vectors"][pilot] @ anime_vectors.T
    picks = _pick(sample, np.log(popularity), users["length"][pilot],
                  np.random.default_rng([cfg.seed, 2]))
    rows = np.repeat(np.arange(len(picks)), [len(p) for p in picks])
    cols = np.concatenate(picks)
    picked = sample[rows, cols]
    truth = Truth(
        user_ids=users["user_id"], media_ids=media["media_id"].to_numpy(),
        user_vectors=users["vectors"], anime_vectors=anime_vectors,
        user_mean=users["mean"], user_spread=users["spread"],
        centre=float(picked.mean()), scale=float(picked.std()), noise_sd=0.45)

    # What people think of each title: the mean noise-free score of the pilot users who
    # added it (AniList's meanScore); averageScore is shrunk toward the site mean for
    # titles few people scored.
    expected = np.clip(users["mean"][rows] + users["spread"][rows]
                       * (picked - truth.centre) / truth.scale, 1, 100)
    raters = np.bincount(cols, minlength=cfg.anime)
    site_mean = float(expected.mean())
    mean_score = (np.bincount(cols, weights=expected, minlength=cfg.anime) + 3 * site_mean) / (raters + 3)
    media["mean_score"] = np.round(mean_score).astype(np.int64)
    media["average_score"] = np.round(
        (mean_score * raters + site_mean * 20) / (raters + 20)).astype(np.int64)
    media["favourites"] = np.round(popularity * 0.03 / (1 + np.exp(-3 * (mean_score - 75) / 10)))
    media["favourites"] = media["favourites"].astype(np.int64)
    media["fetched_at"] = NOW
    catalog = dict(
        vectors=anime_vectors, media_id=media["media_id"].to_numpy(),
        log_pop=np.log(popularity), format=pd.Categorical(media["format"], FORMATS).codes,
        episodes=media["episodes"].fillna(-1).to_numpy(np.int64),
        duration=media["duration"].to_numpy(), release=release,
        airing=(media["status"] == "RELEASING").to_numpy())

    n_entries = 0
    with atomic.file(db, companions=("-wal", "-shm")) as tmp:
        conn = store.connect(tmp, durable=False)  # durability comes from the rename
        with store.transaction(conn):
            store.upsert_media(conn, media)
            store.claim_source(conn, "synth", db, dataclasses.asdict(cfg))
        chunks = range(0, cfg.users, _USER_CHUNK)
        for i, first in enumerate(tqdm(chunks, desc="synth users", unit="block",
                                       disable=not progress)):
            sl = slice(first, min(first + _USER_CHUNK, cfg.users))
            entries = _make_entries(users, sl, catalog, truth,
                                    np.random.default_rng([cfg.seed, 1, i]))
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
        with store.transaction(conn):
            store.refresh_user_stats(conn)
        store.checkpoint(conn)
        conn.close()
        truth.save(truth_path(db))
    return {
        "db": str(db), "truth": str(truth_path(db)), "users": cfg.users,
        "anime": cfg.anime, "entries": n_entries,
        "seconds": round(time.perf_counter() - start, 2),
    }


def run(db: str | os.PathLike = "data/anirank.db", *, users: int = 3000, anime: int = 2000,
        entries_per_user: float = 110.0, seed: int = 0, progress: bool = True) -> dict:
    """Stage function behind ``python -m pipelines synth``."""
    cfg = SynthConfig(users=users, anime=anime, entries_per_user=entries_per_user, seed=seed)
    return generate(db, cfg, progress=progress)
