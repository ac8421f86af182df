"""One place that knows how to start Spark for this project, and how it sizes itself.

Every entry point (Dagster assets, `recsys predict` and `recsys serve`, the benches, the tests)
starts Spark through `build_spark_session`, so one set of rules decides its settings, in this
order of precedence:

1. `conf` passed by the caller (a resource's run config, a bench flag, a test fixture);
2. the environment: `RECSYS_SPARK_DRIVER_MEMORY`, `RECSYS_SPARK_EXECUTOR_MEMORY`,
   `RECSYS_SHUFFLE_PARTITIONS`, `RECSYS_BROADCAST_MAX_MB` and `RECSYS_SPARK_CONF` (any other
   Spark keys as whitespace- or comma-separated `key=value` pairs);
3. defaults derived from the machine and the cluster (`spark_defaults`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

# Settings that suit one machine and still run unchanged on a cluster.
BASE_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
    "spark.ui.showConsoleProgress": "false",
    # A union's output partitioning is not trusted: with broadcast joins under it, Spark can
    # claim a partitioning by session that one input lacks, and an aggregate over such a union
    # then skips its shuffle and leaves duplicate keys (`merge_by_keys` also repartitions its
    # union explicitly).
    "spark.sql.unionOutputPartitioning": "false",
    # Spark runs one task per core; native BLAS threads on top (ALS solves) oversubscribe the
    # cores (MLlib's linear algebra guide).
    "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
}

# In local mode the driver JVM is also every executor: it does all of Spark's work and gets half
# the machine; the other half is for the Python side (pandas UDF workers, LightGBM). Against a
# cluster the driver only plans, broadcasts and collects.
LOCAL_DRIVER_MEMORY_SHARE = 0.5
CLUSTER_DRIVER_MEMORY_SHARE = 0.25
# What `collect`, `toPandas` and broadcasts may bring to the driver, as a share of its heap.
MAX_RESULT_SHARE = 0.25
# A broadcast may hold this share of the driver heap. The size Spark estimates for a Parquet read
# is the compressed file size; rows in memory (and the hashed relation built from them) take
# several times that.
BROADCAST_HEAP_SHARE = 1 / 8
IN_MEMORY_EXPANSION = 4.0
# Shuffle partitions per core of the cluster (at least MIN_SHUFFLE_PARTITIONS): several waves of
# tasks per core keep a skewed task from holding up a whole stage.
SHUFFLE_PARTITIONS_PER_CORE = 4
MIN_SHUFFLE_PARTITIONS = 8

DRIVER_MEMORY = "spark.driver.memory"
SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"
# Project keys Spark ignores and the plans read back through `spark.conf`.
BROADCAST_MAX_BYTES = "spark.recsys.broadcastMaxBytes"


def available_memory_bytes() -> int:
    """Physical memory, or the container's memory limit when it is lower (cgroup v2 or v1)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def parse_memory_bytes(value: str) -> int:
    """Spark's notation for memory settings (`512m`, `12g`, `2048k`; a plain number is MiB, as
    Spark reads `spark.driver.memory`) in bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*(b|[kmgt]b?)?\s*", value.lower())
    if not match:
        raise ValueError(f"not a Spark memory size: {value!r} (expected e.g. 512m or 12g)")
    return int(match.group(1)) * 1024 ** "bkmgt".index((match.group(2) or "m")[0])


def _megabytes(n_bytes: float) -> str:
    return f"{max(1, int(n_bytes // 2**20))}m"


def is_local(master: str) -> bool:
    return master.startswith("local")


def conf_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Spark settings the environment asks for (module docstring)."""
    environ = os.environ if environ is None else environ
    conf: dict[str, str] = {}
    for pair in re.split(r"[\s,]+", environ.get("RECSYS_SPARK_CONF", "").strip()):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("spark."):
            raise ValueError(f"RECSYS_SPARK_CONF: expected spark.key=value pairs, got {pair!r}")
        conf[key] = value
    named = {
        "RECSYS_SPARK_DRIVER_MEMORY": DRIVER_MEMORY,
        "RECSYS_SPARK_EXECUTOR_MEMORY": "spark.executor.memory",
        "RECSYS_SHUFFLE_PARTITIONS": SHUFFLE_PARTITIONS,
    }
    for variable, key in named.items():
        if environ.get(variable, "").strip():
            conf[key] = environ[variable].strip()
    if environ.get("RECSYS_BROADCAST_MAX_MB", "").strip():
        conf[BROADCAST_MAX_BYTES] = str(int(float(environ["RECSYS_BROADCAST_MAX_MB"]) * 2**20))
    return conf


