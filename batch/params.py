"""The retrain's parameters, one frozen dataclass per model (the CLI and tests build them;
``batch.context.RetrainOptions`` carries them to each model's ``retrain``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from scoring import btyd


@dataclass(frozen=True)
class ChurnParams:
    """The stack and the free-GBT baseline; ``invert_labels`` is a test hook that sabotages
    the served model's training.

    ``stack``: "logistic" (served), "gbt", or "auto" (logistic or GBT, whichever has the
    higher AUC on a fifth of the training customers). Logistic is the default: auto chose
    it on the demo's data (selection AUC 0.851 against 0.849), and its fit costs a
    fraction of the GBT's 40 rounds of Spark jobs. ``max_iter`` / ``max_depth`` / ``step_size``
    are the free GBT baseline's; the GBT stack uses ``stack_depth`` and ``stack_iter``.
    """

    max_iter: int = 30
    max_depth: int = 4
    step_size: float = 0.1
    seed: int = 42
    invert_labels: bool = False
    stack: str = "logistic"
    reg_param: float = 1e-4  # L2 on the standardised inputs, per mean log-loss
    stack_depth: int = 2
    stack_iter: int = 40
    bgnbd_sample: int = 50_000
    # the stack learns from the labelled customers at this many cutoffs, H apart, the
    # newest first (each with BG/NBD fitted at its own cutoff). 1: `pulse backtest` found
    # 3 worth +0.0005 AUC on Online Retail's six cutoffs, within noise (docs/batch.md)
    train_cutoffs: int = 1
    # the free GBT baseline trains on at most this many customers (by id hash): it is a
    # comparator, evaluated on every test customer; this bounds the cost of its rounds
    # on one partition (see retrain) at H&M's 1.3M training customers. At H&M scale 50k
    # gave AUC 0.8590 against 200k's 0.8600, and the churn stage 22 s less
    gbt_max_customers: int = 50_000
    penalizer: float = btyd.DEFAULT_PENALIZER


@dataclass(frozen=True)
class RankerParams:
    """Candidates per customer and the GBT's size (sized for 2 cores)."""

    repurchase_k: int = 24
    popular_k: int = 24
    popular_days: int = 7
    copurchase_k: int = 12
    copurchase_days: int = 90
    seed_articles: int = 5
    neighbours: int = 12
    max_basket: int = 40  # larger baskets add pairs quadratically and little signal
    half_life_days: float = 30.0
    train_cutoffs: int = 3
    # What bounds its cost at H&M scale (1.37M customers), and binds nowhere below it: at
    # most ``train_customers`` buyers per training window (a fixed hash sample), and the
    # ranker scores at most ``score_customers`` customers, the most recently active; the
    # others get repurchase, then popularity (the ``ranker`` strategy's order)
    train_customers: int = 10_000
    score_customers: int = 100_000
    max_iter: int = 20
    max_depth: int = 5
    step_size: float = 0.2
    seed: int = 42


@dataclass(frozen=True)
class RecParams:
    """Recommendation hyper-parameters (ALS sized for 2 cores by default)."""

    rank: int = 32
    # 5, not 10: the same MAP@12 on Online Retail (ALS 0.1455 vs 0.1443, blend 0.1724 vs
    # 0.1723) and the H&M sample, at half the fit (`scripts/als_signal.py --vary size`);
    # rank 16 lost 0.022 on Online Retail
    max_iter: int = 5
    reg_param: float = 0.05
    alpha: float = 10.0
    half_life_days: float = 30.0
    popular_days: int = 7
    seed: int = 42
    # ALS learns from what carries signal: purchases in the last ``als_days`` before the
    # cutoff (older ones weigh < 2^-(als_days / half_life)), of articles with at least
    # ``als_min_buyers`` distinct buyers there.
    als_days: int = 180
    als_min_buyers: int = 3
    als_blocks: int = 4  # user and item blocks: the cores' count is enough on a laptop
    # the learned ranker (None: not trained, the ``ranker`` strategy is left out;
    # `pulse retrain --no-ranker`)
    ranker: RankerParams | None = field(default_factory=RankerParams)
