"""`als`: implicit-feedback matrix factorisation (Spark MLlib ALS) of session x item confidences.

The confidence of a (session, aid) pair is the sum of the type weights of its events; ALS
learns one factor vector per session and per item. From the item factors we derive item
neighbours (cosine similarity): the ALS candidate source and its features.

Item scoring never gathers the factors on the driver: rows are hashed into blocks, each block
becomes one dense matrix inside Spark, block pairs are formed with a cartesian product (one pair
per task) and a pandas function does the matmul in row chunks of bounded size, keeping the top k
per row; a window then merges the per-block top k into the global top k.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from pyspark.sql import DataFrame

FACTORS_COLUMN = "factors"
ALS_ITEM_FACTORS_TABLE = "als_item_factors"
ALS_SESSION_FACTORS_TABLE = "als_session_factors"
SIMILAR_ITEMS_TABLE = "similar_items"
# Elements of one score chunk (rows x block columns). A chunk holds the float32 scores plus the
# int64 positions `argpartition` returns: 12 bytes an element, ~200 MB at this size, whatever
# the block size, which bounds a Python worker's memory.
SCORE_CHUNK_ELEMENTS = 1 << 24
# Implicit ALS shrinks the factors of rows with very little, isolated evidence (e.g. an item
# seen once, by a session that saw nothing else) towards zero; they are counted in the stats.
NEAR_ZERO_NORM = 1e-6
# `monotonically_increasing_id` puts the partition index in the bits above bit 33.
_PARTITION_SHIFT = 33


@dataclass(frozen=True)
class AlsConfig:
    # Rank 32 x 6 sweeps: the ALS source recalls more at 1M sessions than rank 64 x 10, for a third
    # of the fit (bench/bench_als.py, README).
    rank: int = 32
    max_iter: int = 6
    reg_param: float = 0.05
    alpha: float = 40.0
    type_weights: tuple[tuple[str, float], ...] = (("clicks", 1.0), ("carts", 6.0), ("orders", 3.0))
    top_k: int = 20  # similar items per item
    similarity_blocks: int = 8  # item blocks for the exact blocked cosine
    # Up to this many items, similar items are exact (every pair scored, quadratic); above it an
    # inverted-file search scores each item against the members of its `similarity_probes`
    # nearest of about sqrt(items) clusters: about items^1.5 work.
    exact_similarity_max_items: int = 100_000
    similarity_probes: int = 8
    seed: int = 42
    # Sessions with fewer distinct items are left out of the fit: a session with one item links
    # it to nothing, so it shapes no item neighbourhood (the only use of the factors) yet costs
    # a factor solve per iteration. Off by default: with it at 2 the ranker trailed the hand rule
    # on a 2,500-session shop.
    min_session_items: int = 1
    checkpoint_interval: int = 5
    # ALS user and item blocks. None: the cluster's default parallelism (at least 2). Fewer
    # blocks mean fewer copies of each factor shuffled per iteration, so on one machine the
    # number of cores is the sweet spot. The random initialisation is drawn per block, so
    # the factors depend on this value (not only on the seed).
    num_blocks: int | None = None
    intermediate_storage_level: str = "MEMORY_AND_DISK"

    def params(self) -> dict:
        """JSON-friendly parameters for stats and MLflow."""
        params = asdict(self)
        params["type_weights"] = dict(self.type_weights)
        return params


@dataclass
class AlsResult:
    item_factors: DataFrame  # aid BIGINT, factors ARRAY<FLOAT>; persisted
    session_factors: DataFrame  # session BIGINT, factors ARRAY<FLOAT>; persisted
    # timings (seconds per phase), n_items, n_sessions, n_ratings, factor norm min/mean/max, params
    stats: dict

    def release(self) -> None:
        self.item_factors.unpersist()
        self.session_factors.unpersist()


def session_item_confidence(events, type_weights) -> DataFrame:
    """`session, aid, confidence DOUBLE`: the summed type weights of each pair's events.

    Events of a type without a weight are ignored; pairs whose confidence is not positive are
    dropped, since implicit ALS reads a zero as "no interaction" anyway.
    """
    from pyspark.sql import functions as F

    weights = dict(type_weights)
    weight_of_type = F.create_map(*[item for name, weight in weights.items() for item in (F.lit(name), F.lit(float(weight)))])
    return (
        events.select("session", "aid", weight_of_type[F.col("type")].alias("weight"))
        .where(F.col("weight").isNotNull())
        .groupBy("session", "aid")
        .agg(F.sum("weight").alias("confidence"))
        .where(F.col("confidence") > 0)
    )


def dense_index(frame, id_column: str, index_column: str) -> DataFrame:
    """`id_column, index_column INT`: the distinct ids of `frame` numbered 0..n-1 in id order.

    Distributed: the ids are range-sorted, `monotonically_increasing_id` numbers the rows
    within each partition and per-partition offsets (one small row per partition on the
    driver) make the numbers dense. The sorted, numbered ids are checkpointed first: a
    recomputed range sort may cut its partitions elsewhere, which would break the offsets.
    Sorting by id makes the numbering, and with it the ALS result, independent of how the
    input was partitioned.
    """
    from pyspark.sql import functions as F

    numbered = (
        frame.select(id_column)
        .distinct()
        .orderBy(id_column)
        .select(id_column, F.monotonically_increasing_id().alias("_row_id"))
        .checkpoint(eager=True)
    )
    partition = F.shiftright("_row_id", _PARTITION_SHIFT)
    position = F.col("_row_id").bitwiseAND(F.lit((1 << _PARTITION_SHIFT) - 1))
    counts = sorted((row["partition"], row["count"]) for row in numbered.groupBy(partition.alias("partition")).count().collect())
    offsets, total = [], 0
    for part, count in counts:
        offsets.append((part, total))
        total += count
    if total >= 2**31:
        raise ValueError(f"{total} distinct {id_column} values do not fit ALS's int ids")
    if not offsets:
        return numbered.select(id_column, F.lit(None).cast("int").alias(index_column))
    offset_of_partition = F.create_map(*[F.lit(value) for pair in offsets for value in pair])
    return numbered.select(id_column, (offset_of_partition[partition] + position).cast("int").alias(index_column))


def fit_als(events, config: AlsConfig, checkpoint_dir: str) -> AlsResult:
    """Fit implicit ALS on the training window's `session, aid, ts, type` events.

    The returned factor frames are persisted; call `result.release()` when done.
    """
    from pyspark import StorageLevel
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    spark = events.sparkSession
    # ALS's lineage grows with every iteration; without checkpoints a long fit overflows the stack.
    spark.sparkContext.setCheckpointDir(checkpoint_dir)
    num_blocks = config.num_blocks or max(2, spark.sparkContext.defaultParallelism)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # Three readers (two indices and the ratings): aggregate the events once.
    confidences = session_item_confidence(events, config.type_weights)
    if config.min_session_items > 1:
        from pyspark.sql import Window

        confidences = (
            confidences.withColumn("_items", F.count(F.lit(1)).over(Window.partitionBy("session")))
            .where(F.col("_items") >= config.min_session_items)
            .drop("_items")
        )
    confidences = confidences.persist(StorageLevel.MEMORY_AND_DISK)
    session_index = dense_index(confidences, "session", "session_index")
    item_index = dense_index(confidences, "aid", "item_index")
    ratings = (
        confidences.join(session_index, "session")
        .join(item_index, "aid")
        .select("session_index", "item_index", F.col("confidence").cast("float").alias("confidence"))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    n_ratings = ratings.count()
    confidences.unpersist()
    if n_ratings == 0:
        ratings.unpersist()
        raise ValueError("no events with a weighted type: nothing to factorise")
    timings["prepare"] = time.perf_counter() - started

    clock = time.perf_counter()
    als = ALS(
        rank=config.rank,
        maxIter=config.max_iter,
        regParam=config.reg_param,
        alpha=config.alpha,
        implicitPrefs=True,
        nonnegative=False,
        userCol="session_index",
        itemCol="item_index",
        ratingCol="confidence",
        coldStartStrategy="drop",
        seed=config.seed,
        checkpointInterval=config.checkpoint_interval,
        numUserBlocks=num_blocks,
        numItemBlocks=num_blocks,
        intermediateStorageLevel=config.intermediate_storage_level,
    )
    model = als.fit(ratings)
    timings["fit"] = time.perf_counter() - clock
    ratings.unpersist()

    clock = time.perf_counter()
    item_factors = (
        model.itemFactors.join(item_index, F.col("id") == F.col("item_index"))
        .select("aid", F.col("features").alias(FACTORS_COLUMN))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    session_factors = (
        model.userFactors.join(session_index, F.col("id") == F.col("session_index"))
        .select("session", F.col("features").alias(FACTORS_COLUMN))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    item_norms = _norm_summary(item_factors)  # also materialises the persisted frames
    session_norms = _norm_summary(session_factors)
    timings["factors"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - started

    stats = {
        "timings": {phase: round(seconds, 3) for phase, seconds in timings.items()},
        "n_items": item_norms.pop("rows"),
        "n_sessions": session_norms.pop("rows"),
        "n_ratings": n_ratings,
        "item_factor_norm": item_norms,
        "session_factor_norm": session_norms,
        "params": {**config.params(), "num_blocks": num_blocks},
        "linear_algebra": linear_algebra_backends(spark),
    }
    return AlsResult(item_factors=item_factors, session_factors=session_factors, stats=stats)


def _norm_summary(factors) -> dict:
    from pyspark.sql import functions as F

    row = factor_validation_frame(factors).agg(
        F.count(F.lit(1)).alias("rows"),
        F.min("norm").alias("min"),
        F.avg("norm").alias("mean"),
        F.max("norm").alias("max"),
        F.count(F.when(F.col("norm") < NEAR_ZERO_NORM, 1)).alias("near_zero"),
        F.count(F.when(~F.col("all_finite"), 1)).alias("not_finite"),
    ).first()
    return {name: row[name] for name in ("rows", "min", "mean", "max", "near_zero", "not_finite")}


def factor_validation_frame(factors) -> DataFrame:
    """The id column(s) plus, per row, `norm DOUBLE, all_finite BOOLEAN, dims INT` of `factors`.

    For data-quality checks: a null, NaN or infinite factor makes `all_finite` false (and the
    norm NaN or infinite), so an expectation on `all_finite` catches every kind of bad vector.
    """
    from pyspark.sql import functions as F

    factor = F.col(FACTORS_COLUMN)
    squares = F.aggregate(factor, F.lit(0.0).cast("double"), lambda total, x: total + x.cast("double") * x.cast("double"))
    finite = F.forall(factor, lambda x: x.isNotNull() & ~F.isnan(x) & (F.abs(x) < F.lit(float("inf"))))
    keys = [name for name in factors.columns if name != FACTORS_COLUMN]
    return factors.select(
        *keys,
        F.sqrt(squares).alias("norm"),
        F.coalesce(finite, F.lit(False)).alias("all_finite"),
        F.size(factor).cast("int").alias("dims"),
    )


def similar_items(item_factors, config: AlsConfig) -> DataFrame:
    """`aid, neighbour, score DOUBLE (cosine), rank INT`: each item's top_k most similar items.

    Rank 1 is the most similar; equal scores rank by neighbour id. An item is never its own
    neighbour, and an item whose factors are all zero has no direction: it neither has nor is a
    neighbour. Exact up to `config.exact_similarity_max_items` items; approximate above
    (`clustered_candidates`).
    """
    from pyspark.sql import functions as F

    items = item_factors.where(F.exists(FACTORS_COLUMN, lambda x: x != 0)).select(F.col("aid").alias("_key"), FACTORS_COLUMN)
    n_items = items.count()
    if n_items <= config.exact_similarity_max_items:
        candidates = _blocked_top_k(
            items,
            items,
            top_k=config.top_k,
            n_left_blocks=config.similarity_blocks,
            n_right_blocks=config.similarity_blocks,
            cosine=True,
            exclude_same_key=True,
        )
    else:
        candidates = clustered_candidates(items, config.top_k, similarity_clusters(n_items), config.similarity_probes,
                                          config.seed)
    return _global_top_k(candidates, "aid", "neighbour", config.top_k)


def similarity_clusters(n_items: int) -> int:
    """About sqrt(items) clusters: the k-means and the search then both cost about items^1.5."""
    return max(1, round(math.sqrt(n_items)))


# Items k-means learns the cluster centres from, per cluster: the centres need a sample, not the
# catalogue.
KMEANS_SAMPLE_PER_CLUSTER = 64


def clustered_candidates(items, top_k: int, n_clusters: int, probes: int, seed: int) -> DataFrame:
    """`left, right, score`: top-k cosine neighbours per item within each of its probed clusters
    (an inverted-file search, exact within the clusters it looks at).

    Spherical k-means (MLlib, cosine) on a sample of the items gives the centres; every item joins
    the cluster of its nearest centre and searches the members of its `probes` nearest centres.
    Work is spread over clusters, so it grows with the Spark cluster's cores. Items whose factors
    are all zero have no direction: they are left out (as neighbours and as items).
    """
    import numpy as np
    import pandas as pd
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    nonzero = items.where(F.aggregate(FACTORS_COLUMN, F.lit(0.0).cast("double"), lambda t, x: t + F.abs(x)) > 0)
    n_items = nonzero.count()
    if n_items == 0:  # a collapsed fit: nothing to search; the factor checks report it
        return items.sparkSession.createDataFrame([], "left BIGINT, right BIGINT, score DOUBLE")
    n_clusters = max(1, min(n_clusters, n_items))
    fraction = min(1.0, 1.2 * KMEANS_SAMPLE_PER_CLUSTER * n_clusters / max(n_items, 1))
    sample = nonzero.sample(fraction=fraction, seed=seed).select(array_to_vector(FACTORS_COLUMN).alias("features"))
    kmeans = KMeans(k=n_clusters, seed=seed, maxIter=20, distanceMeasure="cosine", featuresCol="features").fit(sample)
    centres = _as_matrix(np.vstack(kmeans.clusterCenters()).ravel(), len(kmeans.clusterCenters()), normalise=True)
    n_probes = min(probes, len(centres))

    def assign(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            vectors = _as_matrix(np.concatenate(batch[FACTORS_COLUMN].to_numpy()), len(batch), normalise=True)
            similarity = vectors @ centres.T
            nearest = np.argpartition(-similarity, n_probes - 1, axis=1)[:, :n_probes]
            home = similarity.argmax(axis=1)
            yield pd.DataFrame({"_key": batch["_key"].to_numpy(), FACTORS_COLUMN: batch[FACTORS_COLUMN].to_numpy(),
                                "home": home.astype(np.int32), "probes": list(nearest.astype(np.int32))})

    # Deterministic given the centres, so the two readers below may each compute it.
    assigned = nonzero.mapInPandas(assign, f"_key BIGINT, {FACTORS_COLUMN} ARRAY<FLOAT>, home INT, probes ARRAY<INT>")
    members = _keyed_blocks(assigned.select("_key", FACTORS_COLUMN, F.col("home").alias("block")))
    searchers = _keyed_blocks(assigned.select("_key", FACTORS_COLUMN, F.explode("probes").alias("block")))
    pairs = searchers.selectExpr("block", "keys AS left_keys", "matrix AS left_matrix").join(
        members.selectExpr("block", "keys AS right_keys", "matrix AS right_matrix"), "block")
    # Explicitly partitioned (adaptive execution would merge these small rows into a few tasks,
    # while the work per row is a matrix product): about 4 clusters per task.
    pairs = pairs.repartition(max(1, n_clusters // 4), "block")
    return pairs.mapInPandas(_block_pair_scorer(top_k, cosine=True, exclude_same_key=True),
                             schema="left BIGINT, right BIGINT, score DOUBLE")


def _global_top_k(candidates, key_name: str, other_name: str, top_k: int) -> DataFrame:
    """Merge the per-block-pair top k into each key's top k (ties: smaller id first)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("left").orderBy(F.desc("score"), F.asc("right"))
    return (
        candidates.withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= top_k)
        .select(
            F.col("left").alias(key_name),
            F.col("right").alias(other_name),
            "score",
            F.col("rank").cast("int").alias("rank"),
        )
    )


