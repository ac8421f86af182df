"""The lake's partition swaps under concurrent writers, and write-audit-publish (pipelines.lake)."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from pipelines.lake import AUDIT_DIR, Lake
from pipelines.weeks import Week

WEEK = Week.parse("2022-08-01", "Europe/Berlin")


def _swap_many(root: str, writer: int, times: int, errors) -> None:
    lake = Lake(root)
    for attempt in range(times):
        try:
            lake.write_document({"writer": writer, "attempt": attempt}, "table", WEEK)
        except Exception as error:  # noqa: BLE001 - counted by the test
            errors.append(f"{type(error).__name__}: {error}")


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_writers_of_one_week_never_fail_or_leave_debris(tmp_path, kind):
    root, times = str(tmp_path / "lake"), 150
    if kind == "threads":
        errors: list[str] = []
        workers = [threading.Thread(target=_swap_many, args=(root, w, times, errors)) for w in range(4)]
    else:
        # spawn: a child copied from this process would inherit OpenMP (LightGBM) and JVM threads mid-lock
        context = multiprocessing.get_context("spawn")
        errors = context.Manager().list()
        workers = [context.Process(target=_swap_many, args=(root, w, times, errors)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert list(errors) == []
    lake = Lake(root)
    assert [p.name for p in lake.table_dir("table").iterdir()] == [WEEK.folder]
    assert lake.read_stats("table", WEEK)["attempt"] == times - 1


def test_an_audited_write_is_invisible_until_published(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.write_document({"version": "live"}, "table", WEEK)
    audited = lake.audited(WEEK)
    audited.write_document({"version": "staged"}, "table", WEEK)

    assert lake.read_stats("table", WEEK) == {"version": "live"}
    assert audited.read_stats("table", WEEK) == {"version": "staged"}
    assert audited.staged_paths == {"table": str(lake.audit_dir("table", WEEK, audited.token))}
    assert audited.read_stats("other", WEEK) is None

    live = audited.publish()
    assert live == {"table": str(lake.partition_dir("table", WEEK))}
    assert lake.read_stats("table", WEEK) == {"version": "staged"}
    assert not (lake.table_dir("table") / AUDIT_DIR).exists()
    with pytest.raises(ValueError, match="cannot write"):
        audited.write_document({}, "table", WEEK.shift(1))


def test_two_audits_of_one_week_stage_apart_and_a_success_clears_only_old_failed_ones(tmp_path):
    """Runs never touch each other's staging: a publication leaves a younger staged week (another
    run's, perhaps mid-audit) alone, and clears failed audits older than the configured age."""
    import os
    import time

    lake = Lake(str(tmp_path / "lake"), staging_max_age_s=3600)
    old_failure, failed, passing = lake.audited(WEEK), lake.audited(WEEK), lake.audited(WEEK)
    old_failure.write_document({"run": "failed yesterday"}, "table", WEEK)
    failed.write_document({"run": "failed"}, "table", WEEK)
    passing.write_document({"run": "passing"}, "table", WEEK)
    assert failed.read_stats("table", WEEK) == {"run": "failed"}  # neither sees the other's staged data
    assert passing.read_stats("table", WEEK) == {"run": "passing"}
    yesterday = time.time() - 86_400
    os.utime(old_failure.partition_dir("table", WEEK), (yesterday, yesterday))
    passing.publish()
    assert lake.read_stats("table", WEEK) == {"run": "passing"}
    assert not old_failure.partition_dir("table", WEEK).exists()
    # The other run's staging survives, whole, and it can still read and publish it.
    assert failed.read_stats("table", WEEK) == {"run": "failed"}
    failed.publish()
    assert lake.read_stats("table", WEEK) == {"run": "failed"}
    assert not (lake.table_dir("table") / AUDIT_DIR).exists()
