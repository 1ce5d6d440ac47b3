"""`daily_refresh`: every market refreshed once a day (off by default; one switch in the UI)."""

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, schedule

from toptracks_dagster.jobs import top_tracks_job
from toptracks_dagster.partitions import country_partitions


@schedule(
    name="daily_refresh",
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    job=top_tracks_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description="06:00 UTC: one run per market (the spotify_api pool keeps them from sharing the API at once).",
)
def daily_refresh(context: ScheduleEvaluationContext):
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [RunRequest(partition_key=market, run_key=f"daily-{day}-{market}")
            for market in country_partitions.get_partition_keys()]
