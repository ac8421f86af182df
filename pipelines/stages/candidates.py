"""The `candidates` stage: the week's candidate rows and their recall report."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.candidates import (
    CANDIDATES_TABLE,
    CANDIDATE_CONFIG,
    CandidateConfig,
    build_candidates,
    label_hits,
    recall_report,
)
from pipelines.metrics import K


@dataclass(frozen=True)
class CandidatesSummary:
    """What `materialize_candidates_week` wrote for week W and how well it covers the labels."""

    rows: int
    per_query: float  # candidate rows per (session, type), on average
    # recall@20 and the candidate ceiling per source and combined, the hand rule's and popularity's scores
    report: dict[str, dict[str, float]]
    seconds: float


def materialize_candidates_week(spark, lake, week, sources_week, config: CandidateConfig = CANDIDATE_CONFIG
                                ) -> CandidatesSummary:
    """Build week W's candidate rows (its evaluation sessions' visible prefixes, `sources_week`'s
    tables), replace the week's `candidates` partition and report their recall against W's labels."""
    import time

    from pipelines.evaluation import EVAL_LABELS_TABLE, EVAL_SESSIONS_TABLE, labels_long
    from pipelines.features import source_tables
    from pipelines.metrics import spark_score
    from pipelines.popularity import popularity_predictions

    started = time.perf_counter()
    read = lambda table: lake.read_partition(spark, table, week)  # noqa: E731
    sources = source_tables(spark, lake, sources_week)
    lake.write_partition(build_candidates(read(EVAL_SESSIONS_TABLE), sources.covisitation, sources.similar_items,
                                          sources.top_sellers, config), CANDIDATES_TABLE, week)
    written = read(CANDIDATES_TABLE)
    labels = labels_long(read(EVAL_LABELS_TABLE))
    report = recall_report(label_hits(written, labels), labels.toPandas())
    report["baseline_popularity"] = spark_score(popularity_predictions(labels, sources.top_sellers, K), labels)
    per_query = written.groupBy("session", "type").count().agg({"count": "avg"}).first()[0]
    return CandidatesSummary(rows=written.count(), per_query=float(per_query or 0.0), report=report,
                             seconds=time.perf_counter() - started)
