"""Publishing the weekly tables: against a real S3 protocol server (moto) and a local folder.

Every test works on tiny Spark-written tables; S3 tests each get their own bucket on one
moto server (a server that dies mid-publication is a second, private one).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from pipelines.publish import (
    FREQUENTLY_BOUGHT_TOGETHER,
    GATE_ROW_COUNTS,
    LATEST_NAME,
    LEASE_NAME,
    PUBLICATIONS_FOLDER,
    PUBLISHED_TABLES,
    SESSION_RECOMMENDATIONS,
    SIMILAR_ITEMS,
    TOP_SELLERS,
    ModelInfo,
    PublishConfig,
    PublishError,
    PublisherBusyError,
    download_table,
    local_row_counts,
    make_s3_client,
    previous_manifest,
    publish_week,
    published_weeks,
    read_latest,
    read_manifest,
    row_count_gate,
    run_publish_gates,
    s3_client_from_resource,
    verify_manifest,
)
from pipelines.quality import validate
from tests.processes import free_port

WEEK_A, WEEK_B = "2022-08-01", "2022-08-08"
MODEL = ModelInfo(name="session-recommender", version="3", run_id="0123456789abcdef")
LIST_SCHEMA = "aid BIGINT, recs ARRAY<BIGINT>, scores ARRAY<FLOAT>"
SESSION_SCHEMA = "session BIGINT, type STRING, recs ARRAY<BIGINT>, scores ARRAY<FLOAT>"
TYPES = ("clicks", "carts", "orders")


# --- tiny tables -------------------------------------------------------------------------


def table_rows():
    return {
        TOP_SELLERS: [(t, rank, 10 + rank + 3 * i, 10.0 - rank) for i, t in enumerate(TYPES) for rank in (1, 2, 3)],
        FREQUENTLY_BOUGHT_TOGETHER: [(aid, [aid + 1, aid + 2], [0.9, 0.5]) for aid in range(1, 6)],
        SIMILAR_ITEMS: [(aid, [aid + 3, aid + 1, aid + 2], [0.8, 0.7, 0.1]) for aid in range(1, 8)],
        SESSION_RECOMMENDATIONS: [(s, t, [1, 2, 3], [3.0, 2.0, 1.0]) for s in (100, 101) for t in TYPES],
    }


SCHEMAS = {
    TOP_SELLERS: "type STRING, rank INT, aid BIGINT, score DOUBLE",
    FREQUENTLY_BOUGHT_TOGETHER: LIST_SCHEMA,
    SIMILAR_ITEMS: LIST_SCHEMA,
    SESSION_RECOMMENDATIONS: SESSION_SCHEMA,
}


def frames_of(spark, rows=None):
    rows = rows or table_rows()
    return {table: spark.createDataFrame(rows[table], SCHEMAS[table]) for table in PUBLISHED_TABLES}


def write_tables(frames, folder: Path) -> dict[str, Path]:
    dirs = {}
    for table, frame in frames.items():
        dirs[table] = folder / table
        # Two part files for the session table: publications handle several files per table.
        (frame.repartition(2) if table == SESSION_RECOMMENDATIONS else frame.coalesce(1)).write.parquet(str(dirs[table]))
    return dirs


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory):
    return write_tables(frames_of(spark), tmp_path_factory.mktemp("tables"))


@pytest.fixture(scope="module")
def catalogue(spark):
    return spark.createDataFrame([(aid,) for aid in range(1, 40)], "aid BIGINT")


@pytest.fixture(scope="module")
def active_sessions(spark):
    return spark.createDataFrame([(100,), (101,)], "session BIGINT")


# --- a real S3 protocol server -----------------------------------------------------------


def start_moto():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def kill_moto(server) -> None:
    """Stop serving and close the listening socket, so clients get "connection refused" at once."""
    server.stop()
    server._server.server_close()


@pytest.fixture(scope="module")
def moto_endpoint():
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        env.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        server, endpoint = start_moto()
        try:
            yield endpoint
        finally:
            kill_moto(server)


@pytest.fixture
def s3(moto_endpoint):
    return make_s3_client(endpoint_url=moto_endpoint, max_attempts=2)


@pytest.fixture
def bucket(s3):
    name = f"published-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def week_objects(s3, bucket, prefix, week) -> set[str]:
    response = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/week={week}/")
    return {obj["Key"][len(prefix) + 1:] for obj in response.get("Contents", [])}


def manifest_keys(manifest) -> set[str]:
    return {f["key"] for entry in manifest["tables"].values() for f in entry["files"]}


def record_key(result) -> str:
    """Where a publication's manifest is kept (`week=…/_publications/<id>.json`)."""
    return f"week={result.week}/{PUBLICATIONS_FOLDER}/{result.publication_id}.json"


