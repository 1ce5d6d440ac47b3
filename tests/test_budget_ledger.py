"""The request budget ledger: reservations racing from separate processes never grant more than the day's budget,
a tampered or malformed entry is refused by name, and settling records what was sent."""

from __future__ import annotations

import json
import multiprocessing
import os
from datetime import timedelta

import pytest
from dagster import MaterializeResult, asset, materialize

from toptracks_dagster.config import PermanentError
from toptracks_dagster.raw_storage.resources import LocalRawStorage
from toptracks_dagster.spotify.budget import LEDGER_KEY, BudgetLedgerUnreadable, RunBudget, spent_on, utc_now


def storage_for(where: str):
    if not where.startswith("http"):
        return LocalRawStorage(base_dir=where)
    from dagster_aws.s3 import S3Resource

    from toptracks_dagster.raw_storage.s3 import S3RawStorage

    s3 = S3Resource(endpoint_url=where, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return S3RawStorage(s3=s3, bucket="budget", prefix="")


def _reserve_many(where: str, times: int, start, results) -> None:
    storage = storage_for(where)
    start.wait(60)
    results.put([RunBudget.reserve(storage, f"{os.getpid()}-{i}/0", 3, 10, 2).cap for i in range(times)])


def race(where: str, processes: int = 2, times: int = 40) -> list[int]:
    """Caps granted to `processes` processes that reserve 3 requests `times` times each, all at once."""
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(processes), spawn.Queue()
    workers = [spawn.Process(target=_reserve_many, args=(where, times, start, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    granted = [cap for _ in workers for cap in results.get(timeout=120)]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    return granted


def test_processes_reserving_at_once_never_get_more_than_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "100")
    granted = race(str(tmp_path))
    assert len(granted) == 80 and sum(granted) == 100  # 240 wanted: the whole budget is granted, not a request more
    storage = LocalRawStorage(base_dir=str(tmp_path))
    assert spent_on(storage, utc_now().date()) == 100  # no reservation was lost
    assert len(json.loads(storage.read_small(LEDGER_KEY))["entries"]) == 80


def _write_ledger(storage, *entries) -> None:
    with storage.open_for_write(LEDGER_KEY) as stream:
        json.dump({"entries": list(entries)}, stream)


NOW = utc_now().isoformat()
GOOD = {"run_id": "a/0", "started_at": NOW, "reserved": 10}


@pytest.mark.parametrize(
    "bad, named",
    [
        ({**GOOD, "reserved": -500}, "entries.1.reserved: Input should be greater than or equal to 0"),
        ({**GOOD, "spent": -5}, "entries.1.spent: Input should be greater than or equal to 0"),
        ({**GOOD, "reserved": "10"}, "entries.1.reserved: Input should be a valid integer"),
        ({**GOOD, "reserved": True}, "entries.1.reserved: Input should be a valid integer"),
        ({**GOOD, "started_at": "2026-03-02T12:00:00"}, "entries.1.started_at: Input should have timezone info"),
        ({**GOOD, "ended_at": "2000-01-01T00:00:00Z", "spent": 1}, "entries.1: Value error, ended_at is before"),
        ({**GOOD, "refund": 99}, "entries.1.refund: Extra inputs are not permitted"),
        ([1, 2], "entries.1: Input should be an object"),
    ],
)
def test_a_malformed_entry_is_refused_by_name_and_nothing_is_reserved(tmp_path, monkeypatch, bad, named):
    monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "100")
    storage = LocalRawStorage(base_dir=str(tmp_path))
    _write_ledger(storage, GOOD, bad)
    before = storage.read_small(LEDGER_KEY)
    for attempt in (lambda: RunBudget.reserve(storage, "b/0", None, 10, 2), lambda: spent_on(storage, utc_now())):
        with pytest.raises(BudgetLedgerUnreadable) as raised:
            attempt()
        assert isinstance(raised.value, PermanentError)
        assert storage.uri(LEDGER_KEY) in str(raised.value) and named in str(raised.value)
    assert storage.read_small(LEDGER_KEY) == before


def test_a_ledger_that_is_not_json_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "100")
    storage = LocalRawStorage(base_dir=str(tmp_path))
    with storage.open_for_write(LEDGER_KEY) as stream:
        stream.write('{"entries": [')
    with pytest.raises(BudgetLedgerUnreadable, match="document: Invalid JSON"):
        RunBudget.reserve(storage, "b/0", None, 10, 2)


def test_settling_records_what_was_sent_and_a_run_that_died_counts_in_full(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "100")
    storage = LocalRawStorage(base_dir=str(tmp_path))
    now = utc_now()
    _write_ledger(
        storage,
        {
            "run_id": "died/0",
            "started_at": (now - timedelta(hours=30)).isoformat(),
            "reserved": 20,
        },  # yesterday, unsettled
        {
            "run_id": "sent/0",
            "started_at": (now - timedelta(hours=30)).isoformat(),
            "reserved": 50,
            "spent": 40,
            "ended_at": (now - timedelta(hours=29)).isoformat(),
        },  # fmt: skip
        {"run_id": "old/0", "started_at": (now - timedelta(days=9)).isoformat(), "reserved": 5},
    )
    first = RunBudget.reserve(storage, "first/0", 50, 10, 2)
    assert (first.cap, first.spent_before) == (50, 20)  # the dead run counts today too; yesterday's settled not
    second = RunBudget.reserve(storage, "second/0", None, 10, 2)
    assert (second.cap, second.spent_before) == (30, 70)
    first.settle(12)
    assert first.spent_after == 20 + 12 + 30 == spent_on(storage, now.date())
    entries = {e["run_id"]: e for e in json.loads(storage.read_small(LEDGER_KEY))["entries"]}
    assert "old/0" not in entries  # pruned
    assert entries["first/0"]["spent"] == 12 and entries["first/0"]["ended_at"] is not None
    metadata = first.metadata(stopped=False)
    assert metadata["budget_spent_today_before"] == 20 and metadata["budget_spent_today_after"] == 62
    assert metadata["run_request_cap"] == 50
    # 20 pairs at 100 a day could rotate daily; the adaptive policy may stretch a quiet pair to the 7-day target
    assert metadata["freshness_bound_days"] == 7
    second.settle(30)
    assert RunBudget.reserve(storage, "third/0", None, 10, 2).cap == 38  # the rest of the day
    spent = RunBudget.reserve(storage, "fourth/0", None, 10, 2)
    assert spent.cap == 0 and spent.describe_cap() == (
        f"request budget spent: 100 of 100 today (UTC {now.date()}): this run sends no request"
    )


def test_without_a_budget_a_run_is_capped_only_by_its_own_max_requests(tmp_path, monkeypatch):
    monkeypatch.delenv("TOPTRACKS_REQUESTS_PER_DAY", raising=False)
    storage = LocalRawStorage(base_dir=str(tmp_path))
    assert RunBudget.reserve(storage, "a/0", None, 10, 2).cap is None
    budget = RunBudget.reserve(storage, "a/0", 7, 10, 2)
    budget.settle(7)
    assert budget.cap == 7 and budget.metadata(True)["run_stopped_by_cap"] is True
    assert storage.read_small(LEDGER_KEY) is None  # nothing to count against


def test_a_dagster_run_reserves_under_its_run_id_and_retry(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "5")
    storage = LocalRawStorage(base_dir=str(tmp_path))

    @asset
    def spender(context):
        budget = RunBudget.open(context, storage, max_requests=None, artists=10, markets=2)
        budget.settle(min(3, budget.cap))
        return MaterializeResult(metadata={**budget.metadata(stopped=False), "said": budget.describe_cap()})

    runs = [materialize([spender]) for _ in range(3)]
    said = [r.asset_materializations_for_node("spender")[0].metadata["said"].value for r in runs]
    assert said[:2] == [
        f"request budget: 0 of 5 today (UTC {utc_now().date()}) spent; this run may send 5 requests",
        f"request budget: 3 of 5 today (UTC {utc_now().date()}) spent; this run may send 2 requests",
    ]
    assert said[2].startswith("request budget spent: 5 of 5 today")
    entries = json.loads(storage.read_small(LEDGER_KEY))["entries"]
    assert [e["run_id"] for e in entries] == [f"{r.run_id}/0" for r in runs]
    assert [e["spent"] for e in entries] == [3, 2, 0]


def test_a_step_retry_shares_its_runs_max_requests_with_the_attempts_before_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "100")
    storage = LocalRawStorage(base_dir=str(tmp_path))
    first = RunBudget.reserve(storage, "tick/0", 10, 10, 2)
    first.settle(7)  # the attempt failed after 7 requests
    retry = RunBudget.reserve(storage, "tick/1", 10, 10, 2)
    assert retry.cap == 3  # the tick's 10, not 10 more
    died = RunBudget.reserve(storage, "other/0", 10, 10, 2)  # dies unsettled: counts at its reservation
    assert died.cap == 10 and RunBudget.reserve(storage, "other/1", 10, 10, 2).cap == 0
    assert RunBudget.reserve(storage, "third/0", 10, 10, 2).cap == 10  # another run: its own 10
