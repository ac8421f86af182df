"""The servable recommender: one MLflow pyfunc holding the rankers and naming the week's source tables.

A bundle is a small folder (what MLflow stores and every run downloads once):

    model_info.json      feature columns and code version, candidate config, week, scores, and
                         `tables`: name -> location of covisitation, similar_items, top_sellers, item_stats
    rankers/<type>.txt   LightGBM model per target type

The tables are not copied into it: `save_bundle` has Spark write them once, as an immutable
snapshot, into a folder of the lake (`Lake.model_tables_dir(run id)`), and the bundle names that
folder. Every executor reads them there, on a cluster too (the lake is the storage every node
can read), instead of from a driver-local download of the artifact store. Serving a bundle
therefore needs read access to the lake.

`recommend` turns sessions into top-20 lists per type with the exact Spark code that built the
training rows (`pipelines.features.candidate_features`), then scores them with the rankers inside
Spark (`mapInArrow`), so batch tables, `recsys predict` and `mlflow models serve` all rank the
way the evaluation measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

try:  # mlflow is a dependency of the project; the import guard keeps `pipelines` importable without it.
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object

from pipelines.candidates import CandidateConfig, last_elements
from pipelines.features import FEATURE_CODE_VERSION, FEATURE_COLUMNS, SourceTables, candidate_features
from pipelines.metrics import K
from pipelines.ranker import score_rows
from pipelines.vocabulary import EVENT_TYPES, TYPE_ORDER

BUNDLE_ARTIFACT = "bundle"
MODEL_ARTIFACT_PATH = "recommender"
INFO_FILE = "model_info.json"
TABLE_NAMES = ("covisitation", "similar_items", "top_sellers", "item_stats")
RECOMMENDATIONS_SCHEMA = "session BIGINT, type STRING, recs ARRAY<BIGINT>, scores ARRAY<FLOAT>"
# A served session's history is cut to its last events as the `sessions` asset cuts it
# (RECSYS_MAX_SESSION_EVENTS' default).
MAX_SESSION_EVENTS = 500


class IncompatibleModelError(ValueError):
    """A bundle this code cannot serve: it was trained with other feature columns. The one error that
    makes a registered version "not comparable" in the champion gate; any other failure is a failure."""


class InvalidSessionsError(ValueError):
    """Input sessions that cannot be scored (the message says which and why)."""


def save_bundle(directory: str | Path, tables: SourceTables, rankers: dict, info: dict, tables_dir: str | Path) -> Path:
    """Write the rankers (LightGBM boosters) and the model info into `directory`, and the tables
    (Spark frames) as Parquet under `tables_dir`, a folder of the lake that nothing else writes
    (`Lake.model_tables_dir`): the bundle records where they are and how big they are."""
    directory, tables_dir = Path(directory), Path(tables_dir).resolve()
    if tables_dir.exists():
        raise FileExistsError(f"{tables_dir} already holds a model's tables; a snapshot is written once")
    (directory / "rankers").mkdir(parents=True, exist_ok=True)
    locations, table_bytes = {}, {}
    for name in TABLE_NAMES:
        target = tables_dir / name
        getattr(tables, name).write.parquet(str(target))
        locations[name] = str(target)
        table_bytes[name] = sum(path.stat().st_size for path in target.glob("*.parquet"))
    for event_type, booster in rankers.items():
        booster.save_model(str(directory / "rankers" / f"{event_type}.txt"))
    full_info = {"feature_columns": FEATURE_COLUMNS, "feature_code_version": FEATURE_CODE_VERSION,
                 "tables": locations, "table_bytes": table_bytes, **info}
    (directory / INFO_FILE).write_text(json.dumps(full_info, indent=2, sort_keys=True, default=str))
    return directory


class Bundle:
    """A bundle folder opened for scoring."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.info = json.loads((self.directory / INFO_FILE).read_text())
        if self.info["feature_columns"] != FEATURE_COLUMNS:
            raise IncompatibleModelError(
                f"model bundle {self.directory} was trained with other features "
                f"(feature code version {self.info.get('feature_code_version')}, this code {FEATURE_CODE_VERSION})"
            )
        self.candidate_config = CandidateConfig(**self.info.get("candidate_config", {}))
        self.ranker_strings = {
            event_type: (self.directory / "rankers" / f"{event_type}.txt").read_text() for event_type in EVENT_TYPES
        }
        # Trees to use per type, as chosen in training (0: the hand-rule prior alone).
        self.ranker_rounds = {t: int(n) for t, n in self.info.get("ranker_rounds", {}).items()}

    def table_location(self, name: str) -> str:
        """Where the table is read from: the lake snapshot the bundle names (bundles saved before
        snapshots existed carry the table in their own `tables/` folder)."""
        return self.info.get("tables", {}).get(name) or str(self.directory / "tables" / name)

    def table_locations(self) -> dict[str, str]:
        """TABLE_NAMES -> where each is read from; FileNotFoundError, saying what to do, when one is gone."""
        locations = {name: self.table_location(name) for name in TABLE_NAMES}
        missing = [location for location in locations.values() if not Path(location).exists()]
        if missing:
            raise FileNotFoundError(
                f"model bundle {self.directory} (week {self.info.get('week')}) reads its tables from the lake, and "
                f"{missing} is not there: the serving process must see the lake the model was trained with "
                "(RECSYS_LAKE_DIR), and its `model_tables` folders must be kept while the model serves"
            )
        return locations

    @property
    def sources_week(self) -> str | None:
        """The week whose sources the bundle reads (its training week for bundles saved before
        `with_sources` existed: they bundled that week's tables)."""
        return self.info.get("sources_week", self.info.get("week"))

    def lake_root(self) -> Path | None:
        """The lake the bundle's tables were snapshot in (`Lake.model_tables_dir`), if they were."""
        from pipelines.lake import MODEL_TABLES

        location = Path(self.table_location(TABLE_NAMES[0]))
        snapshot = location.parent.parent
        return snapshot.parent if snapshot.name == MODEL_TABLES else None

    def with_sources(self, lake_root: str | Path, week: str) -> "Bundle":
        """The same rankers reading week `week`'s live (audited) source tables of `lake_root`: what is
        served once a later week's sources are published than the ones the model was trained with."""
        from pipelines.lake import SUCCESS_MARKER

        locations = {name: Path(lake_root) / name / f"week={week}" for name in TABLE_NAMES}
        missing = [str(path) for path in locations.values() if not (path / SUCCESS_MARKER).exists()]
        if missing:
            raise FileNotFoundError(f"week {week}'s sources are not live in the lake {lake_root}: {missing}")
        served = object.__new__(Bundle)
        served.__dict__.update(self.__dict__)
        served.info = {**self.info, "tables": {name: str(path) for name, path in locations.items()},
                       "sources_week": week, "bundled_sources_week": self.sources_week}
        return served

    def serving(self, week: str | None = None) -> "Bundle":
        """What serves: the rankers with week `week`'s sources, or by default with the freshest week's
        whose four tables are live in the bundle's lake, when it is later than the bundle's own."""
        root = self.lake_root()
        if week is not None:
            if root is None:
                raise FileNotFoundError(f"model bundle {self.directory} has no lake snapshot to find week {week}'s sources in")
            return self.with_sources(root, week)
        week = None if root is None else serving_week(root, self.sources_week)
        return self if week is None or week == self.sources_week else self.with_sources(root, week)

    def tables(self, spark) -> SourceTables:
        return SourceTables(**{name: spark.read.parquet(location) for name, location in self.table_locations().items()})

    def size_bytes(self) -> dict[str, int]:
        """The bundle's own files (what MLflow stores) and the lake tables it reads."""
        own = sum(path.stat().st_size for path in self.directory.rglob("*") if path.is_file())
        return {"bundle": own, "tables": sum(self.info.get("table_bytes", {}).values())}

    def recommend(self, sessions, k: int = K, tables: SourceTables | None = None):
        """`sessions`: Spark `session, prefix` -> Spark `session, type, recs, scores` (top k per type), from
        the bundle's tables or, given, another week's (`recommendation_tables`: the champion's boosters
        with the published week's sources)."""
        tables = tables if tables is not None else self.tables(sessions.sparkSession)
        features = candidate_features(sessions, tables, self.candidate_config)
        return top_k_lists(score_rows(features, self.ranker_strings, self.ranker_rounds), k)


