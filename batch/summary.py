"""Plain-text metric tables of a retrain run (printed by `pulse retrain`, used by the report)."""

from __future__ import annotations

from typing import Any

from schemas.tables import N_RECOMMENDATIONS


def rec_table(meta: dict[str, Any]) -> list[str]:
    """Markdown rows: one per recommendation candidate. Revenue: what the hold-out's buyers
    spent there on articles that were in their list, and that against popularity's lists
    (blank for a version written before it was measured)."""
    k = N_RECOMMENDATIONS
    lines = [
        f"| candidate | MAP@{k} | precision@{k} | recall@{k} | NDCG@{k} | coverage | customers "
        "| revenue in lists | vs popularity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = meta["metrics"].get("popularity", {}).get(f"revenue@{k}")
    for name, m in meta["metrics"].items():
        mark = " (served)" if name == meta["served"] else ""
        revenue = m.get(f"revenue@{k}")
        money = f"{revenue:,.2f}" if revenue is not None else ""
        ratio = f"{revenue / base:.2f}x" if revenue is not None and base else ""
        lines.append(
            f"| {name}{mark} | {m[f'map@{k}']:.4f} | {m[f'precision@{k}']:.4f} | "
            f"{m[f'recall@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | {m['coverage']:.4f} | "
            f"{m['customers']} | {money} | {ratio} |"
        )
    return lines


CHURN_MODELS = {
    "stack": "stack on BG/NBD (served)",
    "bgnbd": "BG/NBD P(no purchase in H)",
    "recency": "recency alone (logistic)",
    "gbt": "free GBT on RFM + attributes",
}


def churn_table(meta: dict[str, Any]) -> list[str]:
    """Markdown rows: the served model and every baseline, with AUC against BG/NBD's."""
    metrics = meta["metrics"]
    if "stack" not in meta:  # a version from before the stack: GBT served, as it was shown
        lines = ["| model | AUC-ROC | PR-AUC | Brier |", "|---|---|---|---|"]
        for name, m in metrics.items():
            lines.append(f"| {name} | {m['auc_roc']:.4f} | {m['pr_auc']:.4f} | {m['brier']:.4f} |")
        return lines
    ref = metrics.get("bgnbd", {}).get("auc_roc")
    # meta.json is written with sorted keys: the served model first, then the baselines
    order = [n for n in CHURN_MODELS if n in metrics] + [
        n for n in metrics if n not in CHURN_MODELS
    ]
    metrics = {n: metrics[n] for n in order}
    lines = [
        "| model | AUC-ROC | AUC vs BG/NBD | PR-AUC | Brier (lower is better) |",
        "|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        delta = f"{m['auc_roc'] - ref:+.4f}" if ref is not None and name != "bgnbd" else ""
        label = CHURN_MODELS.get(name, name)
        lines.append(
            f"| {label} | {m['auc_roc']:.4f} | {delta} | {m['pr_auc']:.4f} | {m['brier']:.4f} |"
        )
    return lines


def value_table(meta: dict[str, Any]) -> list[str]:
    """Markdown rows: expected value and value at risk as of the cutoff, and how the
    expected spend compared with the actual spend on the evaluation window."""
    v = meta.get("value")
    if not v:
        return []
    h = v["horizon_days"]
    lines = [
        f"| value (next {h} days) | figure |",
        "|---|---|",
        f"| customers scored | {v['customers']:,} |",
        f"| expected spend, all customers | {v['expected_spend_total']:,.2f} |",
        f"| value at risk (sum of churn probability x expected spend) | "
        f"{v['value_at_risk_total']:,.2f} |",
    ]
    e = v.get("eval") or {}
    if e:
        lines += [
            f"| evaluation window: expected / actual spend | {e['expected_spend_total']:,.2f} / "
            f"{e['actual_spend_total']:,.2f} |",
            f"| evaluation window: correlation, expected vs actual spend per customer | "
            f"{e['pearson_expected_vs_actual']:.3f} |",
            f"| evaluation window: share of actual spend by the top 10 % by expected spend | "
            f"{e['top_decile_share_of_actual']:.1%} |",
        ]
    return lines


def migration_table(meta: dict[str, Any]) -> list[str]:
    """Markdown rows: customers by previous segment (rows) and this run's (columns)."""
    st = meta.get("stability")
    if not st or not st.get("migration"):
        return []
    froms = list(dict.fromkeys(m["from"] for m in st["migration"]))
    tos = list(dict.fromkeys(m["to"] for m in st["migration"]))
    cell = {(m["from"], m["to"]): m["customers"] for m in st["migration"]}
    lines = [
        "| from (rows) / to (columns) | " + " | ".join(tos) + " | total |",
        "|---|" + "---|" * (len(tos) + 1),
    ]
    for f in froms:
        counts = [cell.get((f, t), 0) for t in tos]
        lines.append(f"| {f} | " + " | ".join(f"{c:,}" for c in counts) + f" | {sum(counts):,} |")
    return lines


def stability_line(meta: dict[str, Any]) -> str:
    """One line: the adjusted Rand index against the previous CURRENT version."""
    st = meta.get("stability")
    if not st:
        return "stability: no previous CURRENT segments version to compare with"
    ari = st.get("adjusted_rand_index")
    same = st.get("same_segment_name_share")
    return (
        f"stability against version {st['previous_version']}: adjusted Rand index "
        f"{'n/a' if ari is None else f'{ari:.3f}'} on the {st['customers_in_both']:,} customers "
        f"in both; {'n/a' if same is None else f'{same:.1%}'} kept their segment name"
    )


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
        if name == "churn" and meta.get("value"):
            print("\n".join(["", *value_table(meta)]))
        if name == "segments":
            print(stability_line(meta))
            if migration_table(meta):
                print("\n".join(["", *migration_table(meta)]))
        print(gate_line(meta))
