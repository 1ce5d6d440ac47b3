"""Schedules (off by default; one switch each in the UI)."""

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from toptracks_dagster import config
from toptracks_dagster.dynamodb.audit import top_tracks_audit_job
from toptracks_dagster.jobs import all_markets_tags, top_tracks_job
from toptracks_dagster.raw_storage.resources import RawStorage
from toptracks_dagster.spotify.budget import (
    ROLLING_INTERVAL_S,
    BudgetLedger,
    BudgetLedgerUnreadable,
    run_allowance,
    run_pairs,
)


@schedule(
    name="daily_refresh",
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    job=top_tracks_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description=(
        "06:00 UTC: one full refresh of every market in one run (one request per artist per market; "
        "writes only what changed)."
    ),
)
def daily_refresh(context: ScheduleEvaluationContext):
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return RunRequest(
        run_key=f"daily-{day}",
        tags={**all_markets_tags(), "trigger": "daily_refresh"},
        run_config={"ops": {"raw_top_tracks": {"config": {"mode": "full", "reason": "daily_refresh"}}}},
    )


@schedule(
    name="weekly_audit",
    cron_schedule="0 7 * * 0",
    execution_timezone="UTC",
    job=top_tracks_audit_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Sundays 07:00 UTC: the full reconciliation of every market (one Query per artist per market).",
)
def weekly_audit(context: ScheduleEvaluationContext):
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return RunRequest(run_key=f"audit-{day}")


@schedule(
    name="rolling_refresh",
    cron_schedule="0 * * * *",
    execution_timezone="UTC",
    job=top_tracks_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description=(
        "Hourly, with TOPTRACKS_REQUESTS_PER_DAY set: one run over every market that refreshes the stalest "
        "(artist, market) pairs first (artists without a list before all others), sized to what is left of the "
        "UTC day's budget shared by the ticks left today, and capped at that inside the run (retries and 404s "
        "count); it plans 10 % fewer pairs than that for retries, except the day's last tick. Every pair is "
        "refreshed at least every ceil(artists x markets / budget) days (`toptracks plan`). "
        "Costs exactly the budget per day; skips when the budget is unset or spent."
    ),
)
def rolling_refresh(context: ScheduleEvaluationContext, raw_storage: RawStorage):
    budget = config.requests_per_day()
    if budget is None:
        return SkipReason("TOPTRACKS_REQUESTS_PER_DAY is not set: no rolling refresh (daily_refresh does full ones)")
    now = context.scheduled_execution_time
    try:
        spent = BudgetLedger.load(raw_storage).spent_on(now.date())
    except BudgetLedgerUnreadable as error:
        return SkipReason(str(error))
    allowance = run_allowance(budget, spent, now, ROLLING_INTERVAL_S)
    if allowance <= 0:
        return SkipReason(f"request budget spent: {spent} of {budget} today (UTC {now.date()})")
    stamp = now.strftime("%Y-%m-%dT%H:%M")
    return RunRequest(
        run_key=f"rolling-{stamp}",
        tags={**all_markets_tags(), "trigger": "rolling_refresh"},
        run_config={
            "ops": {
                "raw_top_tracks": {
                    "config": {
                        "mode": "stalest",
                        "pairs": run_pairs(allowance, now, ROLLING_INTERVAL_S),
                        "max_requests": allowance,
                        "reason": f"rolling_refresh {stamp}: {allowance} of {budget - spent} requests left today",
                    }
                }
            }
        },
    )