# --- S3 -------------------------------------------------------------------------------


def test_publish_to_s3_and_read_back(s3, bucket, tables, tmp_path):
    uri = f"s3://{bucket}/recsys"
    assert read_latest(uri, s3) is None

    result = publish_week(tables, WEEK_A, MODEL, uri, s3, dagster_run_id="dagster-run-1")

    assert result.latest_updated and result.files_uploaded == 5
    assert read_latest(uri, s3) == {"week": WEEK_A, "manifest": f"week={WEEK_A}/_manifest.json"}
    manifest = read_manifest(uri, WEEK_A, s3)
    assert manifest == result.manifest
    assert manifest["model"] == {"name": "session-recommender", "version": "3", "mlflow_run_id": MODEL.run_id}
    assert manifest["dagster_run_id"] == "dagster-run-1" and manifest["week"] == WEEK_A
    expected_rows = {TOP_SELLERS: 9, FREQUENTLY_BOUGHT_TOGETHER: 5, SIMILAR_ITEMS: 7, SESSION_RECOMMENDATIONS: 6}
    assert manifest["row_counts"] == expected_rows == local_row_counts(tables)
    assert len(manifest["tables"][SESSION_RECOMMENDATIONS]["files"]) == 2

    # Read back what the manifest lists, as a downstream reader would.
    import pyarrow.parquet as pq

    for table in PUBLISHED_TABLES:
        paths = download_table(uri, WEEK_A, table, tmp_path / "download", s3)
        listed = {f["key"].rsplit("/", 1)[-1]: f for f in manifest["tables"][table]["files"]}
        assert {p.name for p in paths} == set(listed)
        for path in paths:
            data = path.read_bytes()
            assert len(data) == listed[path.name]["size"]
            assert hashlib.sha256(data).hexdigest() == listed[path.name]["sha256"]
        rows = pq.read_table([str(p) for p in paths]) if len(paths) == 1 else pq.ParquetDataset([str(p) for p in paths]).read()
        assert rows.num_rows == expected_rows[table]
    sessions = pq.ParquetDataset([str(p) for p in (tmp_path / "download" / SESSION_RECOMMENDATIONS).iterdir()]).read()
    assert str(sessions.schema.field("recs").type.value_type) == "int64"
    assert sorted(sessions.column("session").to_pylist()) == [100, 100, 100, 101, 101, 101]

    report = verify_manifest(uri, WEEK_A, s3)
    assert report.ok and report.files_checked == 5
    assert published_weeks(uri, s3) == [WEEK_A]
    assert week_objects(s3, bucket, "recsys", WEEK_A) == manifest_keys(manifest) | {f"week={WEEK_A}/_manifest.json", record_key(result)}


def test_multipart_uploads_verify_independently_of_etags(s3, bucket, tables):
    uri = f"s3://{bucket}/mp"
    result = publish_week(tables, WEEK_A, MODEL, uri, s3, config=PublishConfig(multipart_threshold=1))
    key = result.manifest["tables"][SIMILAR_ITEMS]["files"][0]["key"]
    etag = s3.head_object(Bucket=bucket, Key=f"mp/{key}")["ETag"]
    assert etag.strip('"').endswith("-1"), etag  # a multipart ETag is not an MD5 of the object
    assert verify_manifest(uri, WEEK_A, s3).ok


