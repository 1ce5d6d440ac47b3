"""`artists_changed_sensor`: a change in the `artists` table refreshes what changed, with no person acting.

Cost per tick: one aggregate query (COUNT + CRC checksums of the id set). Cost per change: one run for every
market that fetches only the artists new to each market (k new artists = k x markets requests) and deletes the
items of removed artists without any Spotify request.
"""

import json

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from toptracks_dagster.artists_db.resources import ArtistsDatabase
from toptracks_dagster.config import sensor_interval_s
from toptracks_dagster.jobs import all_markets_tags, top_tracks_job

CHANGE_TAG = "toptracks/artists_change"
MAX_ATTEMPTS = 3  # launches per change: the first, then one per failed run
_FAILED = {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def _request(change: str, attempt: int) -> RunRequest:
    return RunRequest(
        # One run key per (change, attempt): a re-evaluated tick never launches the same run twice.
        run_key=f"{change}-attempt{attempt}",
        run_config={"ops": {"raw_top_tracks": {"config": {"mode": "changed", "reason": "artists table changed"}}}},
        tags={**all_markets_tags(), CHANGE_TAG: change, "trigger": "artists_changed"},
    )


@sensor(
    name="artists_changed_sensor",
    job=top_tracks_job,
    minimum_interval_seconds=sensor_interval_s(),
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Every TOPTRACKS_SENSOR_INTERVAL_S (60 s) one aggregate query fingerprints the set of artist ids. When it "
        "changes, one run for all markets fetches only the new artists and deletes the removed artists' items "
        "(no request for them). A run that fails is launched again (up to 3 times) until the change is applied; "
        "the change itself is recomputed by the run from the data, so nothing is lost if a run fails."
    ),
)
def artists_changed_sensor(context: SensorEvaluationContext, artists_db: ArtistsDatabase):
    fingerprint = artists_db.id_set_fingerprint()
    state = _read_cursor(context.cursor)
    if fingerprint != state.get("fingerprint"):
        sequence = int(state.get("sequence", 0)) + 1
        # The sequence keeps run keys unique when the id set returns to an earlier state.
        change = f"artists-{sequence}-{fingerprint}"
        context.log.info(f"artist id set changed: {state.get('fingerprint')} -> {fingerprint}")
        return SensorResult(
            run_requests=[_request(change, 1)],
            cursor=json.dumps({"fingerprint": fingerprint, "sequence": sequence, "change": change, "attempt": 1}),
        )
    change, attempt = state.get("change"), int(state.get("attempt", 1))
    if change:
        runs = context.instance.get_runs(RunsFilter(tags={CHANGE_TAG: change}), limit=1)
        if runs and runs[0].status in _FAILED:
            if attempt >= MAX_ATTEMPTS:
                return SkipReason(
                    f"the runs for change {change} failed {attempt} times; fix the cause and "
                    "launch top_tracks_job with mode 'changed'"
                )
            context.log.info(f"run {runs[0].run_id} for {change} failed: launching it again")
            return SensorResult(
                run_requests=[_request(change, attempt + 1)], cursor=json.dumps({**state, "attempt": attempt + 1})
            )
    return SkipReason(f"artist id set unchanged ({fingerprint})")


def _read_cursor(cursor: str | None) -> dict:
    if not cursor:
        return {}
    try:
        state = json.loads(cursor)
    except ValueError:
        return {"fingerprint": cursor}  # a cursor of the earlier format: just the fingerprint
    return state if isinstance(state, dict) else {}
