"""The weekly partitioning every asset shares, and the windows between weeks."""

from __future__ import annotations

import warnings

import datetime as dt

from dagster import (
    BetaWarning,
    FreshnessPolicy,
    PreviewWarning,
    TimeWindowPartitionMapping,
    WeeklyPartitionsDefinition,
)

from pipelines.config import Settings
from pipelines.ranker import RankerConfig
from pipelines.weeks import Week

# Checks are partitioned like their assets so the UI shows a result per week; Dagster still
# labels partitioned checks "preview".
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*", category=PreviewWarning)
warnings.filterwarnings("ignore", message=".*allow_nonexistent_upstream_partitions.*", category=BetaWarning)

SETTINGS = Settings.from_env()
# Fails at load time with a clear message when RECSYS_PARTITION_START is not a Monday.
FIRST_WEEK = Week.parse(SETTINGS.partition_start, SETTINGS.timezone)

# day_offset=1: windows start on Monday 00:00 in the configured zone; a key is that Monday.
weekly_partitions = WeeklyPartitionsDefinition(
    start_date=FIRST_WEEK.key, day_offset=1, timezone=SETTINGS.timezone
)

# Week W reads W and the `history_weeks` weeks before it; weeks before the first partition
# simply do not exist yet.
history_window = TimeWindowPartitionMapping(
    start_offset=-SETTINGS.history_weeks, end_offset=0, allow_nonexistent_upstream_partitions=True
)

# The sources of week W are fitted once on every event of the `training_weeks` weeks ending with W.
training_window = TimeWindowPartitionMapping(
    start_offset=-(SETTINGS.training_weeks - 1), end_offset=0, allow_nonexistent_upstream_partitions=True
)

# The labelled rows of week W are built from week W-1's sources: what W-1's model serves W with.
# The first partition has no week before it (the warm-up week).
previous_week = TimeWindowPartitionMapping(start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)

# The ranker of week W trains on the labelled sessions of W and the weeks before it.
labelled_weeks = TimeWindowPartitionMapping(
    start_offset=-(RankerConfig.label_weeks - 1), end_offset=0, allow_nonexistent_upstream_partitions=True
)

# What readers consume is due every Monday by 09:00 (the schedule starts the week that just ended
# at 03:00): a publication missing by then shows as overdue in the UI.
PUBLISHED_BY = "0 9 * * 1"
weekly_publication_freshness = FreshnessPolicy.cron(
    deadline_cron=PUBLISHED_BY, lower_bound_delta=dt.timedelta(hours=6), timezone=SETTINGS.timezone
)

