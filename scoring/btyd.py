"""BG/NBD and Gamma-Gamma ("buy till you die"), fitted robustly here, scored in Spark SQL.

Why our own: ``lifetimes`` 0.11.3 (unmaintained since 2020) fails on UCI Online Retail
(NaN loss, or a and b collapsing to zero) and returns NaN for E[X] when a + b < 1.

The customer summary (Fader, Hardie & Lee 2005), in **days**, from the feature columns
as of a cutoff (``features.customer``: the as-of day is the day before the cutoff):

- ``x``   repeat purchase days: ``frequency - 1``;
- ``t_x`` day of the last purchase, counted from the first: ``tenure_days - recency_days``;
- ``T``   days observed since the first purchase, up to the cutoff: ``tenure_days + 1``.

The horizon H starts at the cutoff, so "no purchase in H" is exactly the churn label.

BG/NBD: while alive a customer buys at rate lambda ~ Gamma(r, alpha); after each repeat
purchase they drop out with probability p ~ Beta(a, b). Fitted by maximising the mean
log-likelihood minus ``penalizer * sum(log(params)**2)`` (an L2 penalty on the
log-parameters, which keeps a and b off zero where the likelihood is flat), with
L-BFGS-B on the log-parameters from several starts; the best finite optimum wins.

- ``p_alive``: 1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x))
- ``p_no_purchase(H)``: 1 - P(alive) + P(alive) ((alpha + T) / (alpha + T + H))^(r + x),
  the model's own probability of no purchase in H (dropout happens only after a purchase,
  so an alive customer makes none with probability E[exp(-lambda H)] under the posterior
  Gamma(r + x, alpha + T)); not exp(-E[X]).
- ``expected_purchases(H)``: E[X(H)] (FHL eq. 10). Its 2F1(r+x, b+x; a+b+x-1; z),
  z = H / (alpha + T + H), is rewritten with Euler's transformation as
  (1-z)^(a-1-r-x) 2F1(a+b-1-r, a-1; a+b+x-1; z): two small, constant upper parameters,
  so the series converges geometrically in z with no huge intermediate terms (the
  original overflows for buyers with hundreds of purchase days), and the same series
  runs in Spark SQL (``aggregate`` over ``sequence``) with the fitted constants as
  literals. a near 1 and a + b + x - 1 near a non-positive integer are nudged off the
  poles.

Gamma-Gamma (Fader, Hardie & Lee 2005b): a customer's spend per purchase day has mean
z_bar over their n purchase days; spend ~ Gamma(p, nu), nu ~ Gamma(q, gamma). Fitted on
customers with n >= 2 and z_bar > 0 (same penalty; q = 1 + exp(.) so that the mean
exists). E[M | n, z_bar] = p (gamma + n z_bar) / (p n + q - 1), and the expected spend
over H is E[X(H)] * E[M].

Scoring: fit on a bounded sample at the driver (``fit_bgnbd``, ``fit_gamma_gamma``), then
``sql_*`` give Spark SQL expressions over the feature columns, so scoring every customer
never collects them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import optimize, special

DEFAULT_PENALIZER = 1e-3
SERIES_EPS = 1e-12  # relative size of the last hypergeometric term kept
MAX_TERMS = 400  # cap on the series length (reached only by customers a few days old)


# --- The summary ----------------------------------------------------------------------------


def summary(
    frequency: np.ndarray, recency_days: np.ndarray, tenure_days: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature columns -> (x, t_x, T) in days (see the module docstring)."""
    f = np.asarray(frequency, float)
    rec = np.asarray(recency_days, float)
    ten = np.asarray(tenure_days, float)
    x = np.clip(f - 1.0, 0.0, None)
    t_x = np.clip(ten - rec, 0.0, None)
    return x, t_x, ten + 1.0


SQL_X = "greatest(CAST(coalesce(frequency, 1) AS DOUBLE) - 1.0, 0.0)"
SQL_TX = (
    "greatest(CAST(coalesce(tenure_days, 0) AS DOUBLE) - CAST(coalesce(recency_days, 0) AS DOUBLE),"
    " 0.0)"
)
SQL_T = "(CAST(coalesce(tenure_days, 0) AS DOUBLE) + 1.0)"