def test_verify_manifest_reports_a_changed_object(s3, bucket, tables):
    uri = f"s3://{bucket}/recsys"
    result = publish_week(tables, WEEK_A, MODEL, uri, s3)
    entry = result.manifest["tables"][TOP_SELLERS]["files"][0]
    s3.put_object(Bucket=bucket, Key=f"recsys/{entry['key']}", Body=b"not the published bytes")
    gone = result.manifest["tables"][SIMILAR_ITEMS]["files"][0]
    s3.delete_object(Bucket=bucket, Key=f"recsys/{gone['key']}")

    report = verify_manifest(uri, WEEK_A, s3)
    assert not report.ok
    problems = {m.key: m.problem for m in report.mismatches}
    assert problems == {entry["key"]: "size", gone["key"]: "missing"}


def test_server_dying_halfway_leaves_latest_on_the_previous_week(s3, bucket, tables, spark, tmp_path):
    uri = f"s3://{bucket}/recsys"
    publish_week(tables, WEEK_A, MODEL, uri, s3)

    # A private server over the same in-process moto backend, killed after the 3rd upload.
    server, endpoint = start_moto()
    dying = make_s3_client(endpoint_url=endpoint, max_attempts=2)
    puts = []

    def kill_after_third_put(**kwargs):
        puts.append(kwargs.get("model").name)
        if len(puts) == 4:  # the lease, then three data files
            kill_moto(server)

    dying.meta.events.register("after-call.s3.PutObject", kill_after_third_put)
    try:
        with pytest.raises(PublishError) as failure:
            publish_week(tables, WEEK_B, MODEL, uri, dying, dagster_run_id="run-b")
    finally:
        if server._server_ready_event.is_set():
            kill_moto(server)

    error = failure.value
    assert error.step == "upload" and error.week == WEEK_B
    assert f"s3://{bucket}/recsys/week={WEEK_B}/" in error.object and error.object.endswith(".parquet")
    message = str(error)
    assert "failed at step 'upload'" in message
    assert f"_latest.json was left untouched (still week {WEEK_A})" in message
    assert len(puts) == 4

    # Readers still see week A, completely.
    assert read_latest(uri, s3) == {"week": WEEK_A, "manifest": f"week={WEEK_A}/_manifest.json"}
    assert verify_manifest(uri, WEEK_A, s3).ok
    with pytest.raises(FileNotFoundError, match=f"no manifest for week {WEEK_B}"):
        read_manifest(uri, WEEK_B, s3)
    leftovers = week_objects(s3, bucket, "recsys", WEEK_B)
    assert len(leftovers) == 3  # the server died before the cleanup could run

    # The dead attempt's lease is still there; the run's retry takes it back, succeeds and leaves
    # nothing of the failed attempt behind.
    assert json.loads(s3.get_object(Bucket=bucket, Key=f"recsys/{LEASE_NAME}")["Body"].read())["owner"] == "run-b"
    retry = publish_week(tables, WEEK_B, MODEL, uri, s3, dagster_run_id="run-b")
    assert read_latest(uri, s3)["week"] == WEEK_B
    assert set(retry.deleted) == leftovers
    assert week_objects(s3, bucket, "recsys", WEEK_B) == manifest_keys(retry.manifest) | {f"week={WEEK_B}/_manifest.json", record_key(retry)}
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=f"recsys/{LEASE_NAME}")


class Refused(Exception):
    pass


@pytest.mark.parametrize(
    "failing_key, step",
    [
        (f"week={WEEK_B}/session_recommendations/part-00001-", "upload"),
        (f"week={WEEK_B}/_manifest.json", "write manifest"),
        (LATEST_NAME, "write _latest.json"),
    ],
)
def test_a_failing_put_raises_a_clear_error_and_latest_stays(s3, bucket, tables, failing_key, step):
    uri = f"s3://{bucket}/recsys"
    publish_week(tables, WEEK_A, MODEL, uri, s3)

    def refuse(params, **kwargs):
        if params["Key"].startswith(f"recsys/{failing_key}"):
            raise Refused("simulated 503 from the endpoint")

    s3.meta.events.register("before-parameter-build.s3.PutObject", refuse)
    try:
        with pytest.raises(PublishError) as failure:
            publish_week(tables, WEEK_B, MODEL, uri, s3)
    finally:
        s3.meta.events.unregister("before-parameter-build.s3.PutObject", refuse)
    assert failure.value.step == step
    assert f"s3://{bucket}/recsys/{failing_key}" in failure.value.object
    assert "simulated 503" in str(failure.value)
    assert read_latest(uri, s3)["week"] == WEEK_A
    if step == "upload":
        # Nothing references this attempt's files: they were removed.
        assert week_objects(s3, bucket, "recsys", WEEK_B) == set()


