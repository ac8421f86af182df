"""The OTTO competition metric, with the official evaluator's semantics, plus NDCG and MRR.

Everything works on long frames so 150k sessions x 3 types x 20 predictions stay
vectorised: predictions `session, type, aid, rank` (rank 1 = best) and labels
`session, type, aid`. Semantics of otto-de/recsys-dataset `src/evaluate.py`:

- only the first k predictions of a (session, type) count, and a repeated aid counts once;
- clicks: hit if the clicked aid is among them, denominator 1;
- carts/orders: hits = |top-k ∩ truth|, denominator min(k, |truth|);
- a session without truth for a type is ignored for that type; a session with truth and
  no predictions scores 0; predictions for sessions without labels are ignored;
- score = 0.1 recall(clicks) + 0.3 recall(carts) + 0.6 recall(orders).

One deliberate difference: the official code treats aid 0 as "no click" (it tests
truthiness); here a click on aid 0 is a click.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.vocabulary import EVENT_TYPES, METRIC_TYPE_WEIGHTS

K = 20


TYPE_DTYPE = pd.CategoricalDtype(list(EVENT_TYPES))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `type` as the shared categorical: merges and de-duplication on (session, type,
    aid) then compare integer codes (with string types, scoring 15M predictions took 20 s)."""
    return frame if frame["type"].dtype == TYPE_DTYPE else frame.assign(type=frame["type"].astype(TYPE_DTYPE))


def _top_k_unique(predictions: pd.DataFrame, k: int) -> pd.DataFrame:
    top = predictions[predictions["rank"] <= k]
    return top.sort_values("rank").drop_duplicates(["session", "type", "aid"], keep="first")


def score_predictions(predictions: pd.DataFrame, labels: pd.DataFrame, k: int = K) -> dict[str, float]:
    """Recall@k per type and the weighted total; also NDCG@k, MRR@k and counts per type."""
    labels = _typed(labels).drop_duplicates(["session", "type", "aid"])
    top = _top_k_unique(_typed(predictions[["session", "type", "aid", "rank"]]), k)
    hits = top.merge(labels, on=["session", "type", "aid"], how="inner")

    truth_sizes = labels.groupby(["session", "type"]).size().rename("n_truth").reset_index()
    truth_sizes["denominator"] = np.minimum(truth_sizes["n_truth"], k)
    hits = hits.assign(gain=1.0 / np.log2(hits["rank"].to_numpy(dtype=float) + 1.0))
    per_query = truth_sizes.merge(
        hits.groupby(["session", "type"]).agg(hits=("aid", "size"), dcg=("gain", "sum"), best_rank=("rank", "min")).reset_index(),
        on=["session", "type"],
        how="left",
    ).fillna({"hits": 0, "dcg": 0.0})
    discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    per_query["idcg"] = discounts[per_query["denominator"].to_numpy() - 1]
    per_query["ndcg"] = per_query["dcg"] / per_query["idcg"]
    per_query["rr"] = (1.0 / per_query["best_rank"]).fillna(0.0)

    result: dict[str, float] = {}
    for event_type in EVENT_TYPES:
        rows = per_query[per_query["type"] == event_type]
        denominator = float(rows["denominator"].sum())
        result[f"recall_{event_type}"] = float(rows["hits"].sum()) / denominator if denominator else 0.0
        result[f"ndcg_{event_type}"] = float(rows["ndcg"].mean()) if len(rows) else 0.0
        result[f"mrr_{event_type}"] = float(rows["rr"].mean()) if len(rows) else 0.0
        result[f"sessions_{event_type}"] = int(len(rows))
    result["score"] = sum(METRIC_TYPE_WEIGHTS[t] * result[f"recall_{t}"] for t in EVENT_TYPES)
    return result


