"""`pulse report`: a Markdown report with PNG plots of the latest retrain.

Reads the registry (``meta.json`` of each model's CURRENT version, or its latest
version when none passed the gate) and writes ``data_root/reports/report.md``
plus ``recommendations.png``, ``churn_roc.png``, ``churn_reliability.png``,
``churn_importance.png``, ``segments.png`` and ``segments_migration.png`` next to it.
No Spark: everything needed is in the metadata. The data root may be in an object
store: the registry is read and each file written through ``UPath`` (a plot is rendered
in memory and written whole, ``storage.objects.write_atomically``).
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath
from typing import Any

from upath import UPath

from batch.summary import (
    CHURN_MODELS,
    churn_table,
    gate_line,
    migration_table,
    rec_table,
    segment_table,
    stability_line,
    value_table,
)
from runtime.errors import PulseError
from runtime.settings import Settings
from schemas.tables import N_RECOMMENDATIONS
from scoring.churn import STACK_FEATURES, stack_in_words
from storage import registry
from storage.objects import write_atomically

Where = Path | UPath  # the report's folder and files: on a disk or in an object store


def _save(fig: Any, path: Where) -> None:
    """Render ``fig`` as a PNG in memory and write it as ``path`` whole, then close it."""
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_atomically(path, png.getbuffer())


def _meta(settings: Settings, name: str) -> dict[str, Any] | None:
    version = registry.current_version(settings, name)
    if version is None:
        all_versions = registry.versions(settings, name)
        if not all_versions:
            return None
        version = all_versions[-1]
    return registry.read_meta(settings, name, version)


def _plot_recs(meta: dict[str, Any], path: Where) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(meta["metrics"])
    keys = [f"{m}@{N_RECOMMENDATIONS}" for m in ("map", "precision", "recall", "ndcg")]
    revenue = f"revenue@{N_RECOMMENDATIONS}"
    base = meta["metrics"].get("popularity", {}).get(revenue)
    x = np.arange(len(keys))
    fig, (ax, rev) = plt.subplots(
        1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]}, squeeze=True
    )
    width = 0.8 / len(names)
    labels = [f"{n} (served)" if n == meta["served"] else n for n in names]
    for i, (n, label) in enumerate(zip(names, labels, strict=True)):
        ax.bar(x + i * width, [meta["metrics"][n][k] for k in keys], width, label=label)
    ax.set_xticks(x + width * (len(names) - 1) / 2, keys)
    ax.set_title(f"Recommendations on the hold-out {' .. '.join(meta['window']['holdout'])}")
    ax.legend()
    if base:  # versions written before revenue was measured have none
        ratios = [meta["metrics"][n].get(revenue, 0.0) / base for n in names]
        rev.barh(labels, ratios, color=[f"C{i}" for i in range(len(names))])
        rev.axvline(1.0, color="grey", linestyle=":")
        rev.set_title("hold-out revenue in lists\nvs popularity's")
    else:
        rev.axis("off")
    fig.tight_layout()
    _save(fig, path)


def _plot_roc(meta: dict[str, Any], path: Where) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, pts in meta["roc"].items():
        auc = meta["metrics"][name]["auc_roc"]
        ax.plot(pts["fpr"], pts["tpr"], label=f"{CHURN_MODELS.get(name, name)} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Churn ROC at {meta['window']['eval_cutoff']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def _plot_reliability(meta: dict[str, Any], path: Where) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, pts in meta["reliability"].items():
        brier = meta["metrics"][name]["brier"]
        ax.plot(pts["predicted"], pts["observed"], marker="o", ms=3,
                label=f"{CHURN_MODELS.get(name, name)} (Brier {brier:.3f})")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("predicted churn probability (bin mean)")
    ax.set_ylabel("observed churn rate")
    ax.set_title(f"Churn reliability at {meta['window']['eval_cutoff']}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _plot_importance(meta: dict[str, Any], path: Where) -> None:
    import matplotlib.pyplot as plt

    stack = meta.get("stack")
    if stack:  # the stack: logistic coefficients (or GBT importances) per input
        weights, what = stack["weights"], f"Churn stack ({stack['kind']}) weights per input"
    else:  # an older version: the GBT's importances
        weights, what = meta["feature_importances"], "Churn GBT feature importances (top 12)"
    # meta.json is written with sorted keys: order by size here
    ranked = sorted(weights.items(), key=lambda kv: -abs(kv[1]))
    items = ranked[:12][::-1]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_title(what)
    fig.tight_layout()
    _save(fig, path)


def _plot_segments(meta: dict[str, Any], path: Where) -> None:
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
    _save(fig, path)


def _plot_migration(meta: dict[str, Any], path: Where) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    moves = meta["stability"]["migration"]
    froms = list(dict.fromkeys(m["from"] for m in moves))
    tos = list(dict.fromkeys(m["to"] for m in moves))
    grid = np.zeros((len(froms), len(tos)))
    for m in moves:
        grid[froms.index(m["from"]), tos.index(m["to"])] = m["customers"]
    share = grid / np.maximum(grid.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.3 * len(tos) + 3, 0.6 * len(froms) + 2))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(froms)):
        for j in range(len(tos)):
            ax.text(j, i, f"{int(grid[i, j]):,}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(tos)), tos, rotation=45, ha="right")
    ax.set_yticks(range(len(froms)), froms)
    ax.set_xlabel(f"this version ({meta['version']})")
    ax.set_ylabel(f"previous ({meta['stability']['previous_version']})")
    ari = meta["stability"]["adjusted_rand_index"]
    ax.set_title(f"Segment migration (ARI {'n/a' if ari is None else f'{ari:.3f}'})")
    fig.tight_layout()
    _save(fig, path)


def _churn_section(ch: dict[str, Any], out: Where) -> list[str]:
    h = ch["params"]["horizon_days"]
    stack = ch.get("stack")
    if stack:
        kind = "logistic regression" if stack["kind"] == "logistic" else "depth-2 GBT"
        inputs = stack_in_words(stack.get("features") or STACK_FEATURES, h)
        model = (
            f"The served model is a {kind} stacked on BG/NBD: its inputs are {inputs}. "
            "BG/NBD is refitted at each cutoff on the history before it. The stack is trained at "
            "the training cutoff and scored at the evaluation cutoff, which it never saw; "
            "logistic or GBT was chosen on a fifth of the training customers"
        )
        sel = stack.get("selection_auc") or {}
        model += " (AUC " + ", ".join(f"{k} {v:.4f}" for k, v in sel.items()) + ")." if sel else "."
    else:
        model = "GBT on RFM features and customer attributes."
    lines = [
        f"## Churn (version {ch['version']})",
        "",
        f"Label: no purchase in the {h} days after the cutoff. Trained at "
        f"{ch['window']['train_cutoff']} ({ch['rows']['train']:,} customers), evaluated at "
        f"{ch['window']['eval_cutoff']} ({ch['rows']['eval']:,} customers, churn rate "
        f"{ch['rows']['eval_churn_rate']:.3f}).",
        "",
        model,
        "",
        "Baselines on the same customers: BG/NBD's probability of no purchase in the horizon, "
        "1 - P(alive) + P(alive) ((alpha+T)/(alpha+T+H))^(r+x); recency alone (a logistic "
        "regression on log recency); and a free GBT on every RFM feature and the customer "
        "attributes (the model served before). AUC-ROC: how well the model ranks churners above "
        "the others (0.5 is chance). PR-AUC: area under the precision-recall curve. Brier: mean "
        "squared error of the probability (calibration and sharpness; lower is better).",
        "",
        *churn_table(ch),
        "",
        gate_line(ch) + (" (baseline: BG/NBD's AUC - 0.005)" if stack else ""),
        "",
        "![roc](churn_roc.png) ![importance](churn_importance.png)",
        "",
    ]
    _plot_roc(ch, out / "churn_roc.png")
    _plot_importance(ch, out / "churn_importance.png")
    if ch.get("reliability"):
        lines += [
            "Reliability: customers binned by predicted probability; a calibrated model lies "
            "on the diagonal.",
            "",
            "![reliability](churn_reliability.png)",
            "",
        ]
        _plot_reliability(ch, out / "churn_reliability.png")
    if ch.get("value"):
        v = ch["value"]
        table = PurePosixPath(str(v["output"])).parent.name  # s3://... or a local path
        bg = ch.get("btyd", {}).get(ch["window"]["cutoff_exclusive"], {})
        params = ""
        if bg:
            b, g = bg["bgnbd"], bg["gamma_gamma"]
            params = (
                f" Fitted at the cutoff: BG/NBD r {b['r']:.3f}, alpha {b['alpha']:.2f} days, "
                f"a {b['a']:.3f}, b {b['b']:.3f} ({b['customers']:,} customers); Gamma-Gamma "
                f"p {g['p']:.3f}, q {g['q']:.3f}, gamma {g['gamma']:.4g} ({g['customers']:,} "
                "repeat customers)."
            )
        lines += [
            "### Value at risk",
            "",
            f"Expected value = BG/NBD's expected purchase days in the next {v['horizon_days']} "
            "days x Gamma-Gamma's expected spend per purchase day; value at risk = churn "
            f"probability x expected value (table `{table}`, and "
            "`pulse view --at-risk N`, which ranks by it)." + params,
            "",
            *value_table(ch),
            "",
        ]
    return lines


def write_report(settings: Settings) -> Where:
    """Write report.md and its PNGs under ``data_root/reports``; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    metas = {n: _meta(settings, n) for n in registry.MODELS}
    if not any(metas.values()):
        raise PulseError(f"no trained model in {settings.models_dir}: run `pulse retrain` first")
    out = settings.data_root / "reports"
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
            "Strategies: popularity (the most bought articles of the last days, the same "
            "list for everyone); repurchase (the customer's own articles, most recently and "
            "often bought first, then popularity); ALS (collaborative filtering); blend "
            "(repurchase, then ALS, then popularity); ranker (a gradient-boosted model that "
            "orders repurchase, popularity and co-purchase candidates, trained on the windows "
            "before the hold-out; on a large customer base only the most recently active are "
            "ranked, the others get repurchase, then popularity). Revenue in lists: what the "
            "hold-out's buyers spent on the articles that were in their 12, against "
            "popularity's 12.",
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
        lines += _churn_section(ch, out)
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
            "### Stability",
            "",
            stability_line(seg)
            + " (adjusted Rand index: 1 = the same grouping, about 0 = unrelated).",
            "",
        ]
        _plot_segments(seg, out / "segments.png")
        if migration_table(seg):
            lines += [
                "Customers by their segment in the previous CURRENT version (rows) and in "
                "this one (columns):",
                "",
                *migration_table(seg),
                "",
                "![migration](segments_migration.png)",
                "",
            ]
            _plot_migration(seg, out / "segments_migration.png")
    path = out / "report.md"
    write_atomically(path, "\n".join(lines).encode())
    return path
