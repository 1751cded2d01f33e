"""Synthetic reviews in the Amazon layout (2018 by default, or 2023), in bounded time.

``write_amazon_layout(out_dir, customers, articles, start, days, seed, layout)`` writes
a reviews file and its metadata, gzipped JSON lines as the McAuley lab publishes them
(2018: ``Pulse_Shop.json.gz`` and ``meta_Pulse_Shop.json.gz``; 2023: ``.jsonl.gz``),
sorted by product as the real files are, and the marker ``_pulse_generated.json``
(which the ``amazon:`` adapter does not read as data). ``pulse data generate --layout
amazon`` calls it.

The behaviour model (numpy, one ``SeedSequence(seed)``: same arguments, same files):

- categories: 16 Amazon-like category paths, Zipf-popular;
- articles: each in one category, with a Zipf popularity, a launch day (a third exist
  at the start, the rest arrive during the window) after which it fades, a list price
  ($x.99, log-normal around $20), a brand and a title;
- customers: a first review day (most early, some arriving throughout), a lifetime
  after which they stop (a quarter review once), a log-normal review rate, and one or
  two favourite categories from which most of their reviews come (``taste``): what a
  recommender can learn beyond popularity;
- each day: who reviews (rate x store-wide season), how many products (geometric), and
  which. Each product has a few companions in its category (written as ``also_buy`` in
  the 2018 metadata): the first product of a day is often (``next_share``) a companion
  of the last day's first (the lens, after the camera), else from a favourite category
  or, else, the whole shop, by that day's popularity; each further one often
  (``follow_share``) a companion of the day's first (bought and reviewed together). A
  customer reviews a product once (Amazon's rule): a second draw of it is dropped.

What the ``amazon:`` adapter then rejects, on purpose and counted: a few articles have
no usable price (``missing_price_share``: an empty price, or in 2018 a range, as in the
real metadata), and a few reviews are written twice (``duplicate_share``: the same line
again in 2018; in 2023 the same review under another variant of the product).
"""

from __future__ import annotations

import gzip
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO

import numpy as np

from producers.generator import _season  # the store-wide demand, shared with H&M's model
from runtime.errors import PulseError

LAYOUTS = ("2018", "2023")
MARKER = "_pulse_generated.json"
FILE_STEM = "Pulse_Shop"

CATEGORIES = (
    ("Electronics", "Headphones", "Earbud Headphones"),
    ("Electronics", "Computers & Accessories", "Keyboards"),
    ("Home & Kitchen", "Kitchen & Dining", "Coffee, Tea & Espresso"),
    ("Home & Kitchen", "Bedding", "Sheets & Pillowcases"),
    ("Sports & Outdoors", "Outdoor Recreation", "Camping & Hiking"),
    ("Sports & Outdoors", "Exercise & Fitness", "Yoga"),
    ("Beauty & Personal Care", "Skin Care", "Face"),
    ("Beauty & Personal Care", "Hair Care", "Shampoo & Conditioner"),
    ("Toys & Games", "Puzzles", "Jigsaw Puzzles"),
    ("Toys & Games", "Building Toys", "Building Sets"),
    ("Clothing, Shoes & Jewelry", "Women", "Dresses"),
    ("Clothing, Shoes & Jewelry", "Men", "Shoes"),
    ("Books", "Literature & Fiction", "Mystery"),
    ("Books", "Cookbooks, Food & Wine", "Baking"),
    ("Pet Supplies", "Dogs", "Toys"),
    ("Garden & Outdoor", "Gardening & Lawn Care", "Plant Containers"),
)
_B36 = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


