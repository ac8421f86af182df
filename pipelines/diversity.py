"""How varied the top-20 lists are, next to how accurate: intra-list diversity and catalogue coverage.

- **Intra-list diversity** of a (session, type) list: the mean, over its pairs of items, of
  1 - cosine of their ALS item factors; the week's value is the mean over lists. Items without
  factors are left out of their list, and lists with fewer than two items that have factors do not
  count. For unit vectors v_i the sum over ordered pairs i != j of v_i . v_j is |sum v_i|^2 - n,
  so a list needs one vector sum, not n^2 products.
- **Catalogue coverage**: the share of the catalogue (items with statistics in the week's sources)
  that appears in at least one top-20 list.
"""

from __future__ import annotations

from pipelines.als import FACTORS_COLUMN


def intra_list_diversity(predictions, item_factors) -> float | None:
    """Spark `session, type, aid, rank` top-k lists and `aid, factors` -> the mean intra-list
    diversity (None when no list has two items with factors)."""
    from pyspark.sql import functions as F

    norm = F.sqrt(F.aggregate(FACTORS_COLUMN, F.lit(0.0), lambda total, x: total + x * x))
    # Division guarded in the expression itself: Spark may evaluate a projection before the filter.
    unit = item_factors.select("aid", norm.alias("_norm"), FACTORS_COLUMN).where(F.col("_norm") > 0).select(
        "aid", F.transform(FACTORS_COLUMN, lambda x: F.try_divide(x, F.col("_norm"))).alias("unit"))
    # One row per list holding its unit vectors, summed element-wise: no row per dimension.
    vectors = predictions.select("session", "type", "aid").join(unit, "aid").groupBy("session", "type").agg(
        F.collect_list("unit").alias("vectors"))
    summed = F.aggregate(F.slice("vectors", 2, 1 << 16), F.element_at("vectors", 1),
                         lambda total, vector: F.zip_with(total, vector, lambda a, b: a + b))
    per_list = vectors.select(
        F.aggregate(summed, F.lit(0.0), lambda total, x: total + x * x).alias("squared_norm"),
        F.size("vectors").alias("n"))
    mean_similarity = F.try_divide(F.col("squared_norm") - F.col("n"), F.col("n") * (F.col("n") - 1))
    row = per_list.where(F.col("n") >= 2).agg(F.avg(F.lit(1.0) - mean_similarity).alias("diversity")).first()
    return None if row is None or row["diversity"] is None else float(row["diversity"])


def catalogue_coverage(predictions, catalogue) -> float:
    """The share of the `aid`s of Spark `catalogue` that appear in Spark `predictions` (items outside
    the catalogue, e.g. new ones from a session's own history, do not count)."""
    items = catalogue.select("aid").distinct()
    reached = predictions.select("aid").distinct().join(items, "aid", "left_semi").count()
    return reached / max(items.count(), 1)


def diversity_report(predictions: dict, item_factors, catalogue) -> dict[str, dict[str, float]]:
    """{ranking: {"intra_list_diversity", "catalogue_coverage"}} for every ranking's top-k lists;
    `catalogue`: a frame of the catalogue's `aid`s."""
    report = {}
    for name, frame in predictions.items():
        diversity = intra_list_diversity(frame, item_factors)
        report[name] = {"catalogue_coverage": catalogue_coverage(frame, catalogue),
                        **({"intra_list_diversity": diversity} if diversity is not None else {})}
    return report
