"""The README's headline numbers, generated from one named run, never typed.

    .venv/bin/python docs/readme_numbers.py --metrics data/model/metrics.json \\
        --run "make run, default world (seed 0), 2026-12-07"      # refresh both files
    .venv/bin/python docs/readme_numbers.py --daily data/daily/monitoring/metrics.json \\
        --daily-run "make run's three days, 2026-12-07"                # the daily loop's table
    .venv/bin/python docs/readme_numbers.py --seeds data/model /tmp/s1/model /tmp/s2/model \\
        --seeds-run "run --seed S on worlds 0-2, 2026-12-07"           # the worlds' table
    .venv/bin/python docs/readme_numbers.py --check                       # exit 1 if they disagree

``--metrics`` keeps the parts of a run's ``metrics.json`` the README quotes (the selection
run's evaluation, the walk-forward test, the release) in ``docs/readme_numbers.json``, with the
run's name, and rewrites every generated block of README.md from it. A generated block
is the text between ``<!-- numbers: NAME -->`` and ``<!-- /numbers -->``; ``BLOCKS``
says how each NAME is written. ``tests/test_readme.py`` fails when a block differs from
what ``docs/readme_numbers.json`` gives, so a number edited by hand, or a run's numbers pasted
into one table but not another, is caught.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines.artifact import ORDER_NAMES
from pipelines.evaluate import GENERATOR, GENERATOR_SCORE, RECENT, baseline_verdicts
from pipelines.formatting import BEYOND_COLUMNS, ORDER_LABELS, interval, table

README = ROOT / "README.md"
NUMBERS = ROOT / "docs" / "readme_numbers.json"
BLOCK = re.compile(r"(<!-- numbers: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /numbers -->)", re.DOTALL)


def _keep(section: dict) -> dict:
    """The parts of an evaluation the README quotes: retrieval curves, the end to end
    table, the paired differences, the validation table of the chosen loss and the serve
    decision, the held-out lists, what each method saw, the test split."""
    ranking = section.get("ranking") or {}
    validation = ranking.get("validation") or {}
    chosen = (validation.get("loss_choice") or {}).get("chosen")
    scores = section.get("scores") or {}
    return {
        "scores": {"entries": scores.get("entries"), "best_baseline": scores.get("best_baseline"),
                   "predictors": {n: {k: p[k] for k in ("rmse", "mae")}
                                  for n, p in (scores.get("predictors") or {}).items()},
                   "differences": {pair: {"per_user": d["per_user"]}
                                   for pair, d in (scores.get("differences") or {}).items()}},
        "protocol": {"test_split": section["protocol"]["test_split"]},
        "data": {"same_data": section["data"].get("same_data")},
        "retrieval": {"curves": {name: {k: c[k] for k in ("recall@100", "ndcg@10")}
                                 for name, c in section["retrieval"]["curves"].items()},
                      "ials": section["retrieval"].get("ials"),
                      "new_titles": section["retrieval"].get("new_titles")},
        "ranking": {
            "end_to_end": ranking.get("end_to_end"),
            "differences": {pair: {"ndcg@10": d["ndcg@10"]}
                            for pair, d in (ranking.get("differences") or {}).items()},
            "served": ranking.get("served", "ranked"),
            "held_out_lists": ranking.get("held_out_lists"),
            "validation": {"users": validation.get("users"), "loss": chosen,
                           "table": (validation.get("losses") or {}).get(chosen),
                           "serving": validation.get("serving")}}}


def snapshot(metrics: dict, run: str) -> dict:
    """``docs/readme_numbers.json`` from a run's ``metrics.json`` and the run's name."""
    return {"run": run, "selection": _keep(metrics["evaluation"]),
            "walk_forward": _keep(metrics["walk_forward"]),
            "release": {k: metrics["release"][k] for k in ("trained_through", "seconds")}}


def _n(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def walk_forward(numbers: dict) -> str:
    """The selection run's test beside the walk-forward test: NDCG@10 of every compared
    order and baseline, ranked - EASE with its CI, then the walk-forward verdicts."""
    columns = [("ranked", "e2e", "ranked"), ("blend", "e2e", "blend"),
               ("EASE's order of the same candidates", "e2e", "ease_order"),
               ("EASE", "curve", "EASE"), ("iALS", "curve", "iALS"),
               ("two-tower", "curve", "two-tower"), (RECENT, "curve", RECENT)]
    lines = ["| test | " + " | ".join(c[0] for c in columns) + " | ranked - EASE (95% CI) | users |",
             "|---" * (len(columns) + 3) + "|"]
    for label, key in (("selection run (unequal data)", "selection"),
                       ("walk-forward (same data)", "walk_forward")):
        section = numbers[key]
        e2e, curves = section["ranking"]["end_to_end"], section["retrieval"]["curves"]
        values = [(e2e if kind == "e2e" else curves).get(name, {}).get("ndcg@10")
                  for _, kind, name in columns]
        d = section["ranking"]["differences"]["ranked - EASE"]["ndcg@10"]
        lines.append(f"| {label} | " + " | ".join(_n(v) for v in values)
                     + f" | {interval(d)} | {d['users']:,} |")
    wf = numbers["walk_forward"]
    lines += ["", f"On the same data ({wf['protocol']['test_split']}):", "",
              *baseline_verdicts(wf["ranking"]["differences"], wf["ranking"].get("served", "ranked"))]
    return "\n".join(lines) + "\n"


def headroom(numbers: dict) -> str:
    """The selection run's model, EASE, recent popularity and the generator's own
    reference rows on retrieval, end to end and the held-out lists."""
    s = numbers["selection"]
    curves, e2e = s["retrieval"]["curves"], s["ranking"]["end_to_end"]
    held = s["ranking"]["held_out_lists"]
    ranker = next(v for k, v in held.items() if k.startswith("ranker"))
    expected = held.get(GENERATOR_SCORE, {})
    return "\n".join([
        "| | model | EASE | recent popularity | the generator's (reference) |",
        "|---|---|---|---|---|",
        f"| retrieval Recall@100 | {_n(curves['two-tower']['recall@100'])} (two-tower) | "
        f"{_n(curves['EASE']['recall@100'])} | {_n(curves[RECENT]['recall@100'])} | "
        f"{_n(curves[GENERATOR]['recall@100'])} (its odds) |",
        f"| end-to-end NDCG@10 | {_n(e2e['ranked']['ndcg@10'])} (ranked) | "
        f"{_n(curves['EASE']['ndcg@10'])} (its own top 10) | - | "
        f"{_n(e2e[GENERATOR]['ndcg@10'])} (its odds' order of the same candidates) |",
        f"| held-out list NDCG | {_n(ranker['ndcg'])} (ranker) | - | - | "
        f"{_n(expected.get('ndcg'))} (its expected score) |"]) + "\n"


def serve_decision(numbers: dict) -> str:
    """The validation table the served order was decided on, and the decision."""
    v = numbers["selection"]["ranking"]["validation"]
    table = v["table"]
    rows = [(ORDER_LABELS[name], table[name]) for name in ORDER_LABELS if name in table]
    lines = [f"| order (validation, {v['users']:,} selection users, ranker {v['loss']}) "
             "| NDCG@10 | Recall@10 | MRR |", "|---|---|---|---|"]
    lines += [f"| {label} | {_n(m['ndcg@10'])} | {_n(m['recall@10'])} | {_n(m['mrr'])} |"
              for label, m in rows]
    pairs = [f"{pair.replace('_', ' ')} {interval(d['ndcg@10'])}"
             for pair, d in table["differences"].items() if "popularity" not in pair]
    lines += ["", "Paired over the same users, NDCG@10: " + "; ".join(pairs) + ".",
              f"**Served: {ORDER_NAMES[v['serving']['order']]}** ({v['serving']['why']})."]
    return "\n".join(lines) + "\n"


def keep_daily(monitoring: dict) -> dict:
    """The parts of a daily job's ``monitoring/metrics.json`` the README quotes, per day."""
    def scores(day, name):
        return {k: day["scores"][name][k] for k in ("mae", "rmse")}

    return {d: {"outcomes": day["outcomes"], "scored_known": day["scored_known"],
                "unknown_title_share": day["unknown_title_share"],
                "new_titles": day["new_titles"], "hits": day["hits"],
                "scores": {n: scores(day, n) for n in ("model", "user_mean", "title_mean")}}
            for d, day in sorted(monitoring["days"].items())}


