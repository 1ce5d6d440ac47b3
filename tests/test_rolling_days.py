"""Rolling days, headless, under libfaketime: `toptracks run --mode rolling` driven from a script through three
simulated UTC days takes every time it plans with from the system clock.

Only the `toptracks run` processes run under `faketime`; MariaDB, DynamoDB Local and the Spotify emulator (which
counts the requests) run in real time. The emulator's catalogue moves to a new revision every simulated day, so a
stored list shows on which simulated day Spotify really answered it: its `requested_at` must name that day.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import unavailable
from tests.helpers import scan_table
from toptracks_dagster.dev.spotify_emulator import Catalog, demo_artist_ids
from toptracks_dagster.dynamodb.load import wanted_items
from toptracks_dagster.raw_storage.resources import LocalRawStorage
from toptracks_dagster.spotify.budget import LEDGER_KEY, ROLLING_INTERVAL_S, run_allowance, spent_on

BUDGET = 12  # requests per UTC day: half of the 24 (then 28) pairs
MARKETS = ("US", "CA")
FULL_LOAD_AT = "2027-02-28 12:00:00"  # revision 0 of the catalogue, no budget
# Simulated UTC days (catalogue revisions 1, 2, 3) and the moments of each that run `toptracks run --mode rolling`.
# 01:00: 23 ticks left share the day's 12 requests (0 each); 18:00: 6 ticks left, a sixth of what is left; 23:30:
# the day's last tick, all that is left; 23:45: the day is spent. Not 12:00-17:59 of a fresh day, where a tick's
# share is 1 request and 1 / 1.1 plans 0 pairs, which the refresh config refuses. Fewer moments on the last day
# keep the test near a minute and a half.
DAYS = {
    "2027-03-01": ("01:00:00", "18:00:00", "23:30:00", "23:45:00"),
    "2027-03-02": ("01:00:00", "18:00:00", "23:30:00", "23:45:00"),
    "2027-03-03": ("23:30:00", "23:45:00"),
}
TOPTRACKS = Path(sys.executable).parent / "toptracks"


# libfaketime 0.9.10 (Debian 12) with FAKETIME_DONT_FAKE_MONOTONIC=1 turns CPython 3.11's time.sleep, an absolute
# clock_nanosleep on CLOCK_MONOTONIC, into EINVAL (wolfcw/libfaketime#426); with a faked monotonic clock instead,
# every timed lock wait (sem_clockwait, not intercepted) hangs. So the monotonic clock stays real and, where
# time.sleep fails, the faked processes (and the Python processes Dagster starts from them) sleep on select().
SLEEP_SHIM = """\
import select
import time

try:
    time.sleep(1e-6)
except OSError:  # libfaketime's clock_nanosleep with a real monotonic clock (wolfcw/libfaketime#426)

    def _sleep(seconds):
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([], [], [], left)

    time.sleep = _sleep