def test_a_corrupted_upload_is_caught_before_the_manifest(s3, bucket, tables):
    uri = f"s3://{bucket}/recsys"
    publish_week(tables, WEEK_A, MODEL, uri, s3)
    saboteur = make_s3_client(endpoint_url=s3.meta.endpoint_url)
    keys, corrupted = [], []

    def remember_key(params, **kwargs):
        keys.append(params["Key"])

    def corrupt_similar_items(**kwargs):
        # Uploads run one file after the other: the last key seen is the object just stored.
        if "/similar_items/" in keys[-1] and not corrupted:
            corrupted.append(keys[-1])
            saboteur.put_object(Bucket=bucket, Key=keys[-1], Body=b"x" * 10)

    s3.meta.events.register("before-parameter-build.s3.PutObject", remember_key)
    s3.meta.events.register("after-call.s3.PutObject", corrupt_similar_items)
    try:
        with pytest.raises(PublishError) as failure:
            publish_week(tables, WEEK_B, MODEL, uri, s3)
    finally:
        s3.meta.events.unregister("before-parameter-build.s3.PutObject", remember_key)
        s3.meta.events.unregister("after-call.s3.PutObject", corrupt_similar_items)
    assert corrupted
    assert failure.value.step == "verify" and failure.value.object.endswith(corrupted[0])
    assert "size is 10" in str(failure.value)
    assert read_latest(uri, s3)["week"] == WEEK_A
    assert week_objects(s3, bucket, "recsys", WEEK_B) == set()


def test_rerun_of_a_week_replaces_its_files(spark, s3, bucket, tables, tmp_path):
    uri = f"s3://{bucket}/recsys"
    first = publish_week(tables, WEEK_A, MODEL, uri, s3)
    # An orphan of some earlier failed attempt.
    s3.put_object(Bucket=bucket, Key=f"recsys/week={WEEK_A}/similar_items/part-00000-orphan.parquet", Body=b"x")

    rows = table_rows()
    rows[SESSION_RECOMMENDATIONS] = [(s, t, [4, 5], [2.0, 1.0]) for s in (100, 101, 102) for t in TYPES]
    second_tables = write_tables(frames_of(spark, rows), tmp_path / "second")
    second = publish_week(second_tables, WEEK_A, ModelInfo("session-recommender", 4, "run-4"), uri, s3)

    assert second.publication_id != first.publication_id
    manifest = read_manifest(uri, WEEK_A, s3)
    assert manifest["publication_id"] == second.publication_id and manifest["model"]["version"] == "4"
    assert manifest["row_counts"][SESSION_RECOMMENDATIONS] == 9
    assert read_latest(uri, s3) == {"week": WEEK_A, "manifest": f"week={WEEK_A}/_manifest.json"}
    assert manifest_keys(first.manifest).isdisjoint(manifest_keys(manifest))
    # The superseded publication stays for readers that fetched its manifest a moment ago.
    assert set(second.deleted) == {f"week={WEEK_A}/similar_items/part-00000-orphan.parquet"}
    assert week_objects(s3, bucket, "recsys", WEEK_A) == (
        manifest_keys(manifest) | manifest_keys(first.manifest) | {f"week={WEEK_A}/_manifest.json", record_key(first), record_key(second)}
    )
    assert verify_manifest(uri, WEEK_A, s3).ok

    # One publication later it goes.
    third = publish_week(second_tables, WEEK_A, ModelInfo("session-recommender", 4, "run-4"), uri, s3)
    assert set(third.deleted) == manifest_keys(first.manifest) | {record_key(first)}
    assert week_objects(s3, bucket, "recsys", WEEK_A) == (
        manifest_keys(third.manifest) | manifest_keys(second.manifest) | {f"week={WEEK_A}/_manifest.json", record_key(second), record_key(third)}
    )
    # Keeping none deletes the superseded publication right away.
    fourth = publish_week(second_tables, WEEK_A, MODEL, uri, s3, config=PublishConfig(keep_previous=0))
    assert set(fourth.deleted) == manifest_keys(second.manifest) | manifest_keys(third.manifest) | {record_key(second), record_key(third)}


