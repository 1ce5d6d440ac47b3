"""Fresh within a budget: the daily request cap holds (retries included), the stalest pairs go first, the bound is
stated, the freshness check warns when it breaks, and the table stays exact for every artist refreshed."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import SkipReason, build_schedule_context, instance_for_test

from tests.conftest import TEST_CLIENT_ID
from tests.helpers import check_results, expected_keys, partition_metadata, run_all_markets, run_request, scan_table
from toptracks_dagster.cli import main
from toptracks_dagster.raw_storage.resources import LocalRawStorage
from toptracks_dagster.schedules import rolling_refresh, rolling_refresh_fields
from toptracks_dagster.spotify.budget import RotationPlan, run_allowance, run_pairs, spent_on, utc_now
from toptracks_dagster.spotify.client import SpotifyBudgetExhausted, SpotifyClient
from toptracks_dagster.spotify.freshness import History, PairState, epoch
from toptracks_dagster.spotify.refresh import RefreshConfig, plan_pairs

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
TODAY_NOON = utc_now().replace(hour=12, minute=0, second=0, microsecond=0)  # the ledger's day is the system clock's


# ------------------------------------------------------------------------------------------ pure planning
def test_the_bound_is_stated_and_a_catalogue_past_the_budget_is_called_out(capsys):
    plan = RotationPlan(artists=20_000, markets=5, budget=20_000, runs_per_day=24, target_days=7)
    assert (plan.pairs, plan.bound_days, plan.keeps_target) == (100_000, 5, True)
    assert RotationPlan(artists=20_001, markets=5, budget=20_000, runs_per_day=24, target_days=7).bound_days == 6

    assert main(["plan", "--artists", "20000", "--markets", "5", "--budget", "20000", "--target-days", "7"]) == 0
    out = capsys.readouterr().out
    assert "every pair refreshed every 5 day(s)" in out and "about 833 requests per run" in out
    # The default policy is adaptive: its hard bound is the accepted age, never shorter than the rotation.
    assert "hard bound D = 7 day(s)" in out and "at most 29 % of the budget goes where lists change" in out
    assert "median 2.50 d, p95 4.75 d, oldest 5.00 d" in out
    # Before anything is fetched, both policies' expected stale share, from the model the planner assumes.
    expected = re.search(r"uniform (\d\.\d+), adaptive (\d\.\d+) \(hard bound 7 d\)", out)
    assert expected and 0 < float(expected[2]) < float(expected[1]), out
    assert main(["plan", "--artists", "40000", "--markets", "5", "--budget", "20000", "--target-days", "7"]) == 3
    out = capsys.readouterr().out
    assert "PAST WHAT THE BUDGET CAN KEEP" in out and "at most 28,000 artists" in out


def test_stalest_pairs_take_artists_without_a_list_first_then_the_oldest_lists():
    listed = [f"{c}" * 22 for c in "ABCDE"]
    a, b, c, d, e = listed
    stored = {
        "US": {
            a: "2026-03-01T00:00:00.000Z",
            b: "2026-02-01T00:00:00.000Z",
            c: "2026-03-02T00:00:00.000Z",
            d: "2026-01-01T00:00:00.000Z",
        },  # e has no US list
        "CA": {
            a: "2026-02-15T00:00:00.000Z",
            b: "2026-03-01T00:00:00.000Z",
            c: "2026-03-01T00:00:00.000Z",
            d: "2026-03-01T00:00:00.000Z",
            e: "2026-03-01T00:00:00.000Z",
        },
    }
    states = {m: [PairState(a, m, epoch(at), History()) for a, at in lists.items()] for m, lists in stored.items()}

    def plan(pairs: int) -> dict:
        made = plan_pairs(RefreshConfig(mode="stalest", pairs=pairs), ["US", "CA"], listed, states, 365.0, 1 / 24)
        return {p.market: p.fetch for p in made}

    # e/US (no list), then d/US (Jan 1), b/US (Feb 1), a/CA (Feb 15).
    assert plan(4) == {"US": sorted([e, d, b]), "CA": [a]}
    assert plan(1) == {"US": [e], "CA": []}


def test_a_tick_whose_share_is_under_one_pair_runs_nothing_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "12")
    storage = LocalRawStorage(base_dir=str(tmp_path))
    fields, why = rolling_refresh_fields(storage, NOON.replace(hour=1))  # 12 requests over 23 ticks: 0 each
    assert fields is None and "under one pair" in why and "12 requests left today" in why
    fields, _ = rolling_refresh_fields(storage, NOON)  # 12 over 12: one request, but 10 % are kept for retries
    assert fields is None
    fields, _ = rolling_refresh_fields(storage, NOON.replace(hour=23))  # the last tick plans all of it
    assert (fields["pairs"], fields["max_requests"]) == (12, 12)


def test_a_rolling_run_gets_what_is_left_today_shared_by_the_ticks_left():
    # 12 hourly ticks are left at noon, 1 at 23:00; a run plans 10 % fewer pairs for retries, but not the last.
    assert run_allowance(1200, 0, NOON, 3600) == 100 and run_pairs(100, NOON, 3600) == 90
    assert run_allowance(1200, 1150, NOON.replace(hour=23), 3600) == 50
    assert run_pairs(50, NOON.replace(hour=23), 3600) == 50
    assert run_allowance(1200, 1300, NOON, 3600) == 0


# ------------------------------------------------------------------------------------------ the client's cap
def test_the_client_never_sends_more_than_its_allowance_even_while_retrying_5xx(
    emulator, client_secret, some_artist_ids
):
    emulator.settings.update({"error_5xx_share": 0.3})
    client = SpotifyClient(
        client_id=TEST_CLIENT_ID,
        client_secret=client_secret,
        api_base_url=emulator.base_url,
        token_url=emulator.token_url,
        concurrency=8,
        max_requests=25,
        backoff_s=0.0,
    )
    fetched = []
    with client, pytest.raises(SpotifyBudgetExhausted):
        for outcome in client.iter_pairs([(a, m) for a in some_artist_ids for m in ("US", "CA")]):
            fetched.append(outcome)
    sent = emulator.stats.as_dict()["requests"]
    assert sent <= 25 and client.allowance.used == 25
    assert (
        emulator.stats.as_dict()["by_status"].get(500, 0)
        + emulator.stats.as_dict()["by_status"].get(502, 0)
        + emulator.stats.as_dict()["by_status"].get(503, 0)
        > 0
    )  # retries happened and were counted
    assert 0 < len(fetched) < 25


# ------------------------------------------------------------------------------------------ end to end
def _raw_lists(prod_env, market: str) -> dict[str, str]:
    path = Path(prod_env["TOPTRACKS_RAW_DIR"]) / f"raw_top_tracks/market={market}/top_tracks.jsonl"
    return {
        r["artist_id"]: r["requested_at"]
        for r in map(json.loads, path.read_text().splitlines())
        if r["record"] == "outcome"
    }


def _exact_for_refreshed(ddb, prod_env, emulator):
    """The table equals the emulator's lists of exactly the (artist, market) pairs the raw partitions hold."""
    expected = {}
    for market in ("US", "CA"):
        expected.update(expected_keys(emulator.catalog, sorted(_raw_lists(prod_env, market)), [market]))
    assert set(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == set(expected)
    return expected


def _tick(prod_env, when: datetime):
    context = build_schedule_context(
        scheduled_execution_time=when,
        resources={"raw_storage": LocalRawStorage(base_dir=prod_env["TOPTRACKS_RAW_DIR"])},
    )
    return rolling_refresh(context)


def test_rolling_refresh_never_exceeds_the_daily_budget_with_retries_and_keeps_the_table_exact(
    prod_env, artists_table, emulator, ddb, some_artist_ids, monkeypatch
):
    monkeypatch.delenv("TOPTRACKS_REQUESTS_PER_DAY", raising=False)
    assert isinstance(_tick(prod_env, TODAY_NOON), SkipReason)  # no budget: no rolling refresh
    monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "40")
    monkeypatch.setenv("TOPTRACKS_REFRESH_POLICY", "uniform")  # the stalest pairs first (adaptive: test_freshness)
    artists_table.set_ids(some_artist_ids)  # 30 artists x 2 markets = 60 pairs
    emulator.settings.update({"error_5xx_share": 0.2})
    with instance_for_test() as instance:
        first = _tick(prod_env, TODAY_NOON)  # 12 hourly ticks left today: 40 // 12 = 3
        config = first.run_config["ops"]["raw_top_tracks"]["config"]
        assert (config["mode"], config["pairs"], config["max_requests"]) == ("stalest", 2, 3)  # 10 % for retries
        result = run_request(first, instance)
        assert emulator.stats.as_dict()["requests"] <= 3
        assert sum(v["artists_fetched"] for v in partition_metadata(result, "raw_top_tracks").values()) <= 2

        last = _tick(prod_env, TODAY_NOON.replace(hour=23))  # the last tick of the day gets all that is left
        left = last.run_config["ops"]["raw_top_tracks"]["config"]["pairs"]
        assert left == 40 - spent_on(LocalRawStorage(base_dir=prod_env["TOPTRACKS_RAW_DIR"]), TODAY_NOON.date())
        result = run_request(last, instance)
        assert emulator.stats.as_dict()["requests"] <= 40  # retries and 404s included
        assert isinstance(_tick(prod_env, TODAY_NOON.replace(hour=23, minute=30)), SkipReason)  # the day is spent
        missed = _tick(prod_env, TODAY_NOON - timedelta(days=1))  # caught up after midnight: yesterday's is closed
        assert isinstance(missed, SkipReason) and "budget is closed" in missed.skip_message

    raw = partition_metadata(result, "raw_top_tracks")
    run_level = [
        e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key.to_user_string() == "raw_top_tracks"
    ][0]
    assert run_level["freshness_bound_days"].value == math.ceil(60 / 40)
    assert run_level["catalogue_pairs"].value == 60
    assert run_level["budget_spent_today_after"].value <= 40
    fetched = sum(raw[m]["artists_fetched"] for m in raw)
    assert fetched + sum(raw[m]["artists_not_fetched_cap"] for m in raw) == left
    assert all(raw[m]["artists_without_list"] > 0 for m in raw)  # 60 pairs do not fit in 40 requests
    _exact_for_refreshed(ddb, prod_env, emulator)