@dataclass(frozen=True)
class ReviewBehaviour:
    """Tunable parameters of the generated reviews."""

    existing_share: float = 0.6  # customers already reviewing when the window opens
    existing_first_days: int = 120
    one_off_share: float = 0.25
    lifetime_mean_days: float = 900.0
    rate_median: float = 0.04  # review days per day, log-normal across customers
    rate_sigma: float = 0.9
    reviews_per_day_mean: float = 1.8  # products reviewed on a review day (geometric)
    taste_mean: float = 0.8  # share of a customer's reviews from their favourite categories
    category_zipf: float = 0.7  # how categories share the catalogue
    favourite_zipf: float = 0.3  # how they share the customers' favourites (flatter)
    companions: int = 3  # per product, products of its category bought with it ("also_buy")
    follow_share: float = 0.5  # a day's further reviews: a companion of its first product
    next_share: float = 0.5  # a review day's first: a companion of the last day's first
    article_zipf: float = 0.8
    article_age_days: float = 200.0
    price_median: float = 20.0
    price_sigma: float = 0.8
    missing_price_share: float = 0.03
    duplicate_share: float = 0.005


@dataclass(frozen=True)
class AmazonLayoutResult:
    """What ``write_amazon_layout`` wrote."""

    out_dir: Path
    reviews_path: Path
    metadata_path: Path
    reviews: int  # lines written, duplicates included
    customers: int
    articles: int
    seconds: float


def _ids(prefix: str, n: int, width: int, salt: int) -> list[str]:
    """``n`` distinct Amazon-like ids: ``prefix`` + ``width`` base-36 characters. The
    numbers 0..n-1 times a multiplier prime to 36 (near the golden ratio of the id space,
    so consecutive numbers land far apart), plus ``salt``, modulo the space: a bijection,
    so never a collision."""
    space = 36**width
    if n > space:
        raise PulseError(f"cannot make {n:,} ids of {width} characters")
    step = int(space * 0.6180339887) | 1
    while step % 3 == 0:
        step += 2
    numbers = (np.arange(n, dtype=object) * step + salt * 2_654_435_761) % space
    digits = np.empty((n, width), dtype="<U1")
    for i in range(width - 1, -1, -1):
        digits[:, i] = _B36[np.array(numbers % 36, dtype=np.int64)]
        numbers //= 36
    return [prefix + "".join(row) for row in digits]


@contextmanager
def _gzip_text(path: Path) -> Iterator[TextIO]:
    """A gzip text file without a time in its header (mtime 0): same input, same bytes."""
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", compresslevel=5, fileobj=raw, mtime=0) as packed,
        io.TextIOWrapper(packed, encoding="utf-8") as text,
    ):
        yield text