def test_backfilling_an_older_week_does_not_move_latest_back(s3, bucket, tables):
    uri = f"s3://{bucket}"  # the bucket root as publish root
    publish_week(tables, WEEK_B, MODEL, uri, s3)
    older = publish_week(tables, WEEK_A, MODEL, uri, s3)
    assert not older.latest_updated and "stays on the newer week" in older.latest_note
    assert read_latest(uri, s3)["week"] == WEEK_B
    assert published_weeks(uri, s3) == [WEEK_A, WEEK_B]
    assert previous_manifest(uri, WEEK_B, s3)["week"] == WEEK_A
    assert previous_manifest(uri, WEEK_A, s3) is None

    rewound = publish_week(tables, WEEK_A, MODEL, uri, s3, config=PublishConfig(allow_latest_rewind=True))
    assert rewound.latest_updated and read_latest(uri, s3)["week"] == WEEK_A


def test_client_from_the_dagster_s3_resource(moto_endpoint, bucket, tables):
    from dagster_aws.s3 import S3Resource

    resource = S3Resource(endpoint_url=moto_endpoint, region_name="us-east-1")
    client = s3_client_from_resource(resource, max_attempts=3)
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    result = publish_week(tables, WEEK_A, MODEL, f"s3://{bucket}/via-resource", client)
    assert verify_manifest(result.target_uri, WEEK_A, client).ok


# --- local folder ------------------------------------------------------------------------


def test_local_folder_target(spark, tables, tmp_path):
    root = tmp_path / "published"
    first = publish_week(tables, WEEK_A, MODEL, str(root))
    assert json.loads((root / LATEST_NAME).read_text()) == {"week": WEEK_A, "manifest": f"week={WEEK_A}/_manifest.json"}
    assert verify_manifest(str(root), WEEK_A).ok

    second = publish_week(tables, WEEK_A, MODEL, str(root), dagster_run_id="rerun", config=PublishConfig(keep_previous=0))
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert files == manifest_keys(second.manifest) | {f"week={WEEK_A}/_manifest.json", LATEST_NAME, record_key(second)}
    assert manifest_keys(first.manifest).isdisjoint(files)
    assert not [p for p in root.rglob(".*")], "temporary files left behind"

    import pyarrow.parquet as pq

    for table in PUBLISHED_TABLES:
        listed = [root / f["key"] for f in second.manifest["tables"][table]["files"]]
        assert sum(pq.ParquetFile(p).metadata.num_rows for p in listed) == second.manifest["row_counts"][table]
    # Spark reads a published table folder as it is.
    assert spark.read.parquet(str(root / f"week={WEEK_A}" / SESSION_RECOMMENDATIONS)).count() == 6

    (root / second.manifest["tables"][TOP_SELLERS]["files"][0]["key"]).write_bytes(b"garbage")
    assert [m.problem for m in verify_manifest(str(root), WEEK_A).mismatches] == ["size"]


def test_local_failure_before_latest_leaves_it_alone(spark, tables, tmp_path):
    root = tmp_path / "published"
    publish_week(tables, WEEK_A, MODEL, str(root))
    before = (root / LATEST_NAME).read_bytes()

    # recs as list<int32> breaks the contract (list<int64>).
    bad = frames_of(spark)
    bad[SIMILAR_ITEMS] = bad[SIMILAR_ITEMS].selectExpr("aid", "transform(recs, r -> cast(r as int)) AS recs", "scores")
    bad_tables = write_tables(bad, tmp_path / "bad")
    with pytest.raises(PublishError, match=r"failed at step 'check schema' on .*similar_items.*'recs' is list<element: int32>"):
        publish_week(bad_tables, WEEK_B, MODEL, str(root))

    missing = dict(tables)
    del missing[TOP_SELLERS]
    with pytest.raises(PublishError, match="step 'read local tables'.*missing \\['top_sellers'\\]"):
        publish_week(missing, WEEK_B, MODEL, str(root))

    # A target that cannot be written: the week folder path is taken by a file.
    (root / f"week={WEEK_B}").write_text("in the way")
    with pytest.raises(PublishError, match="step 'upload'"):
        publish_week(tables, WEEK_B, MODEL, str(root))
    assert (root / LATEST_NAME).read_bytes() == before
    assert not [p for p in root.rglob(".*")]


