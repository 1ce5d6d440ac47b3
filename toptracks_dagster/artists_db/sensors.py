"""`artists_changed_sensor`: a change in the `artists` table refreshes what changed, with no person acting.

The stored data, not a cursor, says whether a change was applied (the snapshot's and each raw partition's
fingerprint), so a sensor switched on late or a run that failed halfway still converges.
"""

import hashlib
import json

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from toptracks_dagster.artists_db.assets import SnapshotUnreadable, read_snapshot
from toptracks_dagster.artists_db.resources import ArtistsDatabase
from toptracks_dagster.config import sensor_interval_s
from toptracks_dagster.jobs import all_markets_tags, country_partitions, top_tracks_job
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage
from toptracks_dagster.spotify.raw import raw_partition_key

RUN_RETRIES = 2
_REQUEST_LINE_LIMIT = 64 * 1024  # the request record is a few hundred bytes; never read a whole partition


def _partition_fingerprint(storage: RawStorage, market: str) -> str | None:
    """`artists_fingerprint` of the market's request record (first line); None when absent or unreadable."""
    try:
        with storage.open_for_read(raw_partition_key(market)) as stream:
            line = stream.readline(_REQUEST_LINE_LIMIT)
    except RawObjectMissing:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("artists_fingerprint") if isinstance(record, dict) else None


def stored_state(storage: RawStorage) -> tuple[dict[str, str | None], str | None]:
    """What raw storage says the artist list was: fingerprints by place, and the snapshot's `read_at`."""
    try:
        snapshot = read_snapshot(storage, missing_ok=True) or {}
    except SnapshotUnreadable:
        snapshot = {}
    stored = {"snapshot": snapshot.get("fingerprint")}
    for market in country_partitions.get_partition_keys():
        stored[f"market={market}"] = _partition_fingerprint(storage, market)
    return stored, snapshot.get("read_at")


@sensor(
    name="artists_changed_sensor",
    job=top_tracks_job,
    minimum_interval_seconds=sensor_interval_s(),
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Every TOPTRACKS_SENSOR_INTERVAL_S, one aggregate query fingerprints the artist id set. When raw storage "
        "holds another one, one run for all markets fetches the new artists and deletes the removed ones' items."
    ),
)
def artists_changed_sensor(context: SensorEvaluationContext, artists_db: ArtistsDatabase, raw_storage: RawStorage):
    current = artists_db.fingerprint()
    stored, read_at = stored_state(raw_storage)
    stale = {place: value for place, value in stored.items() if value != current}
    if not stale:
        return SkipReason(f"artist id set unchanged ({current})")
    context.log.info(f"artist id set {current} differs from {stale}")
    # The stored state is part of the key: the same change is asked for once, and an id set that returns to
    # an earlier fingerprint is a new change because the published snapshot moved on in between.
    basis = hashlib.sha256(json.dumps([stored, read_at], sort_keys=True).encode()).hexdigest()[:16]
    return RunRequest(
        run_key=f"artists-{current}-{basis}",
        run_config={"ops": {"raw_top_tracks": {"config": {"mode": "changed", "reason": "artists table changed"}}}},
        tags={
            **all_markets_tags(),
            "trigger": "artists_changed",
            "dagster/max_retries": str(RUN_RETRIES),
            "dagster/retry_on_asset_or_op_failure": "true",
        },
    )