# --- BG/NBD ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BGNBD:
    """Fitted BG/NBD parameters (time unit: days) and how the fit went."""

    r: float
    alpha: float
    a: float
    b: float
    loglik: float = float("nan")  # mean log-likelihood per customer at the optimum
    customers: int = 0
    penalizer: float = DEFAULT_PENALIZER
    converged: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Plain values for meta.json."""
        return asdict(self)

    def safe(self) -> BGNBD:
        """The parameters nudged off the removable singularity a = 1 (E[X] divides by a-1)."""
        a = self.a
        if abs(a - 1.0) < 1e-4:
            a = 1.0 + (1e-4 if a >= 1.0 else -1e-4)
        b = self.b
        if abs(a + b - 1.0) < 1e-4:  # C = a + b + x - 1 = 0 at x = 0: a pole of 2F1
            b = b + 2e-4
        return replace(self, a=a, b=b)


def bgnbd_loglik(
    log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood at ``exp(log_params)`` = (r, alpha, a, b)."""
    r, alpha, a, b = np.exp(np.asarray(log_params, float))
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * math.log(alpha)
    a2 = special.betaln(a, b + x) - special.betaln(a, b) - (r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a3 = np.where(
            x > 0,
            special.betaln(a + 1, np.maximum(b + x - 1, 1e-300))
            - special.betaln(a, b)
            - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return a1 + np.logaddexp(a2, a3)


def _starts(x: np.ndarray, T: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Log-parameter starts: neutral, data-scaled, and a few random around them."""
    rate = max(float(np.mean(x)) / max(float(np.mean(T)), 1e-9), 1e-6)  # repeat days per day
    base = np.log([1.0, 1.0 / rate, 1.0, 1.0])
    fixed = [base, np.log([0.5, 0.5 / rate, 0.5, 2.0]), np.log([1.0, float(np.mean(T)), 2.0, 5.0])]
    rng = np.random.default_rng(seed)
    return fixed + [base + rng.normal(0.0, 1.0, 4) for _ in range(max(0, n - len(fixed)))]


def fit_bgnbd(
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    penalizer: float = DEFAULT_PENALIZER,
    starts: int = 3,
    seed: int = 0,
) -> BGNBD:
    """Maximise the penalised mean log-likelihood from several starts; the best wins.

    The default three are the fixed starts of ``_starts`` (neutral, data-scaled, and
    scaled to the mean age); more add random ones around the first. On the demo's data
    all five of the old default reached the same optimum (to 1e-8), each costing as much
    as a whole fit, so three it is.

    Identical (x, t_x, T) rows are collapsed into weights first. Raises ValueError when
    no start reaches a finite optimum (never seen; the penalty keeps the problem bounded).
    """
    x, t_x, T = (np.asarray(v, float) for v in (x, t_x, T))
    if not len(x):
        raise ValueError("BG/NBD needs at least one customer")
    rows, weights = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
    ux, utx, uT = rows[:, 0], rows[:, 1], rows[:, 2]
    w = weights / weights.sum()

    def objective(theta: np.ndarray) -> float:
        if np.any(np.abs(theta) > 30):
            return 1e10
        with np.errstate(all="ignore"):
            value = -float(np.dot(w, bgnbd_loglik(theta, ux, utx, uT)))
        value += penalizer * float(np.sum(theta**2))
        return value if math.isfinite(value) else 1e10

    best: optimize.OptimizeResult | None = None
    for theta0 in _starts(x, T, starts, seed):
        res = optimize.minimize(
            objective, theta0, method="L-BFGS-B", bounds=[(-15.0, 15.0)] * 4,
            options={"maxiter": 500},
        )  # fmt: skip
        if not math.isfinite(res.fun) or res.fun >= 1e10:
            res = optimize.minimize(
                objective, theta0, method="Nelder-Mead", options={"maxiter": 4000, "fatol": 1e-10}
            )
        if math.isfinite(res.fun) and res.fun < 1e10 and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise ValueError("BG/NBD: no start reached a finite likelihood")
    r, alpha, a, b = np.exp(best.x)
    with np.errstate(all="ignore"):
        ll = float(np.dot(w, bgnbd_loglik(best.x, ux, utx, uT)))
    return BGNBD(float(r), float(alpha), float(a), float(b), ll, int(len(x)), penalizer,
                 bool(best.success))  # fmt: skip


def _alive_odds_log(m: BGNBD, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """log of a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x) for x > 0 (-inf for x = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            x > 0,
            np.log(m.a)
            - np.log(np.maximum(m.b + x - 1, 1e-300))
            + (m.r + x) * (np.log(m.alpha + T) - np.log(m.alpha + t_x)),
            -np.inf,
        )


def p_alive(m: BGNBD, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """P(alive at T | x, t_x, T)."""
    x, t_x, T = (np.asarray(v, float) for v in (x, t_x, T))
    return np.exp(-np.logaddexp(0.0, _alive_odds_log(m, x, t_x, T)))


def p_no_purchase(
    m: BGNBD, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, horizon: float
) -> np.ndarray:
    """P(no purchase in (T, T + H]) = 1 - P(alive) + P(alive) ((a+T)/(a+T+H))^(r+x)."""
    x, t_x, T = (np.asarray(v, float) for v in (x, t_x, T))
    alive = p_alive(m, x, t_x, T)
    quiet = np.exp((m.r + x) * (np.log(m.alpha + T) - np.log(m.alpha + T + horizon)))
    return 1.0 - alive + alive * quiet


def _series_terms(z_max: float) -> int:
    """Series length so that z_max^N < SERIES_EPS (a few extra for the start-up ratios)."""
    if z_max <= 0:
        return 1
    n = math.ceil(math.log(SERIES_EPS) / math.log(min(z_max, 1 - 1e-9))) + 10
    return int(min(max(n, 10), MAX_TERMS))


def hyp2f1_series(A: float, B: float, C: np.ndarray, z: np.ndarray, terms: int) -> np.ndarray:
    """2F1(A, B; C; z) by its power series, ``terms`` terms (the SQL mirror, for tests)."""
    C = np.asarray(C, float)
    z = np.asarray(z, float)
    term = np.ones(np.broadcast(C, z).shape)
    total = term.copy()
    for k in range(1, terms + 1):
        term = term * (A + k - 1) * (B + k - 1) / ((C + k - 1) * k) * z
        total = total + term
    return total


def expected_purchases(
    m: BGNBD, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, horizon: float
) -> np.ndarray:
    """E[X(H) | x, t_x, T]: expected purchase days in (T, T + H] (FHL 2005, eq. 10).

    Uses scipy's 2F1 on the Euler-transformed parameters; where it is not finite, the
    series (``hyp2f1_series``) stands in.
    """
    m = m.safe()
    x, t_x, T = (np.asarray(v, float) for v in (x, t_x, T))
    z = horizon / (m.alpha + T + horizon)
    A, B, C = m.a + m.b - 1 - m.r, m.a - 1, m.a + m.b + x - 1
    with np.errstate(all="ignore"):
        f = special.hyp2f1(A, B, C, z)
        bad = ~np.isfinite(f)
        if bad.any():
            f[bad] = hyp2f1_series(A, B, C[bad], z[bad], MAX_TERMS)
        bracket = 1.0 - np.exp((m.a - 1) * np.log1p(-z)) * f
        top = (m.a + m.b + x - 1) / (m.a - 1) * bracket
        out = top * np.exp(-np.logaddexp(0.0, _alive_odds_log(m, x, t_x, T)))
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0), 0.0, None)


# --- Gamma-Gamma ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GammaGamma:
    """Fitted Gamma-Gamma parameters (spend per purchase day)."""

    p: float
    q: float
    gamma: float
    customers: int = 0
    penalizer: float = DEFAULT_PENALIZER

    def as_dict(self) -> dict[str, Any]:
        """Plain values for meta.json."""
        return asdict(self)

    def population_mean(self) -> float:
        """E[M] for a customer with no spend observed: p gamma / (q - 1)."""
        return self.p * self.gamma / (self.q - 1)


def gamma_gamma_loglik(log_params: np.ndarray, n: np.ndarray, zbar: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood; ``log_params`` = (log p, log(q - 1), log gamma)."""
    lp, lq1, lg = np.asarray(log_params, float)
    p, q, g = math.exp(lp), 1.0 + math.exp(lq1), math.exp(lg)
    px = p * n
    return (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * math.log(g)
        + (px - 1) * np.log(zbar)
        + px * np.log(n)
        - (px + q) * np.log(g + n * zbar)
    )


def fit_gamma_gamma(
    n: np.ndarray, zbar: np.ndarray, penalizer: float = DEFAULT_PENALIZER, seed: int = 0
) -> GammaGamma:
    """Fit on customers with ``n`` >= 2 purchase days and mean spend ``zbar`` > 0."""
    n, zbar = np.asarray(n, float), np.asarray(zbar, float)
    keep = (n >= 2) & (zbar > 0) & np.isfinite(zbar)
    n, zbar = n[keep], zbar[keep]
    if len(n) < 2:
        raise ValueError("Gamma-Gamma needs at least two repeat customers with spend")
    scale = float(np.median(zbar))

    def objective(theta: np.ndarray) -> float:
        if np.any(np.abs(theta) > 30):
            return 1e10
        with np.errstate(all="ignore"):
            value = -float(np.mean(gamma_gamma_loglik(theta, n, zbar)))
        # penalise p and q - 1 only: gamma carries the currency's scale
        value += penalizer * float(theta[0] ** 2 + theta[1] ** 2)
        return value if math.isfinite(value) else 1e10

    rng = np.random.default_rng(seed)
    starts = [np.array([0.0, 0.0, math.log(scale)]), np.array([1.0, 1.0, math.log(scale) + 1])]
    starts += [starts[0] + rng.normal(0, 1, 3)]
    best = None
    for theta0 in starts:
        res = optimize.minimize(objective, theta0, method="L-BFGS-B", options={"maxiter": 500})
        if math.isfinite(res.fun) and res.fun < 1e10 and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise ValueError("Gamma-Gamma: no start reached a finite likelihood")
    return GammaGamma(
        float(math.exp(best.x[0])), 1.0 + float(math.exp(best.x[1])), float(math.exp(best.x[2])),
        int(len(n)), penalizer,
    )  # fmt: skip


def expected_spend_per_purchase(gg: GammaGamma, n: np.ndarray, zbar: np.ndarray) -> np.ndarray:
    """E[M | n, z_bar] = p (gamma + n z_bar) / (p n + q - 1); z_bar below 0 counts as 0."""
    n = np.asarray(n, float)
    zbar = np.clip(np.nan_to_num(np.asarray(zbar, float)), 0.0, None)
    return gg.p * (gg.gamma + n * zbar) / (gg.p * n + gg.q - 1)


# --- Spark SQL ------------------------------------------------------------------------------


def _lit(v: float) -> str:
    return f"CAST({float(v)!r} AS DOUBLE)"


def sql_alive_odds(m: BGNBD, x: str = SQL_X, t_x: str = SQL_TX, T: str = SQL_T) -> str:
    """SQL: a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x) when x > 0, else 0."""
    r, al, a, b = (_lit(v) for v in (m.r, m.alpha, m.a, m.b))
    log_odds = (
        f"(ln({a}) - ln({b} + {x} - 1.0) + ({r} + {x}) * (ln({al} + {T}) - ln({al} + {t_x})))"
    )
    # exp of at most 700: beyond it P(alive) is 0 to double precision anyway
    return f"(CASE WHEN {x} > 0 THEN exp(least({log_odds}, 700.0)) ELSE 0.0 END)"


def sql_p_alive(m: BGNBD, x: str = SQL_X, t_x: str = SQL_TX, T: str = SQL_T) -> str:
    """SQL for ``p_alive`` over the feature columns."""
    return f"(1.0 / (1.0 + {sql_alive_odds(m, x, t_x, T)}))"


def sql_p_no_purchase(
    m: BGNBD, horizon: float, x: str = SQL_X, t_x: str = SQL_TX, T: str = SQL_T
) -> str:
    """SQL for ``p_no_purchase`` over the feature columns (no 2F1 needed)."""
    r, al, h = _lit(m.r), _lit(m.alpha), _lit(horizon)
    alive = sql_p_alive(m, x, t_x, T)
    quiet = f"exp(({r} + {x}) * (ln({al} + {T}) - ln({al} + {T} + {h})))"
    return f"(1.0 - {alive} + {alive} * {quiet})"


def sql_p_purchase(
    m: BGNBD, horizon: float, x: str = SQL_X, t_x: str = SQL_TX, T: str = SQL_T
) -> str:
    """SQL for 1 - ``p_no_purchase`` = P(alive) (1 - ((alpha+T)/(alpha+T+H))^(r+x)), accurate
    where it is tiny (expm1), so its log still ranks customers who are almost surely gone."""
    r, al, h = _lit(m.r), _lit(m.alpha), _lit(horizon)
    alive = sql_p_alive(m, x, t_x, T)
    return f"({alive} * -expm1(({r} + {x}) * (ln({al} + {T}) - ln({al} + {T} + {h}))))"


def sql_expected_purchases(
    m: BGNBD, horizon: float, x: str = SQL_X, t_x: str = SQL_TX, T: str = SQL_T
) -> str:
    """SQL for ``expected_purchases``: the Euler-transformed 2F1 as an ``aggregate`` over a
    per-row ``sequence`` just long enough for that row's z (see ``_series_terms``)."""
    m = m.safe()
    r, al, a, b, h = (_lit(v) for v in (m.r, m.alpha, m.a, m.b, horizon))
    A, B = _lit(m.a + m.b - 1 - m.r), _lit(m.a - 1)
    C = f"({a} + {b} + {x} - 1.0)"
    z = f"({h} / ({al} + {T} + {h}))"
    n_terms = (
        f"CAST(least({MAX_TERMS}, greatest(10, ceil(ln({SERIES_EPS!r}) / ln({z})) + 10)) AS INT)"
    )
    step = f"acc.t * ({A} + k - 1) * ({B} + k - 1) / (({C} + k - 1) * k) * {z}"
    series = (
        f"aggregate(sequence(1, {n_terms}), named_struct('t', CAST(1.0 AS DOUBLE), "
        f"'s', CAST(1.0 AS DOUBLE)), (acc, k) -> named_struct('t', {step}, 's', acc.s + {step}),"
        " acc -> acc.s)"
    )
    bracket = f"(1.0 - exp(({a} - 1.0) * ln(1.0 - {z})) * {series})"
    value = f"(({C}) / ({a} - 1.0) * {bracket} / (1.0 + {sql_alive_odds(m, x, t_x, T)}))"
    return f"greatest(coalesce(nanvl({value}, 0.0), 0.0), 0.0)"


def sql_expected_spend_per_purchase(gg: GammaGamma) -> str:
    """SQL for ``expected_spend_per_purchase`` from ``frequency`` and ``monetary``."""
    p, q, g = _lit(gg.p), _lit(gg.q), _lit(gg.gamma)
    n = "CAST(greatest(coalesce(frequency, 0), 0) AS DOUBLE)"
    zbar = f"(CASE WHEN {n} > 0 THEN greatest(coalesce(monetary, 0.0), 0.0) / {n} ELSE 0.0 END)"
    return f"({p} * ({g} + {n} * {zbar}) / ({p} * {n} + {q} - 1.0))"


# --- Simulation (tests, and a sanity check of the fit) ---------------------------------------


def simulate_bgnbd(
    r: float, alpha: float, a: float, b: float, T: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw (x, t_x, T) from BG/NBD: lambda ~ Gamma(r, 1/alpha), p ~ Beta(a, b); purchases
    at rate lambda from time 0; after each repeat purchase, gone with probability p."""
    rng = np.random.default_rng(seed)
    T = np.asarray(T, float)
    lam = rng.gamma(r, 1.0 / alpha, len(T))
    p = rng.beta(a, b, len(T))
    x = np.zeros(len(T))
    t_x = np.zeros(len(T))
    for i in range(len(T)):
        t = 0.0
        while True:
            t += rng.exponential(1.0 / lam[i])
            if t > T[i]:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < p[i]:
                break
    return x, t_x, T
