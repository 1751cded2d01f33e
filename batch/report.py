"""`pulse report`: a Markdown report with PNG plots of the latest retrain.

Reads the registry (``meta.json`` of each model's CURRENT version, or its latest
version when none passed the gate) and writes ``data_root/reports/report.md``
plus ``recommendations.png``, ``churn_roc.png``, ``churn_importance.png`` and
``segments.png`` next to it. No Spark: everything needed is in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batch.summary import churn_table, gate_line, rec_table, segment_table
from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.tables import N_RECOMMENDATIONS
from storage import registry


def _meta(settings: Settings, name: str) -> dict[str, Any] | None:
    version = registry.current_version(settings, name)
    if version is None:
        all_versions = registry.versions(settings, name)
        if not all_versions:
            return None
        version = all_versions[-1]
    return registry.read_meta(settings, name, version)


def _plot_recs(meta: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(meta["metrics"])
    keys = [f"{m}@{N_RECOMMENDATIONS}" for m in ("map", "precision", "recall", "ndcg")]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        label = f"{n} (served)" if n == meta["served"] else n
        ax.bar(x + i * width, [meta["metrics"][n][k] for k in keys], width, label=label)
    ax.set_xticks(x + width * (len(names) - 1) / 2, keys)
    ax.set_title(f"Recommendations on the hold-out {' .. '.join(meta['window']['holdout'])}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_roc(meta: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, pts in meta["roc"].items():
        auc = meta["metrics"][name]["auc_roc"]
        ax.plot(pts["fpr"], pts["tpr"], label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Churn ROC at {meta['window']['eval_cutoff']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_importance(meta: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    # meta.json is written with sorted keys: order by importance here
    ranked = sorted(meta["feature_importances"].items(), key=lambda kv: -kv[1])
    items = ranked[:12][::-1]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_title("Churn GBT feature importances (top 12)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_segments(meta: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    prof = meta["profile"]
    labels = [p["segment_name"] for p in prof]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    keys = ["customers", "recency_days", "frequency", "monetary"]
    for i, (ax, key) in enumerate(zip(axes, keys, strict=True)):
        ax.bar(labels, [p[key] for p in prof], color=f"C{i}")
        ax.set_title(key if key == "customers" else f"mean {key}")
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(
        f"Segments (k = {meta['params']['k']}, silhouette {meta['metrics']['silhouette']:.3f})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(settings: Settings) -> Path:
    """Write report.md and its PNGs; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    metas = {n: _meta(settings, n) for n in registry.MODELS}
    if not any(metas.values()):
        raise PulseError(f"no trained model in {settings.models_dir}: run `pulse retrain` first")
    out = settings.data_root / "reports"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Pulse batch report", ""]
    rec = metas["recommendations"]
    if rec:
        w = rec["window"]
        lines += [
            f"Data: {w['events']:,} events from {w['first_event_date']} to before "
            f"{w['cutoff_exclusive']} (nothing at or after the cutoff was read).",
            "",
            f"## Recommendations (version {rec['version']})",
            "",
            f"Trained before {w['train_end']}, evaluated on purchases in "
            f"[{rec['window']['holdout'][0]}, {rec['window']['holdout'][1]}); served: "
            f"**{rec['served']}** refit on all data. ALS params: rank {rec['params']['rank']}, "
            f"maxIter {rec['params']['max_iter']}, alpha {rec['params']['alpha']}.",
            "",
            *rec_table(rec),
            "",
            gate_line(rec),
            "",
            "![recommendations](recommendations.png)",
            "",
        ]
        _plot_recs(rec, out / "recommendations.png")
    ch = metas["churn"]
    if ch:
        lines += [
            f"## Churn (version {ch['version']})",
            "",
            f"Label: no purchase in the {ch['params']['horizon_days']} days after the cutoff. "
            f"GBT trained at {ch['window']['train_cutoff']} ({ch['rows']['train']:,} customers), "
            f"evaluated at {ch['window']['eval_cutoff']} ({ch['rows']['eval']:,} customers, "
            f"churn rate {ch['rows']['eval_churn_rate']:.3f}). Baselines: recency alone "
            "(logistic), BG/NBD P(no purchase) = exp(-expected purchases in H days).",
            "",
            *churn_table(ch),
            "",
            gate_line(ch),
            "",
            "![roc](churn_roc.png) ![importance](churn_importance.png)",
            "",
        ]
        _plot_roc(ch, out / "churn_roc.png")
        _plot_importance(ch, out / "churn_importance.png")
    seg = metas["segments"]
    if seg:
        by_k = ", ".join(f"k={k}: {v:.3f}" for k, v in seg["metrics"]["silhouette_by_k"].items())
        lines += [
            f"## Segments (version {seg['version']})",
            "",
            f"K-Means on standardised log1p recency, frequency, monetary; silhouette by k: {by_k}.",
            "",
            *segment_table(seg),
            "",
            gate_line(seg),
            "",
            "![segments](segments.png)",
            "",
        ]
        _plot_segments(seg, out / "segments.png")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
