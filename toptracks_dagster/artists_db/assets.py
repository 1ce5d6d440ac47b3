"""The `artists` source, the `artist_ids` list read from it, its checks and the snapshot it publishes.

The snapshot is what the Spotify asset reads and what the checks compare with, published only when the blocking
checks pass: a bad read never replaces the last good list, whatever the Dagster instance remembers.
"""

# No `from __future__ import annotations`: Dagster inspects annotations of decorated functions.

import json

from dagster import (
    AssetCheckSeverity,
    AssetExecutionContext,
    BackfillPolicy,
    Backoff,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    RetryPolicy,
    asset,
    observable_source_asset,
)

from toptracks_dagster import config as settings
from toptracks_dagster.artists_db.resources import ArtistsDatabase, ScreenedArtistIds
from toptracks_dagster.check_results import CheckOutcome, check_spec, emit_check_results, failed_blocking
from toptracks_dagster.common import utc_now_iso
from toptracks_dagster.config import ALLOW_MASS_DELETE_TAG, PermanentError, permanent_errors
from toptracks_dagster.jobs import country_partitions
from toptracks_dagster.raw_storage.resources import PendingObject, RawObjectMissing, RawStorage

ARTIST_IDS_KEY = "artist_ids/artist_ids.json"
HAS_VALID_IDS = "has_valid_ids"
ROWS_VALID = "rows_valid"
COUNT_STABLE = "count_stable"


class SnapshotUnreadable(PermanentError):
    """The snapshot is missing or not the JSON object `write_artist_ids_snapshot` writes."""


def write_artist_ids_snapshot(
    storage: RawStorage, screened: ScreenedArtistIds, source: str, read_at: str
) -> PendingObject:
    """Write the snapshot aside; the caller publishes or discards the returned PendingObject."""
    snapshot = {"source": source, "read_at": read_at, "rows": screened.rows, "duplicates": screened.duplicates}
    snapshot.update(invalid_rows=screened.invalid_rows, invalid=screened.invalid, fingerprint=screened.fingerprint)
    if screened.attention is not None:
        snapshot["attention"] = screened.attention
    with storage.write_aside(ARTIST_IDS_KEY) as (stream, pending):
        json.dump({**snapshot, "ids": screened.valid}, stream)
    return pending


def read_snapshot(storage: RawStorage, missing_ok: bool = False) -> dict | None:
    """The published snapshot (keys source, read_at, rows, duplicates, invalid, fingerprint, ids); None when
    there is none yet and `missing_ok`."""
    uri = storage.uri(ARTIST_IDS_KEY)
    try:
        with storage.open_for_read(ARTIST_IDS_KEY) as stream:
            snapshot = json.load(stream)
    except RawObjectMissing:
        if missing_ok:
            return None
        raise SnapshotUnreadable(f"no artist id snapshot at {uri}: materialize `artist_ids` first") from None
    except ValueError as error:
        raise SnapshotUnreadable(f"artist id snapshot {uri} is not valid JSON: {error}") from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("ids"), list):
        raise SnapshotUnreadable(f"artist id snapshot {uri} has no `ids` list")
    return snapshot


def snapshot_attention(snapshot: dict | None) -> dict | None:
    """The snapshot's artist id -> attention column value (None: no column named)."""
    attention = (snapshot or {}).get("attention")
    return attention if isinstance(attention, dict) else None


@observable_source_asset(
    key="artists",
    group_name="toptracks",
    description="The `artists` table (MySQL/RDS; SQLite locally). Its data version is the id-set fingerprint.",
)
def artists(artists_db: ArtistsDatabase) -> ObserveResult:
    with permanent_errors():
        fingerprint = artists_db.fingerprint()
    ids = int(fingerprint.split("-", 1)[0])  # the fingerprint starts with the number of distinct valid ids
    return ObserveResult(
        data_version=DataVersion(fingerprint), metadata={"dagster/row_count": ids, "source": artists_db.describe()}
    )


def _spec(name: str, description: str, blocking: bool = False):
    return check_spec("artist_ids", name, description, country_partitions, blocking=blocking)


ARTIST_IDS_CHECK_SPECS = [
    _spec(HAS_VALID_IDS, "At least one valid id; an empty list would delete every item.", blocking=True),
    _spec(ROWS_VALID, "Every row holds a valid Spotify id (WARN: invalid rows are skipped and listed)."),
    _spec(
        COUNT_STABLE,
        "The id count did not drop against the published list by more than TOPTRACKS_MAX_DELETE_SHARE "
        f"(ERROR) or TOPTRACKS_CHECK_MAX_ID_DROP (WARN). Tag {ALLOW_MASS_DELETE_TAG}=true allows a drop.",
        blocking=True,
    ),
]


