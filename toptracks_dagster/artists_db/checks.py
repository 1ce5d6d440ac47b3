"""Checks on `artist_ids`: the snapshot the Spotify assets read is non-empty, unique, valid, and did not shrink
suddenly. They read the snapshot through `raw_storage`, the way `raw_top_tracks` does, so they judge exactly
the list the next steps will use.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import json
from collections import Counter
from datetime import datetime, timezone

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)

from toptracks_dagster import config
from toptracks_dagster.artists_db.assets import artist_ids
from toptracks_dagster.artists_db.ids import is_valid_artist_id
from toptracks_dagster.artists_db.snapshot import ARTIST_IDS_KEY
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage

SAMPLE_SIZE = 10  # offending values shown in a result's metadata; the counts always cover all of them
INVALID_SAMPLE_SIZE = 50  # invalid rows are fixed by hand in the source table: show more of them
DEFAULT_MAX_ID_DROP = 0.20  # TOPTRACKS_CHECK_MAX_ID_DROP: share of artists that may vanish between two reads


class SnapshotUnreadable(RuntimeError):
    """The snapshot is missing or not the JSON object `write_artist_ids_snapshot` writes."""


def read_snapshot(storage: RawStorage) -> dict:
    """The artist id snapshot as written by the `artist_ids` asset (keys source, read_at, rows, duplicates,
    invalid, ids). Raises SnapshotUnreadable with a message a person can act on."""
    try:
        with storage.open_for_read(ARTIST_IDS_KEY) as stream:
            snapshot = json.load(stream)
    except RawObjectMissing:
        raise SnapshotUnreadable(
            f"no artist id snapshot at {storage.uri(ARTIST_IDS_KEY)}: materialize `artist_ids` first"
        ) from None
    except ValueError as error:
        raise SnapshotUnreadable(f"artist id snapshot {storage.uri(ARTIST_IDS_KEY)} is not valid JSON: {error}") from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("ids"), list):
        raise SnapshotUnreadable(f"artist id snapshot {storage.uri(ARTIST_IDS_KEY)} has no `ids` list")
    return snapshot


def _unreadable(storage: RawStorage, error: SnapshotUnreadable, severity: AssetCheckSeverity) -> AssetCheckResult:
    return AssetCheckResult(
        passed=False,
        severity=severity,
        description=f"cannot be evaluated: {error}",
        metadata={"error": str(error), "snapshot": MetadataValue.path(storage.uri(ARTIST_IDS_KEY))},
    )


def _snapshot_metadata(storage: RawStorage, snapshot: dict) -> dict:
    # `source` names host, user and database (never a password): where a person goes to fix the rows.
    return {
        "source": str(snapshot.get("source", "")),
        "read_at": str(snapshot.get("read_at", "")),
        "snapshot": MetadataValue.path(storage.uri(ARTIST_IDS_KEY)),
    }


@asset_check(
    asset=artist_ids,
    blocking=True,
    description=(
        "ERROR, blocking: the snapshot holds at least one valid artist id. An empty list would make the load "
        "delete every item of the market, so the Spotify and DynamoDB steps do not run after a failure."
    ),
)
def artist_ids_not_empty(raw_storage: RawStorage) -> AssetCheckResult:
    try:
        snapshot = read_snapshot(raw_storage)
    except SnapshotUnreadable as error:
        return _unreadable(raw_storage, error, AssetCheckSeverity.ERROR)
    ids = snapshot["ids"]
    return AssetCheckResult(
        passed=bool(ids),
        severity=AssetCheckSeverity.ERROR,
        description=None if ids else (
            f"no valid artist id among {snapshot.get('rows', 0)} row(s) of the artists table; fetching and "
            "loading are blocked so the DynamoDB table keeps its last good data"
        ),
        metadata={
            "valid_ids": len(ids),
            "rows_read": int(snapshot.get("rows", 0)),
            "invalid_rows": len(snapshot.get("invalid", [])),
            **_snapshot_metadata(raw_storage, snapshot),
        },
    )


@asset_check(
    asset=artist_ids,
    description=(
        "ERROR: no artist id appears twice in the snapshot after trimming (one request and one refresh per "
        "artist). Duplicate rows in the source table are collapsed by the screening; their count is reported."
    ),
)
def artist_ids_unique(raw_storage: RawStorage) -> AssetCheckResult:
    try:
        snapshot = read_snapshot(raw_storage)
    except SnapshotUnreadable as error:
        return _unreadable(raw_storage, error, AssetCheckSeverity.ERROR)
    counts = Counter(str(value).strip() for value in snapshot["ids"])
    repeated = [value for value, count in counts.items() if count > 1]
    return AssetCheckResult(
        passed=not repeated,
        severity=AssetCheckSeverity.ERROR,
        description=None if not repeated else (
            f"{len(repeated)} artist id(s) appear more than once in the snapshot after trimming: they would be "
            "fetched and refreshed twice, concurrently; re-materialize `artist_ids`"
        ),
        metadata={
            "snapshot_ids": len(snapshot["ids"]),
            "repeated_ids": len(repeated),
            "extra_copies": sum(counts[value] - 1 for value in repeated),
            "repeated_id_sample": MetadataValue.json(repeated[:SAMPLE_SIZE]),
            "duplicate_rows_collapsed_from_source": int(snapshot.get("duplicates", 0)),
            **_snapshot_metadata(raw_storage, snapshot),
        },
    )


@asset_check(
    asset=artist_ids,
    description=(
        "WARN: every row of the artists table holds a valid Spotify id (base62, 22 characters, after trimming). "
        "Invalid rows were skipped and are listed so someone can fix them at the source. ERROR instead if an "
        "invalid id made it into the snapshot, since it would be put into a Spotify URL."
    ),
)
def artist_ids_valid(raw_storage: RawStorage) -> AssetCheckResult:
    try:
        snapshot = read_snapshot(raw_storage)
    except SnapshotUnreadable as error:
        return _unreadable(raw_storage, error, AssetCheckSeverity.ERROR)
    leaked = [value for value in snapshot["ids"] if not (isinstance(value, str) and is_valid_artist_id(value))]
    skipped = [str(value) for value in snapshot.get("invalid", [])]
    if leaked:
        severity = AssetCheckSeverity.ERROR
        description = (
            f"{len(leaked)} invalid id(s) are in the snapshot the Spotify asset requests: they would reach a URL "
            "path; re-materialize `artist_ids`"
        )
    elif skipped:
        severity = AssetCheckSeverity.WARN
        description = (
            f"{len(skipped)} row(s) of the artists table hold no valid Spotify artist id and were skipped; fix "
            f"or delete them in {snapshot.get('source', 'the source table')}"
        )
    else:
        severity, description = AssetCheckSeverity.WARN, None
    return AssetCheckResult(
        passed=not leaked and not skipped,
        severity=severity,
        description=description,
        metadata={
            "rows_read": int(snapshot.get("rows", 0)),
            "invalid_rows": len(skipped),
            # repr() of each raw value, as the screening recorded it: shows stray spaces, quotes and bytes.
            "invalid_row_values": MetadataValue.json(skipped[:INVALID_SAMPLE_SIZE]),
            "invalid_ids_in_snapshot": len(leaked),
            "invalid_ids_in_snapshot_sample": MetadataValue.json([repr(v)[:80] for v in leaked[:SAMPLE_SIZE]]),
            **_snapshot_metadata(raw_storage, snapshot),
        },
    )


@asset_check(
    asset=artist_ids,
    description=(
        "WARN: the number of valid artist ids did not drop by more than TOPTRACKS_CHECK_MAX_ID_DROP (default "
        "20 %) since the previous materialization. A sudden drop usually means a truncated or wrong source "
        "table, and the loads delete the vanished artists' items from DynamoDB."
    ),
)
def artist_ids_count_stable(context: AssetCheckExecutionContext, raw_storage: RawStorage) -> AssetCheckResult:
    try:
        snapshot = read_snapshot(raw_storage)
    except SnapshotUnreadable as error:
        return _unreadable(raw_storage, error, AssetCheckSeverity.WARN)
    threshold = config.env_float("TOPTRACKS_CHECK_MAX_ID_DROP", DEFAULT_MAX_ID_DROP)
    current = len(snapshot["ids"])
    # The latest materialization is the one that wrote this snapshot (in this run, or the last run when the
    # check is launched on its own); the one before it is the reference.
    records = context.instance.fetch_materializations(AssetKey("artist_ids"), limit=2).records
    metadata = {"current_ids": current, "threshold_pct": round(100 * threshold, 1), **_snapshot_metadata(raw_storage, snapshot)}
    if len(records) < 2:
        return AssetCheckResult(
            passed=True, severity=AssetCheckSeverity.WARN,
            description="no previous materialization to compare with", metadata=metadata,
        )
    previous_record = records[1]
    previous_metadata = previous_record.asset_materialization.metadata if previous_record.asset_materialization else {}
    entry = previous_metadata.get("valid_ids") or previous_metadata.get("dagster/row_count")
    previous = int(entry.value) if entry is not None and entry.value is not None else None
    metadata.update({
        "previous_ids": previous if previous is not None else -1,
        "previous_run_id": previous_record.run_id,
        "previous_materialized_at": datetime.fromtimestamp(previous_record.timestamp, timezone.utc).isoformat(),
    })
    if not previous:
        return AssetCheckResult(passed=True, severity=AssetCheckSeverity.WARN, metadata=metadata,
                                description="the previous materialization recorded no valid ids")
    drop = (previous - current) / previous
    metadata["drop_pct"] = round(100 * drop, 1)
    passed = drop <= threshold
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        description=None if passed else (
            f"valid artist ids fell from {previous} to {current} ({100 * drop:.1f} %, more than "
            f"{100 * threshold:.0f} %) since run {previous_record.run_id[:8]}; check the source table: the "
            "loads delete the vanished artists' items from DynamoDB"
        ),
        metadata=metadata,
    )


artist_ids_checks = [artist_ids_not_empty, artist_ids_unique, artist_ids_valid, artist_ids_count_stable]
