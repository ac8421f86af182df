"""A failed run reaches the configured webhook (a real HTTP server on 127.0.0.1), and a dead one
does not fail the sensor."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from dagster import DagsterInstance, build_run_status_sensor_context, job, op

from jobs.alerts import ALERT_WEBHOOK_ENV, DAGSTER_URL_ENV, RUN_FAILURE_SENSOR_NAME, run_failure_alert
from tests.processes import free_port


@op
def broken_step():
    raise RuntimeError("the lake is gone")


@job(tags={"dagster/partition": "2022-08-22"})
def broken_job():
    broken_step()


def _failure_context(instance):
    result = broken_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return build_run_status_sensor_context(
        sensor_name=RUN_FAILURE_SENSOR_NAME, dagster_event=result.get_run_failure_event(),
        dagster_instance=instance, dagster_run=result.dagster_run,
    ).for_run_failure(), result.run_id


def test_a_failed_run_is_posted_to_the_webhook(monkeypatch):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append((self.headers["Content-Type"], json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(ALERT_WEBHOOK_ENV, f"http://127.0.0.1:{server.server_port}/hook")
        monkeypatch.setenv(DAGSTER_URL_ENV, "http://dagster.example:3000/")
        with DagsterInstance.ephemeral() as instance:
            context, run_id = _failure_context(instance)
            run_failure_alert(context)
    finally:
        server.shutdown()
    ((content_type, payload),) = received
    assert content_type == "application/json"
    assert payload["job"] == "broken_job" and payload["run_id"] == run_id and payload["partition"] == "2022-08-22"
    assert "broken_step" in payload["message"] and "week 2022-08-22" in payload["text"]
    assert payload["url"] == f"http://dagster.example:3000/runs/{run_id}"


def test_a_dead_webhook_is_logged_not_raised(monkeypatch):
    monkeypatch.setenv(ALERT_WEBHOOK_ENV, f"http://127.0.0.1:{free_port()}/hook")
    with DagsterInstance.ephemeral() as instance:
        context, _ = _failure_context(instance)
        run_failure_alert(context)  # connection refused: a warning in the sensor's log
