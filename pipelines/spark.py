"""One place that knows how to start Spark for this project."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# Defaults that suit one machine and still run unchanged on a cluster; every key can be
# overridden through `conf`.
BASE_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
    "spark.ui.showConsoleProgress": "false",
}


def build_spark_session(master: str, conf: Mapping[str, str] | None = None, app_name: str = "session-recsys"):
    # Executors must run the same interpreter as the driver, or pandas UDFs and ML helpers
    # import a different Python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in {**BASE_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def release_driver_heap(spark) -> None:
    """Full GC in the driver JVM, after which G1 hands the unused part of its committed heap back to
    the OS (it keeps at most MaxHeapFreeRatio, 70%, free).

    For Python-heavy work that follows Spark work in the same process: after candidates and features
    of a 1M-session week the driver (local mode: driver and executors) keeps its whole heap committed,
    7 GB of RSS with a 6g heap, while LightGBM needs the memory and the JVM needs almost none of it.
    """
    spark.sparkContext._jvm.System.gc()
