"""How metrics are shown: one number format and one table renderer for the stage
summaries (text), report.md and the model card (Markdown)."""

from __future__ import annotations

import math


# The columns of the standard tables: (header, metrics key; dotted keys read nested dicts).
RETRIEVAL_COLUMNS = (("R@10", "recall@10"), ("R@50", "recall@50"), ("R@100", "recall@100"),
                     ("N@10", "ndcg@10"), ("N@100", "ndcg@100"),
                     ("R@100 <10 train", "short_history.recall@100"))
LIST_COLUMNS = (("NDCG", "ndcg"), ("NDCG@5", "ndcg@5"))
END_TO_END_COLUMNS = (("NDCG@10", "ndcg@10"), ("Recall@10", "recall@10"), ("MRR", "mrr"))
# What each top 10 is, beside its accuracy (ranking.metrics: variety, novelty, coverage).
BEYOND_COLUMNS = (("NDCG@10", "ndcg@10"), ("genre variety", "variety@10", ".3f"),
                  ("novelty (bits)", "novelty@10", ".2f"), ("coverage", "coverage@10", ".1%"))


def num(value, spec: str = ".4f", width: int = 0) -> str:
    """``value`` formatted with ``spec``, right-aligned to ``width``; ``"-"`` when there
    is no value: a group with no users in it (no short-history users, no labelled test
    users, an empty activity bucket) has no mean, and says so instead of crashing."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return ("-" if missing else format(value, spec)).rjust(width)


def interval(d: dict, between: str = " ") -> str:
    """A paired difference and its CI (``protocol.paired_bootstrap``'s dict) as
    ``+0.0065 [-0.0017, +0.0140]`` (``between`` the two parts); ``-`` for what was not
    measured."""
    return (f"{num(d['difference'], '+.4f')}{between}"
            f"[{num(d['ci'][0], '+.4f')}, {num(d['ci'][1], '+.4f')}]")


def _get(metrics: dict, key: str):
    """``metrics[key]``, where a dotted key reads nested dicts (``short_history.recall@100``)."""
    for part in key.split("."):
        metrics = (metrics or {}).get(part)
    return metrics


def table(rows, columns, markdown: bool = True, label: str = "") -> str:
    """A metrics table: one row per ``(name, metrics dict)`` in ``rows`` (rows whose dict
    is None are left out), one column per ``(header, key)`` or ``(header, key, spec)``
    in ``columns`` (``key`` dotted for nested values; ``spec`` the number format,
    default ``.4f``). Markdown for report.md and the model card, aligned text for the
    command line; missing values show as "-"."""
    rows = [(name, m) for name, m in rows if m is not None]
    cells = [[name] + [num(_get(m, key), *spec) for _, key, *spec in columns]
             for name, m in rows]
    header = [label] + [c[0] for c in columns]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *cells])


def retrieval_rows(metrics: dict) -> list:
    """``(name, metrics)`` of the retrieval table: model, ablation and baselines."""
    ease, recent, ials = metrics.get("ease"), metrics.get("recent_popularity"), metrics.get("ials")
    return [("two-tower", metrics["model"]), ("two-tower, ids only", metrics.get("ids_only")),
            ("two-tower, without history", metrics.get("without_history")),
            ("most popular", metrics["popularity"]),
            (f"most popular, last {recent['days']} days" if recent else "", recent),
            (f"EASE (lambda {ease['lambda']:g})" if ease else "EASE", ease),
            ("iALS (" + ", ".join(f"{k} {v:g}" for k, v in ials["settings"].items()) + ")"
             if ials else "iALS", ials if ials and "recall@100" in ials else None)]


# The orders of the candidates compared end to end, as the tables name them.
ORDER_LABELS = {"ranked": "ranked", "blend": "blend of the signals", "ease_order": "EASE order",
                "retrieval_order": "retrieval order", "popularity_order": "popularity order"}


def other_order_rows(table: dict) -> list:
    """``(label, metrics)`` of every order but the ranker's that an end-to-end table
    holds, in ``ORDER_LABELS``' order (the rows beside the ranker's in a validation table)."""
    return [(label, table[name]) for name, label in ORDER_LABELS.items()
            if name != "ranked" and name in table]
