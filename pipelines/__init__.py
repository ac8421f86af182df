"""Framework-free core of the session recommender: Spark and ML steps, quality suites, CLI.

Nothing in this package imports Dagster, so every step can be called from a unit test,
a benchmark script or the command line.
"""
