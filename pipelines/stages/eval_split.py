"""The `eval_split` stage: the week's evaluation cut, labels and training cuts."""

from __future__ import annotations

from pipelines.evaluation import (
    EVAL_LABELS_TABLE,
    EVAL_SESSIONS_TABLE,
    EvalSplitSummary,
    TRAINING_CUTS_TABLE,
    split_evaluation_sessions,
    split_training_cuts,
    summarize_split,
)


def materialize_eval_split_week(spark, lake, week, seed: int, training_cuts: int) -> tuple[EvalSplitSummary, int]:
    """Cut week W's `sessions` into `eval_sessions` and `eval_labels` (the evaluation cut) and
    `training_cuts` (`split_training_cuts`), replacing the week's partitions; returns the split's
    summary and the number of training cuts kept."""
    from pipelines.lake import SESSIONS_TABLE

    week_sessions = lake.read_partition(spark, SESSIONS_TABLE, week)
    eval_sessions, eval_labels = split_evaluation_sessions(week_sessions, seed=seed)
    lake.write_partition(eval_sessions, EVAL_SESSIONS_TABLE, week)
    lake.write_partition(
        eval_labels, EVAL_LABELS_TABLE, week,
        stats=lambda written: summarize_split(lake.read_partition(spark, EVAL_SESSIONS_TABLE, week), written).as_dict(),
    )
    lake.write_partition(split_training_cuts(week_sessions, seed=seed, cuts=training_cuts), TRAINING_CUTS_TABLE, week,
                         stats=lambda written: {"training_cuts": written.count()})
    return (EvalSplitSummary(**lake.read_stats(EVAL_LABELS_TABLE, week)),
            lake.read_stats(TRAINING_CUTS_TABLE, week)["training_cuts"])
