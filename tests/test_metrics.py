"""The OTTO metric against hand-computed cases, including the official evaluator's test cases."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from pipelines.metrics import (
    candidate_recall,
    evaluate_files,
    long_from_lists,
    read_labels_jsonl,
    score_predictions,
    write_labels_jsonl,
    write_predictions_csv,
)


def labels_frame(labels: dict[int, dict]) -> pd.DataFrame:
    rows = []
    for session, truth in labels.items():
        if truth.get("clicks") is not None:
            rows.append((session, "clicks", truth["clicks"]))
        for event_type in ("carts", "orders"):
            rows.extend((session, event_type, aid) for aid in truth.get(event_type, ()))
    return pd.DataFrame(rows, columns=["session", "type", "aid"])


def predictions_frame(predictions: dict[int, dict]) -> pd.DataFrame:
    return long_from_lists((s, t, aids) for s, by_type in predictions.items() for t, aids in by_type.items())


# The case of otto-de/recsys-dataset test/test_evaluate.py::test_get_scores (k=3): session 4
# has labels but no predictions, session 1 has no click or cart truth, lists longer than k.
OFFICIAL_PREDICTIONS = {
    1: {"clicks": [1, 2, 3], "carts": [1, 2, 3], "orders": [1, 32, 33]},
    2: {"clicks": [1000003, 2, 3], "carts": [1000004, 2, 3, 1000007], "orders": [1, 2, 3]},
    3: {"clicks": [1, 2, 3], "carts": [1000007, 1000004, 3], "orders": [1, 2, 3]},
}
OFFICIAL_LABELS = {
    1: {"clicks": None, "carts": set(), "orders": {0, 1, 2, 3, 4, 5, 16, 17, 18, 19, 20}},
    2: {"clicks": 1000003, "carts": {1000000, 1000004, 1000007}, "orders": {1000000, 1000004}},
    3: {"clicks": 1000003, "carts": {1000000, 1000004, 1000007}, "orders": set()},
    4: {"clicks": 1000003, "carts": {1000000, 1000004, 1000007}, "orders": set()},
}


def test_official_get_scores_case():
    result = score_predictions(predictions_frame(OFFICIAL_PREDICTIONS), labels_frame(OFFICIAL_LABELS), k=3)
    assert result["recall_clicks"] == pytest.approx(1 / 3)
    assert result["recall_carts"] == pytest.approx(3 / 9)
    assert result["recall_orders"] == pytest.approx(1 / 5)
    assert result["score"] == pytest.approx(0.1 / 3 + 0.3 * 3 / 9 + 0.6 / 5)


def test_only_top_k_counts_and_duplicates_count_once():
    labels = labels_frame({7: {"orders": {1, 2, 3}}})
    predictions = predictions_frame({7: {"orders": [1, 1, 1, 9, 2, 3]}})
    assert score_predictions(predictions, labels, k=3)["recall_orders"] == pytest.approx(1 / 3)
    # More than 20 predictions: the 21st never counts.
    labels = labels_frame({8: {"clicks": 21}})
    predictions = predictions_frame({8: {"clicks": list(range(1, 22))}})
    assert score_predictions(predictions, labels)["recall_clicks"] == 0.0


def test_empty_truth_is_ignored_and_missing_session_scores_zero():
    labels = labels_frame({1: {"clicks": 5}, 2: {"clicks": 6, "carts": {7}}})
    predictions = predictions_frame({1: {"clicks": [5], "carts": [99]}, 3: {"clicks": [6]}})
    result = score_predictions(predictions, labels)
    assert result["recall_clicks"] == pytest.approx(1 / 2)
    assert result["recall_carts"] == 0.0
    assert result["sessions_carts"] == 1
    assert result["recall_orders"] == 0.0 and result["sessions_orders"] == 0


def test_denominator_is_capped_at_k():
    labels = labels_frame({1: {"orders": set(range(30))}})
    predictions = predictions_frame({1: {"orders": list(range(20))}})
    assert score_predictions(predictions, labels)["recall_orders"] == 1.0


def test_ndcg_and_mrr_by_hand():
    labels = labels_frame({1: {"carts": {10, 20}}})
    predictions = predictions_frame({1: {"carts": [5, 10, 20]}})
    result = score_predictions(predictions, labels)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert result["ndcg_carts"] == pytest.approx(dcg / idcg)
    assert result["mrr_carts"] == pytest.approx(1 / 2)


def test_candidate_recall_caps_hits_at_the_denominator():
    labels = labels_frame({1: {"orders": set(range(25))}, 2: {"clicks": 3}})
    candidates = predictions_frame({1: {"orders": list(range(40))}, 2: {"clicks": [1, 2]}})
    result = candidate_recall(candidates, labels)
    assert result["recall_orders"] == 1.0
    assert result["recall_clicks"] == 0.0


def test_files_round_trip_to_the_same_score(tmp_path):
    labels = labels_frame(OFFICIAL_LABELS)
    predictions = predictions_frame(OFFICIAL_PREDICTIONS)
    write_labels_jsonl(labels, tmp_path / "labels.jsonl")
    write_predictions_csv(predictions, tmp_path / "predictions.csv")
    assert (tmp_path / "predictions.csv").read_text().splitlines()[:2] == [
        "session_type,labels", "1_carts,1 2 3",
    ]
    assert read_labels_jsonl(tmp_path / "labels.jsonl").sort_values(["session", "type", "aid"]).reset_index(drop=True).equals(
        labels.sort_values(["session", "type", "aid"]).reset_index(drop=True)
    )
    assert evaluate_files(tmp_path / "labels.jsonl", tmp_path / "predictions.csv") == score_predictions(predictions, labels)


def test_malformed_prediction_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.csv").write_text("session_type,labels\n12_views,1 2\n")
    (tmp_path / "labels.jsonl").write_text('{"session": 12, "labels": {"clicks": 1}}\n')
    with pytest.raises(ValueError, match="unknown type 'views'"):
        evaluate_files(tmp_path / "labels.jsonl", tmp_path / "bad.csv")


def test_recsys_evaluate_prints_the_metric_as_json(tmp_path, capsys):
    import json

    from pipelines.cli import main

    write_labels_jsonl(labels_frame(OFFICIAL_LABELS), tmp_path / "labels.jsonl")
    write_predictions_csv(predictions_frame(OFFICIAL_PREDICTIONS), tmp_path / "predictions.csv")
    assert main(["evaluate", "--labels", str(tmp_path / "labels.jsonl"), "--predictions", str(tmp_path / "predictions.csv"), "--k", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["score"] == pytest.approx(0.1 / 3 + 0.3 * 3 / 9 + 0.6 / 5)
    assert main(["evaluate", "--labels", str(tmp_path / "missing.jsonl"), "--predictions", str(tmp_path / "predictions.csv")]) == 2


def random_case(seed: int = 0, sessions: int = 400):
    """Predictions with duplicates, ranks past k and sessions without truth; labels with sessions
    without predictions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for session in range(sessions):
        for event_type in ("clicks", "carts", "orders"):
            aids = rng.integers(0, 60, rng.integers(0, 30))
            rows.extend((session, event_type, int(aid), rank) for rank, aid in enumerate(aids, start=1))
    predictions = pd.DataFrame(rows, columns=["session", "type", "aid", "rank"])
    truth = []
    for session in range(0, sessions + 50, 2):
        truth.append((session, "clicks", int(rng.integers(0, 60))))
        for event_type in ("carts", "orders"):
            truth.extend((session, event_type, int(aid)) for aid in set(rng.integers(0, 60, rng.integers(0, 25)).tolist()))
    return predictions, pd.DataFrame(truth, columns=["session", "type", "aid"])


