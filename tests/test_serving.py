"""`recsys serve` as a real server process on a free port: health, recommend, every bad input, and the
`champion` alias moving while requests are in flight.

The registry is a SQLite MLflow with two registered versions of a synthetic shop's bundle
(tests/bundles.py), logged like the `ranker` asset logs them; `champion` starts on v1.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines.model import Bundle
from pipelines.model.scorer import InMemoryScorer
from pipelines.serving.app import MAX_BODY_BYTES, recommend_one
from tests.bundles import CATALOGUE, WEEK_START_MS, register_bundle, session_events, write_bundle
from tests.processes import free_port, http_ok, managed_process

MODEL_NAME = "serving-test"
POLL_SECONDS = 0.5


def post(url: str, body: bytes | str | dict, timeout: float = 30) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("serving")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    versions = {}
    for seed, week in ((0, "2022-08-01"), (5, "2022-08-08")):
        bundle_dir = write_bundle(root / f"bundle-{seed}", root / f"tables-{seed}", week=week, seed=seed)
        versions[week] = (register_bundle(tracking_uri, MODEL_NAME, bundle_dir, root / "artifacts"), Bundle(bundle_dir))
    client = MlflowClient(tracking_uri=tracking_uri)
    client.set_registered_model_alias(MODEL_NAME, "champion", versions["2022-08-01"][0])
    return {"root": root, "tracking_uri": tracking_uri, "versions": versions, "client": client}


@pytest.fixture(scope="module")
def server(registry):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["tracking_uri"], "RECSYS_MODEL_NAME": MODEL_NAME}
    with managed_process([sys.executable, "-m", "pipelines", "serve", "--port", str(port),
                          "--poll-seconds", str(POLL_SECONDS)], registry["root"] / "serve.log", name="recsys serve",
                         env=env) as process:
        process.wait_ready(lambda: http_ok(f"{url}/health"), timeout=120)
        yield {"url": url, "process": process}


def a_session(session: int = 42, n: int = 12) -> dict:
    events = session_events(1, seed=session, first_session=session)
    events = events.head(n)
    return {"session": session, "events": [{"aid": int(r.aid), "ts": int(r.ts), "type": r.type} for r in events.itertuples()]}


def test_health_names_the_champion(server, registry):
    health = get(f"{server['url']}/health")
    assert health["status"] == "ok"
    assert health["model"]["name"] == MODEL_NAME
    assert health["model"]["version"] == registry["versions"]["2022-08-01"][0]
    assert health["model"]["week"] == "2022-08-01"


def test_recommend_returns_the_lists_the_batch_scorer_gives(server, registry):
    body = a_session(42, 15)
    status, answer = post(f"{server['url']}/recommend", body)
    assert status == 200, answer
    assert answer["session"] == 42 and answer["model_version"] == registry["versions"]["2022-08-01"][0]
    lists = answer["recommendations"]
    assert set(lists) == {"clicks", "carts", "orders"}
    for recs in lists.values():
        assert 0 < len(recs) <= 20 and len(set(recs)) == len(recs) and all(isinstance(a, int) for a in recs)
    # What `recsys predict` computes for the session (the pyfunc model runs this scorer too).
    scorer = InMemoryScorer.from_bundle(registry["versions"]["2022-08-01"][1])
    assert lists == recommend_one(scorer, 42, body["events"])


def test_a_session_of_unseen_items_gets_the_popularity_fallback(server):
    body = {"session": 7, "events": [{"aid": CATALOGUE + 5_000, "ts": WEEK_START_MS, "type": "clicks"}]}
    status, answer = post(f"{server['url']}/recommend", body)
    assert status == 200, answer
    assert all(len(recs) >= 10 for recs in answer["recommendations"].values())


@pytest.mark.parametrize("body, status, field", [
    ({"events": [{"aid": 1, "ts": 1, "type": "clicks"}]}, 422, "session"),
    ({"session": 1}, 422, "events"),
    ({"session": 1, "events": []}, 422, "events"),
    ({"session": -1, "events": [{"aid": 1, "ts": 1, "type": "clicks"}]}, 422, "session"),
    ({"session": "1", "events": [{"aid": 1, "ts": 1, "type": "clicks"}]}, 422, "session"),
    ({"session": 1, "events": [{"aid": 1.5, "ts": 1, "type": "clicks"}]}, 422, "events.0.aid"),
    ({"session": 1, "events": [{"aid": -3, "ts": 1, "type": "clicks"}]}, 422, "events.0.aid"),
    ({"session": 1, "events": [{"aid": 1, "type": "clicks"}]}, 422, "events.0.ts"),
    ({"session": 1, "events": [{"aid": 1, "ts": 1, "type": "views"}]}, 422, "events.0.type"),
    ({"session": 1, "events": [{"aid": 1, "ts": 1, "type": "clicks"}, {"aid": True, "ts": 2, "type": "clicks"}]}, 422,
     "events.1.aid"),
    ({"session": 1, "events": [{"aid": 1, "ts": 1, "type": "clicks"}] * 501}, 422, "events"),
    ("{not json", 400, "body"),
    ([1, 2], 422, "body"),
])
def test_bad_input_is_a_4xx_naming_the_field(server, body, status, field):
    code, answer = post(f"{server['url']}/recommend", body)
    assert code == status, answer
    assert answer["field"] == field, answer
    assert "Traceback" not in json.dumps(answer)


def test_a_body_over_the_limit_is_refused(server):
    """Refused from the declared length before the body is read, and from the bytes read when the
    body comes chunked (no length declared)."""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(server["url"])
    declared = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    declared.putrequest("POST", "/recommend")
    declared.putheader("Content-Type", "application/json")
    declared.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    declared.endheaders()
    response = declared.getresponse()
    assert response.status == 413 and json.load(response)["field"] == "body"
    declared.close()

    event = json.dumps({"aid": 1, "ts": 1, "type": "clicks"})
    chunks = [b'{"session": 1, "events": [' + event.encode()] + [b"," + event.encode()] * (MAX_BODY_BYTES // 30) + [b"]}"]
    chunked = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    chunked.request("POST", "/recommend", body=iter(chunks), headers={"Content-Type": "application/json"},
                    encode_chunked=True)
    response = chunked.getresponse()
    assert response.status == 413 and json.load(response)["field"] == "body"
    chunked.close()


def test_the_champion_moves_with_no_failed_request(server, registry):
    """The alias moves to v2 while four clients send requests: every request succeeds, each answer
    comes whole from one version, and the server ends on v2."""
    old, new = (registry["versions"][week][0] for week in ("2022-08-01", "2022-08-08"))
    url, results, stop = server["url"], [], threading.Event()

    def client(number: int) -> None:
        while not stop.is_set():
            results.append(post(f"{url}/recommend", a_session(100 + number, 20)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    registry["client"].set_registered_model_alias(MODEL_NAME, "champion", new)
    deadline = time.monotonic() + 60
    while get(f"{url}/health")["model"]["version"] != new and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert get(f"{url}/health")["model"] == {"name": MODEL_NAME, "version": new, "week": "2022-08-08",
                                                 "trained_week": "2022-08-08",
                                                 "uri": f"models:/{MODEL_NAME}@champion"}
        assert results and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
        served = [answer["model_version"] for _, answer in results]
        assert served[0] == old and served[-1] == new and set(served) == {old, new}
        # Each answer is one version's lists for its session, never a mix.
        scorers = {version: InMemoryScorer.from_bundle(bundle) for version, bundle in registry["versions"].values()}
        for number in range(4):
            body = a_session(100 + number, 20)
            expected = {v: recommend_one(s, body["session"], body["events"]) for v, s in scorers.items()}
            for _, answer in results:
                if answer["session"] == body["session"]:
                    assert answer["recommendations"] == expected[answer["model_version"]]
    finally:
        registry["client"].set_registered_model_alias(MODEL_NAME, "champion", old)


def test_the_registered_model_holds_no_pickle_and_scores_in_a_fresh_process(registry, tmp_path):
    """Models from code: the registry holds the code, the boosters as text and the tables' paths;
    a fresh process that refuses pickle loads it from the registry and gives the scorer's lists."""
    import subprocess

    import mlflow
    import yaml

    version = registry["versions"]["2022-08-01"][0]
    uri = f"models:/{MODEL_NAME}/{version}"
    mlflow.set_tracking_uri(registry["tracking_uri"])
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    files = [path for path in local.rglob("*") if path.is_file()]
    assert files
    for path in files:
        head = path.read_bytes()[:2]
        assert path.suffix not in {".pkl", ".pickle", ".cloudpickle"} and head not in (b"\x80\x04", b"\x80\x05"), path
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "model_code_path" in flavor and "python_model" not in flavor, flavor
    assert (local / "MLmodel").read_text().count("signature") and (local / "input_example.json").exists()

    body = a_session(42, 15)
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({uri!r})\n"
        f"out = model.predict(pd.DataFrame([{body!r}]))\n"
        "print(json.dumps({row.type: [int(a) for a in row.recs] for row in out.itertuples()}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["tracking_uri"], "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    scorer = InMemoryScorer.from_bundle(registry["versions"]["2022-08-01"][1])
    expected = recommend_one(scorer, 42, body["events"])
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {t: recs for t, recs in expected.items() if recs}
