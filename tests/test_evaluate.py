"""The evaluation report: recomputed numbers agree with training time, the generator's
own reference rows top the baselines, report.md says what metrics.json says, and it is written atomically."""

import json
from pathlib import Path
import re

import numpy as np
import pytest

from pipelines import evaluate
from ranking.metrics import order_metrics


@pytest.fixture(scope="module")
def report(tiny_ranked, tiny_features, tmp_path_factory):
    model_dir, _ = tiny_ranked
    out = tmp_path_factory.mktemp("report") / "report"
    return evaluate.run(model_dir, tiny_features, out, progress=False)


def test_report_files_and_agreement_with_training(report, tiny_ranked):
    out = report["report"]
    names = {p.name for p in Path(out).iterdir()}
    assert names == {"metrics.json", "report.md", "recall_at_k.png", "by_activity.png",
                     "ndcg_end_to_end.png", "scores.png"}
    saved = json.loads((tiny_ranked[0] / "metrics.json").read_text())
    # The same metric code at training time and in the report: the same numbers.
    assert report["retrieval"]["curves"]["two-tower"]["recall@100"] == pytest.approx(
        saved["retrieval"]["model"]["recall@100"], abs=1e-9)
    assert report["retrieval"]["factorized"] == pytest.approx(saved["retrieval"]["model"]["factorized"])
    # EASE with the lambda tuned at training time: the training stage's test numbers.
    assert report["retrieval"]["ease"]["lambda"] == saved["retrieval"]["ease"]["lambda"]
    assert report["retrieval"]["curves"]["EASE"]["recall@100"] == pytest.approx(
        saved["retrieval"]["ease"]["recall@100"], abs=1e-9)
    # iALS refit here with the settings chosen at training time (seeded): the same numbers.
    assert report["retrieval"]["ials"]["settings"] == saved["retrieval"]["ials"]["settings"]
    assert report["retrieval"]["curves"]["iALS"]["ndcg@10"] == pytest.approx(
        saved["retrieval"]["ials"]["ndcg@10"], abs=1e-6)
    text = (Path(out) / "report.md").read_text()
    d = report["retrieval"]["differences"]["two-tower - EASE"]["recall@100"]
    verdict = ("is within noise of" if not d["significant"] else
               "beats" if d["difference"] > 0 else "does NOT beat")
    assert f"The two-tower {verdict} it at Recall@100" in text
    # Retrieval order end to end is the two-tower's own top 10 on the same test users:
    # the same NDCG@10 and Recall@10, so end-to-end orders pair with retrieval scorers
    # (the ranked - EASE difference pairs them).
    curve = report["retrieval"]["curves"]["two-tower"]
    for m in ("ndcg@10", "recall@10"):
        assert report["ranking"]["end_to_end"]["retrieval_order"][m] == pytest.approx(curve[m])
    for baseline in ("EASE", "iALS", "most popular"):
        vs = report["ranking"]["differences"][f"ranked - {baseline}"]["ndcg@10"]
        assert vs["difference"] == pytest.approx(
            report["ranking"]["end_to_end"]["ranked"]["ndcg@10"]
            - report["retrieval"]["curves"][baseline]["ndcg@10"])
    e2e, e2e_saved = report["ranking"]["end_to_end"], saved["ranking"]["end_to_end"]
    assert e2e["ranked"]["ndcg@10"] == pytest.approx(e2e_saved["ranked"]["ndcg@10"], abs=1e-6)
    assert e2e["retrieval_order"]["mrr"] == pytest.approx(e2e_saved["retrieval_order"]["mrr"])


def test_the_generators_rows_top_the_models_and_baselines(report):
    assert report["data"]["generator"] is True
    curves = report["retrieval"]["curves"]
    tt, pop = curves["two-tower"]["recall@100"], curves["most popular"]["recall@100"]
    assert curves[evaluate.GENERATOR]["recall@100"] > tt
    # The report's paired difference is the one its curves give (the two-tower beating
    # most popular is measured on the default world: test_train_retrieval; the tiny
    # world's 190 test users cannot tell them apart with only added titles as targets).
    diff = report["retrieval"]["differences"]["two-tower - most popular"]["recall@100"]
    assert diff["difference"] == pytest.approx(tt - pop)
    assert diff["ci"][0] < diff["difference"] < diff["ci"][1]
    held = report["ranking"]["held_out_lists"]
    assert held[evaluate.GENERATOR_SCORE]["ndcg"] > held["random"]["ndcg"]
    e2e = report["ranking"]["end_to_end"]
    assert e2e[evaluate.GENERATOR]["ndcg@10"] > e2e["popularity order"]["ndcg@10"]