# --- gates -------------------------------------------------------------------------------


def failed_expectations(report) -> dict[str, dict]:
    return {f"{o.expectation}:{o.kwargs.get('column') or o.kwargs.get('column_B')}": o.observed for o in report.failed}


def test_gates_pass_on_good_tables(spark, catalogue, active_sessions):
    """Every publish gate passes on well-formed tables: the reference the failing-gate tests change one
    thing of (each gate is a Spark job over the four tables)."""
    results = run_publish_gates(frames_of(spark), catalogue, active_sessions, previous=None)
    assert all(r.passed for r in results.values()), [r.summary() for r in results.values()]
    assert results[GATE_ROW_COUNTS].skipped
    assert "nothing was published before" in results[GATE_ROW_COUNTS].summary()


def test_gate_duplicate_and_unknown_aids(spark, catalogue):
    from pipelines.quality import published_lists_suite, published_lists_validation_frame

    rows = table_rows()[SIMILAR_ITEMS]
    rows[0] = (1, [2, 2, 3], [0.9, 0.8, 0.1])  # duplicate aid in a list
    rows[1] = (2, [3, 999], [0.9, 0.8])  # 999 is not in the catalogue
    rows[2] = (998, [1], [0.5])  # nor is the key
    frame = spark.createDataFrame(rows, LIST_SCHEMA)
    report = validate(published_lists_validation_frame(frame, ["aid"], catalogue), "similar", published_lists_suite(["aid"]))
    failed = failed_expectations(report)
    assert set(failed) == {
        "expect_column_pair_values_to_be_equal:n_distinct_recs",
        "expect_column_values_to_be_between:n_unknown_recs",
        "expect_column_values_to_be_in_set:aid_known",
    }
    assert failed["expect_column_values_to_be_between:n_unknown_recs"]["unexpected_count"] == 1


def test_gate_too_long_unordered_and_mismatched_lists(spark, catalogue):
    from pipelines.quality import published_lists_suite, published_lists_validation_frame

    keys = ["session", "type"]
    rows = table_rows()[SESSION_RECOMMENDATIONS]
    rows[0] = (100, "clicks", list(range(1, 22)), [float(30 - i) for i in range(21)])  # 21 > 20
    rows[1] = (100, "carts", [1, 2], [1.0, 2.0])  # ascending scores
    rows[2] = (100, "orders", [1, 2], [1.0])  # one score for two recs
    frame = spark.createDataFrame(rows, SESSION_SCHEMA)
    report = validate(published_lists_validation_frame(frame, keys, catalogue), "sessions", published_lists_suite(keys))
    failed = failed_expectations(report)
    assert set(failed) == {
        "expect_column_values_to_be_between:n_recs",
        "expect_column_pair_values_to_be_equal:n_scores",
        "expect_column_values_to_be_in_set:scores_descending",
    }
    assert failed["expect_column_values_to_be_between:n_recs"]["partial_unexpected_list"] == [21]
    assert report.failed[0].kwargs.get("max_value") in (20, None)


def test_gate_missing_session_and_bad_top_sellers(spark, catalogue):
    from pipelines.quality import (
        published_top_sellers_suite,
        published_top_sellers_validation_frame,
        session_coverage_suite,
        session_coverage_validation_frame,
    )

    active = spark.createDataFrame([(100,), (101,), (102,)], "session BIGINT")
    frames = frames_of(spark)
    recs = frames[SESSION_RECOMMENDATIONS].where("NOT (session = 101 AND type = 'orders')")
    coverage = validate(session_coverage_validation_frame(recs, active), "coverage", session_coverage_suite())
    assert not coverage.success
    assert sorted(coverage.failed[0].observed["partial_unexpected_list"]) == [
        "101/orders", "102/carts", "102/clicks", "102/orders"
    ]

    top = spark.createDataFrame(
        [("clicks", 1, 11, 5.0), ("clicks", 2, 11, 6.0), ("carts", 1, 500, 1.0)], "type STRING, rank INT, aid BIGINT, score DOUBLE"
    )
    report = validate(published_top_sellers_validation_frame(top, catalogue), "top", published_top_sellers_suite())
    failed = {o.expectation for o in report.failed}
    assert failed == {
        "expect_column_distinct_values_to_equal_set",  # no orders
        "expect_compound_columns_to_be_unique",  # aid 11 twice for clicks
        "expect_column_values_to_be_in_set",  # unknown aid 500, score rising with rank
    }
    assert {o.kwargs["column"] for o in report.failed if o.expectation == "expect_column_values_to_be_in_set"} == {
        "aid_known", "score_not_above_previous_rank"
    }


