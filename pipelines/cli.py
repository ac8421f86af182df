"""`recsys`: the command line of the pipeline (also `python -m pipelines`)."""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.config import DEFAULT_TIMEZONE, Settings


def _print_json(payload: dict) -> None:
    json.dump(payload, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipelines.generate import generate_raw

    with tqdm(unit=" events", unit_scale=True, desc="simulating", file=sys.stderr, mininterval=1.0) as bar:
        def progress(written: int, total: int) -> None:
            if bar.total != total:
                bar.total, bar.desc = total, "writing"
            bar.update(written)

        summary = generate_raw(
            out_dir=args.out,
            n_sessions=args.sessions,
            n_weeks=args.weeks,
            start=args.start,
            seed=args.seed,
            timezone=args.timezone,
            files_per_week=args.files_per_week,
            progress=progress,
        )
    _print_json(summary)
    return 0


def _land(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from pipelines.land import land_otto_file

    if args.format in ("retailrocket", "events-csv"):
        from pipelines.land_flat import RETAILROCKET_LAYOUT, FlatLayout, land_flat_events

        if args.format == "events-csv":
            if not (args.columns and args.events):
                raise ValueError("--format events-csv needs --columns and --events")
            layout = FlatLayout.parse(args.columns, args.events, args.timestamp_unit)
        else:
            layout = RETAILROCKET_LAYOUT
        with tqdm(unit=" rows", unit_scale=True, desc="landing", file=sys.stderr, mininterval=1.0) as bar:
            summary = land_flat_events(args.input, args.out, timezone=args.timezone,
                                       session_gap_minutes=args.session_gap_minutes, progress=bar.update,
                                       layout=layout)
        _print_json(summary)
        if summary.get("rejected"):
            print(f"rejected rows, each with its reason, are in {args.out}/_rejected/{summary['part_file']}",
                  file=sys.stderr)
        return 0
    # Bytes of the file as read (decompressed for .gz, whose total is unknown beforehand).
    total = None if args.input.endswith(".gz") else os.path.getsize(args.input)
    with tqdm(total=total, unit="B", unit_scale=True, desc="landing", file=sys.stderr, mininterval=1.0) as bar:
        summary = land_otto_file(args.input, args.out, timezone=args.timezone, max_line_bytes=args.max_line_bytes,
                                 progress=bar.update)
    _print_json(summary)
    if summary.get("rejected"):
        print(f"rejected lines, each with its reason, are in {args.out}/_rejected/{summary['part_file']}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pipelines.metrics import evaluate_files

    _print_json(evaluate_files(args.labels, args.predictions, k=args.k))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import time

    import mlflow
    import pandas as pd

    from pipelines.metrics import write_predictions_csv
    from pipelines.model import recommendations_to_long

    settings = Settings.from_env()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    model_uri = args.model_uri or f"models:/{settings.registered_model_name}@champion"
    sessions = pd.read_json(args.sessions, lines=True, dtype=False)
    started = time.perf_counter()
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(f"cannot load {model_uri} from {settings.mlflow_tracking_uri}: {error.message}") from None
    python_model = model.unwrap_python_model()
    python_model.use_sources(args.week)
    python_model.scorer  # noqa: B018 - the tables load here, so predict_seconds is prediction only
    loaded = time.perf_counter()
    recommendations = predict_in_batches(model, sessions)
    scored = time.perf_counter()
    write_predictions_csv(recommendations_to_long(recommendations), args.out)
    _print_json({
        "model_uri": model_uri,
        "model_version": registered_version(model_uri, settings.mlflow_tracking_uri),
        "sources_week": python_model.served_sources_week,
        "sessions": int(sessions["session"].nunique()) if len(sessions) else 0,
        "rows": int(len(recommendations)),
        "out": args.out,
        "load_seconds": round(loaded - started, 2),
        "predict_seconds": round(scored - loaded, 2),
        "sessions_per_second": round(len(sessions) / max(scored - loaded, 1e-9), 1),
    })
    return 0


# Sessions per `predict` call: a progress step of a few seconds, and bounded memory per call.
PREDICT_BATCH_SESSIONS = 5_000


def predict_in_batches(model, sessions, batch_sessions: int = PREDICT_BATCH_SESSIONS):
    """`model.predict` over `sessions` in batches of `batch_sessions` sessions (every row of a session
    in the same batch), with a progress bar of sessions; each session is scored on its own, so the
    lists equal one call's."""
    import pandas as pd
    from tqdm import tqdm

    if len(sessions) == 0:
        return model.predict(sessions)
    batch_of_row = pd.factorize(sessions["session"])[0] // batch_sessions
    batches = []
    with tqdm(total=int(sessions["session"].nunique()), unit=" sessions", unit_scale=True, desc="predicting",
              file=sys.stderr, mininterval=1.0) as bar:
        for _, batch in sessions.groupby(batch_of_row, sort=True):
            batches.append(model.predict(batch.reset_index(drop=True)))
            bar.update(int(batch["session"].nunique()))
    return pd.concat(batches, ignore_index=True)


def registered_version(model_uri: str, tracking_uri: str) -> str | None:
    """The version a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI names now (None for other URIs)."""
    from mlflow import MlflowClient

    from pipelines.serving.app import parse_model_uri

    try:
        name, alias, version = parse_model_uri(model_uri)
    except ValueError:
        return None
    return version or str(MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version)


def _serve(args: argparse.Namespace) -> int:
    from pipelines.serving.app import serve

    settings = Settings.from_env()
    serve(args.model_uri or f"models:/{settings.registered_model_name}@champion", settings.mlflow_tracking_uri,
          host=args.host, port=args.port, poll_seconds=args.poll_seconds, max_events=settings.max_session_events)
    return 0


def _materialize(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from pipelines.config import with_dagster_home

    env = with_dagster_home(dict(os.environ))
    print(f"recsys materialize: Dagster instance {env['DAGSTER_HOME']}", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "definitions",
               "--select", args.select, "--partition", args.partition]
    return subprocess.run(command, env=env).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write synthetic OTTO-like raw weeks")
    generate.add_argument("--sessions", type=int, required=True)
    generate.add_argument("--weeks", type=int, default=4)
    generate.add_argument("--start", default="2022-08-01", help="a Monday, YYYY-MM-DD")
    generate.add_argument("--seed", type=int, default=42)
    generate.add_argument("--out", required=True)
    generate.add_argument("--files-per-week", type=int, default=1)
    generate.add_argument("--timezone", default=DEFAULT_TIMEZONE)
    generate.set_defaults(handler=_generate)

    land = commands.add_parser(
        "land", help="split an OTTO JSONL file, or a flat event log (Retailrocket CSV), plain or .gz, into weekly raw folders")
    land.add_argument("--format", choices=["otto", "retailrocket", "events-csv"], default="otto",
                      help="otto: one JSON session per line; retailrocket: events.csv (timestamp, visitorid, event, "
                           "itemid, transactionid), cut into sessions by inactivity; events-csv: another flat "
                           "event log with a header row, mapped by --columns and --events")
    land.add_argument("--session-gap-minutes", type=float, default=30.0,
                      help="flat logs: a visitor's new session starts after a gap longer than this")
    land.add_argument("--columns", default=None,
                      help="events-csv: header names of the fields, e.g. "
                           "timestamp=ts,visitor=user_id,event=action,item=product_id")
    land.add_argument("--events", default=None,
                      help="events-csv: the log's event names as clicks, carts or orders, e.g. "
                           "view=clicks,add_to_cart=carts,purchase=orders (other names are rejected)")
    land.add_argument("--timestamp-unit", choices=["ms", "s"], default="ms",
                      help="events-csv: the timestamp column counts milliseconds or seconds since 1970")
    land.add_argument("--input", required=True)
    land.add_argument("--out", required=True)
    land.add_argument("--timezone", default=DEFAULT_TIMEZONE)
    land.add_argument("--max-line-bytes", type=int, default=Settings.max_line_bytes,
                      help="longer lines are rejected as line_too_long without being parsed")
    land.set_defaults(handler=_land)

    predict = commands.add_parser(
        "predict", help="score OTTO-format sessions with the registered model into the Kaggle CSV (session_type,labels)"
    )
    predict.add_argument("--sessions", required=True, help="OTTO JSONL: {\"session\": s, \"events\": [...]} per line")
    predict.add_argument("--out", required=True, help="CSV to write")
    predict.add_argument("--model-uri", default=None, help="default: models:/$RECSYS_MODEL_NAME@champion")
    predict.add_argument("--week", default=None,
                         help="serve with this week's sources (YYYY-MM-DD; with that week's model version, it "
                              "reproduces the week's published lists); default: the freshest live week's")
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser(
        "serve", help="answer one session's recommendations over HTTP (GET /health, POST /recommend) from the champion"
    )
    serve.add_argument("--model-uri", default=None,
                       help="models:/NAME@ALIAS (followed when it moves) or models:/NAME/VERSION; "
                            "default: models:/$RECSYS_MODEL_NAME@champion")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--poll-seconds", type=float, default=30.0,
                       help="how often the alias is re-read; a moved alias is loaded and swapped in (0: never)")
    serve.set_defaults(handler=_serve)

    materialize = commands.add_parser(
        "materialize", help="materialize assets of one week with `dagster asset materialize` on the project's "
                            "Dagster instance ($DAGSTER_HOME, default dagster_home/), so its pools hold")
    materialize.add_argument("--select", required=True, help="Dagster asset selection, e.g. '*' or 'events+'")
    materialize.add_argument("--partition", required=True, help="the week, YYYY-MM-DD (a Monday)")
    materialize.set_defaults(handler=_materialize)

    evaluate = commands.add_parser(
        "evaluate", help="score a Kaggle-format predictions CSV against OTTO labels JSONL (prints JSON)"
    )
    evaluate.add_argument("--labels", required=True, help="JSONL: {\"session\": s, \"labels\": {...}} per line")
    evaluate.add_argument("--predictions", required=True, help="CSV: session_type,labels")
    evaluate.add_argument("--k", type=int, default=20)
    evaluate.set_defaults(handler=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, LookupError) as error:
        print(f"recsys {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
