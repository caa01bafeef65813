"""The recommendation service: a web page and a JSON API over one Recommender.

    python -m serving.app --model data/model            # or a Hub repo id (--revision SHA)
    # then open http://127.0.0.1:8000/ ; the API: /recommend, /recommend_for_history,
    # /similar, /search, /health; its OpenAPI description: /openapi.json

One process loads the model once, at start-up (the model and the repo are never taken
from a request), and serves:

- the page ``/``: recommendations for an AniList user (their public list fetched live
  through ``data_query``'s client: ``serving.lists``, cached and rate-limited) or for a
  list built by searching titles, with filters (formats, years, genres to include and to
  leave out, hidden gems, hide what I have seen); each row says why ("because you rated
  X 90": the title of the list nearest to it in candidate-embedding space). ``/title``:
  any title and the titles most similar to it.
- the JSON API with the same operations (``/docs`` is off: its page loads scripts from a
  CDN, and the service works offline; ``/openapi.json`` describes the API).

Bad input never breaks it: the page shows the message, the API answers a 4xx with
``{"error": "..."}`` (400 a bad argument, 404 an unknown user or title, 413 a body over
4 MB, 422 malformed JSON or a wrong type, 429 too many AniList lookups from one
address, 502 AniList failing), and the process keeps serving.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import socket
import sys
import threading
from pathlib import Path
from typing import Annotated, Union

from pipelines import _env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from fastapi import FastAPI, Query, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from fastapi.templating import Jinja2Templates  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

import data_query  # noqa: E402
from pipelines.errors import AnirankError, InputError, NotInCatalog, os_error_line  # noqa: E402
from serving.batch import current, read_store, revision_of  # noqa: E402
from serving.lists import (BUILD_A_LIST, AniListUnavailable, Busy, ListLookup,  # noqa: E402
                           TooManyLookups, UnknownUser)
from serving.recommender import Filters, Recommender, clipped, title_key  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_K = 100                      # results per request: a page, not a dump of the catalog
NOTHING_PASSES = ("No title passes these filters (or every one that does is on the list): "
                  "widen the formats, years, genres or the popularity ceiling.")
MAX_BODY = 4 << 20               # bytes of a request body (an 11,000-title history is ~0.5 MB)
ID = dict(ge=-(2**63), le=2**63 - 1)   # ids are int64 (a larger JSON number is a 422, not an overflow)
YEAR = dict(ge=0, le=9999)
log = logging.getLogger("serving.app")


class UnknownTrainingUser(AnirankError):
    """A user id the model was not trained on (HTTP 404)."""


# -- the operations, shared by the page and the API -------------------------------------

class Service:
    """What the page and the API both call: the loaded model, its catalog as shown to
    people, and the live AniList lists.

    Args:
      rec: the loaded model.
      revision: what names it (``/health``): the Hub revision when pinned, else the
        first 12 hex digits of the model's content digest (as the daily loop names it).
      lists: the AniList lookup (None: lookups by name answer 502, e.g. offline).
    """

    def __init__(self, rec: Recommender, revision: str, lists: ListLookup | None):
        self.rec, self.revision, self.lists = rec, revision, lists
        anime = rec.anime
        self.catalog = pd.DataFrame({
            "title": anime["title"].astype(str).to_numpy(),
            "title_romaji": anime["title_romaji"].fillna(anime["title"]).astype(str).to_numpy(),
            "year": anime["season_year"].to_numpy(dtype=float),
            "format": anime["format"].fillna("").astype(str).to_numpy(),
            "genres": [list(g) if g is not None else [] for g in anime["genres"]],
            "popularity": anime["popularity"].to_numpy(dtype=float),
        }, index=pd.Index(anime["media_id"].to_numpy(np.int64), name="anime_id"))
        self._folded = tuple(np.array([title_key(t) for t in self.catalog[c]], dtype=str)
                             for c in ("title", "title_romaji"))
        # What the page offers to filter by: the formats and genres of titles it can serve
        # (never adult ones: Filters' default, which the service keeps), so no choice is
        # one that always comes back empty.
        servable = self.catalog[Filters().allowed(anime)]
        self.formats = sorted(f for f in servable["format"].unique() if f)
        self.genres = sorted({g for gs in servable["genres"] for g in gs})
        years = self.catalog["year"].dropna()
        self.years = (int(years.min()), int(years.max())) if len(years) else (None, None)
        # Hidden gems on the page: on at most as many lists as the median title.
        self.gem_ceiling = float(np.median(self.catalog["popularity"]))
        # Each title as shown, built once: a request reads dicts, not DataFrame rows.
        self._shown = {int(i): {"anime_id": int(i), "title": str(r.title),
                                "title_romaji": str(r.title_romaji),
                                "year": None if math.isnan(r.year) else int(r.year),
                                "format": r.format or None,
                                "format_label": format_label(r.format) if r.format else None,
                                "genres": [str(g) for g in r.genres],
                                "popularity": int(r.popularity)}
                       for i, r in zip(self.catalog.index, self.catalog.itertuples())}
        # Concurrent /recommend calls share one batched Recommender.recommend call; those
        # for a list (built, or an AniList user's) one recommend_for_histories call.
        self._recommend = Batcher(self._recommend_batch)
        self._for_histories = Batcher(self._histories_batch)
        statuses = rec.schema.get("config", {}).get("interaction_statuses")
        self.watched_statuses = set(statuses or ("COMPLETED", "CURRENT", "REPEATING"))

    # -- titles ---------------------------------------------------------------------
    def search(self, text: str, limit: int = 10) -> list[dict]:
        """Titles whose English or romaji title contains ``text`` (case-insensitive):
        those starting with it first, then the most popular."""
        text = title_key(text)
        if not text:
            return []
        english, romaji = self._folded
        found = np.char.find(english, text), np.char.find(romaji, text)
        hit = (found[0] >= 0) | (found[1] >= 0)
        prefix = (found[0] == 0) | (found[1] == 0)
        order = np.lexsort((-self.catalog["popularity"].to_numpy(), ~prefix))
        order = order[hit[order]][:limit]
        return [self.title(int(i)) for i in self.catalog.index[order]]

    def resolve(self, item: int | str) -> int | None:
        """An anime id of the catalog (as given, or by its exact title, any case)."""
        if isinstance(item, str):
            return self.rec.title_id(item)
        return int(item) if int(item) in self._shown else None

    def title(self, anime_id: int) -> dict:
        """The title as the page and the API show it (a copy: callers add to it)."""
        shown = self._shown[int(anime_id)]
        return dict(shown, genres=list(shown["genres"]))

    def find_title(self, anime_id: int | None = None, text: str | None = None) -> int:
        """The id asked for, or of the title named ``text`` exactly (English or romaji,
        by :func:`~serving.recommender.title_key`): never a guess.

        Raises:
          InputError: neither or both given. NotInCatalog: no such id or title; where
            titles contain ``text``, the five most popular are its ``candidates``.
        """
        if (anime_id is None) == (text is None or not text.strip()):
            raise InputError("Give one of `anime_id` (an id of the catalog) or `title` "
                             "(text to search the titles for).")
        if anime_id is not None:
            if anime_id not in self._shown:
                raise NotInCatalog(f"No title with id {anime_id} in this model's catalog; "
                                   "find ids with /search.")
            return int(anime_id)
        exact = self.resolve(text)
        if exact is not None:
            return exact
        hits = self.search(text, 5)
        if not hits:
            raise NotInCatalog(f"No title matches {clipped(text.strip(), 60)}.")
        shown = "; ".join(f"{h['title']} (id {h['anime_id']})" for h in hits)
        raise NotInCatalog(f"No title is named {clipped(text.strip(), 60)}. Titles containing it: "
                           f"{shown}. Ask again with `anime_id` or a whole title.", hits)

    def similar(self, anime_id: int, k: int) -> dict:
        """The title and the ``k`` titles nearest to it (never itself)."""
        frame = self.rec.similar_anime(anime_id, k=check_k(k))
        rows = [dict(self.title(int(i)), rank=int(r), similarity=round(float(s), 4))
                for r, i, s in zip(frame["rank"], frame["anime_id"], frame["score"])]
        return {"anime": self.title(anime_id), "similar": rows}

    # -- recommendations ----------------------------------------------------------------
    def for_user_id(self, user_id: int, k: int, filters: Filters, exclude_seen: bool) -> dict:
        """A user of the training data, by id."""
        check_k(k)
        self.rec.allowed(filters)  # a bad filter is named before an unknown user
        if not self.rec.known([user_id])[0]:
            raise UnknownTrainingUser(f"User {user_id} is not in the training data; pass `user` "
                                      "(an AniList user name) or use /recommend_for_history.")
        frame = self._recommend((int(user_id), k, filters, exclude_seen))
        results = self.rows(frame)
        return {"user": {"user_id": user_id, "history_titles": len(frame["history"][0])},
                "results": results, "notes": [] if results else [NOTHING_PASSES],
                "continue": self.continue_rows(frame)}

    def continue_rows(self, frame: dict) -> list[dict]:
        """The "Continue" list as shown: each title and the watched one it continues."""
        ids, after = frame["continue"]
        return [dict(self.title(i), rank=r, after={"anime_id": a, "title": self._shown[a]["title"]})
                for r, (i, a) in enumerate(zip(ids.tolist(), after.tolist()), start=1)]

    def _explain(self, frames: list[dict], histories: list, listed: list, filters: Filters) -> None:
        """Adds to each of a batch's answers (a dict of columns) what the page shows
        beside its rows, computed for the whole batch at once: each row's reasons
        ("after", "nearest": anime ids or -1; :meth:`Recommender.reasons`), the history
        they come from ("history": ``(ids, scores)``) and the "continue" list (ids and
        what each continues; :meth:`Recommender.continue_lists`) of the titles that
        continue the history, leaving out ``listed``."""
        reasons = self.rec.reasons([f["anime_id"] for f in frames], histories)
        following = self.rec.continue_lists([media for media, _ in histories], listed, 10, filters)
        for frame, history, (after, nearest), more in zip(frames, histories, reasons, following):
            frame.update({"after": after, "nearest": nearest, "history": history, "continue": more})

    def warm_up(self, largest: int = 64) -> None:
        """Runs a batch of each padded size up to ``largest`` users once: the ranker is
        compiled (XLA) per batch shape at its first call, ~0.3 s, which no request should
        wait for (batches are padded to powers of two; the server has 40 worker threads,
        so no batch is larger than 64)."""
        users = self.rec.users["user_id"].to_numpy()
        size = 1
        while size <= min(largest, len(users)):
            self.rec.recommend(users[:size], k=10)
            size *= 2
        if len(self.catalog):
            self.rec.recommend_for_history([(int(self.catalog.index[0]), None)], k=10)

    def _recommend_batch(self, asks: list[tuple]) -> list[dict]:
        """``Recommender.recommend`` for many ``(user_id, k, filters, exclude_seen)``: one
        call per distinct ``(k, filters, exclude_seen)``; each user's rows as columns
        (numpy slices: a DataFrame per user cost more than the model's call), explained
        (:meth:`_explain`)."""
        groups: dict[tuple, list[int]] = {}
        for i, (user_id, *options) in enumerate(asks):
            groups.setdefault(tuple(options), []).append(i)
        out: list = [None] * len(asks)
        for (k, filters, exclude_seen), members in groups.items():
            users = np.unique([asks[i][0] for i in members])
            frame = self.rec.recommend(users, k=k, filters=filters, exclude_seen=exclude_seen)
            columns = {c: frame[c].to_numpy() for c in ("anime_id", "rank", "predicted_score")}
            # Rows come by user, in the order of `users` (sorted): one slice each.
            bounds = np.searchsorted(frame["user_id"].to_numpy(), [users, users + 1])
            for i in members:
                j = int(np.searchsorted(users, asks[i][0]))
                part = slice(bounds[0][j], bounds[1][j])
                out[i] = {c: v[part] for c, v in columns.items()}
                out[i]["source"] = np.full(part.stop - part.start, "model")
            # Training histories are unscored: every title of one is liked.
            histories = [(media, [None] * len(media))
                         for media in (self.rec.history_ids(asks[i][0]) for i in members)]
            self._explain([out[i] for i in members], histories,
                          [self.rec.seen_ids(asks[i][0]) for i in members], filters)
        return out

    def for_anilist(self, name: str, client: str, k: int, filters: Filters,
                    hide_seen: bool, planned: bool = False, dropped_franchises: bool = True) -> dict:
        """An AniList user, by name: their public list, fetched live (cached), read by
        status: watched titles (the model's interaction statuses) are the history; titles
        being watched or paused are never recommended but head the Continue list; dropped
        ones never come back, nor (``dropped_franchises``) any title of their franchise;
        planned ones are hidden with the rest of the list (``hide_seen``) unless
        ``planned`` lets them be recommended."""
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise InputError("`user` must be an AniList user name (1 to 100 characters).")
        if self.lists is None:
            raise AniListUnavailable("This service was started without AniList lookups. " + BUILD_A_LIST)
        check_k(k)
        self.rec.allowed(filters)  # bad filters cost AniList no request
        found = self.lists.lookup(name, client)
        in_catalog = [e for e in found.entries if e["media_id"] in self.catalog.index]
        watched = [(int(e["media_id"]), e["score"] or None, e["updated_at"])
                   for e in in_catalog if e["status"] in self.watched_statuses]
        notes = []
        if len(in_catalog) < len(found.entries):
            notes.append(f"{len(found.entries) - len(in_catalog)} of the "
                         f"{len(found.entries)} titles on the list are not in this model's "
                         "catalog and were left out.")
        by_status: dict[str, list[int]] = {}
        for e in in_catalog:
            by_status.setdefault(e["status"], []).append(int(e["media_id"]))
        dropped = by_status.get("DROPPED", [])
        never = {i for status in RESUME for i in by_status.get(status, [])} | set(dropped)
        if dropped_franchises:
            never.update(self.rec.franchise_members(dropped).tolist())
        # Hide what I have seen: every listed title (planned ones unless asked), left
        # out per request (concurrent lookups still share one model call).
        listed = ({int(e["media_id"]) for e in in_catalog
                   if not (planned and e["status"] == "PLANNING")} if hide_seen else set())
        result = self.for_history(watched, k, filters, exclude=sorted(listed | never))
        result["user"] = {"name": found.name, "anilist_id": found.user_id,
                          "list_titles": len(found.entries), "history_titles": len(watched)}
        result["notes"] = notes + result["notes"]
        # Continue: what they are watching, then what they paused (the latest first),
        # then the next titles of what they watched.
        resume = sorted((e for e in in_catalog if e["status"] in RESUME),
                        key=lambda e: (RESUME.index(e["status"]), -(e["updated_at"] or 0)))
        rows = [dict(self.title(int(e["media_id"])), after=None, status=e["status"])
                for e in resume] + result["continue"]
        result["continue"] = [dict(row, rank=r) for r, row in enumerate(rows[:10], start=1)]
        return result

    def for_history(self, entries, k: int, filters: Filters, exclude=()) -> dict:
        """Someone's list: ``(anime id or title, score 0-100 (0 = not scored) or None[,
        time])`` entries, checked and matched to the catalog by the model's own
        :meth:`~serving.recommender.Recommender.parse_history` (titles by
        :func:`~serving.recommender.title_key`); what was left out is said in the notes.
        ``exclude``: more anime ids not to recommend."""
        check_k(k)
        history = self.rec.parse_history(entries)
        notes = []
        if history.unknown:
            shown = ", ".join(clipped(u, 60) for u in history.unknown[:5])
            shown += ", ..." if len(history.unknown) > 5 else ""
            notes.append(f"{len(history.unknown)} of the {len(entries)} titles match nothing in "
                         f"this model's catalog and were left out: {shown}.")
        if history.duplicates:
            notes.append(f"{len(history.duplicates)} titles are listed more than once; the "
                         "newest entry of each was used.")
        frame = self._for_histories((history, k, filters, tuple(exclude)))
        if (frame["source"] == "popularity").any():
            notes.append("No watched titles to go on: these are the titles most people watched.")
        results = self.rows(frame)
        return {"user": {"history_titles": len(history.media)}, "results": results,
                "notes": notes + ([] if results else [NOTHING_PASSES]),
                "continue": self.continue_rows(frame)}

    def _histories_batch(self, asks: list) -> list:
        """``[(history, k, filters, exclude)]`` -> each one's ``recommend_for_history``
        rows as columns, explained (:meth:`_explain`): one ``recommend_for_histories``
        call per distinct (k, filters) among them."""
        out: list = [None] * len(asks)
        groups: dict = {}
        for i, (_, k, filters, _) in enumerate(asks):
            groups.setdefault((k, filters), []).append(i)
        for (k, filters), members in groups.items():
            frames = self.rec.recommend_for_histories(
                [asks[i][0] for i in members], k=k, filters=filters,
                exclude=[asks[i][3] for i in members], columns=True)
            for i, frame in zip(members, frames):
                out[i] = frame
            histories = [(asks[i][0].media, asks[i][0].scores) for i in members]
            self._explain([out[i] for i in members], histories,
                          [[*asks[i][0].media, *asks[i][3]] for i in members], filters)
        return out

    def rows(self, frame: dict) -> list[dict]:
        """Result rows as shown: the title, the predicted score (the score head's, None
        without one) and the reason: the liked title it continues (its prequel or parent
        show: "next after X"), else the nearest liked title (:meth:`Recommender.reasons`).
        ``frame``: columns anime_id, rank, predicted_score, source, after and nearest, and
        the ``history`` (ids, scores) they come from, as :meth:`_explain` leaves them."""
        score_of = dict(zip(*frame["history"]))
        out = []
        columns = (frame[c].tolist()
                   for c in ("anime_id", "rank", "predicted_score", "source", "after", "nearest"))
        for anime_id, rank, predicted, source, prior, reason in zip(*columns):
            because = None
            if prior >= 0 or reason >= 0:
                which = prior if prior >= 0 else reason
                because = {"anime_id": which, "title": self._shown[which]["title"],
                           "your_score": score_of.get(which) or None, "continues": prior >= 0}
            out.append(dict(self.title(anime_id), rank=rank,
                            predicted_score=None if math.isnan(predicted) else round(predicted, 1),
                            source=source, because=because, reason=reason_text(because, source)))
        return out


class Batcher:
    """``batcher(item)`` -> ``fn([items])[i]``, where the items that arrive while a call of
    ``fn`` runs go together into the next call. Nothing waits on purpose: one request
    alone is one call at once, and under load the model runs one batch (its batched path
    is ~40x faster per user than one user at a time) instead of a call per request,
    each thread waiting for the GIL and the cores. The thread that brings the first
    item leads a call; when it ends, the first waiting item's thread leads the next one.
    If ``fn`` raises, each item of that call is retried alone, so an error reaches only
    the request it belongs to."""

    def __init__(self, fn):
        self.fn = fn
        self._lock = threading.Lock()
        self._pending: list[_Slot] = []
        self._running = False

    def __call__(self, item):
        slot = _Slot(item)
        with self._lock:
            self._pending.append(slot)
            slot.lead = not self._running
            self._running = True
        if not slot.lead:
            slot.ready.wait()
        if slot.lead:
            self._run()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _run(self) -> None:
        """Runs every pending item (the leader's among them), then passes the lead on."""
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            for slot, result in zip(batch, self.fn([s.item for s in batch])):
                slot.result = result
        except Exception:  # noqa: BLE001  (each item alone: its own error, or its result)
            for slot in batch:
                try:
                    slot.result = self.fn([slot.item])[0]
                except Exception as err:  # noqa: BLE001  (raised in the item's own thread)
                    slot.error = err
        with self._lock:
            if self._pending:
                self._pending[0].lead = True
            else:
                self._running = False
            following = self._pending[0] if self._pending else None
        for slot in batch:
            if not slot.lead:
                slot.ready.set()
        if following is not None:
            following.ready.set()


class _Slot:
    """One item of a :class:`Batcher`: its result or error, and whether its thread leads."""

    def __init__(self, item):
        self.item, self.result, self.error, self.lead = item, None, None, False
        self.ready = threading.Event()


# On a list, being watched or paused: the Continue list's, never a recommendation.
RESUME = ("CURRENT", "PAUSED")


def format_label(code: str) -> str:
    """A format as people read it, the one spelling of the page (filters, rows,
    suggestions; the API gives it as ``format_label`` beside the code): TV_SHORT -> "TV
    Short", MOVIE -> "Movie"; acronyms stay capitals."""
    return " ".join(w if w.upper() in ("TV", "OVA", "ONA") else w.capitalize()
                    for w in str(code).replace("_", " ").split())


def reason_text(because: dict | None, source: str) -> str:
    """The one line that says why a title is on the list."""
    if source == "popularity":
        return "One of the titles most people watched"
    if because is None:
        return "Close to your list as a whole"
    score = because["your_score"]
    if because.get("continues"):
        return (f"Next after {because['title']}, which you rated {score:g}" if score
                else f"Next after {because['title']}, which you watched")
    if score:
        return f"Because you rated {because['title']} {score:g}"
    return f"Because you watched {because['title']}"


def check_k(k) -> int:
    """``k`` as the API takes it: a whole number from 1 to MAX_K."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InputError(f"`k` must be a whole number from 1 to {MAX_K}. Received: k={k!r}.")
    return int(k)


# -- the API's request bodies ------------------------------------------------------------

class FilterParams(BaseModel):
    """What titles may be recommended (all optional)."""
    model_config = ConfigDict(strict=True, extra="forbid")
    formats: list[str] | None = Field(None, description="keep only these formats, e.g. [\"TV\", \"MOVIE\"]")
    min_year: int | None = Field(None, description="season year from (titles without a year pass)", **YEAR)
    max_year: int | None = Field(None, description="season year up to (inclusive)", **YEAR)
    genres: list[str] | None = Field(None, description="keep titles with at least one of these genres")
    exclude_genres: list[str] = Field([], description="leave out titles with any of these genres")
    max_popularity: float | None = Field(None, description="hidden gems: on at most this many training lists")
    entry_points: bool = Field(True, description="a title whose prequel or parent show the user has "
                                                 "not watched gives way to the franchise's entry point")
    per_franchise: int | None = Field(1, ge=1, le=MAX_K, description="titles of one franchise in "
                                      "every 10 results, at most (null: no cap)")
    variety: float = Field(0.0, ge=0, le=1, description="0 to 1: how much each next title must "
                           "differ from those above it (0: the model's order)")
    niche: float = Field(0.0, ge=0, le=1, description="0 to 1: how much popularity counts "
                         "against a title (0: not at all)")

    def filters(self) -> Filters:
        return Filters(formats=self.formats, min_year=self.min_year, max_year=self.max_year,
                       genres=self.genres, exclude_genres=tuple(self.exclude_genres),
                       max_popularity=self.max_popularity, entry_points=self.entry_points,
                       per_franchise=self.per_franchise, variety=self.variety, niche=self.niche)


class RecommendRequest(BaseModel):
    """One of ``user_id`` (a user of the training data) or ``user`` (an AniList name)."""
    model_config = ConfigDict(strict=True, extra="forbid")
    user_id: int | None = Field(None, description="a user of the training data", **ID)
    user: str | None = Field(None, description="an AniList user name; their public list is fetched live")
    k: int = Field(10, description=f"results, 1 to {MAX_K}")
    exclude_seen: bool = Field(True, description="leave out every title on the user's list")
    planned: bool = Field(False, description="an AniList user: titles they plan to watch may be "
                          "recommended (default: hidden with the rest of the list)")
    dropped_franchises: bool = Field(True, description="an AniList user: leave out every title "
                                     "of a franchise they dropped a title of")
    filters: FilterParams = FilterParams()


class HistoryRequest(BaseModel):
    """Someone's list: entries ``[anime id or title, score 0-100 or null]`` or with a
    time (unix seconds or an ISO date) third (each entry's shape is checked by
    :meth:`Service.for_history`, whose message names the entry)."""
    model_config = ConfigDict(strict=True, extra="forbid")
    entries: list[list[Union[int, float, str, None]]] = Field(
        description="[anime id or title, score 0-100 or null] or [id or title, score, time]")
    k: int = 10
    filters: FilterParams = FilterParams()


# -- the web app -----------------------------------------------------------------------

def create_app(service: Service) -> FastAPI:
    """The FastAPI app: API routes, the pages, the static files and the error handlers."""
    app = FastAPI(title="anirank", version=service.revision, docs_url=None, redoc_url=None,
                  description="Anime recommendations: two-tower retrieval, a listwise ranker "
                              "and a score head. Every error is {\"error\": \"...\"}.")
    app.state.service = service
    templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _error_handlers(app, templates)

    app.add_middleware(BodyLimit)

    templates.env.filters["format_label"] = format_label

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "max-age=86400"})

    @app.get("/health", summary="the service and the model it serves")
    def health():
        rec = service.rec
        return {"status": "ok", "revision": service.revision, "order": rec.serving["order"],
                "titles": len(rec.anime), "users": len(rec.users),
                "predicted_scores": rec.scorer is not None,
                "anilist_lookups": service.lists is not None}

    @app.post("/recommend", summary="for a training user (user_id) or an AniList user (user)")
    def recommend(body: RecommendRequest, request: Request):
        if (body.user_id is None) == (body.user is None):
            raise InputError("Give exactly one of `user_id` (a user of the training data) and "
                             "`user` (an AniList user name).")
        filters = body.filters.filters()
        if body.user is not None:
            out = service.for_anilist(body.user, client_of(request), body.k, filters, body.exclude_seen,
                                      body.planned, body.dropped_franchises)
        else:
            out = service.for_user_id(body.user_id, body.k, filters, body.exclude_seen)
        return JSONResponse(dict(out, revision=service.revision))

    @app.post("/recommend_for_history", summary="for a list of titles and scores")
    def recommend_for_history(body: HistoryRequest):
        out = service.for_history([list(e) for e in body.entries], body.k, body.filters.filters())
        return JSONResponse(dict(out, revision=service.revision))

    @app.get("/similar", summary="the titles nearest to one title (never itself)")
    def similar(anime_id: Annotated[int | None, Query(**ID)] = None, title: str | None = None,
                k: int = 10):
        check_k(k)   # a bad k is named before an unknown title
        return JSONResponse(service.similar(service.find_title(anime_id, title), k))

    @app.get("/search", summary="autocomplete over the catalog's titles")
    def search(q: Annotated[str, Query(min_length=1, max_length=100)],
               limit: Annotated[int, Query(ge=1, le=50)] = 10):
        return JSONResponse({"results": service.search(q, limit)})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request):
        form, status, result, error = page_form(request.query_params, service), 200, None, None
        if form["mode"]:
            try:
                result = page_recommend(form, service, client_of(request))
            except Exception as err:  # shown on the page; the status says what kind
                status, error = describe(err)
        return templates.TemplateResponse(request, "index.html", {
            "service": service, "form": form, "result": result, "error": error,
            "anilist_failed": status in (502, 503), "max_k": MAX_K}, status_code=status)

    @app.get("/title", response_class=HTMLResponse, include_in_schema=False)
    def title_page(request: Request, id: str | None = None, q: str | None = None):
        status, result, error, candidates = 200, None, None, []
        if id is None and q is None:  # the bare page: the search box only
            return templates.TemplateResponse(request, "title.html", {
                "service": service, "result": None, "error": None, "q": "", "candidates": []})
        try:
            anime_id = None
            if id not in (None, ""):
                digits = id.strip()
                if not digits.isdigit() or len(digits) > 18:
                    raise InputError(f"`id` must be a title id (a whole number). Received: {id[:20]!r}.")
                anime_id = int(digits)
            result = service.similar(service.find_title(anime_id, q or None), 10)
        except Exception as err:
            status, error = describe(err)
            candidates = getattr(err, "candidates", [])
        return templates.TemplateResponse(request, "title.html", {
            "service": service, "result": result, "error": error, "q": q or "",
            "candidates": candidates}, status_code=status)

    return app


class BodyLimit:
    """Answers 413 to a request whose body is over MAX_BODY bytes: at once where its
    Content-Length says so (or is not a number), else as soon as the bytes read pass it
    (a ``Transfer-Encoding: chunked`` body has no length to check), never reading or
    parsing more. The body, at most MAX_BODY, is read here and handed on whole. Plain
    ASGI: Starlette's ``@app.middleware("http")`` wraps every request and response in
    extra tasks and streams."""

    def __init__(self, app):
        self.app = app

    @staticmethod
    async def _too_large(scope, receive, send):
        await JSONResponse({"error": f"The request body must be at most {MAX_BODY >> 20} MB."},
                           status_code=413, headers={"Connection": "close"})(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":   # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)


def client_of(request: Request) -> str:
    """The client's address, the key of its AniList lookup allowance."""
    return request.client.host if request.client else "unknown"


ERROR_STATUS = ((NotInCatalog, 404), (InputError, 400), (UnknownTrainingUser, 404),
                (UnknownUser, 404), (TooManyLookups, 429), (Busy, 503),
                (AniListUnavailable, 502))


def describe(err: Exception) -> tuple[int, str]:
    """An error's HTTP status and the message people see. Anything but the named errors
    is a bug: logged with its traceback, and shown as a plain 500 message."""
    for kind, status in ERROR_STATUS:
        if isinstance(err, kind):
            return status, str(err)
    log.error("unexpected error", exc_info=err)
    return 500, "Something went wrong on our side; the service keeps running. Try again."


def _validation_message(err: RequestValidationError) -> str:
    """Pydantic's errors as one line: where (``filters.formats``) and what."""
    parts = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
        message = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":  # its location is the character where it broke
            message = (f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'malformed')}, "
                       f"at character {where or 0})")
            where = ""
        elif not where and e.get("type") in ("missing", "model_attributes_type", "dict_type"):
            message = "the body must be a JSON object"
        parts.append(f"{where}: {message}" if where else message)
    return "Invalid request: " + "; ".join(parts) + "."