"""
PROBE = """\
import threading, time
lock = threading.Lock()
lock.acquire()
started = time.monotonic()
time.sleep(0.05)
lock.acquire(timeout=0.05)
print(time.time(), time.monotonic() - started)
"""


@pytest.fixture
def faketime(tmp_path) -> tuple[str, dict]:
    """The faketime wrapper and the environment its processes need, checked: the clock a Python process reads is
    faked, and its sleeps and timed waits still end."""
    found = shutil.which("faketime")
    if found is None:
        unavailable("faketime (libfaketime) is not installed: apt-get install faketime")
    shim = tmp_path / "faketime_site"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SLEEP_SHIM)
    env = {
        "TZ": "UTC",  # faketime reads its date in local time
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # timeouts and durations keep real time
        "PYTHONPATH": os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p),
    }
    probe = subprocess.run(
        [found, "2027-03-01 01:00:00", sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, f"a Python process under faketime failed: {probe.stderr[-2000:]}"
    faked, waited = map(float, probe.stdout.split())
    assert abs(faked - datetime(2027, 3, 1, 1, tzinfo=timezone.utc).timestamp()) < 300, probe.stdout
    assert 0.09 < waited < 30, probe.stdout
    return found, env


class Clock:
    """Runs `toptracks run` at simulated moments and counts the top-tracks requests the emulator served."""

    def __init__(self, faketime: tuple[str, dict], env: dict, cwd: Path, emulator):
        (self.faketime, faked), self.cwd, self.emulator = faketime, cwd, emulator
        self.env = {**env, **faked}
        self.sent: dict[str, int] = {}  # simulated day -> requests served

    def run(self, moment: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, int]:
        before = self.emulator.stats.as_dict()["requests"]
        done = subprocess.run(
            [self.faketime, moment, str(TOPTRACKS), "run", *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        sent = self.emulator.stats.as_dict()["requests"] - before
        self.sent[moment[:10]] = self.sent.get(moment[:10], 0) + sent
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert done.returncode == 0, f"toptracks run at {moment} exited {done.returncode}:\n{output}"
        return done, sent


def _partition(raw_dir: Path, market: str) -> list[dict]:
    path = raw_dir / f"raw_top_tracks/market={market}/top_tracks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _outcomes(raw_dir: Path) -> dict[tuple[str, str], dict]:
    return {
        (r["artist_id"], market): r
        for market in MARKETS
        for r in _partition(raw_dir, market)
        if r["record"] == "outcome"
    }


def _comparable(item: dict) -> dict:
    """An item as JSON would hold it (DynamoDB's numbers come back as Decimal), without `fetched_at`."""
    return json.loads(json.dumps({k: v for k, v in item.items() if k != "fetched_at"}, default=float))


def test_rolling_days_under_faketime_keep_the_budget_and_take_every_time_from_the_system_clock(
    prod_env, artists_table, emulator, ddb, tmp_path, faketime
):
    ids = demo_artist_ids(14, seed=23)
    initial, added = ids[:12], ids[12:]  # 12 artists x 2 markets = 24 pairs; two more artists on day 2
    artists_table.set_ids(initial)
    raw_dir = Path(prod_env["TOPTRACKS_RAW_DIR"])
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "TOPTRACKS_REFRESH_POLICY": "uniform",  # the stalest pairs first: which pairs a day takes is known
    }
    env.pop("TOPTRACKS_REQUESTS_PER_DAY", None)
    clock = Clock(faketime, env, tmp_path, emulator)
    ledger = LocalRawStorage(base_dir=str(raw_dir))

    # The full load, without a budget, at revision 0: every pair, stamped with the faked moment.
    _, sent = clock.run(FULL_LOAD_AT)
    assert sent == len(initial) * len(MARKETS)
    assert {r["requested_at"][:10] for r in _outcomes(raw_dir).values()} == {FULL_LOAD_AT[:10]}

    revision_of_day = {FULL_LOAD_AT[:10]: 0}
    for number, (day, moments) in enumerate(DAYS.items(), start=1):
        revision_of_day[day] = number
        for artist_id in ids:  # every list changes overnight: the stored tracks tell which day they were fetched
            emulator.catalog.set_revision(artist_id, number)
        if number == 2:
            artists_table.add(*added)
        for moment in moments:
            # What the planner must allow at this moment of the faked clock, from what the ledger says is spent.
            now = datetime.fromisoformat(f"{day}T{moment}+00:00")
            spent = spent_on(ledger, now.date())
            allowance = run_allowance(BUDGET, spent, now, ROLLING_INTERVAL_S)
            done, sent = clock.run(f"{day} {moment}", "--mode", "rolling", TOPTRACKS_REQUESTS_PER_DAY=str(BUDGET))
            assert sent <= allowance and clock.sent[day] <= BUDGET, (day, moment, allowance, clock.sent)
            if allowance == 0:  # nothing for this tick (its share rounds to 0, or the day is spent): exit 0
                assert sent == 0 and "rolling refresh: nothing to run: " in done.stdout, done.stdout
                if spent == BUDGET:  # the faked clock's UTC day is the one whose budget is spent
                    assert f"request budget spent: {BUDGET} of {BUDGET} today (UTC {day})" in done.stdout
                continue
            assert "running top_tracks_job" in done.stdout and sent > 0, done.stdout  # the budget is back
            # The run was planned at the faked moment: its reason carries the stamp and the allowance of that tick.
            reasons = {_partition(raw_dir, m)[0]["refresh"]["reason"] for m in MARKETS}
            wanted = f"rolling_refresh {day}T{moment[:5]} (stalest): {allowance} of {BUDGET - spent} requests left"
            assert any(r.startswith(wanted) for r in reasons), (wanted, reasons)
        assert "nothing to run" in done.stdout  # the day ends spent (its last moment is after the last tick)
        # The ledger counted at least what the emulator served, and the day no more than the budget: all of it.
        assert clock.sent[day] <= spent_on(ledger, date.fromisoformat(day)) == BUDGET
        outcomes = _outcomes(raw_dir)
        refreshed_today = [pair for pair, r in outcomes.items() if r["requested_at"].startswith(day)]
        assert len(refreshed_today) == clock.sent[day]  # one request per pair: no fault, no retry
        if number == 2:  # artists without a list go first, the day they appear
            assert all(outcomes[(a, m)]["requested_at"].startswith(day) for a in added for m in MARKETS)

    # Three days of 12 requests renewed all 28 pairs, the stalest first: every stored list is from a simulated day
    # and holds what the emulator served that day.
    outcomes = _outcomes(raw_dir)
    assert set(outcomes) == {(a, m) for a in ids for m in MARKETS}
    assert sum(clock.sent[d] for d in DAYS) == len(DAYS) * BUDGET
    catalog = Catalog(seed=emulator.catalog.seed)
    for (artist_id, market), outcome in outcomes.items():
        day = outcome["requested_at"][:10]
        assert day in DAYS, (artist_id, market, outcome["requested_at"])
        catalog.set_revision(artist_id, revision_of_day[day])
        served = catalog.top_tracks(artist_id, market)
        assert [t["id"] for t in outcome["tracks"] or []] == [t["id"] for t in served or []], (artist_id, market)
    entries = json.loads(ledger.read_small(LEDGER_KEY))["entries"]
    assert entries and all(e["started_at"][:10] in DAYS and e["ended_at"][:10] in DAYS for e in entries)

    # The table equals the raw partitions: every pair's tracks, rank and fields, stamped on a simulated day.
    wanted = {}
    for (artist_id, market), outcome in outcomes.items():
        found = SimpleNamespace(artist_id=artist_id, status=outcome["status"], tracks=outcome["tracks"])
        wanted.update({(artist_id, key): item for key, item in wanted_items(market, found).items()})
    table = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
    assert set(table) == set(wanted)
    assert all(_comparable(table[key]) == _comparable(item) for key, item in wanted.items())
    for (artist_id, sort_key), item in table.items():  # an item unchanged by a refresh keeps its older stamp
        requested_at = outcomes[(artist_id, sort_key.split("#")[0])]["requested_at"]
        assert item["fetched_at"][:10] in revision_of_day and item["fetched_at"] <= requested_at, item
