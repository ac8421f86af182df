"""The servable model: the bundle (`bundle`), its in-memory scorer (`scorer`).

`pipelines.model.RecommenderModel` stays importable here: versions registered before the bundle
moved into this package name the class by this path.
"""

from pipelines.model.bundle import (
    BUNDLE_ARTIFACT,
    INFO_FILE,
    MODEL_ARTIFACT_PATH,
    RECOMMENDATIONS_SCHEMA,
    TABLE_NAMES,
    Bundle,
    Champion,
    IncompatibleModelError,
    InvalidSessionsError,
    RecommenderModel,
    load_champion,
    load_version,
    log_recommender,
    otto_sessions_to_long,
    pip_requirements,
    prefixes_from_events,
    recommendations_to_long,
    save_bundle,
    spark_recommendations_to_long,
    top_k_lists,
)

__all__ = [
    "BUNDLE_ARTIFACT", "INFO_FILE", "MODEL_ARTIFACT_PATH", "RECOMMENDATIONS_SCHEMA", "TABLE_NAMES", "Bundle",
    "Champion", "IncompatibleModelError", "InvalidSessionsError", "RecommenderModel", "load_champion", "load_version", "log_recommender",
    "otto_sessions_to_long", "pip_requirements", "prefixes_from_events", "recommendations_to_long", "save_bundle",
    "spark_recommendations_to_long", "top_k_lists",
]