def freshest_sources_week(lake_root: str | Path) -> str | None:
    """The latest week whose four source tables (TABLE_NAMES) are all live in the lake: a live
    partition passed its asset's checks (write-audit-publish)."""
    from pipelines.lake import SUCCESS_MARKER

    live = None
    for name in TABLE_NAMES:
        weeks = {path.parent.name.removeprefix("week=") for path in Path(lake_root, name).glob(f"week=*/{SUCCESS_MARKER}")}
        live = weeks if live is None else live & weeks
    return max(live, default=None)


def serving_week(lake_root: str | Path, own_week: str | None) -> str | None:
    """The week whose sources serve a model that reads `own_week`'s: the freshest live week of the
    lake when it is later, else its own."""
    freshest = freshest_sources_week(lake_root)
    return own_week if freshest is None or (own_week is not None and freshest <= own_week) else freshest


def top_k_lists(scored, k: int = K, keys: tuple[str, ...] = ("session", "type"), item: str = "aid"):
    """`*keys, recs, scores`: per key, the k best `item`s of Spark `scored` by its `score` column
    (descending, ties by the smaller item, null or NaN scores last), scores as float. The one
    helper for every published or served list: session lists, neighbour lists."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    value = F.when(~F.isnan("score"), F.col("score"))
    order = Window.partitionBy(*keys).orderBy(value.desc_nulls_last(), F.asc(item))
    best = scored.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= k)
    grouped = best.groupBy(*keys).agg(F.sort_array(F.collect_list(F.struct("_rank", item, "score"))).alias("ranked"))
    return grouped.select(
        *keys,
        F.transform("ranked", lambda r: r[item]).alias("recs"),
        F.transform("ranked", lambda r: r["score"].cast("float")).alias("scores"),
    )


def otto_sessions_to_long(frame: pd.DataFrame) -> pd.DataFrame:
    """OTTO rows (`session`, `events`: list of {aid, ts, type}) -> `session, aid, ts, type`, validated."""
    if not {"session", "events"} <= set(frame.columns):
        raise InvalidSessionsError(f"expected columns 'session' and 'events', got {list(frame.columns)}")
    exploded = frame[["session", "events"]].explode("events", ignore_index=True)
    empty = exploded["events"].isna()
    if empty.any():
        raise InvalidSessionsError(f"sessions without events: {exploded.loc[empty, 'session'].head(5).tolist()}")
    events = pd.DataFrame.from_records(exploded["events"].tolist(), columns=["aid", "ts", "type"])
    events.insert(0, "session", exploded["session"].to_numpy())
    unknown = ~events["type"].isin(EVENT_TYPES)
    if unknown.any():
        raise InvalidSessionsError(
            f"unknown event types {sorted(events.loc[unknown, 'type'].astype(str).unique())[:5]} "
            f"(sessions {events.loc[unknown, 'session'].head(5).tolist()}); expected one of {list(EVENT_TYPES)}"
        )
    try:
        for column in ("session", "aid", "ts"):
            events[column] = pd.to_numeric(events[column], errors="raise").astype("int64")
    except (ValueError, TypeError) as error:
        raise InvalidSessionsError(f"session, aid and ts must be integers: {error}") from None
    if (events[["session", "aid", "ts"]] < 0).to_numpy().any():
        raise InvalidSessionsError("session, aid and ts must be non-negative")
    return events


def prefixes_from_events(events, max_events: int = 500):
    """Spark `session, aid, ts, type` -> `session, prefix` ordered like the `sessions` asset, last `max_events` kept."""
    from pyspark.sql import functions as F

    type_rank = F.create_map(*[x for name, rank in TYPE_ORDER.items() for x in (F.lit(name), F.lit(rank))])
    grouped = events.groupBy("session").agg(
        F.array_sort(F.collect_list(F.struct("ts", type_rank[F.col("type")].alias("type_rank"), "aid", "type"))).alias(
            "ordered"
        )
    )
    kept = last_elements("ordered", max_events)
    return grouped.select(
        "session",
        F.transform(kept, lambda e: F.struct(e["ts"].alias("ts"), e["aid"].alias("aid"), e["type"].alias("type"))).alias(
            "prefix"
        ),
    )


class RecommenderModel(PythonModel):
    """pyfunc: OTTO sessions in (`session`, `events`), top-20 per type out (`session, type, recs, scores`)."""

    def load_context(self, context):
        self.bundle = Bundle(context.artifacts[BUNDLE_ARTIFACT])
        self._scorer = None
        self.sources_week = None  # None: the freshest live week's sources (`Bundle.serving`)

    def use_sources(self, week: str | None) -> None:
        """Serve with week `week`'s sources (reproduces what that week published with these rankers),
        or with the freshest week's (None)."""
        self.sources_week, self._scorer = week, None

    @property
    def served_bundle(self) -> Bundle:
        return self.bundle.serving(getattr(self, "sources_week", None))

    @property
    def scorer(self):
        """The rankers with the freshest live week's sources (or `use_sources`' week) in the in-memory
        scorer, built at the first prediction: a process that loads the model for its Spark path
        (`Bundle.recommend`: the weekly tables, forward scoring) never reads the tables into memory."""
        from pipelines.model.scorer import InMemoryScorer

        if getattr(self, "_scorer", None) is None:
            served = self.served_bundle
            self._scorer = InMemoryScorer.from_bundle(served)
            self.served_sources_week = served.sources_week
        return self._scorer

    def predict(self, context, model_input, params=None):
        """Sessions scored by the in-memory scorer, no Spark: the lists `recsys serve` answers."""
        from pipelines.model.scorer import sessions_from_events

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if frame.empty:
            return pd.DataFrame({"session": [], "type": [], "recs": [], "scores": []})
        events = otto_sessions_to_long(frame)
        result = self.scorer.recommend(sessions_from_events(events, MAX_SESSION_EVENTS))
        return result[["session", "type", "recs", "scores"]].sort_values(
            ["session", "type"], key=lambda column: column.map(TYPE_ORDER) if column.name == "type" else column,
            kind="stable", ignore_index=True)


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    bundle: Bundle