def candidate_recall(candidates: pd.DataFrame, labels: pd.DataFrame, k: int = K) -> dict[str, float]:
    """Recall of an unordered candidate set: hits capped at min(k, |truth|), the best any top-k ranking can do."""
    labels = _typed(labels).drop_duplicates(["session", "type", "aid"])
    hits = _typed(candidates[["session", "type", "aid"]]).drop_duplicates().merge(labels, on=["session", "type", "aid"])
    truth_sizes = labels.groupby(["session", "type"]).size().rename("n_truth").reset_index()
    truth_sizes["denominator"] = np.minimum(truth_sizes["n_truth"], k)
    per_query = truth_sizes.merge(hits.groupby(["session", "type"]).size().rename("hits").reset_index(), how="left")
    per_query["hits"] = np.minimum(per_query["hits"].fillna(0), per_query["denominator"])
    result = {}
    for event_type in EVENT_TYPES:
        rows = per_query[per_query["type"] == event_type]
        denominator = float(rows["denominator"].sum())
        result[f"recall_{event_type}"] = float(rows["hits"].sum()) / denominator if denominator else 0.0
    result["score"] = sum(METRIC_TYPE_WEIGHTS[t] * result[f"recall_{t}"] for t in EVENT_TYPES)
    return result


# --- files: the Kaggle submission CSV and the official labels JSONL ---------------------


def write_predictions_csv(predictions: pd.DataFrame, path: str | Path, k: int = K) -> None:
    """`session_type,labels` with space-separated aids, best first (the Kaggle format)."""
    top = _top_k_unique(predictions, k).sort_values(["session", "type", "rank"])
    grouped = top.groupby(["session", "type"], sort=True)["aid"].apply(lambda aids: " ".join(map(str, aids)))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["session_type", "labels"])
        for (session, event_type), aids in grouped.items():
            writer.writerow([f"{session}_{event_type}", aids])


def read_predictions_csv(path: str | Path) -> pd.DataFrame:
    rows = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["session_type", "labels"]:
            raise ValueError(f"{path}: expected header 'session_type,labels', got {header}")
        for line_number, row in enumerate(reader, start=2):
            if len(row) != 2 or "_" not in row[0]:
                raise ValueError(f"{path}:{line_number}: expected '<session>_<type>,<aids>', got {row}")
            session, event_type = row[0].rsplit("_", 1)
            if event_type not in EVENT_TYPES:
                raise ValueError(f"{path}:{line_number}: unknown type {event_type!r}")
            for rank, aid in enumerate(row[1].split(), start=1):
                rows.append((int(session), event_type, int(aid), rank))
    return pd.DataFrame(rows, columns=["session", "type", "aid", "rank"])


def write_labels_jsonl(labels: pd.DataFrame, path: str | Path) -> None:
    """One `{"session": s, "labels": {"clicks": aid, "carts": [...], "orders": [...]}}` per session."""
    with open(path, "w") as handle:
        for session, rows in labels.sort_values(["session", "type", "aid"]).groupby("session", sort=True):
            by_type = {t: sorted(int(a) for a in rows.loc[rows["type"] == t, "aid"]) for t in EVENT_TYPES}
            entry = {}
            if by_type["clicks"]:
                entry["clicks"] = by_type["clicks"][0]
            for event_type in ("carts", "orders"):
                if by_type[event_type]:
                    entry[event_type] = by_type[event_type]
            handle.write(json.dumps({"session": int(session), "labels": entry}) + "\n")


