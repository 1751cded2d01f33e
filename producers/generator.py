"""Synthetic transactions in the H&M Kaggle layout, at any scale, in bounded memory.

``generate(out_dir, customers, articles, start, days, seed)`` writes
``transactions_train.csv``, ``customers.csv``, ``articles.csv`` (same columns and
value formats as Kaggle's) and the marker ``_pulse_generated.json`` that makes
``open_source`` call the folder ``synthetic``.

The behaviour model, all numpy-vectorised with ``Generator(PCG64)``:

- customers: each has a first purchase day (an existing base front-loaded at the
  start, plus new arrivals throughout), a lifetime after which they churn (many
  one-off buyers), a heavy-tailed (log-normal) daily purchase rate, a basket-size
  mean and an online preference (channel 2 is online, ~71 % of rows);
- articles: Zipf popularity, each launched on some day (new articles keep
  arriving) and fading with age, modulated by a per-article seasonal peak; a
  price point per article (a multiple of 1/59000, like every real H&M price),
  sometimes discounted;
- each day: which customers buy (rate x yearly/weekly season), basket sizes
  (geometric), articles drawn from that day's popularity, some re-purchases of
  the customer's previous article, and some rows repeated within a basket (H&M has
  one row per unit, so exact duplicate rows are normal).

Memory is O(customers + articles): per-customer state lives in flat arrays and
transactions are written day by day, so the full H&M scale (1.37M customers,
105k articles, 31.8M rows) fits. Same arguments and seed -> byte-identical files:
every random draw comes from generators spawned from one ``SeedSequence(seed)``,
and nothing depends on time or chunking.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from producers.adapters import GENERATED_MARKER
from runtime.errors import PulseError
from schemas import tables

PRICE_UNIT = 59_000  # every H&M price is k / 59000
HM_TX_HEADER = "t_dat,customer_id,article_id,price,sales_channel_id\n"
# The Kaggle column orders, defined once in schemas.tables.
CUSTOMER_COLUMNS = tuple(tables.CUSTOMER_COLUMNS)
ARTICLE_COLUMNS = tuple(tables.ARTICLE_COLUMNS)


@dataclass(frozen=True)
class Behaviour:
    """Tunable parameters, calibrated against the real H&M sample (see ``profile``)."""

    existing_share: float = 0.6  # customers already buying when the window opens
    existing_first_days: int = 120  # ... whose first purchase falls in the first N days
    one_off_share: float = 0.25  # customers who never come back after the first day
    lifetime_mean_days: float = 2500.0  # the others churn after an exponential lifetime
    rate_median: float = 0.008  # purchase days per day, log-normal across customers
    rate_sigma: float = 1.1
    basket_mean: float = 3.4  # rows per purchase day (geometric), log-normal per customer
    basket_sigma: float = 0.35
    online_share: float = 0.71
    repeat_share: float = 0.06  # rows that re-buy the customer's previous article
    duplicate_share: float = 0.09  # rows that repeat the previous row of the basket
    zipf_exponent: float = 0.5
    article_age_days: float = 150.0  # median popularity half-life scale of an article
    discount_share: float = 0.25
    price_point_median: float = 15.7  # base price point = 100 * m - 1 units
    price_point_sigma: float = 0.55


@dataclass(frozen=True)
class GenerateResult:
    """What ``generate`` wrote."""

    out_dir: Path
    transactions: int
    customers: int
    articles: int
    seconds: float


def price_text(units: np.ndarray) -> np.ndarray:
    """Prices k/59000 as Kaggle writes them: 16 decimals, truncated, zeros stripped."""
    out = []
    for k in units.tolist():
        digits = f"{(k * 10**16) // PRICE_UNIT:016d}".rstrip("0") or "0"
        out.append(f"0.{digits}")
    return np.array(out, dtype=object)


def _hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` 64-hex ids (like Kaggle's hashed customer ids and postal codes)."""
    raw = rng.bytes(32 * n)
    return [raw[i : i + 32].hex() for i in range(0, 32 * n, 32)]


