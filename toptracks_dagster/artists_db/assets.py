"""`artist_ids`: the artist list, read from the artists database, screened, and snapshotted for the next assets."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from toptracks_dagster.artists_db.ids import screen_artist_ids
from toptracks_dagster.artists_db.resources import ArtistsDatabase
from toptracks_dagster.artists_db.snapshot import write_artist_ids_snapshot
from toptracks_dagster.raw_storage.resources import RawStorage
from toptracks_dagster.spotify.client import utc_now_iso


@asset(
    key="artist_ids",
    group_name="toptracks",
    kinds={"mysql"},
    owners=["team:data-eng"],
    description=(
        "Artist ids from `SELECT id FROM artists` (MySQL/RDS; SQLite in the local deployment): trimmed, "
        "de-duplicated and validated (base62, 22 characters). Invalid ids never reach a Spotify URL; they are "
        "listed in the metadata. Snapshot written to raw storage for the partitioned assets."
    ),
)
def artist_ids(context: AssetExecutionContext, artists_db: ArtistsDatabase, raw_storage: RawStorage) -> MaterializeResult:
    read_at = utc_now_iso()
    screened = screen_artist_ids(artists_db.fetch_raw_ids())
    uri = write_artist_ids_snapshot(raw_storage, screened, artists_db.describe(), read_at)
    if screened.invalid:
        context.log.warning(f"{len(screened.invalid)} invalid artist id(s) skipped, e.g. {screened.invalid[:5]}")
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(screened.valid),
            "valid_ids": len(screened.valid),
            "invalid_ids": len(screened.invalid),
            "duplicate_rows": screened.duplicates,
            "rows_read": screened.rows,
            "invalid_id_sample": MetadataValue.json(screened.invalid[:20]),
            "source": artists_db.describe(),
            "snapshot": MetadataValue.path(uri),
        }
    )