def _factor_blocks(factors, n_blocks: int) -> DataFrame:
    """One row per block: `block, keys ARRAY<BIGINT>` (sorted) and `matrix ARRAY<FLOAT>`, the
    block's factors row-major in key order, so pandas gets one flat array per block."""
    from pyspark.sql import functions as F

    blocks = _keyed_blocks(factors.withColumn("block", F.pmod(F.xxhash64("_key"), F.lit(n_blocks)).cast("int")))
    # One block per partition (an explicit repartition, which adaptive execution leaves alone):
    # the cartesian product then runs one block pair per task.
    return blocks.repartitionByRange(n_blocks, "block")


def _keyed_blocks(factors) -> DataFrame:
    """`block, keys, matrix` of `_key, factors, block` rows: one row per block."""
    from pyspark.sql import functions as F

    rows = F.sort_array(F.collect_list(F.struct(F.col("_key"), F.col(FACTORS_COLUMN))))
    return factors.groupBy("block").agg(rows.alias("rows")).select(
        "block",
        F.col("rows").getField("_key").alias("keys"),
        F.flatten(F.col("rows").getField(FACTORS_COLUMN)).alias("matrix"),
    )


def _blocked_top_k(
    left,
    right,
    top_k: int,
    n_left_blocks: int,
    n_right_blocks: int,
    cosine: bool,
    exclude_same_key: bool,
) -> DataFrame:
    """`left BIGINT, right BIGINT, score DOUBLE`: for every left row, its top_k right rows within
    each right block (so up to top_k x n_right_blocks candidates per left key)."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if n_left_blocks < 1 or n_right_blocks < 1:
        raise ValueError("the number of blocks must be at least 1")
    left_blocks = _factor_blocks(left, n_left_blocks).selectExpr("keys AS left_keys", "matrix AS left_matrix")
    right_blocks = _factor_blocks(right, n_right_blocks).selectExpr("keys AS right_keys", "matrix AS right_matrix")
    # A cartesian product, never a broadcast: a broadcast would gather every factor on the driver.
    pairs = left_blocks.hint("shuffle_replicate_nl").crossJoin(right_blocks)
    return pairs.mapInPandas(_block_pair_scorer(top_k, cosine, exclude_same_key),
                             schema="left BIGINT, right BIGINT, score DOUBLE")


def _block_pair_scorer(top_k: int, cosine: bool, exclude_same_key: bool):
    """A mapInPandas function over rows `left_keys, left_matrix, right_keys, right_matrix`."""

    def score_block_pairs(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for left_keys, left_matrix, right_keys, right_matrix in zip(
                batch["left_keys"], batch["left_matrix"], batch["right_keys"], batch["right_matrix"]
            ):
                yield from top_k_of_block_pair(
                    left_keys, left_matrix, right_keys, right_matrix, top_k, cosine, exclude_same_key
                )

    return score_block_pairs


def top_k_of_block_pair(
    left_keys,
    left_matrix,
    right_keys,
    right_matrix,
    top_k: int,
    cosine: bool,
    exclude_same_key: bool,
    chunk_elements: int = SCORE_CHUNK_ELEMENTS,
) -> Iterator[pd.DataFrame]:
    """Top-k right keys per left key of one block pair, as `left, right, score` frames.

    Keys are sorted (see `_factor_blocks`); matrices are flat row-major float arrays. Scores
    are computed in row chunks of at most `chunk_elements` so memory does not grow with the
    block size.
    """
    import numpy as np
    import pandas as pd

    left_keys = np.asarray(left_keys, dtype=np.int64)
    right_keys = np.asarray(right_keys, dtype=np.int64)
    if len(left_keys) == 0 or len(right_keys) == 0:
        return
    left_vectors = _as_matrix(left_matrix, len(left_keys), cosine)
    right_vectors = _as_matrix(right_matrix, len(right_keys), cosine)
    n_right = len(right_keys)
    keep = min(top_k, n_right)
    chunk_rows = max(1, chunk_elements // n_right)
    for start in range(0, len(left_keys), chunk_rows):
        chunk_keys = left_keys[start : start + chunk_rows]
        scores = left_vectors[start : start + chunk_rows] @ right_vectors.T
        if exclude_same_key:
            # Both key arrays are sorted, so a binary search finds each left key's own column.
            position = np.minimum(np.searchsorted(right_keys, chunk_keys), n_right - 1)
            is_self = right_keys[position] == chunk_keys
            scores[np.flatnonzero(is_self), position[is_self]] = -np.inf
        if keep < n_right:
            columns = np.argpartition(scores, n_right - keep, axis=1)[:, n_right - keep :]
        else:
            columns = np.broadcast_to(np.arange(n_right), scores.shape)
        top_scores = np.take_along_axis(scores, columns, axis=1).ravel().astype(np.float64)
        lefts = np.repeat(chunk_keys, columns.shape[1])
        rights = right_keys[columns].ravel()
        valid = np.isfinite(top_scores)  # drops the excluded self pairs when a block is tiny
        if cosine:
            np.clip(top_scores, -1.0, 1.0, out=top_scores)  # float32 rounding can reach 1 + 1e-7
        yield pd.DataFrame({"left": lefts[valid], "right": rights[valid], "score": top_scores[valid]})


def _as_matrix(flat, n_rows: int, normalise: bool) -> np.ndarray:
    import numpy as np

    matrix = np.asarray(flat, dtype=np.float32).reshape(n_rows, -1)
    if not normalise:
        return matrix
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1, keepdims=True)
    # A zero vector stays zero (cosine 0 with everything) instead of becoming NaN.
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def linear_algebra_backends(spark) -> dict:
    """Which BLAS/LAPACK implementations Spark ML uses in this JVM (ALS's normal equations use
    the native ones). `JNIBLAS`/`JNILAPACK` mean native (OpenBLAS, MKL, ...); `VectorBLAS`,
    `JavaBLAS` or `F2jBLAS` mean the pure-JVM fallback. "unknown" without a local JVM (Spark Connect)."""

    def backend(object_name: str, getter: str) -> str:
        try:
            module = spark._jvm.java.lang.Class.forName(object_name).getField("MODULE$").get(None)
            return getattr(module, getter)().getClass().getName()
        except Exception:  # noqa: BLE001 - diagnostics only
            return "unknown"

    native_blas = backend("org.apache.spark.ml.linalg.BLAS$", "nativeBLAS")
    native_lapack = backend("org.apache.spark.mllib.linalg.LAPACK$", "nativeLAPACK")
    return {
        "native_blas": native_blas,
        "native_lapack": native_lapack,
        "java_blas": backend("org.apache.spark.ml.linalg.BLAS$", "javaBLAS"),
        "uses_native": native_blas.endswith("JNIBLAS") and native_lapack.endswith("JNILAPACK"),
    }