def load_champion(tracking_uri: str, name: str, alias: str = "champion") -> Champion:
    """The registered version behind `alias`, with its bundle opened (downloaded from the artifact store)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise LookupError(
            f"no '{alias}' version of registered model {name!r} at {tracking_uri}: no week has passed the champion "
            f"gate yet, so there is no model to recommend with ({error.message})"
        ) from None
    return _opened(tracking_uri, name, version, f"models:/{name}@{alias}")


def load_version(tracking_uri: str, name: str, version: str) -> Champion:
    """Registered version `version` of `name`, with its bundle opened, whether or not it is the champion."""
    from mlflow import MlflowClient

    registered = MlflowClient(tracking_uri=tracking_uri).get_model_version(name, str(version))
    return _opened(tracking_uri, name, registered, f"models:/{name}/{version}")


def _opened(tracking_uri: str, name: str, version, model_uri: str) -> Champion:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    return Champion(name=name, version=str(version.version), run_id=version.run_id,
                    bundle=model.unwrap_python_model().bundle)


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "pyspark", "lightgbm", "pandas", "numpy", "pyarrow")]


# One OTTO session, what the model takes (and `recsys serve` answers); logged as the model's
# input example so the MLflow UI and `mlflow models serve` show the request shape.
INPUT_EXAMPLE = [{"session": 42, "events": [{"aid": 1517085, "ts": 1659304800000, "type": "clicks"},
                                            {"aid": 1563459, "ts": 1659304904000, "type": "carts"}]}]


def model_signature():
    """Sessions (`session`, `events`: [{aid, ts, type}]) in; one row per (session, type) out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

    event = Object([Property("aid", "long"), Property("ts", "long"), Property("type", "string")])
    return ModelSignature(
        inputs=Schema([ColSpec("long", "session"), ColSpec(Array(event), "events")]),
        outputs=Schema([ColSpec("long", "session"), ColSpec("string", "type"), ColSpec(Array("long"), "recs"),
                        ColSpec(Array("double"), "scores")]),
    )