def _error_handlers(app: FastAPI, templates: Jinja2Templates) -> None:
    """Every error a JSON ``{"error": ...}`` with its status (an HTML page for a browser
    asking for a page that does not exist)."""

    def answer(request: Request, status: int, message: str, headers=None):
        if "text/html" in request.headers.get("accept", "") and request.method == "GET":
            return templates.TemplateResponse(request, "error.html", {
                "message": message, "status": status}, status_code=status, headers=headers)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return JSONResponse({"error": _validation_message(err)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return answer(request, err.status_code, str(err.detail), getattr(err, "headers", None))

    # AnirankError (the named errors: InputError, unknown users and titles, AniList's)
    # is answered here; anything else is a bug: logged, and a 500 with a plain message.
    @app.exception_handler(AnirankError)
    @app.exception_handler(Exception)
    async def any_error(request: Request, err: Exception):
        headers = {"Retry-After": f"{math.ceil(err.retry_after)}"} \
            if isinstance(err, (TooManyLookups, Busy)) else None
        status, message = describe(err)
        body = {"error": message}
        if isinstance(err, NotInCatalog) and err.candidates:
            body["candidates"] = err.candidates
        return JSONResponse(body, status_code=status, headers=headers)


# -- the page's form ---------------------------------------------------------------------

def page_form(params, service: Service) -> dict:
    """The page's query string as the form shows it again (strings, unparsed)."""
    mode = params.get("mode", "")
    return {"mode": mode if mode in ("user", "list") else "",
            "user": params.get("user", ""), "history": params.get("history", ""),
            "k": params.get("k", "10"), "formats": params.getlist("format"),
            "min_year": params.get("min_year", ""), "max_year": params.get("max_year", ""),
            "genres": params.getlist("genre"), "exclude_genres": params.getlist("exclude_genre"),
            "gems": bool(params.get("gems")),
            "hide_seen": bool(params.get("hide_seen")) or not mode,
            "planned": bool(params.get("planned")),
            "dropped_franchises": bool(params.get("dropped_franchises")) or not mode,
            # The franchise rules are on until a submitted form leaves them unticked.
            "entry_points": bool(params.get("entry_points")) or not mode,
            "one_per_franchise": bool(params.get("one_per_franchise")) or not mode,
            "variety": params.get("variety", "0"), "niche": params.get("niche", "0"),
            "list_rows": _list_rows(params.get("history", ""), service)}


def _list_rows(text: str, service: Service) -> list[dict]:
    """The built list's titles to show again (entries that do not parse are left to
    :func:`page_history`'s message)."""
    try:
        entries = page_history(text)
    except InputError:
        return []
    return [{"anime_id": i, "title": service.catalog.at[i, "title"], "score": score}
            for i, score in entries if i in service.catalog.index]


def _page_int(name: str, text: str, low: int, high: int) -> int | None:
    """A number field of the page: blank is None, else a whole number in [low, high]."""
    text = text.strip()
    if not text:
        return None
    digits = text.lstrip("-")
    if not digits.isdigit() or len(digits) > 12 or not low <= int(text) <= high:
        raise InputError(f"`{name}` must be a whole number from {low} to {high}. "
                         f"Received: {text[:20]!r}.")
    return int(text)


def _page_knob(name: str, text: str) -> float:
    """A knob of the page: a number from 0 to 1 (blank is 0)."""
    text = text.strip()
    try:
        value = float(text) if text else 0.0
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise InputError(f"`{name}` must be a number from 0 to 1. Received: {text[:20]!r}.")
    return value


def page_history(text: str) -> list:
    """The built list, ``id:score,id:score`` (score blank = unscored)."""
    entries = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        anime_id, _, score = (p.strip() for p in part.partition(":"))
        if not (anime_id.isdigit() and len(anime_id) <= 18 and (score == "" or score.isdigit())):
            raise InputError(f"The list holds {part[:40]!r}, which is not a title id and a score.")
        if score and (len(score) > 3 or int(score) > 100):
            raise InputError(f"Scores are from 0 to 100. Received: {score[:20]}.")
        entries.append([int(anime_id), int(score) if score else None])
    return entries


def page_recommend(form: dict, service: Service, client: str) -> dict:
    """The page's request, run: an AniList user or the built list."""
    k = _page_int("k", form["k"], 1, MAX_K)
    filters = Filters(formats=form["formats"] or None,
                      min_year=_page_int("min_year", form["min_year"], YEAR["ge"], YEAR["le"]),
                      max_year=_page_int("max_year", form["max_year"], YEAR["ge"], YEAR["le"]),
                      genres=form["genres"] or None, exclude_genres=tuple(form["exclude_genres"]),
                      max_popularity=service.gem_ceiling if form["gems"] else None,
                      entry_points=form["entry_points"],
                      per_franchise=1 if form["one_per_franchise"] else None,
                      variety=_page_knob("variety", form["variety"]),
                      niche=_page_knob("niche", form["niche"]))
    if form["mode"] == "user":
        if not form["user"].strip():
            raise InputError("Type an AniList user name.")
        return service.for_anilist(form["user"], client, k, filters, form["hide_seen"],
                                   form["planned"], form["dropped_franchises"])
    entries = page_history(form["history"])
    if not entries:
        raise InputError("Your list is empty: search for titles you watched and add them.")
    return service.for_history(entries, k, filters)


# -- the command line ----------------------------------------------------------------------

def build_service(model: str, revision: str | None, endpoint: str | None, rate: float,
                  per_client: float, ttl: float, db: str | None = None) -> Service:
    """Loads the model (once; serving the users of the raw store at ``db`` from their
    lists there, when given) and sets up the AniList lookups."""
    rec = Recommender.from_pretrained(model, revision)
    if db is not None:
        rec = current(rec, read_store(db))
    name = revision_of(rec, revision)
    lists = ListLookup(endpoint or data_query.ENDPOINT, rate=rate, per_client=per_client, ttl=ttl)
    service = Service(rec, name, lists)
    service.warm_up()
    return service


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket for uvicorn (port 0: a free one). Its protocol is named
    (IPPROTO_TCP), not left 0 as ``socket.create_server`` leaves it: asyncio sets
    TCP_NODELAY only on connections of such a socket, and without it every answer waited
    about 40 ms for the client's delayed ACK (measured: /health 44 ms instead of 1 ms)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.app",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory or Hub repo id")
    parser.add_argument("--revision", help="Hub revision: branch, tag or commit sha (default: main)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--anilist-endpoint", default=data_query.ENDPOINT,
                        help="AniList GraphQL URL (default: %(default)s)")
    parser.add_argument("--anilist-rate", type=float, default=data_query.DEFAULT_RATE,
                        help="requests a minute to AniList, at most, for the whole service "
                             "(default: %(default)s)")
    parser.add_argument("--lookups-per-minute", type=float, default=10.0,
                        help="AniList lookups (not cached) a minute per client address "
                             "(default: %(default)s)")
    parser.add_argument("--cache-ttl", type=float, default=600.0,
                        help="seconds a fetched list is reused (default: %(default)s)")
    parser.add_argument("--db",
                        help="serve user_id requests from each user's list in this raw store "
                             "as it is at start (features rebuilt; the store's users the "
                             "model was not trained on are served too), among the model's "
                             "titles and the store's new ones, placed by the candidate tower "
                             "(default: the lists and titles the model was trained on)")
    parser.add_argument("--forwarded-allow-ips", default="",
                        help="comma-separated addresses of your reverse proxies, whose "
                             "X-Forwarded-For names the client (its per-address AniList "
                             "lookup allowance); '*' trusts any. Default: none, every "
                             "client is the address it connects from")
    parser.add_argument("--quiet", action="store_true", help="no access log")
    args = parser.parse_args(argv)
    if args.lookups_per_minute <= 0 or args.cache_ttl < 0 or args.anilist_rate < 0:
        parser.error("--lookups-per-minute must be > 0, --cache-ttl and --anilist-rate >= 0")
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be from 0 (a free one) to 65535. Received: {args.port}.",
              file=sys.stderr)
        return 2
    try:
        sock = listen(args.host, args.port)
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err.strerror or err}", file=sys.stderr)
        return 2
    try:
        service = build_service(args.model, args.revision, args.anilist_endpoint,
                                args.anilist_rate, args.lookups_per_minute, args.cache_ttl,
                                args.db)
    except AnirankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:   # a path no check above named
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2
    import uvicorn

    # What is loaded now (TensorFlow, the model, the catalog: millions of objects) lives
    # as long as the process: out of the garbage collector's sight, a full collection
    # looks at a request's objects only (measured: /recommend_for_history's p99 at 16
    # clients 339 -> 127 ms, from pauses of the collections walking them all).
    gc.collect()
    gc.freeze()
    host, port = sock.getsockname()[:2]
    print(f"serving http://{host}:{port}/ (model revision {service.revision}; API description "
          f"at /openapi.json; Ctrl-C stops)", flush=True)
    uvicorn.Server(server_config(create_app(service), args.forwarded_allow_ips,
                                 quiet=args.quiet)).run(sockets=[sock])
    return 0


def server_config(app, forwarded_allow_ips: str = "", quiet: bool = True):
    """uvicorn's config for ``app``: X-Forwarded-For read only from the addresses named
    (uvicorn itself trusts 127.0.0.1 by default, so any local process could claim to be
    any client and pass the per-client lookup allowance)."""
    import uvicorn

    trusted = forwarded_allow_ips.strip()
    return uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=not quiet,
                          proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None)


if __name__ == "__main__":
    sys.exit(main())