def test_report_md_numbers_are_metrics_json_numbers(report):
    text = (Path(report["report"]) / "report.md").read_text()
    saved = json.loads((Path(report["report"]) / "metrics.json").read_text())

    def numbers(value):
        if isinstance(value, (dict, list)):
            for v in (value.values() if isinstance(value, dict) else value):
                yield from numbers(v)
        elif isinstance(value, float):
            yield f"{value:.4f}"

    known = set(numbers(saved))
    shown = re.findall(r"(?<![\d.])-?\d\.\d{4}\b", text)
    assert len(shown) > 40
    assert set(shown) <= known
    assert "![Recall@K](recall_at_k.png)" in text


def test_a_failed_report_leaves_the_previous_one(report, tiny_ranked, tiny_features, monkeypatch):
    out = Path(report["report"])
    before = (out / "report.md").read_text()

    def broken(*args):
        raise RuntimeError("plotting crashed")

    monkeypatch.setattr(evaluate, "_plots", broken)
    with pytest.raises(RuntimeError, match="plotting crashed"):
        evaluate.run(tiny_ranked[0], tiny_features, out, progress=False)
    assert (out / "report.md").read_text() == before
    assert [p.name for p in out.parent.iterdir()] == ["report"]


def test_order_metrics_by_hand():
    # Two queries over items 0..4; candidates 3 per query, -1 = padding.
    # Query 0: candidates [4, 1, 2], scores [0.1, 0.9, 0.5] -> order [1, 2, 4];
    #   relevant {2, 3} (3 was not retrieved): hits [0, 1, 0].
    #   recall@2 = 1/2; NDCG@2 = (1/log2 3) / (1 + 1/log2 3); MRR = 1/2.
    # Query 1: candidates [0, -1, 3], scores [0, 5, 1] -> order [3, 0] (padding last);
    #   relevant {0}: hits [0, 1] -> recall@2 = 1, NDCG@2 = 1/log2 3, MRR = 1/2.
    candidates = np.array([[4, 1, 2], [0, -1, 3]])
    scores = np.array([[0.1, 0.9, 0.5], [0.0, 5.0, 1.0]])
    relevant = np.zeros((2, 5), bool)
    relevant[0, [2, 3]] = True
    relevant[1, 0] = True
    got = order_metrics(candidates, scores, relevant, relevant.sum(1), ks=(2,))
    d = 1 / np.log2(3)
    assert got["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["ndcg@2"] == pytest.approx((d / (1 + d) + d) / 2)
    assert got["mrr"] == pytest.approx(0.5)


def test_report_says_when_ease_was_skipped(report, tiny_features, monkeypatch):
    from pipelines import baselines
    from pipelines.tables import FeatureTables

    monkeypatch.setattr(baselines, "MAX_EASE_TITLES", 10)
    assert baselines.fit_ease(FeatureTables.load(tiny_features)) is None
    skipped = json.loads(json.dumps({k: v for k, v in report.items() if k != "report"}))
    skipped["retrieval"]["ease"] = None
    del skipped["retrieval"]["curves"]["EASE"]
    del skipped["data"]["methods"]["EASE"]   # the data table lists the rows compared
    text = evaluate.render(skipped)
    titles = report["data"]["counts"]["anime"]
    assert f"EASE: skipped: {titles:,} titles is more than the 10 its dense" in text
    assert "| EASE |" not in text


def test_report_names_the_comparisons_this_run_left_out(report):
    """The tiny model was trained without the two-tower's ablations and with one loss,
    but with the ranking ablations: the report names exactly the two left out, and says
    nothing once every comparison is there."""
    def line(metrics):
        found = [x for x in evaluate.render(metrics).splitlines()
                 if x.startswith("Comparisons not trained")]
        assert len(found) <= 1
        return found[0] if found else None

    metrics = json.loads(json.dumps({k: v for k, v in report.items() if k != "report"}))
    said = line(metrics)
    assert "two-tower's ablations" in said and "`--compare-losses`" in said
    assert "ranking ablations" not in said and "--evidence" in said
    metrics["retrieval"]["ids_only"] = metrics["retrieval"]["curves"]["two-tower"]
    losses = metrics["ranking"]["validation"]["losses"]
    losses["mse"] = next(iter(losses.values()))
    assert line(metrics) is None
    metrics["ranking"]["ablations"] = None
    assert "the ranking ablations (`--ranking-ablations`)" in line(metrics)


def test_differences_are_paired_bootstraps_with_honest_verdicts(report):
    d = report["ranking"]["differences"]["ranked - retrieval_order"]["ndcg@10"]
    e2e = report["ranking"]["end_to_end"]
    assert d["difference"] == pytest.approx(e2e["ranked"]["ndcg@10"] - e2e["retrieval_order"]["ndcg@10"])
    assert d["ci"][0] <= d["difference"] <= d["ci"][1]
    assert d["significant"] == (d["ci"][0] > 0 or d["ci"][1] < 0)
    r = report["retrieval"]["differences"]["two-tower - most popular"]["recall@100"]
    curves = report["retrieval"]["curves"]
    assert r["difference"] == pytest.approx(curves["two-tower"]["recall@100"]
                                            - curves["most popular"]["recall@100"])
    text = (Path(report["report"]) / "report.md").read_text()
    verdict = "significant" if d["significant"] else "not significant"
    assert (f"| ranked - retrieval order | ndcg@10 | {d['difference']:+.4f} | "
            f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] | {verdict} |") in text


def test_the_report_says_what_undated_favourites_may_still_know(report):
    from pipelines.evaluate import _favourites_note

    text = (Path(report["report"]) / "report.md").read_text()
    assert "a source does not date a favourite" in text
    schema = {"features": [{"name": "favourites"}], "split": {"protocol": "as_of"}}
    assert _favourites_note(schema) is not None
    assert _favourites_note({**schema, "split": {"method": "random"}}) is None   # no cutoff
    assert _favourites_note({**schema, "features": []}) is None   # a source without them


def test_the_headline_judges_the_order_the_model_serves(tiny_ranked, tiny_features, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_ranked[0], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["serving"] = {"order": "blend", "why": "set by the test"}
    (model_dir / "config.json").write_text(json.dumps(config))
    out = evaluate.run(model_dir, tiny_features, tmp_path / "report", progress=False)
    k = out["ranking"]
    assert k["served"] == "blend"
    e2e, curves = k["end_to_end"], out["retrieval"]["curves"]
    # The served order against every baseline and against the ranker, on the same users.
    for rival, value in (("EASE", curves["EASE"]["ndcg@10"]), ("iALS", curves["iALS"]["ndcg@10"]),
                         ("ranked", e2e["ranked"]["ndcg@10"])):
        d = k["differences"][f"blend - {rival}"]["ndcg@10"]
        assert d["difference"] == pytest.approx(e2e["blend"]["ndcg@10"] - value)
    lines = evaluate.baseline_verdicts(k["differences"], "blend")
    assert lines[0].startswith("- The served order (blend of the signals) is ")
    assert " EASE on the same entries: NDCG@10 " in lines[0]
    assert any("the ranker's order of the same candidates" in line for line in lines)


def test_baseline_verdicts_say_ahead_within_noise_or_behind():
    def d(difference, lo, hi):
        return {"ndcg@10": {"difference": difference, "ci": [lo, hi], "users": 50,
                            "significant": lo > 0 or hi < 0}}

    lines = evaluate.baseline_verdicts({"ranked - EASE": d(0.02, 0.01, 0.03),
                                        "ranked - iALS": d(0.01, -0.01, 0.03),
                                        "ranked - blend": d(-0.02, -0.03, -0.01),
                                        "blend - EASE": d(0.5, 0.4, 0.6)})
    assert lines == [
        "- The ranked pipeline is ahead of EASE on the same entries: NDCG@10 +0.0200, "
        "95% CI [+0.0100, +0.0300] (paired bootstrap over 50 users).",
        "- The ranked pipeline is within noise of iALS on the same entries: NDCG@10 +0.0100, "
        "95% CI [-0.0100, +0.0300] (paired bootstrap over 50 users).",
        "- The ranked pipeline is BEHIND the linear blend of its signals of the same "
        "candidates: NDCG@10 -0.0200, 95% CI [-0.0300, -0.0100] (paired bootstrap over 50 users)."]


def test_the_report_says_what_each_top_10_is(report):
    """Beyond accuracy: the popularity order's top 10s hold the best-known titles (the
    lowest novelty) and few distinct ones (the lowest coverage); every value in range,
    and the table in report.md."""
    e2e = report["ranking"]["end_to_end"]
    orders = {n: m for n, m in e2e.items() if isinstance(m, dict)}
    popular = orders["popularity order"]
    for name, m in orders.items():
        assert 0 <= m["variety@10"] <= 1 and m["novelty@10"] > 0 and 0 < m["coverage@10"] <= 1
        if name != "popularity order":
            assert popular["novelty@10"] < m["novelty@10"], name
            assert popular["coverage@10"] < m["coverage@10"], name
    text = (Path(report["report"]) / "report.md").read_text()
    assert "### Beyond accuracy: what each top 10 is" in text
    assert f"{orders['ranked']['coverage@10']:.1%}" in text
