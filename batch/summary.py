"""Plain-text metric tables of a retrain run (printed by `pulse retrain`, used by the report)."""

from __future__ import annotations

from typing import Any

from schemas.tables import N_RECOMMENDATIONS


def rec_table(meta: dict[str, Any]) -> list[str]:
    """Markdown rows: one per recommendation candidate."""
    k = N_RECOMMENDATIONS
    lines = [
        f"| candidate | MAP@{k} | precision@{k} | recall@{k} | NDCG@{k} | coverage | customers |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in meta["metrics"].items():
        mark = " (served)" if name == meta["served"] else ""
        lines.append(
            f"| {name}{mark} | {m[f'map@{k}']:.4f} | {m[f'precision@{k}']:.4f} | "
            f"{m[f'recall@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | {m['coverage']:.4f} | "
            f"{m['customers']} |"
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