def daily(numbers: dict) -> str:
    """The daily loop's days: outcomes, score errors beside the baselines, hit rates of
    the new titles beside recent popularity; the better of each pair in bold."""
    def pair(a: float, b: float, fmt: str, low: bool) -> str:
        better = (a < b) if low else (a > b)
        x, y = format(a, fmt), format(b, fmt)
        return f"**{x}** / {y}" if better else (f"{x} / **{y}**" if a != b else f"{x} / {y}")

    lines = ["| day | outcomes | scored (known titles) | on titles the model lacks | MAE: model "
             "/ user mean / title mean | RMSE: model / user mean | new titles | hit@10: model / "
             "recent popularity | hit@100: model / recent popularity |", "|---" * 9 + "|"]
    for d, day in numbers["daily"]["days"].items():
        s, h = day["scores"], day["hits"]
        lines.append(
            f"| {d} | {day['outcomes']:,} | {day['scored_known']:,} | "
            f"{day['unknown_title_share']:.1%} | "
            f"{pair(s['model']['mae'], s['user_mean']['mae'], '.2f', True)} / "
            f"{s['title_mean']['mae']:.2f} | "
            f"{pair(s['model']['rmse'], s['user_mean']['rmse'], '.2f', True)} | "
            f"{day['new_titles']:,} | "
            + " | ".join(pair(h['model'][k], h['recent_popularity'][k], '.3f', False)
                         for k in ("hit@10", "hit@100")) + " |")
    lines += ["", f"({numbers['daily']['run']}, `data/daily/monitoring/metrics.json`.)"]
    return "\n".join(lines) + "\n"


