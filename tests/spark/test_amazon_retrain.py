"""Amazon reviews end to end in the batch layer: a generated Amazon-layout set (2018
release) through `pulse ingest amazon:DIR`, then the recommendations retrain on it.

The generated reviewers review a product once (Amazon's rule), so re-buying carries no
signal; what there is to learn is which products go together (a product's companions,
reviewed the same day or on the next review day: ``producers.amazon_generator``). The
learned ranker learns it (its co-purchase candidates and features) and is served;
repurchase and ALS, which spend slots on products the customer has already reviewed,
are reported but not asked to win.
"""

from __future__ import annotations

from datetime import date

from batch.params import RankerParams, RecParams
from batch.retrain import RetrainOptions, retrain
from producers.adapters import open_source
from producers.amazon_generator import write_amazon_layout
from pulse.cli import main as pulse_main
from storage import registry
from storage.lake import read_lake

# small enough for the suite (about 9,000 reviews), ALS and the ranker at test sizes
REC = RecParams(rank=4, max_iter=2, ranker=RankerParams(max_iter=3, max_depth=3, train_cutoffs=2))


def test_amazon_reviews_ingest_and_recommendations_beat_popularity(  # type: ignore[no-untyped-def]
    spark, settings, tmp_path, capsys
) -> None:
    generated = write_amazon_layout(tmp_path / "amazon", 1000, 400, date(2019, 1, 1), 240, 8)
    expected = open_source(f"amazon:{tmp_path / 'amazon'}")
    for _ in expected.iter_batches():
        pass
    stats = expected.stats
    assert stats.rows_read == generated.reviews
    assert set(stats.rejected) == {"price: missing in metadata", "duplicate review"}

    root = str(settings.data_root)
    assert pulse_main(["--data-root", root, "ingest", f"amazon:{tmp_path / 'amazon'}"]) == 0
    out = capsys.readouterr().out
    assert f"ingested amazon: {stats.accepted:,} valid events staged" in out
    assert "0 customers, 400 articles" in out
    read = f"rows read {stats.rows_read:,} = accepted {stats.accepted:,}"
    assert f"{read} + rejected {stats.n_rejected:,}" in out
    for reason, n in stats.rejected.items():
        assert f"rejected {n:,}: {reason}" in out
    lake = read_lake(spark, settings)
    assert lake.count() == stats.accepted
    assert lake.where(
        "source != 'amazon' OR quantity != 1 OR sales_channel_id IS NOT NULL"
    ).isEmpty()

    run = retrain(
        spark, settings, RetrainOptions(models=("recommendations",), rec=REC, progress=False)
    )["recommendations"]
    metrics, served = run["metrics"], run["served"]
    popular = metrics["popularity"]
    uplift = metrics[served]["revenue@12"] / popular["revenue@12"]
    print(
        f"served {served}: MAP@12 {metrics[served]['map@12']:.4f} vs popularity "
        f"{popular['map@12']:.4f}; revenue in lists {uplift:.2f}x popularity's; "
        + ", ".join(f"{n} {m['map@12']:.4f}" for n, m in metrics.items())
    )
    assert set(metrics) == {"popularity", "repurchase", "als", "blend", "ranker"}
    for m in metrics.values():  # MAP@12 and revenue in lists, for every strategy
        assert m["map@12"] >= 0 and m["revenue@12"] >= 0
    assert served == "ranker"
    assert metrics[served]["map@12"] > 1.5 * popular["map@12"]
    assert uplift > 1.0
    assert run["gate"]["passed"] and run["promoted"]
    assert registry.current_version(settings, "recommendations") == run["version"]
