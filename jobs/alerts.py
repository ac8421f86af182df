"""A failed run is reported: in the daemon's log always, and to a webhook when one is configured.

`RECSYS_ALERT_WEBHOOK` (read when the sensor runs, so the launchpad-free deploy value is the
daemon's environment) receives one JSON POST per failed run: job, run id, partition, the failure
message and a link to the run in the Dagster UI (`RECSYS_DAGSTER_URL`, default
http://localhost:3000). A webhook that is down is logged, never retried into a storm.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

ALERT_WEBHOOK_ENV = "RECSYS_ALERT_WEBHOOK"
DAGSTER_URL_ENV = "RECSYS_DAGSTER_URL"
RUN_FAILURE_SENSOR_NAME = "run_failure_alert"


def failure_payload(job_name: str, run_id: str, partition: str | None, message: str, dagster_url: str) -> dict:
    return {
        "text": f"Dagster run {run_id[:8]} of {job_name}{f' (week {partition})' if partition else ''} failed: {message}",
        "job": job_name,
        "run_id": run_id,
        "partition": partition,
        "message": message,
        "url": f"{dagster_url.rstrip('/')}/runs/{run_id}",
    }


def post_alert(url: str, payload: dict, timeout_s: float = 10.0) -> None:
    """POST `payload` as JSON; raises `OSError` (urllib's errors) when the webhook does not take it."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()


@run_failure_sensor(name=RUN_FAILURE_SENSOR_NAME, default_status=DefaultSensorStatus.RUNNING, monitor_all_code_locations=False)
def run_failure_alert(context: RunFailureSensorContext) -> None:
    run = context.dagster_run
    payload = failure_payload(run.job_name, run.run_id, run.tags.get("dagster/partition"),
                              context.failure_event.message or "no message",
                              os.environ.get(DAGSTER_URL_ENV, "http://localhost:3000"))
    context.log.error(payload["text"])
    webhook = os.environ.get(ALERT_WEBHOOK_ENV)
    if not webhook:
        return
    try:
        post_alert(webhook, payload)
    except (OSError, urllib.error.URLError) as error:
        context.log.warning(f"alert webhook {webhook} did not take the alert: {error}")
