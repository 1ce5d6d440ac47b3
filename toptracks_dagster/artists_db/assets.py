"""`artist_ids`: the artist list, read from the artists database, screened, checked, then published."""

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from toptracks_dagster import config as settings
from toptracks_dagster.artists_db.checks import (
    ARTIST_IDS_CHECK_SPECS,
    evaluate_artist_ids_checks,
)
from toptracks_dagster.artists_db.ids import screen_artist_ids
from toptracks_dagster.artists_db.resources import ArtistsDatabase, ArtistsDatabaseError
from toptracks_dagster.artists_db.snapshot import (
    ARTIST_IDS_KEY,
    write_artist_ids_snapshot,
)
from toptracks_dagster.check_results import emit_check_results, failed_blocking
from toptracks_dagster.common import utc_now_iso
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.raw_storage.resources import RawStorage


@asset(
    key="artist_ids",
    group_name="toptracks",
    kinds={"mysql"},
    owners=["team:data-eng"],
    check_specs=ARTIST_IDS_CHECK_SPECS,
    # Partitioned like the assets it feeds, each partition being the list that market's refresh used: so that
    # "Materialize all", a backfill or a partition range is one run, and the list is read once for all of it.
    partitions_def=country_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    description=(
        "Artist ids from `SELECT id FROM artists` (MySQL/RDS; SQLite in the local deployment): trimmed, "
        "de-duplicated and validated (base62, 22 characters). Invalid ids never reach a Spotify URL; they are "
        "listed in the metadata. The list is published to raw storage for the partitioned assets only when its "
        "blocking checks pass. Every partition (market) of a run shares the one list. Cost: one SELECT per "
        "run, whatever the number of markets."
    ),
)
def artist_ids(context: AssetExecutionContext, artists_db: ArtistsDatabase, raw_storage: RawStorage):
    read_at = utc_now_iso()
    try:
        rows = artists_db.fetch_raw_ids()
    except ArtistsDatabaseError as error:
        raise Failure(description=str(error), allow_retries=False) from None
    screened = screen_artist_ids(rows)
    if screened.invalid:
        context.log.warning(f"{len(screened.invalid)} invalid artist id(s) skipped, e.g. {screened.invalid[:5]}")
    previous = context.instance.fetch_materializations(AssetKey("artist_ids"), limit=1).records
    previous_count = _published_count(previous[0]) if previous else None
    source = {
        "source": artists_db.describe(),
        "read_at": read_at,
        "snapshot": MetadataValue.path(raw_storage.uri(ARTIST_IDS_KEY)),
    }
    checks = evaluate_artist_ids_checks(
        screened,
        source,
        previous_count,
        max_drop_warn=settings.check_max_id_drop(),
        max_drop_block=settings.max_delete_share(),
        drop_allowed=settings.mass_delete_allowed(context.run.tags),
    )
    pending = write_artist_ids_snapshot(raw_storage, screened, artists_db.describe(), read_at)
    blocked = failed_blocking(checks, ARTIST_IDS_CHECK_SPECS)
    if blocked:
        pending.discard()
    else:
        pending.publish()
    yield MaterializeResult(
        metadata={
            "dagster/row_count": len(screened.valid),
            "published": not blocked,
            "valid_ids": len(screened.valid),
            "published_ids": len(screened.valid)
            if not blocked
            else (previous_count if previous_count is not None else 0),
            "invalid_ids": len(screened.invalid),
            "duplicate_rows": screened.duplicates,
            "rows_read": screened.rows,
            "invalid_id_sample": MetadataValue.json(screened.invalid[:20]),
            **source,
        }
    )
    yield from emit_check_results(context, {market: checks for market in context.partition_keys})


def _published_count(record) -> int | None:
    """The size of the list the previous materialization left published (a blocked one kept the one before)."""
    metadata = record.asset_materialization.metadata if record.asset_materialization else {}
    entry = metadata.get("published_ids") or metadata.get("valid_ids") or metadata.get("dagster/row_count")
    return int(entry.value) if entry is not None and entry.value is not None else None
