"""The walk-forward headline over several synthetic worlds: one row per model directory
(each `python -m pipelines run --seed S` on its own world), then the mean and standard
deviation over them. The synthetic world is ours, so one seed cannot be the judge.

    .venv/bin/python bench/world_seeds.py data/model /tmp/s1/model /tmp/s2/model

Each model's numbers are read from its ``metrics.json["walk_forward"]`` (every method
fitted on and queried with the same entries): NDCG@10 of the ranked pipeline and of the
linear blend of its signals end to end, of EASE, iALS, the two-tower and recent
popularity over the whole catalog, and ranked - EASE with its paired bootstrap CI over
that world's users. A model from before iALS or the blend shows "nan" there.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RECENT = "most popular, last 30 days"


def headline(model: Path) -> dict:
    metrics = json.loads((model / "metrics.json").read_text())
    wf = metrics.get("walk_forward")
    if wf is None:
        sys.exit(f"error: {model}/metrics.json has no walk_forward section: run `python -m "
                 "pipelines run` (or walk-forward) on that world first")
    curves, e2e = wf["retrieval"]["curves"], wf["ranking"]["end_to_end"]
    d = wf["ranking"]["differences"]["ranked - EASE"]["ndcg@10"]
    source = (wf["data"].get("source") or {}).get("description", str(model))
    nan = {"ndcg@10": float("nan")}
    return {"world": source, "ranked": e2e["ranked"]["ndcg@10"],
            "blend": e2e.get("blend", nan)["ndcg@10"], "EASE": curves["EASE"]["ndcg@10"],
            "iALS": curves.get("iALS", nan)["ndcg@10"], "two-tower": curves["two-tower"]["ndcg@10"],
            "recent popularity": curves.get(RECENT, {}).get("ndcg@10", float("nan")),
            "ranked - EASE": d["difference"], "ci": d["ci"], "users": d["users"],
            "same data": wf["data"]["same_data"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="model directories, one per world")
    rows = [headline(m) for m in parser.parse_args().models]
    columns = ("ranked", "blend", "EASE", "iALS", "two-tower", "recent popularity", "ranked - EASE")
    print("| world | " + " | ".join(columns) + " | 95% CI | users | same data |")
    print("|---" * (len(columns) + 4) + "|")
    for r in rows:
        print(f"| {r['world']} | " + " | ".join(f"{r[c]:+.4f}" if c == "ranked - EASE"
                                                else f"{r[c]:.4f}" for c in columns)
              + f" | [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] | {r['users']:,} | {r['same data']} |")
    values = {c: np.array([r[c] for r in rows]) for c in columns}
    print(f"| mean ± sd over {len(rows)} worlds | " + " | ".join(
        f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}" for v in values.values())
        + " | | | |")
    above = sum(r["ci"][0] > 0 for r in rows)
    print(f"ranked - EASE above zero (CI) in {above} of {len(rows)} worlds")


if __name__ == "__main__":
    main()
