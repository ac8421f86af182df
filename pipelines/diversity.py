"""How varied the top-20 lists are, next to how accurate: intra-list diversity and catalogue coverage.

- **Intra-list diversity** of a (session, type) list: the mean, over its pairs of items, of
  1 - cosine of their ALS item factors; the week's value is the mean over lists. Items without
  factors are left out of their list, and lists with fewer than two items that have factors do not
  count. For unit vectors v_i the sum over ordered pairs i != j of v_i . v_j is |sum v_i|^2 - n,
  so a list needs one vector sum, not n^2 products.
- **Catalogue coverage**: the share of the catalogue (items with statistics in the week's sources)
  that appears in at least one top-20 list.
- **MMR rerank** (maximal marginal relevance): each list's `MMR_POOL` best candidates are re-chosen
  one at a time by lambda x relevance - (1 - lambda) x the largest cosine similarity to the items
  already chosen; relevance is the ranker's score scaled to [0, 1] within the list, and an item
  without factors is similar to nothing. lambda = 1 keeps the ranker's order; lower trades accuracy
  for variety. The `ranker` stage logs the trade-off at `MMR_LAMBDAS` (`mmr_<lambda>` rankings:
  score, recall and diversity beside the ranker's) so it can be judged before it is turned on.
"""

from __future__ import annotations

import numpy as np

from pipelines.als import FACTORS_COLUMN

# Candidates per list the rerank chooses from, and the lambdas whose trade-off every week logs.
MMR_POOL = 40
MMR_LAMBDAS = (0.9, 0.7, 0.5)


def mmr_ranking_name(lam: float) -> str:
    return f"mmr_{lam:g}"


def mmr_order(relevance: np.ndarray, vectors: np.ndarray, lam: float, k: int) -> np.ndarray:
    """Greedy MMR over a batch of lists. `relevance`: (lists, pool) scores, NaN where a list has
    no item in that slot; `vectors`: (lists, pool, d) unit vectors (zeros: similar to nothing).
    Returns (lists, min(k, pool)) slot indices in the chosen order, -1 once a list runs out.
    Slots should come best first: ties go to the earlier slot."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"the MMR lambda must be within [0, 1], not {lam}")
    n_lists, pool = relevance.shape
    k = min(k, pool)
    available = ~np.isnan(relevance)
    filled = np.where(available, relevance, np.nan)
    low = np.nanmin(np.where(available, filled, np.inf), axis=1, keepdims=True)
    high = np.nanmax(np.where(available, filled, -np.inf), axis=1, keepdims=True)
    spread = np.where(high > low, high - low, 1.0)
    scaled = np.where(available, np.where(high > low, (filled - low) / spread, 1.0), 0.0)
    similarity = np.einsum("lpd,lqd->lpq", vectors, vectors)
    chosen = np.full((n_lists, k), -1, dtype=np.int64)
    penalty = np.zeros((n_lists, pool))
    rows = np.arange(n_lists)
    for step in range(k):
        objective = np.where(available, lam * scaled - (1.0 - lam) * penalty, -np.inf)
        pick = np.argmax(objective, axis=1)
        has = available[rows, pick]
        chosen[has, step] = pick[has]
        available[rows[has], pick[has]] = False
        picked_similarity = similarity[rows, pick]
        penalty = np.where(has[:, None], picked_similarity if step == 0 else np.maximum(penalty, picked_similarity),
                           penalty)
    return chosen


def unit_factors(item_factors):
    """(sorted aids, unit vectors as float32) of Spark `aid, factors`: what `mmr_rerank` looks up
    (items with a zero vector are left out)."""
    frame = item_factors.select("aid", FACTORS_COLUMN).toPandas()
    if len(frame) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 1), dtype=np.float32)
    vectors = np.stack(frame[FACTORS_COLUMN].to_numpy()).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    keep = norms > 0
    order = np.argsort(frame["aid"].to_numpy()[keep], kind="stable")
    return frame["aid"].to_numpy()[keep][order].astype(np.int64), (vectors[keep] / norms[keep, None])[order]


def mmr_rerank(pool, unit, lam: float, k: int):
    """Spark `session, type, aid, score` (each list's candidates, at most `MMR_POOL`) -> Spark
    `session, type, aid, rank`: the top `k` of each list re-chosen by `mmr_order`; `unit`:
    `unit_factors(item_factors)`."""
    import pandas as pd
    from pyspark.sql import functions as F

    shared = pool.sparkSession.sparkContext.broadcast(unit)
    ordered = F.array_sort(F.collect_list(F.struct((-F.col("score")).alias("order"), "aid", "score")))
    lists = pool.groupBy("session", "type").agg(ordered.alias("items"))

    def rerank(batches):
        known_aids, known_vectors = shared.value
        for batch in batches:
            if len(batch) == 0:
                continue
            width = max(len(items) for items in batch["items"])
            relevance = np.full((len(batch), width), np.nan)
            slot_aids = np.zeros((len(batch), width), dtype=np.int64)
            for row, items in enumerate(batch["items"]):
                relevance[row, :len(items)] = [item["score"] for item in items]
                slot_aids[row, :len(items)] = [item["aid"] for item in items]
            position = np.searchsorted(known_aids, slot_aids)
            found = (position < len(known_aids)) & (known_aids[np.minimum(position, len(known_aids) - 1)] == slot_aids) \
                if len(known_aids) else np.zeros_like(slot_aids, dtype=bool)
            slot_vectors = np.zeros((*slot_aids.shape, known_vectors.shape[1]), dtype=np.float32)
            slot_vectors[found] = known_vectors[position[found]]
            chosen = mmr_order(relevance, slot_vectors, lam, k)
            list_index, rank_index = np.nonzero(chosen >= 0)
            yield pd.DataFrame({
                "session": batch["session"].to_numpy()[list_index],
                "type": batch["type"].to_numpy()[list_index],
                "aid": slot_aids[list_index, chosen[list_index, rank_index]],
                "rank": (rank_index + 1).astype(np.int32),
            })

    return lists.mapInPandas(rerank, "session BIGINT, type STRING, aid BIGINT, rank INT")


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
