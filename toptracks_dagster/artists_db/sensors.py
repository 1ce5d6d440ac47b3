"""`artists_changed_sensor`: a change in the `artists` table refreshes every market, with no person acting."""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from toptracks_dagster.artists_db.resources import ArtistsDatabase
from toptracks_dagster.config import env_int
from toptracks_dagster.jobs import top_tracks_job
from toptracks_dagster.partitions import country_partitions


@sensor(
    name="artists_changed_sensor",
    job=top_tracks_job,
    minimum_interval_seconds=env_int("TOPTRACKS_SENSOR_INTERVAL_S", 60),
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Every minute (TOPTRACKS_SENSOR_INTERVAL_S), one aggregate query fingerprints the set of artist ids (count + CRC checksums). When "
        "it changes (artists added or removed), one run per market refreshes that market exactly: new artists "
        "gain their tracks, removed ones lose their items. Nothing changed, nothing launched."
    ),
)
def artists_changed_sensor(context: SensorEvaluationContext, artists_db: ArtistsDatabase):
    fingerprint = artists_db.id_set_fingerprint()
    if fingerprint == context.cursor:
        return SkipReason(f"artist id set unchanged ({fingerprint})")
    context.log.info(f"artist id set changed: {context.cursor} -> {fingerprint}")
    return SensorResult(
        # run_key per (fingerprint, market): a re-evaluated tick never launches the same refresh twice.
        run_requests=[
            RunRequest(partition_key=market, run_key=f"artists-{fingerprint}-{market}", tags={"trigger": "artists_changed"})
            for market in country_partitions.get_partition_keys()
        ],
        cursor=fingerprint,
    )