def walk_forward_scores(numbers: dict) -> str:
    """The score head against the score baselines on the walk-forward test's scores, every
    one fitted on the scores before T + h; the head's per-user CI against the best."""
    sc = numbers["walk_forward"]["scores"]
    lines = [f"| predictor (walk-forward, {sc['entries']:,} test scores) | RMSE | MAE |",
             "|---|---|---|"]
    lines += [f"| {name} | {p['rmse']:.2f} | {p['mae']:.2f} |" for name, p in sc["predictors"].items()]
    lines += [""] + [f"{pair}, squared error per user (paired bootstrap over "
                     f"{d['per_user']['users']:,} users): {interval(d['per_user'])}."
                     for pair, d in sc["differences"].items()]
    return "\n".join(lines) + "\n"


def new_titles(numbers: dict) -> str:
    """The walk-forward test's new-title slice (``protocol.new_title_slice``): the shelf's
    hit@10 of the two-tower beside the period's popularity and random order, and known
    and new titles ranked together."""
    n = numbers["walk_forward"]["retrieval"].get("new_titles")
    if not n:
        return "(The run has no new-title slice: feature tables from before it was kept.)\n"
    hit, c, d = n[f"hit@{n['k']}"], n["catalog"], n["differences"]
    top = c["k"]
    return "\n".join([
        f"| walk-forward test | shelf hit@{n['k']} | two-tower - it (95% CI) |", "|---|---|---|",
        f"| two-tower, from metadata alone | {_n(hit['two-tower'])} | |",
        f"| the period's popularity (counts the period itself) | {_n(hit['period popularity'])} | "
        f"{interval(d['two-tower - period popularity'])} |",
        f"| random order | {_n(hit['random'])} | {interval(d['two-tower - random'])} |",
        "",
        f"{n['titles']:,} titles first listed in the test period, {n['interactions']:,} "
        f"interactions of {n['users']:,} known users. Ranked together with the known titles "
        f"({c['users']:,} test users): Recall@{top} {_n(c[f'recall@{top}'])} and NDCG@10 "
        f"{_n(c['ndcg@10'])} of all their test interactions; a new title of theirs among the "
        f"{top} candidates for {c[f'new_hit@{top}']:.1%} of the users with one; new titles "
        f"are {c['new_share']:.1%} of the candidates.",
        "", f"({numbers['run']}.)"]) + "\n"


