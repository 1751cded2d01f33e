"""Calibration profile of an H&M-layout folder: the figures the README gives for the real sample.

``profile(folder)`` reads ``transactions_train.csv[.gz]`` with DuckDB (out of core,
so a 30M-row file is fine) and returns the per-customer distribution facts used to
tune the generator; ``compare`` prints generated next to real. Time semantics: the
"90-day return rate" uses the file's own last day E: of the customers who bought
before E - 90 days, the share who bought again on a day in [E - 90 days, E].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import PulseError

#: The README's facts for ../shared/data/hm_sample (used when no --real folder is given).
README_FACTS: dict[str, float] = {
    "rows": 31_662,
    "customers": 1_364,
    "tx_per_customer_q1": 3,
    "tx_per_customer_median": 9,
    "tx_per_customer_q3": 26,
    "tx_per_customer_p90": 61,
    "tx_per_customer_p99": 195,
    "purchase_days_q1": 1,
    "purchase_days_median": 3,
    "purchase_days_q3": 8,
    "purchase_days_p90": 16,
    "return_90d": 0.36,
    "channel2_share": 0.71,
    "price_min": 0.00046,
    "price_mean": 0.028,
    "price_max": 0.337,
}

#: How close generated must be to real to count as calibrated (relative, or absolute
#: for shares): quartiles and p90 within 35 %, shares within 5 points, mean price 15 %.
TOLERANCE: dict[str, tuple[str, float]] = {
    "tx_per_customer_q1": ("rel", 0.35),
    "tx_per_customer_median": ("rel", 0.35),
    "tx_per_customer_q3": ("rel", 0.35),
    "tx_per_customer_p90": ("rel", 0.35),
    "purchase_days_q1": ("abs", 1.0),
    "purchase_days_median": ("abs", 1.0),
    "purchase_days_q3": ("rel", 0.35),
    "purchase_days_p90": ("rel", 0.35),
    "return_90d": ("abs", 0.05),
    "channel2_share": ("abs", 0.05),
    "price_mean": ("rel", 0.15),
}


@dataclass(frozen=True)
class Profile:
    """Named facts of one folder (``facts``: name -> value)."""

    source: str
    facts: dict[str, float]


def _transactions_file(folder: Path) -> Path:
    for name in ("transactions_train.csv", "transactions_train.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    if folder.is_file():
        return folder
    raise PulseError(f"{folder}: no transactions_train.csv[.gz] to profile")


def profile(folder: Path) -> Profile:
    """Read one H&M-layout folder and compute its calibration facts."""
    import duckdb

    path = _transactions_file(Path(folder))
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.execute("SET enable_progress_bar = false")
    columns = (
        "{'t_dat': 'DATE', 'customer_id': 'VARCHAR', 'article_id': 'VARCHAR',"
        " 'price': 'DOUBLE', 'sales_channel_id': 'INTEGER'}"
    )
    src = f"read_csv('{path}', header=true, columns={columns})"
    try:
        totals = con.execute(
            f"SELECT count(*), min(price), avg(price), max(price),"
            f" avg(CASE WHEN sales_channel_id = 2 THEN 1.0 ELSE 0.0 END), max(t_dat) FROM {src}"
        ).fetchone()
        if totals is None or not totals[0]:
            raise PulseError(f"{path}: no transactions to profile")
        rows, price_min, price_mean, price_max, channel2, end = totals
        per_customer = con.execute(
            f"""SELECT count(*) AS n, count(DISTINCT t_dat) AS days,
                   bool_or(t_dat < DATE '{end}' - INTERVAL 90 DAY) AS before,
                   bool_or(t_dat >= DATE '{end}' - INTERVAL 90 DAY) AS after
               FROM {src} GROUP BY customer_id"""
        ).fetchnumpy()
    except duckdb.Error as exc:
        raise PulseError(f"{path}: cannot profile ({str(exc).splitlines()[0]})") from None
    n = per_customer["n"].astype(float)
    days = per_customer["days"].astype(float)
    before = per_customer["before"].astype(bool)
    after = per_customer["after"].astype(bool)
    q_n = np.percentile(n, [25, 50, 75, 90, 99])
    q_d = np.percentile(days, [25, 50, 75, 90])
    facts = {
        "rows": float(rows),
        "customers": float(len(n)),
        "tx_per_customer_q1": q_n[0],
        "tx_per_customer_median": q_n[1],
        "tx_per_customer_q3": q_n[2],
        "tx_per_customer_p90": q_n[3],
        "tx_per_customer_p99": q_n[4],
        "purchase_days_q1": q_d[0],
        "purchase_days_median": q_d[1],
        "purchase_days_q3": q_d[2],
        "purchase_days_p90": q_d[3],
        "rows_per_purchase_day": float(n.sum() / days.sum()),
        "return_90d": float((before & after).sum() / max(1, before.sum())),
        "channel2_share": float(channel2),
        "price_min": float(price_min),
        "price_mean": float(price_mean),
        "price_max": float(price_max),
    }
    return Profile(str(path), facts)


def within_tolerance(name: str, generated: float, real: float) -> bool | None:
    """Whether one fact is within ``TOLERANCE`` (None when the fact has no tolerance)."""
    if name not in TOLERANCE:
        return None
    kind, bound = TOLERANCE[name]
    if kind == "abs":
        return abs(generated - real) <= bound + 1e-12
    return abs(generated - real) <= bound * abs(real) + 1e-12


def compare(generated: Profile, real: dict[str, float], real_label: str) -> str:
    """A side-by-side text table: fact, generated, real, tolerance, ok."""
    lines = [
        f"generated: {generated.source}",
        f"real:      {real_label}",
        f"{'fact':<24}{'generated':>14}{'real':>14}  {'tolerance':<12}ok",
    ]
    for name, value in generated.facts.items():
        ref = real.get(name)
        ok = within_tolerance(name, value, ref) if ref is not None else None
        tol = ""
        if name in TOLERANCE:
            kind, bound = TOLERANCE[name]
            tol = f"±{bound:g}" if kind == "abs" else f"±{bound:.0%}"
        lines.append(
            f"{name:<24}{_fmt(value):>14}{_fmt(ref):>14}  {tol:<12}"
            f"{'' if ok is None else ('yes' if ok else 'NO')}"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) < 1 and value != 0:
        return f"{value:.4g}"
    return f"{value:,.1f}" if value != round(value) else f"{value:,.0f}"