def test_row_count_gate_against_the_previous_manifest():
    current = {TOP_SELLERS: 60, SESSION_RECOMMENDATIONS: 1000}
    previous = {"week": WEEK_A, "row_counts": {TOP_SELLERS: 60, SESSION_RECOMMENDATIONS: 3000}}
    result = row_count_gate(current, previous)
    assert not result.passed and result.details["previous_week"] == WEEK_A
    assert [o.kwargs["column"] for o in result.report.failed] == ["session_recommendations_row_ratio"]
    assert row_count_gate({SESSION_RECOMMENDATIONS: 2000}, previous).passed
    skipped = row_count_gate(current, None)
    assert skipped.passed and skipped.skipped and "not compared" in skipped.note
    warm = row_count_gate(current, previous, warm_up="training window not full yet")
    assert warm.passed and warm.skipped and "not enforced" in warm.note
    assert warm.details["ratios"]["session_recommendations"] == pytest.approx(1000 / 3000)


def test_row_counts_are_enforced_once_both_weeks_learned_from_a_full_window():
    from pipelines.recommendations import row_count_warm_up
    from resources import PipelineConfigResource

    config = PipelineConfigResource(raw_uri="unused", timezone="Europe/Berlin", partition_start="2022-08-01", training_weeks=4)
    assert row_count_warm_up(config, "2022-08-22", None) is None
    reason = row_count_warm_up(config, "2022-08-22", "2022-08-15")  # 08-22's window holds 4 weeks, 08-15's 3
    assert reason == "training window not full yet (week 2022-08-15 learned from 3 of 4 weeks)"
    assert "week 2022-08-08 learned from 2 of 4" in row_count_warm_up(config, "2022-08-15", "2022-08-08")
    assert row_count_warm_up(config, "2022-08-29", "2022-08-22") is None


# --- concurrency and dying servers -----------------------------------------------------


def _latest_is_consistent(uri, client=None) -> dict:
    latest = read_latest(uri, client)
    assert verify_manifest(uri, latest["week"], client).ok, "the manifest _latest.json names lists missing files"
    return latest


def _publish_in_threads(calls) -> list:
    import threading

    outcomes = [None] * len(calls)

    def run(index, call):
        try:
            outcomes[index] = call()
        except Exception as error:  # noqa: BLE001 - asserted by the caller
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_concurrent_publishers_take_turns_and_latest_only_moves_forward(s3, bucket, tables, tmp_path, where):
    uri, client = (str(tmp_path / "published"), None) if where == "folder" else (f"s3://{bucket}/race", s3)
    fast = PublishConfig(lease_poll_seconds=0.05)
    calls = [
        *(lambda i=i: publish_week(tables, WEEK_A, MODEL, uri, client, dagster_run_id=f"a{i}", config=fast) for i in range(3)),
        *(lambda i=i: publish_week(tables, WEEK_B, MODEL, uri, client, dagster_run_id=f"b{i}", config=fast) for i in range(3)),
    ]
    outcomes = _publish_in_threads(calls)
    assert [type(o).__name__ for o in outcomes] == ["PublishResult"] * 6
    # Whatever the order, the older week never moved _latest.json back, and every file it names exists.
    assert _latest_is_consistent(uri, client)["week"] == WEEK_B
    assert verify_manifest(uri, WEEK_A, client).ok
    for week in (WEEK_A, WEEK_B):
        newest = max((o for o in outcomes if o.week == week), key=lambda o: o.publication_id)
        assert read_manifest(uri, week, client)["publication_id"] == newest.publication_id


