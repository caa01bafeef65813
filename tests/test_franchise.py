"""Franchise order at serving (serving/franchise.py): on a hand-built catalog, each rule
against the list worked out by hand; on the tiny model, the served lists keep them."""

import numpy as np
import pandas as pd
import pytest

from serving import Filters, Recommender
from serving.franchise import Franchises, franchise_ids

# A1 -> A2 -> A3 (seasons), AS a special of A1; B1 alone; C1 -> C2.
IDS = {"A1": 1, "A2": 2, "A3": 3, "AS": 4, "B1": 5, "C1": 6, "C2": 7}
RELATIONS = {  # AniList's relations, from each title's own side
    "A1": [("A2", "SEQUEL"), ("AS", "SIDE_STORY")],
    "A2": [("A1", "PREQUEL"), ("A3", "SEQUEL")],
    "A3": [("A2", "PREQUEL")],
    "AS": [("A1", "PARENT")],
    "B1": [],
    "C1": [("C2", "SEQUEL")],
    "C2": [("C1", "PREQUEL")],
}
NAMES = list(IDS)
ROW = {name: i for i, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def rules():
    anime = pd.DataFrame({
        "media_id": [IDS[n] for n in NAMES],
        "related_ids": [[IDS[t] for t, _ in RELATIONS[n]] for n in NAMES],
        "related_types": [[kind for _, kind in RELATIONS[n]] for n in NAMES]})
    return Franchises(anime, {"relations": {"pairs": 8}})


def serve(rules, ranked, watched=(), excluded=(), allowed=None, k=10, **options):
    rows = np.array([[ROW[n] for n in ranked]])
    scores = -np.arange(len(ranked), dtype=np.float32)[None, :]
    allowed = np.ones(len(NAMES), bool) if allowed is None else allowed
    out, out_scores = rules.apply(rows, scores, [[ROW[n] for n in watched]],
                                  [[ROW[n] for n in excluded]], allowed, k, **options)
    picked = [NAMES[r] for r in out[0] if r >= 0]
    return picked, out_scores[0][: len(picked)].tolist()


def test_franchises_are_connected_titles():
    anime = pd.DataFrame({"media_id": [IDS[n] for n in NAMES],
                          "related_ids": [[IDS[t] for t, _ in RELATIONS[n]] for n in NAMES]})
    assert franchise_ids(anime).tolist() == [0, 0, 0, 0, 4, 5, 5]


def test_a_newcomer_gets_each_franchise_from_its_start(rules):
    # A3 -> A2 -> A1 (walked back), AS -> A1 (already placed), A2 -> A1 (placed),
    # C2 -> C1; each replacement in the place and with the score of what it replaced.
    picked, scores = serve(rules, ["A3", "B1", "AS", "A2", "C2", "C1"])
    assert picked == ["A1", "B1", "C1"]
    assert scores == [0.0, -1.0, -4.0]


def test_a_fan_who_finished_season_one_gets_season_two(rules):
    ranked = ["A3", "AS", "A2", "B1"]
    # A3 -> A2 (A1 watched); AS stays (its parent watched) but is a second A title.
    assert serve(rules, ranked, watched=["A1"])[0] == ["A2", "B1"]
    assert serve(rules, ranked, watched=["A1"], per_franchise=None)[0] == ["A2", "AS", "B1"]
    assert serve(rules, ranked, watched=["A1"], per_franchise=2)[0] == ["A2", "AS", "B1"]
    # The cap is per 10 results: two of a franchise in a top 20.
    assert serve(rules, ranked, watched=["A1"], k=20)[0] == ["A2", "AS", "B1"]


def test_an_entry_point_the_user_cannot_get_is_dropped(rules):
    # A1 is on the list (say, planned) or filtered out: A3's entry point is dropped.
    assert serve(rules, ["A3", "B1"], excluded=["A1"])[0] == ["B1"]
    allowed = np.ones(len(NAMES), bool)
    allowed[ROW["A1"]] = False
    assert serve(rules, ["A3", "B1"], allowed=allowed)[0] == ["B1"]


def test_rules_off_keep_the_ranked_order(rules):
    ranked = ["A3", "B1", "AS", "A2", "C2", "C1"]
    assert serve(rules, ranked, entry_points=False, per_franchise=None)[0] == ranked
    # The cap alone: the first of each franchise, unmet prerequisites and all.
    assert serve(rules, ranked, entry_points=False)[0] == ["A3", "B1", "C2"]
    assert serve(rules, ranked, k=2)[0] == ["A1", "B1"]


def test_unmet_marks_titles_whose_prequel_or_parent_is_unwatched(rules):
    rows = np.array([[ROW[n] for n in ("A1", "A2", "A3", "AS", "B1")]])
    assert rules.unmet(rows, [[]]).tolist() == [[False, True, True, True, False]]
    assert rules.unmet(rows, [[ROW["A1"]]]).tolist() == [[False, False, True, False, False]]


def test_a_catalog_without_relations_changes_nothing():
    anime = pd.DataFrame({"media_id": [1, 2, 3]})
    rules = Franchises(anime, {})
    rows, scores = np.array([[2, 0, 1]]), np.array([[3.0, 2.0, 1.0]], np.float32)
    out, _ = rules.apply(rows, scores, [[]], [[]], np.ones(3, bool), 2)
    assert not rules.known and out.tolist() == [[2, 0]]


def test_served_lists_keep_the_rules(tiny_ranked):
    rec = Recommender.from_pretrained(str(tiny_ranked[0]))
    if not rec._franchises.known:
        pytest.skip("the tiny world records no relations")
    users = rec.users["user_id"].to_numpy()[:60]
    served = rec.recommend(users, k=10)
    free = rec.recommend(users, k=10, filters=Filters(entry_points=False, per_franchise=None))
    franchise = rec._franchises.franchise

    def table(frame):
        rows = rec._anime_row.get_indexer(frame["anime_id"])
        users_of = rec._user_row.get_indexer(frame["user_id"])
        out = np.full((len(rec.users), 10), -1)
        for u, rank, r in zip(users_of, frame["rank"], rows):
            out[u, rank - 1] = r
        return out[rec._user_row.get_indexer(users)]

    histories = [rec._history[r] for r in rec._user_row.get_indexer(users)]
    on, off = table(served), table(free)
    assert rec._franchises.unmet(off, histories).any(), "the fixture must have titles to fix"
    assert not rec._franchises.unmet(on, histories).any()
    for row in on:
        kept = franchise[row[row >= 0]]
        assert len(kept) == len(set(kept)), "one title a franchise in a top 10"
    assert (on >= 0).sum(axis=1).min() == 10
    # A list the rules leave alone is the ranked order itself.
    same = [i for i in range(len(users)) if not rec._franchises.unmet(off[i:i + 1], histories[i:i + 1]).any()
            and len(set(franchise[off[i]])) == 10]
    assert same and all((on[i] == off[i]).all() for i in same)


def test_continue_lists_what_continues_the_watched_titles(rules):
    allowed = np.ones(len(NAMES), bool)

    def after(watched, excluded=()):
        users, rows, prior = rules.next_titles([[ROW[n] for n in watched]],
                                               [[ROW[n] for n in excluded]], allowed)
        assert not users.any()
        return sorted((NAMES[r], NAMES[p]) for r, p in zip(rows, prior))

    assert after([]) == []
    assert after(["A1"]) == [("A2", "A1"), ("AS", "A1")]
    assert after(["A1", "A2"]) == [("A3", "A2"), ("AS", "A1")]
    assert after(["A2"]) == [("A3", "A2")]   # A3 needs A2 alone (A1 is A2's, not A3's)
    assert after(["C1"], excluded=["C2"]) == []
    assert after(["A3", "A2", "A1", "AS", "B1", "C1", "C2"]) == []


def test_continue_lists_of_many_users_at_once_are_each_ones_own(rules):
    """A batch of requests is one call: each user gets what they alone would get."""
    allowed = np.ones(len(NAMES), bool)
    asks = [(["A1"], []), (["A1", "A2"], []), ([], []), (["C1"], ["C2"]), (["A2"], [])]
    users, rows, prior = rules.next_titles([[ROW[n] for n in w] for w, _ in asks],
                                           [[ROW[n] for n in x] for _, x in asks], allowed)
    got = [sorted((NAMES[r], NAMES[p]) for u, r, p in zip(users, rows, prior) if u == i)
           for i in range(len(asks))]
    assert got == [[("A2", "A1"), ("AS", "A1")], [("A3", "A2"), ("AS", "A1")], [], [],
                   [("A3", "A2")]]
    # What each continues for them: the first prerequisite they watched.
    asked = np.array([ROW["A2"], ROW["A3"], ROW["AS"], ROW["A3"]])
    found = rules.continued(np.array([0, 0, 0, 1]), asked, [[ROW["A1"]], [ROW["A1"]]])
    assert [NAMES[f] if f >= 0 else None for f in found] == ["A1", None, "A1", None]


def test_the_continue_list_puts_the_next_season_first(tiny_ranked):
    rec = Recommender.from_pretrained(str(tiny_ranked[0]))
    if not rec._franchises.known:
        pytest.skip("the tiny world records no relations")
    anime, rules = rec.anime, rec._franchises
    ids = anime["media_id"].to_numpy()
    # A first season: no prerequisite, and a sequel whose only prerequisite it is.
    firsts = [(i, j) for j in np.flatnonzero(rules.sequel)
              for i in [rules.prerequisites[j][rules.prerequisites[j] >= 0]]
              if len(i) == 1 and not (rules.prerequisites[i[0]] >= 0).any()]
    assert firsts, "the fixture must have a two-season franchise"
    (first,), second = firsts[0]
    got = rec.continue_list([int(ids[first])])
    assert got["anime_id"].iloc[0] == ids[second] and got["after_id"].iloc[0] == ids[first]
    assert set(got["after_id"]) == {ids[first]}
    # Listed already: never shown; filtered out: not either.
    assert ids[second] not in rec.continue_list([int(ids[first])], [int(ids[second])])["anime_id"].tolist()
    fmt = anime["format"].iloc[second]
    others = tuple(f for f in anime["format"].dropna().unique() if f != fmt)
    assert ids[second] not in rec.continue_list([int(ids[first])], filters=Filters(formats=others))[
        "anime_id"].tolist()
