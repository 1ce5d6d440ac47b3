"""Schedules (off by default; one switch each in the UI)."""

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    schedule,
)

from toptracks_dagster.jobs import (
    all_markets_tags,
    top_tracks_audit_job,
    top_tracks_job,
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
    return RunRequest(run_key=f"daily-{day}", tags={**all_markets_tags(), "trigger": "daily_refresh"},
                      run_config={"ops": {"raw_top_tracks": {"config": {"mode": "full", "reason": "daily_refresh"}}}})


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
