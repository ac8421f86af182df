"""The `top_sellers` stage: popularity lists and item statistics of the training window."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.popularity import (
    POPULAR,
    TOP_SELLERS_CONFIG,
    TOP_SELLERS_TABLE,
    TopSellersConfig,
    build_top_sellers,
    types_present,
)


@dataclass(frozen=True)
class TopSellersSummary:
    """What `materialize_top_sellers_week` wrote for week W."""

    popular_per_type: dict[str, int]
    item_stats_items: int
    preview: object  # pandas: the five most popular items per type
    seconds: float


def materialize_top_sellers_week(spark, lake, week, window, config: TopSellersConfig = TOP_SELLERS_CONFIG
                                 ) -> TopSellersSummary:
    """Fit the popularity lists and the ranker's item statistics on every event of the training
    `window` (ending with `week`), scored from the end of W (they serve the week after it), and
    replace the week's `top_sellers` and `item_stats` partitions."""
    import time

    from pyspark.sql import functions as F

    from pipelines.evaluation import window_events
    from pipelines.features import ITEM_STATS_TABLE, build_item_stats

    started = time.perf_counter()
    train = window_events(spark, lake, window)
    lake.write_partition(build_top_sellers(train, reference_ms=week.end_ms, config=config), TOP_SELLERS_TABLE, week,
                         num_files=1, stats=lambda written: {"popular_per_type": types_present(written)})
    lake.write_partition(build_item_stats(train, week.end_ms), ITEM_STATS_TABLE, week,
                         stats=lambda written: {"items": written.count()})
    preview = (lake.read_partition(spark, TOP_SELLERS_TABLE, week)
               .where((F.col("list") == POPULAR) & (F.col("rank") <= 5)).orderBy("type", "rank").toPandas())
    return TopSellersSummary(
        popular_per_type=lake.read_stats(TOP_SELLERS_TABLE, week)["popular_per_type"],
        item_stats_items=lake.read_stats(ITEM_STATS_TABLE, week)["items"],
        preview=preview, seconds=time.perf_counter() - started)