# -- customers -------------------------------------------------------------------


@dataclass
class CustomerState:
    """Per-customer arrays (index = customer number)."""

    first_day: np.ndarray
    last_day: np.ndarray
    rate: np.ndarray
    basket_p: np.ndarray
    p_online: np.ndarray
    last_article: np.ndarray


def _customer_state(rng: np.random.Generator, n: int, days: int, b: Behaviour) -> CustomerState:
    existing = rng.random(n) < b.existing_share
    first = np.where(
        existing,
        rng.integers(0, max(1, min(days, b.existing_first_days)), n),
        rng.integers(0, days, n),
    )
    one_off = rng.random(n) < b.one_off_share
    lifetime = rng.exponential(b.lifetime_mean_days, n)
    last = np.where(one_off, first, first + lifetime).astype(np.int32)
    rate = np.exp(rng.normal(np.log(b.rate_median), b.rate_sigma, n)).clip(0, 0.9)
    basket_mean = 1.0 + (b.basket_mean - 1.0) * np.exp(rng.normal(0, b.basket_sigma, n))
    # Online preference: most customers lean strongly to one channel.
    p_online = rng.beta(b.online_share * 2.0, (1 - b.online_share) * 2.0, n)
    return CustomerState(
        first_day=first.astype(np.int32),
        last_day=last,
        rate=rate.astype(np.float32),
        basket_p=(1.0 / basket_mean).astype(np.float32),
        p_online=p_online.astype(np.float32),
        last_article=np.full(n, -1, dtype=np.int32),
    )