def _zipf(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    return (rng.permutation(n) + 1).astype(np.float64) ** -exponent


def _companions(
    rng: np.random.Generator,
    by_cat: np.ndarray,
    block_start: np.ndarray,
    block_end: np.ndarray,
    popularity: np.ndarray,
    k: int,
) -> np.ndarray:
    """Per product, ``k`` other products of its category (by popularity) bought with it:
    an (articles, max(k, 1)) array of article indices; a category's only product is its
    own companion (a review of it again is dropped)."""
    k = max(k, 1)
    companion = np.zeros((len(by_cat), k), dtype=np.int64)
    for lo, hi in zip(block_start.tolist(), block_end.tolist(), strict=True):
        block = by_cat[lo:hi]
        if len(block) < 2:
            companion[block] = block[:, None]  # only itself: its companion review is dropped
            continue
        weight = popularity[block] / popularity[block].sum()
        drawn = rng.choice(len(block), size=(len(block), k), p=weight)
        itself = drawn == np.arange(len(block))[:, None]
        drawn[itself] = (drawn[itself] + 1) % len(block)  # another product, never itself
        companion[block] = block[drawn]
    return companion


def write_amazon_layout(
    out_dir: Path,
    customers: int,
    articles: int,
    start: date,
    days: int,
    seed: int,
    layout: str = "2018",
    behaviour: ReviewBehaviour | None = None,
) -> AmazonLayoutResult:
    """Write the Amazon reviews layout (``layout`` "2018" or "2023") for ``customers``
    reviewers of ``articles`` products over ``days`` days from ``start`` (UTC)."""
    if layout not in LAYOUTS:
        raise PulseError(f"--release must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if customers < 1 or articles < 1 or days < 1:
        raise PulseError("--customers, --articles and --days must be at least 1")
    b = behaviour or ReviewBehaviour()
    began = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    streams = [
        np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(5)
    ]
    rng_cat, rng_art, rng_cust, rng_days, rng_text = streams

    # the catalogue
    n_cat = len(CATEGORIES)
    cat_weight = _zipf(rng_cat, n_cat, b.category_zipf)
    category = rng_art.choice(n_cat, size=articles, p=cat_weight / cat_weight.sum())
    popularity = _zipf(rng_art, articles, b.article_zipf)
    launch = np.where(
        rng_art.random(articles) < 0.33, rng_art.integers(-365, 1, articles),
        rng_art.integers(0, days, articles),
    )  # fmt: skip
    age_scale = np.exp(rng_art.normal(np.log(b.article_age_days), 0.7, articles))
    dollars = np.exp(rng_art.normal(np.log(b.price_median), b.price_sigma, articles))
    price = np.round(np.maximum(np.floor(dollars), 0) + 0.99, 2)
    unpriced = rng_art.random(articles) < b.missing_price_share
    # articles ordered by category: each category is one block of the day's cumulative
    # weights, so a draw from a category is a uniform draw inside its block
    by_cat = np.argsort(category, kind="stable")
    block_end = np.cumsum(np.bincount(category, minlength=n_cat))
    block_start = block_end - np.bincount(category, minlength=n_cat)
    companion = _companions(rng_art, by_cat, block_start, block_end, popularity, b.companions)

    # the customers
    existing = rng_cust.random(customers) < b.existing_share
    first = np.where(
        existing, rng_cust.integers(0, max(1, min(days, b.existing_first_days)), customers),
        rng_cust.integers(0, days, customers),
    )  # fmt: skip
    one_off = rng_cust.random(customers) < b.one_off_share
    last = np.where(one_off, first, first + rng_cust.exponential(b.lifetime_mean_days, customers))
    rate = np.exp(rng_cust.normal(np.log(b.rate_median), b.rate_sigma, customers)).clip(0, 0.9)
    per_day_p = 1.0 / b.reviews_per_day_mean
    liked = cat_weight ** (b.favourite_zipf / b.category_zipf)  # same order, flatter
    favourite = rng_cust.choice(n_cat, size=(customers, 2), p=liked / liked.sum())
    taste = rng_cust.beta(b.taste_mean * 8, (1 - b.taste_mean) * 8, customers)

    # the days: (customer, article, day) of every review
    reviewed: set[int] = set()
    last_first = np.full(customers, -1, dtype=np.int64)  # the last review day's first product
    rows_c: list[np.ndarray] = []
    rows_a: list[np.ndarray] = []
    rows_d: list[np.ndarray] = []
    for day in range(days):
        today = start + timedelta(days=day)
        doy = today.timetuple().tm_yday
        alive = (first <= day) & (day <= last)
        active = alive & (rng_days.random(customers) < rate * _season(doy, today.weekday()))
        active |= first == day
        who = np.flatnonzero(active)
        if not len(who):
            continue
        who = np.repeat(who, rng_days.geometric(per_day_p, len(who)))
        age = day - launch
        weight = popularity * np.exp(-np.maximum(age, 0) / age_scale)
        weight[age < 0] = 0.0
        cdf = np.cumsum(weight[by_cat])
        total = cdf[-1]
        if total <= 0:
            continue
        n = len(who)
        own = rng_days.random(n) < taste[who]
        cat = favourite[who, (rng_days.random(n) < 0.3).astype(np.int64)]
        lo = np.where(block_start[cat] > 0, cdf[np.maximum(block_start[cat] - 1, 0)], 0.0)
        hi = cdf[np.maximum(block_end[cat] - 1, 0)]
        own &= hi > lo  # a category with nothing on sale today: the whole shop instead
        u = rng_days.random(n)
        target = np.where(own, lo + u * (hi - lo), u * total)
        pos = np.searchsorted(cdf, target, side="right").clip(0, articles - 1)
        article = by_cat[pos]
        # a customer's rows are consecutive; the first of a day is often a companion of
        # the last day's first product (the lens, after the camera), and the further ones
        # companions of the day's first (bought together)
        opens = np.r_[True, who[1:] != who[:-1]]
        k = companion.shape[1]
        before = last_first[who]
        later = companion[np.maximum(before, 0), rng_days.integers(0, k, n)]
        take = opens & (before >= 0) & (launch[later] <= day)
        article = np.where(take & (rng_days.random(n) < b.next_share), later, article)
        basket_first = article[np.maximum.accumulate(np.where(opens, np.arange(n), 0))]
        follow = companion[basket_first, rng_days.integers(0, k, n)]
        follow_ok = ~opens & (launch[follow] <= day) & (rng_days.random(n) < b.follow_share)
        article = np.where(follow_ok, follow, article)
        last_first[who[opens]] = article[opens]
        fresh = np.zeros(n, dtype=bool)
        for i, key in enumerate((who.astype(np.int64) * articles + article).tolist()):
            if key not in reviewed:  # a customer reviews a product once
                reviewed.add(key)
                fresh[i] = True
        if fresh.any():
            rows_c.append(who[fresh])
            rows_a.append(article[fresh])
            rows_d.append(np.full(int(fresh.sum()), day, dtype=np.int32))
    cust = np.concatenate(rows_c) if rows_c else np.zeros(0, np.int64)
    art = np.concatenate(rows_a) if rows_a else np.zeros(0, np.int64)
    day_of = np.concatenate(rows_d) if rows_d else np.zeros(0, np.int32)

    reviews_path, metadata_path, n_lines = _write_files(
        out_dir, layout, b, rng_text, seed, customers, articles, category, price, unpriced,
        companion, cust, art, day_of, start,
    )  # fmt: skip
    marker = {
        "generator": f"pulse synthetic Amazon reviews layout {layout}",
        "customers": customers,
        "articles": articles,
        "start": start.isoformat(),
        "days": days,
        "seed": seed,
        "layout": layout,
        "reviews": n_lines,
        "behaviour": asdict(b),
    }
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return AmazonLayoutResult(
        out_dir, reviews_path, metadata_path, n_lines, customers, articles,
        time.perf_counter() - began,
    )  # fmt: skip


def _write_files(
    out_dir: Path,
    layout: str,
    b: ReviewBehaviour,
    rng: np.random.Generator,
    seed: int,
    customers: int,
    articles: int,
    category: np.ndarray,
    price: np.ndarray,
    unpriced: np.ndarray,
    companion: np.ndarray,
    cust: np.ndarray,
    art: np.ndarray,
    day_of: np.ndarray,
    start: date,
) -> tuple[Path, Path, int]:
    """Write the reviews (sorted by product, then time) and the metadata (by product)."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    recent = layout == "2023"
    suffix = ".jsonl.gz" if recent else ".json.gz"
    asins = _ids("B0", articles, 8, salt=seed % 1_000_003)
    reviewers = _ids("A", customers, 27 if recent else 13, salt=seed % 999_983 + 17)
    # 2023: each product (parent_asin) has one to three variants (asin)
    n_variants = rng.integers(1, 4, articles) if recent else np.ones(articles, np.int64)
    variant_ids = _ids("B0", int(n_variants.sum()), 8, salt=seed % 1_000_003 + 500_000_000)
    variant_start = np.concatenate([[0], np.cumsum(n_variants)[:-1]])

    words = [w.title() for w in fake.words(400)]
    brands = [fake.company().replace(",", "") for _ in range(150)]
    summaries = [json.dumps(fake.sentence(nb_words=4)) for _ in range(300)]
    texts = [json.dumps(fake.sentence(nb_words=14)) for _ in range(1_000)]
    names = [json.dumps(fake.name()) for _ in range(500)]

    # -- metadata, by asin
    meta_path = out_dir / f"meta_{FILE_STEM}{suffix}"
    pick_word = rng.integers(0, len(words), (articles, 2))
    pick_brand = rng.integers(0, len(brands), articles)
    ranged = rng.random(articles) < 0.5  # of the unpriced, in 2018: a range, else ""
    with _gzip_text(meta_path) as out:
        for i in np.argsort(np.array(asins), kind="stable").tolist():
            path = list(CATEGORIES[category[i]])
            title = f"{words[pick_word[i, 0]]} {words[pick_word[i, 1]]} {path[-1].rstrip('s')}"
            if recent:
                record = {
                    "main_category": path[0], "title": title, "average_rating": 4.3,
                    "rating_number": 0, "features": [], "description": [],
                    "price": None if unpriced[i] else float(price[i]), "images": [],
                    "videos": [], "store": brands[pick_brand[i]], "categories": path,
                    "details": {}, "parent_asin": asins[i], "bought_together": None,
                }  # fmt: skip
            else:
                if not unpriced[i]:
                    text = f"${price[i]:.2f}"
                elif ranged[i]:
                    text = f"${price[i]:.2f} - ${price[i] * 1.5:.2f}"
                else:
                    text = ""
                record = {
                    "category": path, "description": [], "title": title,
                    "also_buy": [asins[j] for j in companion[i].tolist()],
                    "brand": brands[pick_brand[i]], "feature": [], "main_cat": path[0],
                    "price": text, "asin": asins[i],
                }  # fmt: skip
            out.write(json.dumps(record) + "\n")

    # -- reviews, by asin then time, as the real files are sorted
    n = len(cust)
    second = rng.integers(0, 86_400, n)
    rating = rng.choice(5, size=n, p=[0.05, 0.05, 0.1, 0.2, 0.6]) + 1
    verified = rng.random(n) < 0.9
    twice = rng.random(n) < b.duplicate_share
    pick_text = rng.integers(0, len(texts), n)
    pick_summary = rng.integers(0, len(summaries), n)
    pick_name = rng.integers(0, len(names), n)
    pick_variant = (rng.random(n) * n_variants[art]).astype(np.int64)
    asin_arr = np.array(asins)
    order = np.lexsort((cust, day_of, asin_arr[art]))
    epoch = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp())
    reviews_path = out_dir / f"{FILE_STEM}{suffix}"
    lines = 0
    with _gzip_text(reviews_path) as out:
        for r in order.tolist():
            c, a, d = int(cust[r]), int(art[r]), int(day_of[r])
            seconds = epoch + d * 86_400
            if recent:
                variant = int(variant_start[a] + pick_variant[r])
                head = (
                    f'{{"rating": {float(rating[r])}, "title": {summaries[pick_summary[r]]}, '
                    f'"text": {texts[pick_text[r]]}, "images": [], '
                )
                tail = (
                    f'"parent_asin": "{asins[a]}", "user_id": "{reviewers[c]}", '
                    f'"timestamp": {(seconds + int(second[r])) * 1000}, "helpful_vote": 0, '
                    f'"verified_purchase": {"true" if verified[r] else "false"}}}\n'
                )
                out.write(f'{head}"asin": "{variant_ids[variant]}", {tail}')
                lines += 1
                if twice[r]:  # the same review listed under another variant of the product
                    other = int(variant_start[a] + (pick_variant[r] + 1) % n_variants[a])
                    out.write(f'{head}"asin": "{variant_ids[other]}", {tail}')
                    lines += 1
            else:
                day = start + timedelta(days=d)
                line = (
                    f'{{"overall": {float(rating[r])}, '
                    f'"verified": {"true" if verified[r] else "false"}, '
                    f'"reviewTime": "{day.month:02d} {day.day}, {day.year}", '
                    f'"reviewerID": "{reviewers[c]}", "asin": "{asins[a]}", '
                    f'"reviewerName": {names[pick_name[r]]}, "reviewText": {texts[pick_text[r]]}, '
                    f'"summary": {summaries[pick_summary[r]]}, "unixReviewTime": {seconds}}}\n'
                )
                out.write(line)
                lines += 1 + int(twice[r])
                if twice[r]:
                    out.write(line)
    return reviews_path, meta_path, lines
