"""The `als` stage: ALS factors and similar items of the training window."""

from __future__ import annotations

from pipelines.als import (
    ALS_ITEM_FACTORS_TABLE,
    ALS_SESSION_FACTORS_TABLE,
    AlsConfig,
    SIMILAR_ITEMS_TABLE,
    fit_als,
    similar_items,
)


def materialize_als_week(spark, lake, week, window, config: AlsConfig, checkpoint_dir: str) -> dict:
    """Fit ALS on every event of the training `window` (ending with `week`), replace the week's
    item and session factors and its `similar_items` (computed from the stored item factors, so what
    the checks read is what is used), and return the fit's stats (`AlsResult.stats`, the coverage of
    the window's active items, the similar-item rows) as stored beside `similar_items`."""
    from pipelines.evaluation import active_items, item_coverage, window_events

    train = window_events(spark, lake, window)
    result = fit_als(train, config, checkpoint_dir=checkpoint_dir)
    try:
        lake.write_partition(result.item_factors, ALS_ITEM_FACTORS_TABLE, week)
        lake.write_partition(result.session_factors, ALS_SESSION_FACTORS_TABLE, week)
    finally:
        result.release()
    item_factors = lake.read_partition(spark, ALS_ITEM_FACTORS_TABLE, week)
    coverage = item_coverage(item_factors, active_items(train))
    lake.write_partition(
        similar_items(item_factors, config), SIMILAR_ITEMS_TABLE, week,
        stats=lambda written: {**result.stats, "coverage": {"als_items": coverage}, "similar_items_rows": written.count()},
    )
    return lake.read_stats(SIMILAR_ITEMS_TABLE, week)
