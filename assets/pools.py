"""Dagster concurrency pools (limits in the instance's dagster.yaml, `concurrency.pools`).

Every asset that runs Spark is in `spark`, publishing is in `publish`: with the default limit
of 1, a CLI materialization or `jobs.run_weeks` waits for a queued run's step instead of
starting a second Spark driver or a second publisher next to it.
"""

SPARK_POOL = "spark"
PUBLISH_POOL = "publish"
