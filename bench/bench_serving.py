"""Live serving latency: `recsys serve` as a real process on loopback, answering OTTO sessions.

    python bench/bench_serving.py --sessions data/sample/raw/week=2022-08-22 --json serving.json \
        [--model-uri models:/session-recommender@champion] [--requests 500] [--seconds 20]

Measures, against the registry of MLFLOW_TRACKING_URI (the champion by default):
- `startup_seconds`: process start to the first `/health` that answers (the model loaded);
- `single_ms`: one session per request, one client, p50 / p95 / p99 / max over `--requests`;
- `clients`: for each of `--clients` (1, 4, 16), that many clients for `--seconds`: requests per
  second and p50 / p95 / p99;
- `batch_100_seconds`: 100 sessions in one call of the registered pyfunc model (what `recsys
  predict` and `mlflow models serve` run), in this process;
- `parity_with_predict`: the sessions whose served lists equal `recsys predict`'s (the CSV it
  writes for the same sessions), out of `--parity-sessions`.
Sessions come from an OTTO JSONL file or a folder of them (a raw week), cut to the serving cap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_sessions(path: Path, limit: int) -> list[dict]:
    files = sorted(p for p in path.rglob("*.jsonl")) if path.is_dir() else [path]
    sessions = []
    for file in files:
        with file.open() as lines:
            for line in lines:
                session = json.loads(line)
                session["events"] = session["events"][-500:]
                sessions.append(session)
                if len(sessions) >= limit:
                    return sessions
    return sessions


def post(url: str, body: dict) -> float:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    return time.perf_counter() - started


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2), "max": round(float(ms.max()), 2), "n": len(ms)}


def run_clients(url: str, sessions: list[dict], clients: int, seconds: float) -> dict:
    """`clients` threads posting sessions for `seconds`: requests per second and latency percentiles."""
    done, lock, stop = [], threading.Lock(), threading.Event()

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            elapsed = post(url, sessions[i % len(sessions)])
            with lock:
                done.append(elapsed)
            i += clients

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return {"requests_per_second": round(len(done) / (time.perf_counter() - began), 1), **percentiles(done)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", required=True, type=Path, help="OTTO JSONL file, or a folder of them")
    parser.add_argument("--model-uri", default=None)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--parity-sessions", type=int, default=500)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from tests.processes import free_port, http_ok

    sessions = read_sessions(args.sessions, max(args.requests, 100, args.parity_sessions))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipelines", "serve", "--port", str(port), "--poll-seconds", "0"]
    if args.model_uri:
        command += ["--model-uri", args.model_uri]
    log = open(ROOT / "data" / "bench_serving.log", "w") if (ROOT / "data").exists() else subprocess.DEVNULL
    started = time.perf_counter()
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        while not http_ok(f"{url}/health"):
            if server.poll() is not None:
                raise SystemExit(f"recsys serve exited with {server.returncode}; see data/bench_serving.log")
            time.sleep(0.1)
        startup = time.perf_counter() - started
        health = json.load(urllib.request.urlopen(f"{url}/health"))
        for session in sessions[:20]:  # warm-up
            post(f"{url}/recommend", session)
        single = [post(f"{url}/recommend", sessions[i % len(sessions)]) for i in range(args.requests)]

        clients = {n: run_clients(f"{url}/recommend", sessions, n, args.seconds) for n in args.clients}
        served = {}
        for session in sessions[:args.parity_sessions]:
            request = urllib.request.Request(f"{url}/recommend", data=json.dumps(session).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=60) as response:
                served[session["session"]] = json.load(response)["recommendations"]
    finally:
        server.terminate()
        server.wait(timeout=30)

    import mlflow
    import pandas as pd

    from pipelines.config import Settings

    settings = Settings.from_env()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(args.model_uri or f"models:/{settings.registered_model_name}@champion")
    batch = pd.DataFrame(sessions[:100])
    model.predict(batch.head(2))  # the first call builds the in-memory scorer
    clock = time.perf_counter()
    model.predict(batch)
    batch_seconds = time.perf_counter() - clock

    parity_dir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    with (parity_dir / "sessions.jsonl").open("w") as out:
        for session in sessions[:args.parity_sessions]:
            out.write(json.dumps(session, default=int) + "\n")  # the pyfunc may leave numpy ints in them
    predict = [sys.executable, "-m", "pipelines", "predict", "--sessions", str(parity_dir / "sessions.jsonl"),
               "--out", str(parity_dir / "predictions.csv")] + (["--model-uri", args.model_uri] if args.model_uri else [])
    subprocess.run(predict, cwd=ROOT, check=True, capture_output=True)
    from pipelines.metrics import read_predictions_csv

    predicted = read_predictions_csv(parity_dir / "predictions.csv")
    predicted_lists = {(int(r.session), r.type): [] for r in predicted.itertuples()}
    for row in predicted.sort_values(["session", "type", "rank"]).itertuples():
        predicted_lists[(int(row.session), row.type)].append(int(row.aid))
    equal = sum(all(predicted_lists.get((session, t), []) == recs for t, recs in lists.items())
                for session, lists in served.items())

    result = {
        "model": health["model"],
        "sessions_file": str(args.sessions),
        "mean_events_per_session": round(statistics.mean(len(s["events"]) for s in sessions), 1),
        "startup_seconds": round(startup, 2),
        "single_ms": percentiles(single),
        "clients": clients,
        "batch_100_seconds": round(batch_seconds, 3),
        "parity_with_predict": {"sessions": len(served), "equal_lists": int(equal)},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
