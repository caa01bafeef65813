"""The variety and niche knobs (serving/variety.py): the re-rank against orders worked out
by hand, and on the tiny model, what each knob does to a served list."""

import numpy as np
import pytest

from pipelines.errors import InputError
from serving import Filters, Recommender
from serving.variety import popularity_share, rerank

# Four titles in two dimensions: 0 and 1 the same direction, 2 at right angles to them,
# 3 between (cosine 0.6 to 0 and 1, 0.8 to 2).
UNIT = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
ROWS = np.array([[0, 1, 2, 3]])
SCORES = np.array([[4.0, 3.0, 2.0, 0.0]])      # relevance 1, 0.75, 0.5, 0


def order(variety=0.0, niche=0.0, popularity=np.zeros(4), depth=None, rows=ROWS, scores=SCORES):
    out, kept = rerank(rows, scores, UNIT, popularity, variety, niche, depth)
    # Each title keeps the model's score.
    lookup = {(u, int(r)): s for u in range(len(rows)) for r, s in zip(rows[u], scores[u])}
    assert all(lookup[(u, int(r))] == s for u in range(len(out)) for r, s in zip(out[u], kept[u]))
    return out.tolist()


def test_both_knobs_at_zero_keep_the_models_order():
    assert order() == [[0, 1, 2, 3]]


def test_variety_by_hand():
    """variety 0.5: value = 0.5 * relevance - 0.5 * (highest cosine to the titles taken).
    First 0 (0.5). Then 1: 0.375 - 0.5 = -0.125; 2: 0.25 - 0 = 0.25; 3: 0 - 0.3 -> 2.
    Then 1: -0.125; 3: 0 - 0.4 -> 1; then 3."""
    assert order(variety=0.5) == [[0, 2, 1, 3]]
    # At 0.1 relevance still wins: second 1 (0.675 - 0.1 = 0.575) over 2 (0.45).
    assert order(variety=0.1) == [[0, 1, 2, 3]]
    # Only the first `depth` places are the knob's; the rest keep the model's order.
    assert order(variety=0.5, depth=2) == [[0, 2, 1, 3]]
    assert order(variety=0.5, depth=1) == [[0, 1, 2, 3]]


def test_niche_by_hand():
    """niche 1 with titles 0 and 2 the most listed (share 1) and 1 and 3 on no list:
    relevance 1 - 1 = 0, 0.75, 0.5 - 1 = -0.5, 0 -> 1, then 0 and 3 tied at 0 (the model's
    order), then 2."""
    share = popularity_share(np.array([100, 0, 100, 0]))
    np.testing.assert_allclose(share, [1, 0, 1, 0])
    assert order(niche=1.0, popularity=share) == [[1, 0, 3, 2]]
    assert order(niche=0.2, popularity=share) == [[0, 1, 2, 3]]   # 0.8, 0.75, 0.3, 0
    np.testing.assert_allclose(popularity_share(np.array([0, 9, 99])),
                               [0, np.log(10) / np.log(100), 1])


def test_each_user_alone_and_padding_last():
    rows = np.array([[0, 1, 2, 3], [3, 2, -1, -1]])
    scores = np.array([[4.0, 3.0, 2.0, 0.0], [1.0, 0.5, -np.inf, -np.inf]])
    assert order(variety=0.5, rows=rows, scores=scores) == [[0, 2, 1, 3], [3, 2, -1, -1]]


def test_filters_check_the_knobs():
    assert Filters(variety=1, niche=0.25).variety == 1.0
    for bad in (-0.1, 1.5, "0.3", float("nan"), True):
        with pytest.raises(InputError, match="must be a number from 0 to 1"):
            Filters(variety=bad)
        with pytest.raises(InputError, match="must be a number from 0 to 1"):
            Filters(niche=bad)


@pytest.fixture(scope="module")
def rec(tiny_ranked):
    return Recommender.from_pretrained(str(tiny_ranked[0]))


def served(rec, users, **knobs):
    top = rec.recommend(users, k=10, filters=Filters(**knobs))
    return [rec._anime_row.get_indexer(g["anime_id"].to_numpy()) for _, g in top.groupby("user_id")]


def test_the_knobs_on_a_served_list(rec):
    """On the tiny model: variety lowers the mean pairwise cosine of a top 10, niche the
    mean popularity, for most users; both at 0 is the default list."""
    users = rec.users["user_id"].to_numpy()[:40]
    unit, share = rec._unit_embeddings, rec._niche_scale
    base = served(rec, users)
    assert [r.tolist() for r in served(rec, users, variety=0.0, niche=0.0)] == [r.tolist() for r in base]

    def pairwise(rows):
        cos = unit[rows] @ unit[rows].T
        return (cos.sum() - np.trace(cos)) / (len(rows) * (len(rows) - 1))

    varied = served(rec, users, variety=0.7)
    less = [pairwise(v) < pairwise(b) - 1e-9 for v, b in zip(varied, base)]
    assert np.mean(less) > 0.8, np.mean(less)
    niche = served(rec, users, niche=1.0)
    lower = [share[n].mean() < share[b].mean() for n, b in zip(niche, base)]
    assert np.mean(lower) > 0.8, np.mean(lower)
    assert all(len(v) == 10 for v in varied + niche)


def test_the_batch_job_takes_the_knobs(tiny_ranked, rec, tmp_path, capsys):
    from serving import batch
    users = rec.users["user_id"].to_numpy()[:30]
    listed = tmp_path / "users.csv"
    listed.write_text("user_id\n" + "\n".join(str(u) for u in users) + "\n")
    out = tmp_path / "recs"
    command = ["--model", str(tiny_ranked[0]), "--users", str(listed), "--k", "10", "--quiet"]
    assert batch.main([*command, "--out", str(out), "--variety", "0.5", "--niche", "0.5"]) == 0
    got = batch.read_output(out).sort_values(["user_id", "rank"])
    want = rec.recommend(users, k=10, filters=Filters(variety=0.5, niche=0.5))
    assert got["anime_id"].tolist() == want["anime_id"].tolist()
    bad = tmp_path / "bad"
    assert batch.main([*command, "--out", str(bad), "--variety", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: `variety` must be a number from 0 to 1. "
                                              "Received: variety=2.0.")
    assert not bad.exists()