def log_recommender(bundle_dir: str | Path, name: str = MODEL_ARTIFACT_PATH):
    """Log the bundle as a pyfunc model into the active MLflow run (models from code: the code file
    `recommender_code.py` and the `pipelines` package, nothing pickled), with its signature and an
    input example; returns mlflow's ModelInfo."""
    import mlflow

    pipelines_dir = Path(__file__).resolve().parents[1]
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("recommender_code.py")),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        code_paths=[str(pipelines_dir)],
        pip_requirements=pip_requirements(),
        signature=model_signature(),
        input_example=pd.DataFrame(INPUT_EXAMPLE),
    )


def spark_recommendations_to_long(recommendations):
    """Spark `session, type, recs` lists -> long `session, type, aid, rank` predictions."""
    from pyspark.sql import functions as F

    return recommendations.select("session", "type", F.posexplode("recs").alias("position", "aid")).select(
        "session", "type", "aid", (F.col("position") + 1).alias("rank"))


def recommendations_to_long(recommendations: pd.DataFrame) -> pd.DataFrame:
    """`session, type, recs` lists -> long `session, type, aid, rank` predictions."""
    exploded = recommendations[["session", "type", "recs"]].explode("recs").dropna(subset=["recs"])
    exploded = exploded.rename(columns={"recs": "aid"}).astype({"aid": "int64"})
    return exploded.assign(rank=exploded.groupby(["session", "type"]).cumcount() + 1)
