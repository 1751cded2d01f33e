"""Plain-text metric tables of a retrain run (printed by `pulse retrain`, used by the report)."""

from __future__ import annotations

from typing import Any


def rec_table(meta: dict[str, Any]) -> list[str]:
    """Markdown rows: one per recommendation candidate."""
    lines = [
        "| candidate | MAP@12 | precision@12 | recall@12 | NDCG@12 | coverage | customers |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in meta["metrics"].items():
        mark = " (served)" if name == meta["served"] else ""
        lines.append(
            f"| {name}{mark} | {m['map@12']:.4f} | {m['precision@12']:.4f} | "
            f"{m['recall@12']:.4f} | {m['ndcg@12']:.4f} | {m['coverage']:.4f} | {m['customers']} |"
        )
    return lines


def churn_table(meta: dict[str, Any]) -> list[str]:
    """Markdown rows: GBT and its baselines."""
    lines = ["| model | AUC-ROC | PR-AUC | Brier |", "|---|---|---|---|"]
    for name, m in meta["metrics"].items():
        lines.append(f"| {name} | {m['auc_roc']:.4f} | {m['pr_auc']:.4f} | {m['brier']:.4f} |")
    return lines


def segment_table(meta: dict[str, Any]) -> list[str]:
    """Markdown rows: one per segment with its profile."""
    lines = [
        "| segment | name | customers | recency (days) | frequency | monetary |",
        "|---|---|---|---|---|---|",
    ]
    for p in meta["profile"]:
        lines.append(
            f"| {p['segment_id']} | {p['segment_name']} | {p['customers']} | "
            f"{p['recency_days']:.1f} | {p['frequency']:.2f} | {p['monetary']:.2f} |"
        )
    return lines


def gate_line(meta: dict[str, Any]) -> str:
    """One line: the gate verdict and whether CURRENT moved."""
    g = meta["gate"]
    verdict = "PASS -> CURRENT" if meta.get("promoted") else "FAIL, CURRENT unchanged"
    why = "; ".join(g["reasons"])
    return f"gate on {g['metric']} = {g['value']:.4f}: {verdict}{(' (' + why + ')') if why else ''}"


def print_summary(run: dict[str, dict[str, Any]]) -> None:
    """Print each trained model's table and gate verdict."""
    tables = {"recommendations": rec_table, "churn": churn_table, "segments": segment_table}
    for name, meta in run.items():
        print(f"\n## {name} (version {meta['version']})")
        print("\n".join(tables[name](meta)))
        print(gate_line(meta))