def _publish_from_a_process(root: str, tables, week: str, run_id: str, endpoint: str | None = None) -> str:
    client = make_s3_client(endpoint_url=endpoint, max_attempts=2) if endpoint else None
    return publish_week(tables, week, MODEL, root, client, dagster_run_id=run_id,
                        config=PublishConfig(lease_poll_seconds=0.05)).publication_id


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_concurrent_publisher_processes(moto_endpoint, s3, bucket, tables, tmp_path, where):
    """Separate processes, as separate runs are: on S3 only the server's conditional writes keep
    them apart (no lock of this machine's)."""
    import concurrent.futures
    import multiprocessing

    root, endpoint, client = ((str(tmp_path / "published"), None, None) if where == "folder"
                              else (f"s3://{bucket}/race", moto_endpoint, s3))
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_publish_from_a_process, root, tables, week, f"{week}-{i}", endpoint)
                   for i in range(3) for week in (WEEK_B, WEEK_A)]
        ids = [future.result() for future in futures]
    assert len(set(ids)) == 6
    assert _latest_is_consistent(root, client)["week"] == WEEK_B
    for week in (WEEK_A, WEEK_B):
        assert verify_manifest(root, week, client).ok
    if where == "folder":
        assert not (Path(root) / LEASE_NAME).exists()
    else:
        assert s3.list_objects_v2(Bucket=bucket, Prefix=f"race/{LEASE_NAME}").get("KeyCount", 0) == 0


def test_a_held_lease_makes_a_second_publisher_fail_cleanly(s3, bucket, tables):
    import time as clock

    uri = f"s3://{bucket}/busy"
    holder = {"owner": "someone-else", "week": WEEK_B, "acquired_at": clock.time(), "expires_at": clock.time() + 600}
    s3.put_object(Bucket=bucket, Key=f"busy/{LEASE_NAME}", Body=json.dumps(holder).encode())
    with pytest.raises(PublisherBusyError, match="held by someone-else"):
        publish_week(tables, WEEK_A, MODEL, uri, s3, config=PublishConfig(lease_wait_seconds=0.3, lease_poll_seconds=0.1))
    assert read_latest(uri, s3) is None
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="busy/week=")

    # An expired lease is taken over.
    holder["expires_at"] = clock.time() - 1
    s3.put_object(Bucket=bucket, Key=f"busy/{LEASE_NAME}", Body=json.dumps(holder).encode())
    assert publish_week(tables, WEEK_A, MODEL, uri, s3).latest_updated


@pytest.mark.parametrize("kill_at", ["manifest", "latest", "multipart"])
def test_a_server_killed_at_the_manifest_latest_or_a_multipart_upload(s3, bucket, tables, kill_at):
    uri = f"s3://{bucket}/recsys"
    publish_week(tables, WEEK_A, MODEL, uri, s3)
    server, endpoint = start_moto()
    dying = make_s3_client(endpoint_url=endpoint, max_attempts=2)

    def kill_before(**kwargs):
        key = kwargs["params"].get("Key", "")
        if (kill_at == "manifest" and f"/{PUBLICATIONS_FOLDER}/" in key) or (kill_at == "latest" and key.endswith(LATEST_NAME)):
            kill_moto(server)

    def kill_after_a_part(**_):
        kill_moto(server)

    dying.meta.events.register("before-parameter-build.s3.PutObject", kill_before)
    dying.meta.events.register("after-call.s3.UploadPart", kill_after_a_part)
    config = PublishConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024) if kill_at != "multipart" \
        else PublishConfig(multipart_threshold=1, multipart_chunksize=5 * 1024 * 1024)
    try:
        with pytest.raises(PublishError) as failure:
            publish_week(tables, WEEK_B, MODEL, uri, dying, dagster_run_id="run-b", config=config)
    finally:
        if server._server_ready_event.is_set():
            kill_moto(server)
    expected_step = {"manifest": "write manifest", "latest": "write _latest.json", "multipart": "upload"}[kill_at]
    assert failure.value.step == expected_step
    assert _latest_is_consistent(uri, s3)["week"] == WEEK_A
    retry = publish_week(tables, WEEK_B, MODEL, uri, s3, dagster_run_id="run-b")
    assert retry.latest_updated and _latest_is_consistent(uri, s3)["week"] == WEEK_B
