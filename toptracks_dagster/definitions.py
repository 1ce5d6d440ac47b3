"""The code location: three assets, the source they read, one job, the sensor and the schedules.

Importing it starts nothing and reads no endpoint: the resources find their services when a run starts.
"""

import warnings

from dagster import BetaWarning, Definitions, PreviewWarning, in_process_executor, with_source_code_references

# Partitioned check specs, backfill policies and code references are preview/beta features this project uses on
# purpose; their warnings say nothing a user can act on.
warnings.filterwarnings("ignore", category=PreviewWarning)
warnings.filterwarnings("ignore", category=BetaWarning)

from toptracks_dagster.artists_db.assets import artist_ids, artists  # noqa: E402
from toptracks_dagster.artists_db.sensors import artists_changed_sensor  # noqa: E402
from toptracks_dagster.deployments import build_resources  # noqa: E402
from toptracks_dagster.dynamodb.assets import top_tracks  # noqa: E402
from toptracks_dagster.jobs import top_tracks_job  # noqa: E402
from toptracks_dagster.schedules import daily_refresh, rolling_refresh  # noqa: E402
from toptracks_dagster.spotify.assets import raw_top_tracks  # noqa: E402

defs = Definitions(
    assets=with_source_code_references([artists, artist_ids, raw_top_tracks, top_tracks]),
    jobs=[top_tracks_job],
    sensors=[artists_changed_sensor],
    schedules=[daily_refresh, rolling_refresh],
    resources=build_resources(),
    # A run's steps follow each other and parallelise inside (threads): one process per run, not one per step.
    executor=in_process_executor,
)
