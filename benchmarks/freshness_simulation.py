"""Simulate the rolling refresh over simulated days: is the daily budget kept, and the stated bound?

    .venv/bin/python benchmarks/freshness_simulation.py [--artists 20000] [--markets 5] [--budget 20000] \
        [--days 30] [--error-5xx-share 0] [--png docs/freshness-simulation.png] [--json out.json]

What is real here: the `rolling_refresh` schedule itself (evaluated every simulated hour with
build_schedule_context, so its sizing is the code's), the budget ledger (`BudgetLedger` in a LocalRawStorage
directory, reserved and settled every run, on the simulated clock), the planner (`plan_run`, stalest pairs over all
markets, new artists first), the per-run request cap (`RequestAllowance`, which refuses the request that would pass
the cap, retries included) and the emulator's catalogue (which artists are 404 in a market) and 5xx share.

What is simulated: the clock (the planner only sees `requested_at` values, which the simulation writes with the
simulated time of the run), and the transport. The HTTP emulator serves about 300 requests/s on this machine, so
the 600,000 requests of 30 days would take over half an hour of requests alone; here a request is a draw: 5xx with
the given share (retried like the client does, up to 5 tries), else the catalogue's 200 or 404. Track bodies,
raw partitions and DynamoDB are skipped: they do not change what is requested or when (the table's exactness
after budgeted runs is what tests/test_budget.py checks, on DynamoDB Local).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dagster import SkipReason, build_schedule_context  # noqa: E402

from toptracks_dagster.dev.spotify_emulator import Catalog, demo_artist_ids  # noqa: E402
from toptracks_dagster.raw_storage.resources import LocalRawStorage  # noqa: E402
from toptracks_dagster.spotify.budget import BudgetLedger, RotationPlan, iso  # noqa: E402
from toptracks_dagster.spotify.client import RequestAllowance, SpotifyBudgetExhausted  # noqa: E402
from toptracks_dagster.spotify.refresh import RefreshConfig, fetch_order, plan_run  # noqa: E402

MARKETS = ["US", "CA", "GB", "DE", "JP", "FR", "BR", "MX", "AU", "KR"]
MAX_ATTEMPTS = 5
START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def simulate(artists: int, markets: int, budget: int, days: int, error_share: float, seed: int = 1) -> dict:
    os.environ["TOPTRACKS_REQUESTS_PER_DAY"] = str(budget)
    from toptracks_dagster.schedules import rolling_refresh

    listed = sorted(demo_artist_ids(artists, seed=42))
    chosen_markets = MARKETS[:markets]
    catalog = Catalog(seed=7)
    missing = {a for a in listed if catalog.is_missing(a)}  # the emulator's 404 artists
    rng = random.Random(seed)
    plan = RotationPlan(artists=artists, markets=markets, budget=budget, runs_per_day=24, target_days=7)
    stored: dict[str, dict[str, str]] = {m: {} for m in chosen_markets}
    epoch: dict[str, dict[str, float]] = {m: {} for m in chosen_markets}
    tmp = tempfile.mkdtemp(prefix="freshness-sim-")
    storage = LocalRawStorage(base_dir=tmp)
    per_day = []
    started = time.monotonic()
    for day in range(days):
        requests_today = pairs_today = stopped_runs = skipped = 0
        worst_age_before_run = 0.0
        for hour in range(24):
            now = START + timedelta(days=day, hours=hour)
            oldest = min((min(e.values()) for e in epoch.values() if e), default=None)
            if oldest is not None and all(len(epoch[m]) == artists for m in chosen_markets):
                worst_age_before_run = max(worst_age_before_run, (now.timestamp() - oldest) / 86400)
            request = rolling_refresh(
                build_schedule_context(scheduled_execution_time=now, resources={"raw_storage": storage})
            )
            if isinstance(request, SkipReason):
                skipped += 1
                continue
            refresh = request.run_config["ops"]["raw_top_tracks"]["config"]
            config = RefreshConfig(mode="stalest", pairs=refresh["pairs"], max_requests=refresh["max_requests"])
            plans = plan_run(config, chosen_markets, listed, stored)
            ledger = BudgetLedger.load(storage)
            run_id = f"sim-{day}-{hour}"
            ledger.reserve(run_id, config.max_requests, now)
            ledger.save(storage, now)
            allowance = RequestAllowance(config.max_requests)
            stamp = iso(now)
            try:
                for artist_id, market in fetch_order(plans):
                    for _attempt in range(MAX_ATTEMPTS):
                        allowance.take()
                        if not (error_share and rng.random() < error_share):
                            break  # 200, or 404 for a missing artist: an outcome either way
                    else:
                        continue  # tries spent: the real run fails here; the simulation keeps the old list
                    stored[market][artist_id] = stamp
                    epoch[market][artist_id] = now.timestamp()
                    pairs_today += 1
            except SpotifyBudgetExhausted:
                stopped_runs += 1
            ledger = BudgetLedger.load(storage)
            ledger.settle(run_id, allowance.used, now + timedelta(minutes=5))
            ledger.save(storage, now + timedelta(minutes=5))
            requests_today += allowance.used
        end = START + timedelta(days=day + 1) - timedelta(seconds=1)
        ages = sorted((end.timestamp() - t) / 86400 for e in epoch.values() for t in e.values())
        without = artists * markets - len(ages)
        per_day.append(
            {
                "day": day + 1,
                "requests": requests_today,
                "ledger_spent": BudgetLedger.load(storage).spent_on((START + timedelta(days=day)).date()),
                "pairs_refreshed": pairs_today,
                "runs_stopped_by_cap": stopped_runs,
                "ticks_skipped": skipped,
                "pairs_without_list": without,
                "age_median_days": round(ages[len(ages) // 2], 3) if ages else None,
                "age_p95_days": round(ages[int(len(ages) * 0.95)], 3) if ages else None,
                "age_oldest_days": round(ages[-1], 3) if ages else None,
                "oldest_before_any_run_days": round(worst_age_before_run, 3),
                "pairs_older_than_bound": sum(1 for a in ages if a > plan.bound_days) if ages else 0,
                "missing_404_artists": len(missing),
            }
        )
        print(json.dumps(per_day[-1]), flush=True)
    return {
        "artists": artists,
        "markets": markets,
        "budget": budget,
        "days": days,
        "error_5xx_share": error_share,
        "bound_days": plan.bound_days,
        "rotation_days": plan.rotation_days,
        "per_day": per_day,
        "wall_s": round(time.monotonic() - started, 1),
    }


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [d["day"] for d in result["per_day"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for key, label in (
        ("oldest_before_any_run_days", "oldest pair, worst hour of the day"),
        ("age_oldest_days", "oldest (end of day)"),
        ("age_p95_days", "p95 (end of day)"),
        ("age_median_days", "median (end of day)"),
    ):
        # The worst hour is measured once every pair has a list (before that, the pairs without one go first).
        values = [
            float("nan") if d[key] is None or (key.startswith("oldest_before") and d["pairs_without_list"]) else d[key]
            for d in result["per_day"]
        ]
        top.plot(days, values, marker=".", label=label)
    top.axhline(result["bound_days"], color="red", linestyle="--", label=f"stated bound ({result['bound_days']} d)")
    top.set_ylabel("list age (days)")
    top.legend(fontsize=8)
    top.set_title(
        f"{result['artists']:,} artists x {result['markets']} markets, {result['budget']:,} requests/day, "
        f"5xx share {result['error_5xx_share']}"
    )
    bottom.bar(days, [d["requests"] for d in result["per_day"]], label="requests sent (retries, 404s included)")
    bottom.axhline(result["budget"], color="red", linestyle="--", label="budget")
    bottom.set_ylabel("requests per day")
    bottom.set_xlabel("simulated day")
    bottom.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artists", type=int, default=20_000)
    parser.add_argument("--markets", type=int, default=5)
    parser.add_argument("--budget", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--error-5xx-share", type=float, default=0.0)
    parser.add_argument("--png", help="write the plot here (needs the `bench` extra: matplotlib)")
    parser.add_argument("--json", help="write the per-day figures here")
    args = parser.parse_args()
    result = simulate(args.artists, args.markets, args.budget, args.days, args.error_5xx_share)
    over = [
        d["day"] for d in result["per_day"] if d["requests"] > result["budget"] or d["ledger_spent"] > result["budget"]
    ]
    first_full = next((d["day"] for d in result["per_day"] if d["pairs_without_list"] == 0), None)
    after = [d for d in result["per_day"] if first_full is not None and d["day"] > first_full]
    worst = max((d["oldest_before_any_run_days"] for d in after), default=None)
    print(
        f"days over budget: {over or 'none'}; every pair has a list from day {first_full}; oldest pair after the "
        f"first rotation: {worst} d (bound {result['bound_days']} d); "
        f"median requests/day {statistics.median(d['requests'] for d in result['per_day'])}; "
        f"wall {result['wall_s']} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.png:
        plot(result, args.png)
    return 0 if not over and (worst is None or worst <= result["bound_days"] + 1e-9) else 1


if __name__ == "__main__":
    sys.exit(main())
