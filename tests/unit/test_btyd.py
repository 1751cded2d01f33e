"""BG/NBD and Gamma-Gamma (scoring.btyd) against hand-computed values and simulated data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from scoring import btyd

# r = 1, alpha = 1, a = 1, b = 1 (days); a customer with x = 2 repeat purchase days,
# the last at t_x = 2, observed for T = 4 days.
HAND = btyd.BGNBD(r=1.0, alpha=1.0, a=1.0, b=1.0)


def test_p_alive_and_p_no_purchase_match_the_hand_computation() -> None:
    # odds = a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    #      = 1 / 2 * (5 / 3) ** 3 = 62.5 / 27
    # P(alive) = 1 / (1 + 62.5 / 27) = 27 / 89.5 = 0.301676...
    alive = btyd.p_alive(HAND, np.array([2.0]), np.array([2.0]), np.array([4.0]))
    assert alive[0] == pytest.approx(27 / 89.5, rel=1e-12)
    # H = 5: P(no purchase) = 1 - P(alive) + P(alive) * ((1 + 4) / (1 + 4 + 5)) ** (1 + 2)
    #      = 1 - (27 / 89.5) * (1 - 1 / 8) = 1 - 189 / 716 = 527 / 716 = 0.736033...
    quiet = btyd.p_no_purchase(HAND, np.array([2.0]), np.array([2.0]), np.array([4.0]), 5.0)
    assert quiet[0] == pytest.approx(527 / 716, rel=1e-12)
    # x = 0: alive for sure (dropout only follows a repeat purchase);
    # P(no purchase) = (5 / 10) ** 1 = 0.5, not exp(-E[X])
    assert btyd.p_alive(HAND, np.array([0.0]), np.array([0.0]), np.array([4.0]))[0] == 1.0
    zero = btyd.p_no_purchase(HAND, np.array([0.0]), np.array([0.0]), np.array([4.0]), 5.0)
    assert zero[0] == pytest.approx(0.5, rel=1e-12)


def _fhl_eq10(m: btyd.BGNBD, x: float, t_x: float, T: float, t: float) -> float:
    """E[X(t)] exactly as printed in Fader, Hardie & Lee (2005), eq. 10 (no transformation)."""
    z = t / (m.alpha + T + t)
    f = special.hyp2f1(m.r + x, m.b + x, m.a + m.b + x - 1, z)
    top = (
        (m.a + m.b + x - 1) / (m.a - 1) * (1 - ((m.alpha + T) / (m.alpha + T + t)) ** (m.r + x) * f)
    )
    odds = (m.a / (m.b + x - 1)) * ((m.alpha + T) / (m.alpha + t_x)) ** (m.r + x) if x > 0 else 0
    return float(top / (1 + odds))


def test_expected_purchases_equals_the_published_formula_and_its_small_h_limit() -> None:
    m = btyd.BGNBD(r=0.6, alpha=25.0, a=0.7, b=2.2)
    x, t_x, T = (
        np.array([0.0, 1.0, 4.0, 12.0]),
        np.array([0.0, 30.0, 80.0, 300.0]),
        np.full(4, 320.0),
    )
    ours = btyd.expected_purchases(m, x, t_x, T, 60.0)
    for i in range(4):
        assert ours[i] == pytest.approx(_fhl_eq10(m, x[i], t_x[i], T[i], 60.0), rel=1e-9)
    # For a tiny horizon h, E[X(h)] ~ P(alive) * E[lambda | alive] * h = P(alive) (r+x)/(alpha+T) h
    h = 1e-4
    rate = btyd.p_alive(m, x, t_x, T) * (m.r + x) / (m.alpha + T)
    np.testing.assert_allclose(btyd.expected_purchases(m, x, t_x, T, h) / h, rate, rtol=1e-3)


def test_expected_purchases_stays_finite_where_lifetimes_fails() -> None:
    # a + b < 1 (lifetimes returns NaN) and a buyer with 400 purchase days (2F1 overflows)
    m = btyd.BGNBD(r=0.3, alpha=3.0, a=0.2, b=0.5)
    x, t_x, T = (
        np.array([0.0, 1.0, 400.0]),
        np.array([0.0, 10.0, 399.0]),
        np.array([50.0, 50.0, 400.0]),
    )
    ex = btyd.expected_purchases(m, x, t_x, T, 90.0)
    assert np.isfinite(ex).all() and (ex >= 0).all()
    # the heavy buyer is almost surely alive: about their own rate, (r + x) / (alpha + T) per day
    assert ex[2] == pytest.approx((m.r + 400) / (m.alpha + 400) * 90, rel=0.05)


def test_the_sql_series_length_reaches_the_tolerance() -> None:
    m = btyd.BGNBD(r=0.6, alpha=25.0, a=0.7, b=2.2).safe()
    z = np.array([0.05, 0.5, 0.9])
    n = btyd._series_terms(float(z.max()))
    A, B, C = m.a + m.b - 1 - m.r, m.a - 1, np.array([m.a + m.b - 1, m.a + m.b + 3, m.a + m.b + 40])
    np.testing.assert_allclose(
        btyd.hyp2f1_series(A, B, C, z, n), special.hyp2f1(A, B, C, z), rtol=1e-10
    )


def test_fit_recovers_the_parameters_of_simulated_data() -> None:
    true = {"r": 0.5, "alpha": 20.0, "a": 0.8, "b": 2.5}
    T = np.random.default_rng(1).uniform(30, 400, 6000)
    x, t_x, T = btyd.simulate_bgnbd(**true, T=T, seed=3)
    m = btyd.fit_bgnbd(x, t_x, T)
    assert m.converged and np.isfinite(m.loglik)
    assert m.r == pytest.approx(true["r"], rel=0.15)
    assert m.alpha == pytest.approx(true["alpha"], rel=0.15)
    assert m.a == pytest.approx(true["a"], rel=0.25)
    assert m.b == pytest.approx(true["b"], rel=0.25)


def test_fit_does_not_collapse_when_almost_nobody_returns() -> None:
    # Online Retail's failure mode for lifetimes: a flat likelihood in a and b
    T = np.random.default_rng(2).uniform(10, 300, 3000)
    x, t_x, T = btyd.simulate_bgnbd(0.2, 40.0, 0.05, 0.05, T, seed=4)
    m = btyd.fit_bgnbd(x, t_x, T)
    assert all(np.isfinite(v) and v > 1e-4 for v in (m.r, m.alpha, m.a, m.b))
    assert np.isfinite(btyd.expected_purchases(m, x, t_x, T, 30.0)).all()


def test_gamma_gamma_expectation_by_hand_and_fit() -> None:
    gg = btyd.GammaGamma(p=6.0, q=4.0, gamma=15.0)
    # n = 2 purchase days averaging 10: p (gamma + n z) / (p n + q - 1) = 6 * 35 / 15 = 14
    assert btyd.expected_spend_per_purchase(gg, np.array([2.0]), np.array([10.0]))[0] == 14.0
    # no spend seen: the population mean p gamma / (q - 1) = 6 * 15 / 3 = 30
    assert btyd.expected_spend_per_purchase(gg, np.array([0.0]), np.array([0.0]))[0] == 30.0
    assert gg.population_mean() == 30.0
    # fit on data drawn from the model: nu ~ Gamma(q, 1/gamma), spend ~ Gamma(p, 1/nu)
    rng = np.random.default_rng(5)
    n = rng.integers(2, 12, 8000).astype(float)
    nu = rng.gamma(4.0, 1 / 15.0, len(n))
    zbar = np.array([rng.gamma(6.0, 1 / v, int(k)).mean() for v, k in zip(nu, n, strict=True)])
    fit = btyd.fit_gamma_gamma(n, zbar)  # penalised: p and gamma slide along a flat ridge,
    assert fit.population_mean() == pytest.approx(30.0, rel=0.1)  # the mean does not
    unpenalised = btyd.fit_gamma_gamma(n, zbar, penalizer=0.0)
    assert unpenalised.p == pytest.approx(6.0, rel=0.2)
    assert unpenalised.q == pytest.approx(4.0, rel=0.2)