def spark_defaults(master: str, chosen: Mapping[str, str], memory_bytes: int | None = None) -> dict[str, str]:
    """Settings derived from the machine for whatever `chosen` leaves open: driver memory, the
    largest result and the largest broadcast (shares of the driver heap)."""
    memory_bytes = available_memory_bytes() if memory_bytes is None else memory_bytes
    share = LOCAL_DRIVER_MEMORY_SHARE if is_local(master) else CLUSTER_DRIVER_MEMORY_SHARE
    driver_memory = chosen.get(DRIVER_MEMORY) or _megabytes(max(memory_bytes * share, 2**30))
    heap = parse_memory_bytes(driver_memory)
    return {
        DRIVER_MEMORY: driver_memory,
        "spark.driver.maxResultSize": _megabytes(max(heap * MAX_RESULT_SHARE, 2**30)),
        BROADCAST_MAX_BYTES: str(int(heap * BROADCAST_HEAP_SHARE)),
    }


def resolved_conf(master: str, conf: Mapping[str, str] | None = None,
                  environ: Mapping[str, str] | None = None, memory_bytes: int | None = None) -> dict[str, str]:
    """Every setting `build_spark_session` starts Spark with, shuffle partitions aside when nobody
    chose them (they follow the cluster's cores, known once Spark runs)."""
    # An empty value chooses nothing (a launchpad field left blank).
    chosen = {**conf_from_env(environ), **{key: value for key, value in (conf or {}).items() if str(value).strip()}}
    return {**BASE_CONF, **spark_defaults(master, chosen, memory_bytes), **chosen}


def build_spark_session(master: str, conf: Mapping[str, str] | None = None, app_name: str = "session-recsys"):
    # Executors must run the same interpreter as the driver, or pandas UDFs and ML helpers
    # import a different Python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # In local mode the driver JVM started from here runs the tasks (BASE_CONF says why).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from pyspark.sql import SparkSession

    settings = resolved_conf(master, conf)
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    # Chosen by nobody: not by the caller or the environment, nor in spark-defaults.conf or by
    # the session getOrCreate may have returned.
    if SHUFFLE_PARTITIONS not in settings and not spark.sparkContext.getConf().contains(SHUFFLE_PARTITIONS):
        spark.conf.set(SHUFFLE_PARTITIONS, str(default_shuffle_partitions(cluster_cores(spark))))
    return spark


def cluster_cores(spark) -> int:
    """The cores the application will get: from its settings when they say (executors of a
    cluster usually register after the driver starts), else what Spark sees now."""
    conf = spark.sparkContext.getConf()
    if conf.contains("spark.cores.max"):
        return int(conf.get("spark.cores.max"))
    if conf.contains("spark.executor.instances"):
        return int(conf.get("spark.executor.instances")) * int(conf.get("spark.executor.cores", "1"))
    return spark.sparkContext.defaultParallelism


def default_shuffle_partitions(cores: int) -> int:
    return max(MIN_SHUFFLE_PARTITIONS, SHUFFLE_PARTITIONS_PER_CORE * cores)


def estimated_bytes(frame) -> int:
    """Spark's estimate of `frame`'s size (optimized plan statistics; for files, their size on disk)."""
    # A Scala BigInt: py4j hands it over as an int, or as an object whose str() is the number.
    return int(str(frame._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))


def broadcast_if_small(frame):
    """`frame` marked for broadcast when its estimated size in memory fits the broadcast budget
    (`spark.recsys.broadcastMaxBytes`), else unchanged (Spark then picks a shuffle join).

    Neighbour and stats tables are broadcast so the session side keeps its partitioning; a table
    grows with the catalogue, and one that does not fit the driver must not fail the run."""
    from pyspark.sql import functions as F

    budget = int(frame.sparkSession.conf.get(BROADCAST_MAX_BYTES, str(64 * 2**20)))
    return F.broadcast(frame) if estimated_bytes(frame) * IN_MEMORY_EXPANSION <= budget else frame


def release_driver_heap(spark) -> None:
    """Full GC in the driver JVM, after which G1 hands the unused part of its committed heap back to
    the OS (it keeps at most MaxHeapFreeRatio, 70%, free).

    For Python-heavy work that follows Spark work in the same process: after candidates and features
    of a 1M-session week the driver (local mode: driver and executors) keeps its whole heap committed,
    7 GB of RSS with a 6g heap, while LightGBM needs the memory and the JVM needs almost none of it.
    """
    spark.sparkContext._jvm.System.gc()
