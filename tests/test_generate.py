"""The synthetic generator: raw layout contract, determinism, OTTO-like statistics and
the behavioural structure later stages are meant to learn."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipelines.generate import generate_raw
from pipelines.vocabulary import EVENT_TYPES
from pipelines.weeks import Week

START = "2022-08-01"
TIMEZONE = "Europe/Berlin"
WEEK_KEYS = ["2022-08-01", "2022-08-08", "2022-08-15", "2022-08-22"]


def read_lines(root: Path) -> dict[str, list[dict]]:
    """Every line of the layout, by week folder name, in file order."""
    return {
        folder.name: [json.loads(line) for part in sorted(folder.glob("*.jsonl")) for line in part.open()]
        for folder in sorted(root.glob("week=*"))
    }


def full_sessions(lines_by_week: dict[str, list[dict]]) -> dict[int, list[dict]]:
    """Each session's events across all weeks, in week order (so in time order)."""
    sessions: dict[int, list[dict]] = defaultdict(list)
    for folder in sorted(lines_by_week):
        for line in lines_by_week[folder]:
            sessions[line["session"]].extend(line["events"])
    return sessions


def flatten(lines_by_week: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """Column arrays of all events, ordered by session and then time."""
    session, aid, ts, kind, week = [], [], [], [], []
    for week_index, folder in enumerate(sorted(lines_by_week)):
        for line in lines_by_week[folder]:
            for event in line["events"]:
                session.append(line["session"])
                aid.append(event["aid"])
                ts.append(event["ts"])
                kind.append(EVENT_TYPES.index(event["type"]))
                week.append(week_index)
    columns = {"session": session, "aid": aid, "ts": ts, "type": kind, "week": week}
    arrays = {name: np.array(values, dtype=np.int64) for name, values in columns.items()}
    order = np.lexsort((arrays["ts"], arrays["session"]))  # stable: keeps checkout order on ties
    return {name: values[order] for name, values in arrays.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    summary = generate_raw(root, n_sessions=3000, n_weeks=4, start=START, seed=7, files_per_week=2)
    return root, summary, read_lines(root)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """Big enough for the statistics to settle (OTTO's are scale-free by construction)."""
    root = tmp_path_factory.mktemp("large")
    summary = generate_raw(root, n_sessions=100_000, n_weeks=4, start=START, seed=11)
    return summary, flatten(read_lines(root))


def test_layout_has_one_folder_per_week_with_the_requested_parts(small):
    root, _, _ = small
    assert sorted(path.name for path in root.iterdir()) == [f"week={key}" for key in WEEK_KEYS]
    for key in WEEK_KEYS:
        assert sorted(path.name for path in (root / f"week={key}").iterdir()) == [
            "part-00000.jsonl",
            "part-00001.jsonl",
        ]


def test_lines_follow_the_otto_schema(small):
    _, _, lines_by_week = small
    for lines in lines_by_week.values():
        for line in lines:
            assert set(line) == {"session", "events"}
            assert type(line["session"]) is int
            assert line["events"], "no empty lines"
            for event in line["events"]:
                assert set(event) == {"aid", "ts", "type"}
                assert type(event["aid"]) is int and event["aid"] >= 0
                assert type(event["ts"]) is int
                assert event["type"] in EVENT_TYPES
            timestamps = [event["ts"] for event in line["events"]]
            assert timestamps == sorted(timestamps)


def test_every_event_lies_in_the_week_of_its_folder(small):
    _, _, lines_by_week = small
    for folder, lines in lines_by_week.items():
        week = Week.parse(folder.removeprefix("week="), TIMEZONE)
        for line in lines:
            for event in line["events"]:
                assert week.start_ms <= event["ts"] < week.end_ms
                assert Week.containing_ms(event["ts"], TIMEZONE) == week


def test_sessions_are_contiguous_ids_with_one_line_per_week(small):
    root, summary, lines_by_week = small
    all_ids = set()
    for folder, lines in lines_by_week.items():
        ids = [line["session"] for line in lines]
        assert len(ids) == len(set(ids)), f"a session has two lines in {folder}"
        all_ids.update(ids)
    assert all_ids == set(range(summary["sessions"]))
    # Sessions go round-robin to the parts, so every part of every week has a fair share.
    for key in WEEK_KEYS:
        for part in (0, 1):
            ids = [json.loads(line)["session"] for line in (root / f"week={key}" / f"part-0000{part}.jsonl").open()]
            assert ids == sorted(ids)
            assert ids and all(session % 2 == part for session in ids)
    # Ids follow the first event, as in OTTO.
    sessions = full_sessions(lines_by_week)
    first_ts = [sessions[session][0]["ts"] for session in range(summary["sessions"])]
    assert first_ts == sorted(first_ts)


def test_summary_matches_the_files(small):
    _, summary, lines_by_week = small
    events = [event for lines in lines_by_week.values() for line in lines for event in line["events"]]
    assert summary["sessions"] == 3000
    assert summary["events"] == len(events)
    assert summary["weeks"] == {
        key: sum(len(line["events"]) for line in lines_by_week[f"week={key}"]) for key in WEEK_KEYS
    }
    assert summary["types"] == {name: sum(event["type"] == name for event in events) for name in EVENT_TYPES}
    assert summary["items"] == len({event["aid"] for event in events})
    assert summary["seconds"] >= 0


def test_carts_follow_clicks_and_orders_follow_carts(small):
    _, _, lines_by_week = small
    for session, events in full_sessions(lines_by_week).items():
        clicked, carted = set(), set()
        for event in events:
            if event["type"] == "carts":
                assert event["aid"] in clicked, f"session {session} carts an unclicked item"
                carted.add(event["aid"])
            elif event["type"] == "orders":
                assert event["aid"] in carted, f"session {session} orders an uncarted item"
            else:
                clicked.add(event["aid"])


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    def generate(folder: str, seed: int) -> dict[str, bytes]:
        root = tmp_path / folder
        generate_raw(root, n_sessions=1500, n_weeks=2, start=START, seed=seed)
        return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.jsonl"))}

    first = generate("first", seed=3)
    assert first == generate("again", seed=3)
    other = generate("other", seed=4)
    assert first.keys() == other.keys()
    assert first != other


def test_rerun_replaces_the_previous_output(tmp_path):
    generate_raw(tmp_path, n_sessions=200, n_weeks=3, start=START, seed=1)
    (tmp_path / "README.txt").write_text("not ours")
    summary = generate_raw(tmp_path, n_sessions=100, n_weeks=1, start="2022-08-08", seed=1)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.txt", "week=2022-08-08"]
    lines = (tmp_path / "week=2022-08-08" / "part-00000.jsonl").read_text().splitlines()
    assert sum(len(json.loads(line)["events"]) for line in lines) == summary["events"]


def test_start_must_be_a_monday(tmp_path):
    with pytest.raises(ValueError, match="not a Monday"):
        generate_raw(tmp_path, n_sessions=10, n_weeks=1, start="2022-08-02", seed=1)


def test_statistics_resemble_otto(large):
    summary, events = large
    per_session = np.bincount(events["session"])
    assert len(per_session) == 100_000
    assert 15.0 <= per_session.mean() <= 19.0  # OTTO 16.8
    assert 5 <= np.median(per_session) <= 7  # 6
    assert 34 <= np.percentile(per_session, 90) <= 44  # 39
    assert per_session.min() >= 2 and per_session.max() <= 500

    per_item = np.bincount(events["aid"])
    per_item = per_item[per_item > 0]
    assert 95 <= per_item.mean() <= 140  # OTTO 117
    assert 12 <= np.median(per_item) <= 30  # 20
    assert 140 <= np.percentile(per_item, 90) <= 240  # 183

    share = np.bincount(events["type"], minlength=3) / len(events["type"])
    assert share[0] == pytest.approx(0.899, abs=0.015)
    assert share[1] == pytest.approx(0.078, abs=0.012)
    assert share[2] == pytest.approx(0.0235, abs=0.006)

    # Checkouts: several orders often share one timestamp.
    is_order = events["type"] == 2
    checkout = events["session"][is_order] * 10**13 + events["ts"][is_order]
    _, orders_per_checkout = np.unique(checkout, return_counts=True)
    assert orders_per_checkout[orders_per_checkout > 1].sum() / is_order.sum() > 0.5
    assert summary["events"] == len(events["aid"])


def test_sessions_come_back_later_even_in_a_later_week(large):
    _, events = large
    same_session = events["session"][1:] == events["session"][:-1]
    gaps_s = np.diff(events["ts"])[same_session] / 1000
    assert np.median(gaps_s) < 120  # browsing: seconds to minutes
    assert (gaps_s > 86400).mean() > 0.002  # return visits days later
    session_weeks = np.unique(events["session"] * 8 + events["week"]) // 8
    assert np.count_nonzero(np.bincount(session_weeks) > 1) > 1000


def _split_sessions(events: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    n_sessions = events["session"].max() + 1
    is_train = events["session"] < 0.8 * n_sessions
    return is_train, ~is_train


def test_next_click_is_predictable_from_the_last_item_better_than_from_popularity(large):
    _, events = large
    same_session = events["session"][1:] == events["session"][:-1]
    is_click = events["type"][1:] == 0
    previous, following = events["aid"][:-1], events["aid"][1:]
    is_train, is_test = _split_sessions(events)
    train_pairs = same_session & is_click & is_train[1:]
    test_pairs = same_session & is_click & is_test[1:]

    popular = set(np.argsort(-np.bincount(following[train_pairs]))[:20].tolist())
    followers: dict[int, Counter] = defaultdict(Counter)
    for before, after in zip(previous[train_pairs].tolist(), following[train_pairs].tolist()):
        followers[before][after] += 1
    covisited = {item: {aid for aid, _ in counts.most_common(20)} for item, counts in followers.items()}

    popularity_hits = covisitation_hits = 0
    for before, after in zip(previous[test_pairs].tolist(), following[test_pairs].tolist()):
        popularity_hits += after in popular
        covisitation_hits += after in covisited.get(before, popular)
    n_test = int(test_pairs.sum())
    assert covisitation_hits / n_test > 0.3
    assert covisitation_hits > 2.5 * popularity_hits


def test_carted_items_predict_each_other_better_than_popular_carts(large):
    _, events = large
    bought = events["type"] >= 1
    baskets: dict[int, list[int]] = defaultdict(list)
    for session, aid in zip(events["session"][bought].tolist(), events["aid"][bought].tolist()):
        if aid not in baskets[session]:
            baskets[session].append(aid)
    n_train = 0.8 * (events["session"].max() + 1)
    together: dict[int, Counter] = defaultdict(Counter)
    cart_popularity: Counter = Counter()
    for session, basket in baskets.items():
        if session < n_train:
            cart_popularity.update(basket)
            for item in basket:
                together[item].update(other for other in basket if other != item)
    popular = {aid for aid, _ in cart_popularity.most_common(20)}

    buy2buy_hits = popularity_hits = targets = 0
    for session, basket in baskets.items():
        if session >= n_train and len(basket) >= 2:
            rest = set(basket[1:])
            buy2buy_hits += len(rest & {aid for aid, _ in together[basket[0]].most_common(20)})
            popularity_hits += len(rest & popular)
            targets += len(rest)
    assert targets > 1000
    assert buy2buy_hits > 2 * popularity_hits


def test_popularity_drifts_and_new_items_appear(large):
    _, events = large
    n_aids = events["aid"].max() + 1
    first_week = np.bincount(events["aid"][events["week"] == 0], minlength=n_aids)
    last_week = np.bincount(events["aid"][events["week"] == 3], minlength=n_aids)
    top_first = set(np.argsort(-first_week)[:100].tolist())
    top_last = set(np.argsort(-last_week)[:100].tolist())
    assert len(top_first & top_last) < 90
    newcomers = (first_week == 0) & (last_week >= 50)
    assert newcomers.sum() > 20