SEED_PAIRS = ("ranked - EASE", "ranked - blend", "ranked - iALS")


def keep_seeds(models: list[Path]) -> list[dict]:
    """Per model directory (one world each), the walk-forward parts ``_keep`` keeps and
    the world's seed."""
    out = []
    for model in models:
        walked = json.loads((model / "metrics.json").read_text())["walk_forward"]
        wf, source = _keep(walked), walked["data"]
        e2e, curves = wf["ranking"]["end_to_end"], wf["retrieval"]["curves"]
        out.append({
            "seed": (source.get("source") or {}).get("seed"),
            "ranking": {"end_to_end": {k: {"ndcg@10": e2e[k]["ndcg@10"]} for k in ("ranked", "blend")},
                        "differences": {p: wf["ranking"]["differences"][p] for p in SEED_PAIRS}},
            "retrieval": {"curves": {k: {"ndcg@10": curves[k]["ndcg@10"]}
                                     for k in ("EASE", "iALS", "two-tower", RECENT)}}})
    return out


def seeds(numbers: dict) -> str:
    """The walk-forward headline per world and its mean ± sd over the worlds."""
    import numpy as np

    columns = [("ranked", "e2e", "ranked"), ("blend", "e2e", "blend"), ("EASE", "curve", "EASE"),
               ("iALS", "curve", "iALS"), ("two-tower", "curve", "two-tower"),
               (RECENT, "curve", RECENT)]
    pairs = SEED_PAIRS
    lines = ["| world | " + " | ".join(c[0] for c in columns) + " | ranked - EASE (95% CI) | "
             "ranked - blend | ranked - iALS | users |", "|---" * (len(columns) + 5) + "|"]
    table = {c[0]: [] for c in columns} | {p: [] for p in pairs}
    for world in numbers["seeds"]["worlds"]:
        e2e, curves = world["ranking"]["end_to_end"], world["retrieval"]["curves"]
        values = [(e2e if kind == "e2e" else curves)[name]["ndcg@10"] for _, kind, name in columns]
        diffs = [world["ranking"]["differences"][p]["ndcg@10"] for p in pairs]
        for (label, _, _), v in zip(columns, values):
            table[label].append(v)
        for p, d in zip(pairs, diffs):
            table[p].append(d["difference"])
        lines.append(f"| seed {world['seed']} | " + " | ".join(_n(v) for v in values) + " | "
                     + " | ".join(interval(d) for d in diffs) + f" | {diffs[0]['users']:,} |")

    def spread(values: list, sign: str = "") -> str:
        a = np.array(values)
        return f"{a.mean():{sign}.4f} ± {a.std(ddof=1) if len(a) > 1 else 0:.4f}"

    lines.append("| mean ± sd | " + " | ".join(spread(table[c[0]]) for c in columns) + " | "
                 + " | ".join(spread(table[p], "+") for p in pairs) + " | |")
    lines += ["", f"({numbers['seeds']['run']}.)"]
    return "\n".join(lines) + "\n"