def test_freshness_check_warns_and_lists_the_oldest_pairs_when_the_bound_breaks(
    prod_env, artists_table, emulator, ddb, some_artist_ids, monkeypatch
):
    ids = some_artist_ids[:10]
    artists_table.set_ids(ids)
    with instance_for_test() as instance:
        run_all_markets(instance)
        # Three US lists are a month old (as if refreshes had stopped); bound with 1,000 requests a day: 1 day.
        path = Path(prod_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks/market=US/top_tracks.jsonl"
        aged = {
            ids[2]: "2026-01-01T00:00:00.000Z",
            ids[5]: "2026-01-02T00:00:00.000Z",
            ids[7]: "2026-01-03T00:00:00.000Z",
        }
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for record in records:
            if record.get("artist_id") in aged:
                record["requested_at"] = aged[record["artist_id"]]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "1000")
        before = emulator.stats.as_dict()["requests"]
        result = run_all_markets(instance, mode="stalest", pairs=2)
        assert emulator.stats.as_dict()["requests"] - before == 2
    lists = _raw_lists(prod_env, "US")
    # Stalest first: the two oldest lists were refreshed, the third is still a month old.
    assert lists[ids[2]] > "2026-02" and lists[ids[5]] > "2026-02" and lists[ids[7]] == aged[ids[7]]
    checks = check_results(result)
    us = checks[("raw_top_tracks:freshness_bound", "US")]
    assert ("raw_top_tracks:freshness_bound", "CA") not in checks  # CA was not rewritten: no new data to check
    assert not us.passed and us.severity.value == "WARN"
    assert us.metadata["pairs_older_than_bound"].value == 1
    assert [p["artist_id"] for p in us.metadata["oldest_pairs"].value][:1] == [ids[7]]
    assert partition_metadata(result, "raw_top_tracks")["US"]["pairs_older_than_bound"] == 1
    _exact_for_refreshed(ddb, prod_env, emulator)