def evaluate_artist_ids_checks(
    screened: ScreenedArtistIds, source: dict, previous: dict | SnapshotUnreadable | None, tags: dict
) -> list[CheckOutcome]:
    ids, bad = len(screened.valid), screened.invalid_rows
    rows = {"rows_read": screened.rows, "invalid_rows": bad, "valid_ids": ids, **source}
    empty = None if ids else f"no valid id among {screened.rows} row(s): the list was not published"
    invalid = f"{bad} row(s) hold no valid Spotify id and were skipped; fix them in the table" if bad else None
    listed = {**rows, "invalid_row_values": MetadataValue.json(screened.invalid), "duplicate_rows": screened.duplicates}
    return [
        CheckOutcome(HAS_VALID_IDS, ids > 0, AssetCheckSeverity.ERROR, empty, rows),
        CheckOutcome(ROWS_VALID, not bad, AssetCheckSeverity.WARN, invalid, listed),
        _count_stable(ids, previous, source, settings.mass_delete_allowed(tags)),
    ]


def _count_stable(current: int, previous, source: dict, allowed: bool) -> CheckOutcome:
    warn_share, block_share = settings.check_max_id_drop(), settings.max_delete_share()
    metadata = {"current_ids": current, "block_threshold_pct": round(100 * block_share, 1), **source}
    if isinstance(previous, SnapshotUnreadable):
        description = f"{previous}; re-run with the tag {ALLOW_MASS_DELETE_TAG}=true to replace it"
        return CheckOutcome(COUNT_STABLE, allowed, AssetCheckSeverity.ERROR, description, metadata)
    if not previous or not previous["ids"]:
        return CheckOutcome(COUNT_STABLE, True, AssetCheckSeverity.WARN, "no published list to compare with", metadata)
    before = len(previous["ids"])
    drop = (before - current) / before
    metadata.update(previous_ids=before, drop_pct=round(100 * drop, 1))
    fell = f"valid ids fell from {before} (published) to {current} ({100 * drop:.1f} %"
    if drop > block_share and not allowed:
        description = f"{fell}): not published; if intended, re-run with the tag {ALLOW_MASS_DELETE_TAG}=true"
        return CheckOutcome(COUNT_STABLE, False, AssetCheckSeverity.ERROR, description, metadata)
    passed = drop <= warn_share
    description = None if passed else f"{fell})" + ("; allowed by the run's tag" if drop > block_share else "")
    return CheckOutcome(COUNT_STABLE, passed, AssetCheckSeverity.WARN, description, metadata)


@asset(
    key="artist_ids",
    deps=["artists"],
    group_name="toptracks",
    kinds={"mysql"},
    owners=["team:data-eng"],
    check_specs=ARTIST_IDS_CHECK_SPECS,
    # Partitioned like the assets it feeds, one run for any range of markets: the table is read once per run.
    partitions_def=country_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    # Only transient database errors get here: permanent ones fail at once (permanent_errors).
    retry_policy=RetryPolicy(max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL),
    description=(
        "Artist ids from `SELECT id FROM artists`: trimmed, de-duplicated, validated (base62, 22 characters). "
        "Published to raw storage as artist_ids/artist_ids.json only when the blocking checks pass."
    ),
)
def artist_ids(context: AssetExecutionContext, artists_db: ArtistsDatabase, raw_storage: RawStorage):
    read_at = utc_now_iso()
    with permanent_errors():
        screened = artists_db.read_ids()
    if screened.invalid_rows:
        context.log.warning(f"{screened.invalid_rows} invalid artist id row(s) skipped, e.g. {screened.invalid[:5]}")
    try:
        previous = read_snapshot(raw_storage, missing_ok=True)
    except SnapshotUnreadable as error:
        previous = error
    source = {"source": artists_db.describe(), "read_at": read_at}
    checks = evaluate_artist_ids_checks(screened, source, previous, context.run.tags)
    pending = write_artist_ids_snapshot(raw_storage, screened, artists_db.describe(), read_at)
    blocked = failed_blocking(checks, ARTIST_IDS_CHECK_SPECS)
    (pending.discard if blocked else pending.publish)()
    yield MaterializeResult(
        metadata={
            "dagster/row_count": len(screened.valid),
            "published": not blocked,
            "valid_ids": len(screened.valid),
            "invalid_ids": screened.invalid_rows,
            "duplicate_rows": screened.duplicates,
            "rows_read": screened.rows,
            "fingerprint": screened.fingerprint,
            "snapshot": MetadataValue.path(raw_storage.uri(ARTIST_IDS_KEY)),
            **source,
            **({} if screened.attention is None else {"ids_with_attention": len(screened.attention)}),
        }
    )
    yield from emit_check_results(context, {market: checks for market in context.partition_keys})