def beyond(numbers: dict) -> str:
    """What each order's top 10 is on the walk-forward test (genre variety, novelty,
    coverage) beside its NDCG@10: the same users and candidates."""
    e2e = numbers["walk_forward"]["ranking"]["end_to_end"]
    rows = [(ORDER_LABELS.get(name, name.replace("_", " ")), m) for name, m in e2e.items()
            if isinstance(m, dict)]
    return table(rows, BEYOND_COLUMNS, label=f"order ({e2e['users']:,} users)") + "\n"


BLOCKS = {"walk-forward": walk_forward, "beyond": beyond, "headroom": headroom, "serve-decision": serve_decision,
          "daily": daily, "seeds": seeds, "walk-forward-scores": walk_forward_scores,
          "new-titles": new_titles}


def render(text: str, numbers: dict) -> str:
    """``text`` with every generated block rewritten from ``numbers``; a block of an
    unknown name is an error (a typo would otherwise go unchecked)."""
    def block(match):
        name = match["name"]
        if name not in BLOCKS:
            raise ValueError(f"README.md has a generated block `{name}` that docs/readme_numbers.py "
                             f"does not know; known: {', '.join(BLOCKS)}.")
        return match[1] + BLOCKS[name](numbers) + match[4]
    return BLOCK.sub(block, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", type=Path, help="a run's metrics.json: refresh "
                        "docs/readme_numbers.json from it (needs --run)")
    parser.add_argument("--run", help="the run's name, e.g. 'make run, default world (seed 0), "
                        "2026-12-07'")
    parser.add_argument("--daily", type=Path,
                        help="a daily job's monitoring/metrics.json: refresh the daily block's "
                             "numbers from it (needs --daily-run)")
    parser.add_argument("--daily-run", help="that daily job's name, e.g. 'make run's three "
                        "days, 2026-12-07'")
    parser.add_argument("--seeds", type=Path, nargs="+",
                        help="model directories of `run --seed S` on several worlds: refresh "
                             "the seeds block from their metrics.json (needs --seeds-run)")
    parser.add_argument("--seeds-run", help="those runs' name")
    parser.add_argument("--check", action="store_true",
                        help="only check that README.md's generated blocks match docs/readme_numbers.json")
    args = parser.parse_args()
    if args.metrics:
        if not args.run:
            parser.error("--metrics needs --run (the name the README cites)")
        kept = json.loads(NUMBERS.read_text()) if NUMBERS.exists() else {}
        numbers = snapshot(json.loads(args.metrics.read_text()), args.run)
        numbers.update({k: kept[k] for k in ("daily", "seeds") if k in kept})
        NUMBERS.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    if args.daily:
        if not args.daily_run:
            parser.error("--daily needs --daily-run (the name the README cites)")
        numbers = json.loads(NUMBERS.read_text())
        numbers["daily"] = {"run": args.daily_run,
                            "days": keep_daily(json.loads(args.daily.read_text()))}
        NUMBERS.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    if args.seeds:
        if not args.seeds_run:
            parser.error("--seeds needs --seeds-run (the name the README cites)")
        numbers = json.loads(NUMBERS.read_text())
        numbers["seeds"] = {"run": args.seeds_run, "worlds": keep_seeds(args.seeds)}
        NUMBERS.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    numbers = json.loads(NUMBERS.read_text())
    text = README.read_text()
    new = render(text, numbers)
    if args.check:
        if new != text:
            print("error: README.md's generated numbers differ from docs/readme_numbers.json: run "
                  "`.venv/bin/python docs/readme_numbers.py` to rewrite them", file=sys.stderr)
            return 1
        print(f"README.md's {len(BLOCK.findall(text))} generated blocks match docs/readme_numbers.json")
        return 0
    README.write_text(new)
    print(f"README.md: {len(BLOCK.findall(text))} generated blocks from {numbers['run']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