def _customer_rows(rng: np.random.Generator, ids: list[str]) -> pa.Table:
    """customers.csv columns with the Kaggle value formats ('1.0', '' for null, ages)."""
    n = len(ids)
    u = rng.random((6, n))
    fn = np.where(u[0] < 0.33, "1.0", "")
    active = np.where((u[1] < 0.96) & (fn == "1.0"), "1.0", "")
    club = np.select(
        [u[2] < 0.918, u[2] < 0.993, u[2] < 0.9935], ["ACTIVE", "PRE-CREATE", "LEFT_CLUB"], ""
    )
    news = np.select(
        [u[3] < 0.655, u[3] < 0.9915, u[3] < 0.992], ["NONE", "Regularly", "Monthly"], ""
    )
    young = rng.normal(25, 4, n)
    older = rng.normal(50, 9, n)
    age = np.where(u[4] < 0.55, young, older).round().clip(16, 99).astype(int)
    age_text = np.where(u[5] < 0.01, "", np.char.add(age.astype(str), ".0"))
    # Postal codes are hashed too; one code is shared by ~9 % of customers in H&M.
    pool = _hex_ids(rng, max(1, n // 3))
    codes = np.array(pool, dtype=object)[rng.integers(0, len(pool), n)]
    codes[rng.random(n) < 0.09] = pool[0]
    return pa.table(
        {
            "customer_id": pa.array(ids, pa.string()),
            "FN": pa.array(fn, pa.string()),
            "Active": pa.array(active, pa.string()),
            "club_member_status": pa.array(club, pa.string()),
            "fashion_news_frequency": pa.array(news, pa.string()),
            "age": pa.array(age_text, pa.string()),
            "postal_code": pa.array(codes, pa.string()),
        }
    )


# -- articles --------------------------------------------------------------------


@dataclass
class Catalogue:
    """Article ids and their popularity model."""

    ids: pa.Array  # 10-digit strings
    base_weight: np.ndarray
    launch_day: np.ndarray
    age_scale: np.ndarray
    season_amp: np.ndarray
    season_peak: np.ndarray
    price_units: np.ndarray


PRODUCT_TYPES = (
    (253, "Vest top", "Garment Upper body"),
    (255, "T-shirt", "Garment Upper body"),
    (252, "Sweater", "Garment Upper body"),
    (272, "Trousers", "Garment Lower body"),
    (274, "Shorts", "Garment Lower body"),
    (265, "Dress", "Garment Full body"),
    (59, "Swimwear bottom", "Swimwear"),
    (286, "Underwear bottom", "Underwear"),
    (306, "Bra", "Underwear"),
    (302, "Socks", "Socks & Tights"),
    (87, "Boots", "Shoes"),
    (66, "Earring", "Accessories"),
)
COLOURS = (
    (9, "Black", 4, "Dark", 5),
    (10, "White", 3, "Light", 9),
    (73, "Dark Blue", 4, "Dark", 2),
)
INDEXES = (("A", "Ladieswear", 1), ("D", "Divided", 2), ("F", "Menswear", 3), ("I", "Children", 4))


def _synthetic_article_table(rng: np.random.Generator, n: int, seed: int) -> pa.Table:
    """A plausible articles.csv: Kaggle columns; names and descriptions from Faker."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    product_code = np.sort(rng.choice(np.arange(108_775, 959_461), size=n, replace=False))
    # Several colour variants per product: article_id = product_code * 1000 + variant.
    variant = rng.integers(1, 30, n)
    article_id = np.char.zfill((product_code * 1000 + variant).astype(str), 10)
    ptype = rng.integers(0, len(PRODUCT_TYPES), n)
    colour = rng.integers(0, len(COLOURS), n)
    index = rng.integers(0, len(INDEXES), n)
    # Faker builds small pools (fast at any n); numpy picks from them per article.
    words = np.array([w.title() for w in fake.words(600)], dtype=object)
    sentences = np.array([fake.sentence(nb_words=10) for _ in range(2_000)], dtype=object)
    names = words[rng.integers(0, len(words), n)] + " " + words[rng.integers(0, len(words), n)]
    descs = sentences[rng.integers(0, len(sentences), n)]
    cols = {
        "article_id": article_id,
        "product_code": product_code.astype(str),
        "prod_name": names,
        "product_type_no": [str(PRODUCT_TYPES[i][0]) for i in ptype],
        "product_type_name": [PRODUCT_TYPES[i][1] for i in ptype],
        "product_group_name": [PRODUCT_TYPES[i][2] for i in ptype],
        "graphical_appearance_no": ["1010016"] * n,
        "graphical_appearance_name": ["Solid"] * n,
        "colour_group_code": [str(COLOURS[i][0]) for i in colour],
        "colour_group_name": [COLOURS[i][1] for i in colour],
        "perceived_colour_value_id": [str(COLOURS[i][2]) for i in colour],
        "perceived_colour_value_name": [COLOURS[i][3] for i in colour],
        "perceived_colour_master_id": [str(COLOURS[i][4]) for i in colour],
        "perceived_colour_master_name": [COLOURS[i][1] for i in colour],
        "department_no": (1000 + ptype * 10 + index).astype(str),
        "department_name": [PRODUCT_TYPES[i][1] + " dept" for i in ptype],
        "index_code": [INDEXES[i][0] for i in index],
        "index_name": [INDEXES[i][1] for i in index],
        "index_group_no": [str(INDEXES[i][2]) for i in index],
        "index_group_name": [INDEXES[i][1] for i in index],
        "section_no": (10 + index).astype(str),
        "section_name": [INDEXES[i][1] + " Everyday" for i in index],
        "garment_group_no": (1000 + ptype).astype(str),
        "garment_group_name": [PRODUCT_TYPES[i][2] for i in ptype],
        "detail_desc": descs,
    }
    table = pa.table({k: pa.array(list(v), pa.string()) for k, v in cols.items()})
    # Duplicated ids are possible (same product, same variant draw): keep the first.
    _, first = np.unique(article_id, return_index=True)
    return table.take(pa.array(np.sort(first)))


def _real_article_table(rng: np.random.Generator, path: Path, n: int | None) -> pa.Table:
    """``n`` rows (all when None) sampled deterministically from a real articles.csv."""
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(ARTICLE_COLUMNS, pa.string()),
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise PulseError(f"{path}: cannot read articles ({exc})") from None
    if "article_id" not in table.column_names:
        raise PulseError(f"{path}: not an articles.csv (no article_id column)")
    if n is None:
        return table
    if n > table.num_rows:
        raise PulseError(f"--articles asks for {n:,} but {path} has {table.num_rows:,} rows")
    keep = np.sort(rng.choice(table.num_rows, size=n, replace=False))
    return table.take(pa.array(keep))


def _catalogue(rng: np.random.Generator, ids: pa.Array, days: int, b: Behaviour) -> Catalogue:
    n = len(ids)
    rank = rng.permutation(n) + 1
    base = rank.astype(np.float64) ** -b.zipf_exponent
    # A third of the catalogue exists at the start; the rest launches during the window.
    launch = np.where(rng.random(n) < 0.33, rng.integers(-365, 1, n), rng.integers(0, days, n))
    age_scale = np.exp(rng.normal(np.log(b.article_age_days), 0.8, n))
    season_amp = rng.uniform(0, 1.2, n)
    season_peak = rng.integers(0, 365, n)
    point = np.exp(rng.normal(np.log(b.price_point_median), b.price_point_sigma, n)).round()
    units = (100 * point.clip(1, 199) - 1).astype(np.int64)
    return Catalogue(ids, base, launch, age_scale, season_amp, season_peak, units)


def _article_weights(cat: Catalogue, day: int, day_of_year: int) -> np.ndarray:
    age = day - cat.launch_day
    season = np.exp(cat.season_amp * np.cos(2 * np.pi * (day_of_year - cat.season_peak) / 365))
    weight = cat.base_weight * season * np.exp(-np.maximum(age, 0) / cat.age_scale)
    weight[age < 0] = 0.0
    return weight


def _season(day_of_year: int, weekday: int) -> float:
    """Store-wide demand: a summer and a late-November peak, busier weekends."""
    yearly = 1.0 + 0.25 * np.cos(2 * np.pi * (day_of_year - 175) / 365)
    black_friday = 0.6 * np.exp(-(((day_of_year - 330) / 6.0) ** 2))
    return float((yearly + black_friday) * (1.15 if weekday >= 4 else 0.94))


# -- the day loop ----------------------------------------------------------------


def _day_rows(
    rng: np.random.Generator,
    day: int,
    today: date,
    cust: CustomerState,
    cat: Catalogue,
    b: Behaviour,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One day's rows: (customer index, article index, price units, channel)."""
    doy = today.timetuple().tm_yday
    alive = (cust.first_day <= day) & (day <= cust.last_day)
    buys = alive & (rng.random(len(alive)) < cust.rate * _season(doy, today.weekday()))
    buys |= cust.first_day == day
    buyers = np.flatnonzero(buys)
    buyers = buyers[rng.permutation(len(buyers))]
    sizes = rng.geometric(cust.basket_p[buyers])
    customer = np.repeat(buyers, sizes)
    channel = np.repeat(1 + (rng.random(len(buyers)) < cust.p_online[buyers]), sizes)
    n = len(customer)

    cdf = np.cumsum(_article_weights(cat, day, doy))
    article = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").clip(0, len(cdf) - 1)
    previous = cust.last_article[customer]
    repeat = (rng.random(n) < b.repeat_share) & (previous >= 0)
    article = np.where(repeat, previous, article)
    units = cat.price_units[article]
    discounted = rng.random(n) < b.discount_share
    units = np.where(discounted, (units * rng.uniform(0.4, 0.9, n)).astype(np.int64), units)
    units = units.clip(27, PRICE_UNIT - 1)

    # One row per unit: some rows repeat the row before them in the same basket.
    basket_start = np.zeros(n, dtype=bool)
    basket_start[np.cumsum(sizes)[:-1]] = True
    if n:
        basket_start[0] = True
    dup = (rng.random(n) < b.duplicate_share) & ~basket_start
    source_row = np.maximum.accumulate(np.where(dup, 0, np.arange(n)))
    article, units = article[source_row], units[source_row]
    cust.last_article[customer] = article
    return customer, article, units, channel.astype(np.int8)


def generate(
    out_dir: Path,
    customers: int,
    articles: int | None,
    start: date,
    days: int,
    seed: int,
    articles_csv: Path | None = None,
    behaviour: Behaviour | None = None,
    progress: bool = True,
) -> GenerateResult:
    """Write the H&M layout for ``customers`` x ``articles`` over ``days`` from ``start``.

    Writes ``out_dir/{transactions_train,customers,articles}.csv`` and the marker.
    Transactions are sorted by ``t_dat`` (written one day at a time). ``articles``
    may be None with ``articles_csv``: then every row of that file is used.
    """
    if articles is None and articles_csv is None:
        raise PulseError("give a number of articles or a real articles.csv")
    if customers < 1 or (articles is not None and articles < 1) or days < 1:
        raise PulseError("--customers, --articles and --days must be at least 1")
    b = behaviour or Behaviour()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    streams = [
        np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(6)
    ]
    rng_ids, rng_attrs, rng_cust, rng_art, rng_cat, rng_days = streams
    began = time.perf_counter()

    if articles_csv is not None:
        article_table = _real_article_table(rng_art, Path(articles_csv), articles)
    else:
        assert articles is not None
        article_table = _synthetic_article_table(rng_art, articles, seed)
    # pandas quotes only where needed (descriptions with commas), like Kaggle's files.
    article_table.to_pandas().to_csv(out_dir / "articles.csv", index=False)
    cat = _catalogue(rng_cat, article_table.column("article_id").combine_chunks(), days, b)
    price_table = pa.array(price_text(np.arange(PRICE_UNIT)), pa.string())

    ids = _hex_ids(rng_ids, customers)
    customer_ids = pa.array(ids, pa.string())
    customers_path = out_dir / "customers.csv"
    with customers_path.open("wb") as sink:
        chunk = 200_000
        for lo in range(0, customers, chunk):
            rows = _customer_rows(rng_attrs, ids[lo : lo + chunk]).to_pandas()
            rows.to_csv(sink, index=False, header=lo == 0)
    del ids
    cust = _customer_state(rng_cust, customers, days, b)

    total = 0
    no_header = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with (out_dir / "transactions_train.csv").open("wb") as sink:
        sink.write(HM_TX_HEADER.encode())
        for day in range(days):
            today = start + timedelta(days=day)
            customer, article, units, channel = _day_rows(rng_days, day, today, cust, cat, b)
            n = len(customer)
            if n:
                table = pa.table(
                    {
                        "t_dat": pa.array([today.isoformat()] * n, pa.string()),
                        "customer_id": customer_ids.take(pa.array(customer)),
                        "article_id": cat.ids.take(pa.array(article)),
                        "price": price_table.take(pa.array(units)),
                        "sales_channel_id": pa.array(channel, pa.int8()),
                    }
                )
                pacsv.write_csv(table, sink, no_header)
            total += n
            if progress and (day % 30 == 29 or day == days - 1):
                elapsed = time.perf_counter() - began
                print(
                    f"  day {day + 1}/{days} ({today}): {total:,} rows,"
                    f" {total / max(elapsed, 1e-9):,.0f} rows/s",
                    file=sys.stderr,
                    flush=True,
                )

    marker = {
        "generator": "pulse synthetic H&M layout v1",
        "customers": customers,
        "articles": article_table.num_rows,
        "start": start.isoformat(),
        "days": days,
        "seed": seed,
        "articles_csv": str(articles_csv) if articles_csv else None,
        "transactions": total,
        "behaviour": asdict(b),
    }
    (out_dir / GENERATED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return GenerateResult(
        out_dir, total, customers, article_table.num_rows, time.perf_counter() - began
    )