def read_labels_jsonl(path: str | Path) -> pd.DataFrame:
    rows: list[tuple[int, str, int]] = []
    with open(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                session, labels = int(record["session"]), record["labels"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{line_number}: not an OTTO labels line ({error})") from None
            if labels.get("clicks") is not None:
                rows.append((session, "clicks", int(labels["clicks"])))
            for event_type in ("carts", "orders"):
                rows.extend((session, event_type, int(aid)) for aid in labels.get(event_type) or [])
    return pd.DataFrame(rows, columns=["session", "type", "aid"])


def evaluate_files(labels_path: str | Path, predictions_path: str | Path, k: int = K) -> dict[str, float]:
    return score_predictions(read_predictions_csv(predictions_path), read_labels_jsonl(labels_path), k)


def long_from_lists(lists: Iterable[tuple[int, str, list[int]]]) -> pd.DataFrame:
    """(session, type, [aids best first]) tuples -> a long predictions frame."""
    rows = [(s, t, a, r) for s, t, aids in lists for r, a in enumerate(aids, start=1)]
    return pd.DataFrame(rows, columns=["session", "type", "aid", "rank"])


# --- the same metrics as Spark aggregates, for a week's predictions that stay in Spark ----------


def _spark_per_query(predictions, labels, k: int):
    """Spark, one row per (session, type) with truth: `denominator`, `hits`, `dcg`, `best_rank`
    (semantics of `score_predictions`)."""
    from pyspark.sql import functions as F

    truth = labels.select("session", "type", "aid").distinct()
    top = predictions.where(F.col("rank").between(1, k)).groupBy("session", "type", "aid").agg(F.min("rank").alias("rank"))
    hits = top.join(truth, ["session", "type", "aid"]).groupBy("session", "type").agg(
        F.count(F.lit(1)).alias("hits"),
        F.sum(1.0 / F.log2(F.col("rank") + 1.0)).alias("dcg"),
        F.min("rank").alias("best_rank"),
    )
    sizes = truth.groupBy("session", "type").agg(F.least(F.count(F.lit(1)), F.lit(k)).alias("denominator"))
    return sizes.join(hits, ["session", "type"], "left").fillna(0, subset=["hits", "dcg"])


def _per_type_rows(frame) -> dict[str, dict]:
    return {row["type"]: row.asDict() for row in frame.collect()}


def spark_score(predictions, labels, k: int = K) -> dict[str, float]:
    """`score_predictions` for Spark `predictions` (`session, type, aid, rank`) and `labels`."""
    from pyspark.sql import functions as F

    discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    ideal = F.element_at(F.array(*[F.lit(float(d)) for d in discounts]), F.col("denominator").cast("int"))
    per_type = _per_type_rows(_spark_per_query(predictions, labels, k).groupBy("type").agg(
        F.sum("hits").alias("hits"),
        F.sum("denominator").alias("denominator"),
        F.avg(F.col("dcg") / ideal).alias("ndcg"),
        F.avg(F.coalesce(1.0 / F.col("best_rank"), F.lit(0.0))).alias("mrr"),
        F.count(F.lit(1)).alias("sessions"),
    ))
    result: dict[str, float] = {}
    for event_type in EVENT_TYPES:
        row = per_type.get(event_type)
        result[f"recall_{event_type}"] = float(row["hits"]) / float(row["denominator"]) if row and row["denominator"] else 0.0
        result[f"ndcg_{event_type}"] = float(row["ndcg"]) if row else 0.0
        result[f"mrr_{event_type}"] = float(row["mrr"]) if row else 0.0
        result[f"sessions_{event_type}"] = int(row["sessions"]) if row else 0
    result["score"] = sum(METRIC_TYPE_WEIGHTS[t] * result[f"recall_{t}"] for t in EVENT_TYPES)
    return result


def spark_candidate_recall(candidates, labels, k: int = K) -> dict[str, float]:
    """`candidate_recall` for Spark `candidates` (`session, type, aid`) and `labels`."""
    from pyspark.sql import functions as F

    truth = labels.select("session", "type", "aid").distinct()
    hits = candidates.select("session", "type", "aid").distinct().join(truth, ["session", "type", "aid"]) \
        .groupBy("session", "type").agg(F.count(F.lit(1)).alias("hits"))
    sizes = truth.groupBy("session", "type").agg(F.least(F.count(F.lit(1)), F.lit(k)).alias("denominator"))
    per_type = _per_type_rows(sizes.join(hits, ["session", "type"], "left").groupBy("type").agg(
        F.sum(F.least(F.coalesce("hits", F.lit(0)), "denominator")).alias("hits"),
        F.sum("denominator").alias("denominator"),
    ))
    result = {}
    for event_type in EVENT_TYPES:
        row = per_type.get(event_type)
        result[f"recall_{event_type}"] = float(row["hits"]) / float(row["denominator"]) if row and row["denominator"] else 0.0
    result["score"] = sum(METRIC_TYPE_WEIGHTS[t] * result[f"recall_{t}"] for t in EVENT_TYPES)
    return result


def spark_recall_curve(predictions, labels, ks=(1, 2, 5, 10, 15, 20), k: int = K) -> pd.DataFrame:
    """Recall per type (and score) of one ranked list cut at each of `ks`, in one pass over the hits;
    the denominators are those of recall@k."""
    from pyspark.sql import functions as F

    truth = labels.select("session", "type", "aid").distinct()
    top = predictions.where(F.col("rank").between(1, k)).groupBy("session", "type", "aid").agg(F.min("rank").alias("rank"))
    hits = top.join(truth, ["session", "type", "aid"]).groupBy("type").agg(
        *[F.count(F.when(F.col("rank") <= cut, 1)).alias(f"at_{cut}") for cut in ks])
    sizes = truth.groupBy("session", "type").agg(F.least(F.count(F.lit(1)), F.lit(k)).alias("denominator")) \
        .groupBy("type").agg(F.sum("denominator").alias("denominator"))
    hit_rows, size_rows = _per_type_rows(hits), _per_type_rows(sizes)
    rows = []
    for cut in ks:
        recall = {t: (hit_rows.get(t, {}).get(f"at_{cut}", 0) / size_rows[t]["denominator"]) if t in size_rows else 0.0
                  for t in EVENT_TYPES}
        rows.append({"k": cut, **recall, "score": sum(METRIC_TYPE_WEIGHTS[t] * recall[t] for t in EVENT_TYPES)})
    return pd.DataFrame(rows)


def _single_text_file(frame, path: str | Path, header: str | None = None) -> None:
    """Write a Spark frame of one string column `line`, in its order, as the local file `path` on
    the driver (an MLflow artifact to log from there).

    The lines stream to the driver one partition at a time, so its memory holds one partition,
    and executors on other hosts need no access to `path`."""
    with open(path, "w") as target:
        if header is not None:
            target.write(header + "\n")
        for row in frame.toLocalIterator():
            target.write(row["line"] + "\n")


def spark_write_predictions_csv(predictions, path: str | Path, k: int = K) -> None:
    """`write_predictions_csv` for Spark `predictions`: the same rows (LF line ends)."""
    from pyspark.sql import functions as F

    top = predictions.where(F.col("rank").between(1, k)).groupBy("session", "type", "aid").agg(F.min("rank").alias("rank"))
    lists = top.groupBy("session", "type").agg(F.sort_array(F.collect_list(F.struct("rank", "aid"))).alias("ranked"))
    lines = lists.select(
        "session", "type",
        F.concat(F.col("session").cast("string"), F.lit("_"), F.col("type"), F.lit(","),
                 F.concat_ws(" ", F.transform("ranked", lambda r: r["aid"].cast("string")))).alias("line"),
    ).orderBy("session", "type").select("line")
    _single_text_file(lines, path, header="session_type,labels")


def spark_write_labels_jsonl(labels, path: str | Path) -> None:
    """`write_labels_jsonl` for Spark long `labels`: the same records (compact JSON)."""
    from pyspark.sql import functions as F

    truth = labels.select("session", "type", "aid").distinct()
    per_session = truth.groupBy("session").agg(
        F.min(F.when(F.col("type") == "clicks", F.col("aid"))).alias("clicks"),
        *[F.array_sort(F.collect_list(F.when(F.col("type") == t, F.col("aid")))).alias(t) for t in ("carts", "orders")],
    )
    # An empty list is left out, like a missing click (to_json drops null fields).
    entry = F.struct(
        "clicks", *[F.when(F.size(t) > 0, F.col(t)).alias(t) for t in ("carts", "orders")]
    )
    lines = per_session.select("session", F.to_json(F.struct(
        F.col("session"), entry.alias("labels"))).alias("line")).orderBy("session").select("line")
    _single_text_file(lines, path)
