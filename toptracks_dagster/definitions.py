"""Table of contents: what the code location holds. Everything is built in its own room."""

from dagster import Definitions, in_process_executor, with_source_code_references

from toptracks_dagster.artists_db.assets import artist_ids
from toptracks_dagster.artists_db.sensors import artists_changed_sensor
from toptracks_dagster.common import limit_malloc_arenas
from toptracks_dagster.deployments import build_resources
from toptracks_dagster.dynamodb.assets import top_tracks
from toptracks_dagster.dynamodb.audit import top_tracks_audit_job
from toptracks_dagster.jobs import top_tracks_job
from toptracks_dagster.schedules import daily_refresh, rolling_refresh, weekly_audit
from toptracks_dagster.spotify.assets import raw_top_tracks

# Every process that loads the code location (run workers included) keeps its memory flat in the catalogue size.
limit_malloc_arenas()

defs = Definitions(
    # Code references: each asset's page in the UI links to the file and line that defines it.
    assets=with_source_code_references([artist_ids, raw_top_tracks, top_tracks]),
    jobs=[top_tracks_job, top_tracks_audit_job],
    sensors=[artists_changed_sensor],
    schedules=[daily_refresh, rolling_refresh, weekly_audit],
    resources=build_resources(),
    # A run's three steps follow each other and parallelise inside (threads): one process per run, not one per
    # step, saves the UI's runs several seconds of process start-up each.
    executor=in_process_executor,
)
