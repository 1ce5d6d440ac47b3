"""Table of contents: what the code location holds. Everything is built in its own room."""

from dagster import Definitions, with_source_code_references

from toptracks_dagster.artists_db.assets import artist_ids
from toptracks_dagster.artists_db.checks import artist_ids_checks
from toptracks_dagster.artists_db.sensors import artists_changed_sensor
from toptracks_dagster.deployments import build_resources
from toptracks_dagster.dynamodb.assets import top_tracks
from toptracks_dagster.dynamodb.checks import top_tracks_checks
from toptracks_dagster.jobs import top_tracks_job
from toptracks_dagster.schedules import daily_refresh
from toptracks_dagster.spotify.assets import raw_top_tracks
from toptracks_dagster.spotify.checks import raw_top_tracks_checks

defs = Definitions(
    # Code references: each asset's page in the UI links to the file and line that defines it.
    assets=with_source_code_references([artist_ids, raw_top_tracks, top_tracks]),
    asset_checks=[*artist_ids_checks, *raw_top_tracks_checks, *top_tracks_checks],
    jobs=[top_tracks_job],
    sensors=[artists_changed_sensor],
    schedules=[daily_refresh],
    resources=build_resources(),
)