@pytest.mark.parametrize("k", [20, 3])
def test_spark_metrics_equal_the_pandas_ones(spark, k):
    from pipelines.metrics import spark_candidate_recall, spark_recall_curve, spark_score

    predictions, labels = random_case()
    spark_predictions, spark_labels = spark.createDataFrame(predictions), spark.createDataFrame(labels)
    expected, got = score_predictions(predictions, labels, k), spark_score(spark_predictions, spark_labels, k)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert spark_candidate_recall(spark_predictions, spark_labels, k) == pytest.approx(candidate_recall(predictions, labels, k))

    curve = spark_recall_curve(spark_predictions, spark_labels, ks=(1, 2, k), k=k)
    for row in curve.itertuples():
        cut = score_predictions(predictions[predictions["rank"] <= row.k], labels, k)
        assert (row.clicks, row.carts, row.orders, row.score) == pytest.approx(
            (cut["recall_clicks"], cut["recall_carts"], cut["recall_orders"], cut["score"]))


def test_spark_written_artifacts_read_back_like_the_pandas_ones(spark, tmp_path):
    from pipelines.metrics import read_predictions_csv, spark_write_labels_jsonl, spark_write_predictions_csv

    predictions, labels = random_case(seed=1, sessions=150)
    write_predictions_csv(predictions, tmp_path / "pandas.csv")
    write_labels_jsonl(labels, tmp_path / "pandas.jsonl")
    spark_write_predictions_csv(spark.createDataFrame(predictions).repartition(3), tmp_path / "spark.csv")
    spark_write_labels_jsonl(spark.createDataFrame(labels).repartition(3), tmp_path / "spark.jsonl")

    assert (tmp_path / "spark.csv").read_text().splitlines() == (tmp_path / "pandas.csv").read_text().splitlines()
    assert [json.loads(line) for line in (tmp_path / "spark.jsonl").read_text().splitlines()] == [
        json.loads(line) for line in (tmp_path / "pandas.jsonl").read_text().splitlines()]
    assert evaluate_files(tmp_path / "spark.jsonl", tmp_path / "spark.csv") == evaluate_files(tmp_path / "pandas.jsonl", tmp_path / "pandas.csv")
    assert read_predictions_csv(tmp_path / "spark.csv").equals(read_predictions_csv(tmp_path / "pandas.csv"))
