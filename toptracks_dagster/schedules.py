"""Schedules (off by default; one switch each in the UI)."""

from datetime import datetime, timezone

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from toptracks_dagster import config
from toptracks_dagster.jobs import all_markets_tags, top_tracks_job
from toptracks_dagster.raw_storage.resources import RawStorage
from toptracks_dagster.spotify.budget import (
    ROLLING_INTERVAL_S,
    describe_spent,
    run_allowance,
    run_pairs,
    spent_on,
    ticks_left_today,
)


def _raw_config(**fields) -> dict:
    return {"ops": {"raw_top_tracks": {"config": fields}}}


@schedule(
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    job=top_tracks_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description="06:00 UTC: one run refreshes every artist in every market. Its load writes only what changed "
    "and reconciles the whole table.",
)
def daily_refresh(context: ScheduleEvaluationContext):
    return RunRequest(
        run_key=f"daily-{context.scheduled_execution_time:%Y-%m-%d}",
        tags={**all_markets_tags(), "trigger": "daily_refresh"},
        run_config=_raw_config(mode="full", reason="daily_refresh"),
    )


def rolling_refresh_fields(raw_storage: RawStorage, now: datetime) -> tuple[dict | None, str]:
    """The rolling refresh's raw step config at `now` (None when nothing should run) and why. The hourly schedule
    and `toptracks run --mode rolling` share it, so a script can drive rolling days headless."""
    budget = config.requests_per_day()
    if budget is None:
        return None, "TOPTRACKS_REQUESTS_PER_DAY is not set: no rolling refresh (daily_refresh does full ones)"
    try:
        spent = spent_on(raw_storage, now.date())
    except config.PermanentError as error:  # an unreadable ledger or storage: said, nothing is run
        return None, str(error)
    if spent >= budget:
        return None, f"request budget spent: {describe_spent(spent, budget, now.date())}"
    allowance = run_allowance(budget, spent, now, ROLLING_INTERVAL_S)
    pairs = run_pairs(allowance, now, ROLLING_INTERVAL_S)
    if pairs <= 0:  # a small budget early in the day: later ticks get what is left
        return None, (
            f"this tick's share of the {budget - spent} requests left today (UTC {now.date()}) is under one pair "
            f"over the {ticks_left_today(now, ROLLING_INTERVAL_S)} ticks left"
        )
    stamp = f"{now:%Y-%m-%dT%H:%M}"
    mode = "adaptive" if config.refresh_policy() == "adaptive" else "stalest"
    return {
        "mode": mode,
        "pairs": pairs,
        "max_requests": allowance,
        "reason": f"rolling_refresh {stamp} ({mode}): {allowance} of {budget - spent} requests left today",
    }, stamp


@schedule(
    cron_schedule="0 * * * *",
    execution_timezone="UTC",
    job=top_tracks_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Hourly: one run refreshes the pairs TOPTRACKS_REFRESH_POLICY picks, sized to what is left of "
    "TOPTRACKS_REQUESTS_PER_DAY over the ticks left today. Skips when the budget is unset or spent.",
)
def rolling_refresh(context: ScheduleEvaluationContext, raw_storage: RawStorage):
    tick = context.scheduled_execution_time
    if tick is not None and tick.astimezone(timezone.utc).date() < datetime.now(timezone.utc).date():
        # A tick the daemon missed before midnight: sized by its own day, it would spend that day's rest today.
        return SkipReason(f"a missed tick of {tick:%Y-%m-%d %H:%M} UTC: that day's budget is closed")
    try:
        fields, why = rolling_refresh_fields(raw_storage, tick)
    except config.ConfigError as error:
        return SkipReason(str(error))
    if fields is None:
        return SkipReason(why)
    return RunRequest(
        run_key=f"rolling-{why}",
        tags={**all_markets_tags(), "trigger": "rolling_refresh"},
        run_config=_raw_config(**fields),
    )
