"""The `artist_ids` asset's output: a JSON snapshot in raw storage that the Spotify asset reads.

It is written aside and published only when the asset's blocking checks pass, so a bad read of the artists
table (empty, or collapsed without consent) never replaces the last good list.
"""

from __future__ import annotations

import json

from toptracks_dagster.artists_db.ids import ScreenedArtistIds
from toptracks_dagster.raw_storage.resources import (
    PendingObject,
    RawObjectMissing,
    RawStorage,
)

ARTIST_IDS_KEY = "artist_ids/artist_ids.json"


class SnapshotUnreadable(RuntimeError):
    """The snapshot is missing or not the JSON object this module writes; the message says what to do."""


def write_artist_ids_snapshot(
    storage: RawStorage, screened: ScreenedArtistIds, source: str, read_at: str
) -> PendingObject:
    """Write the snapshot aside; the caller publishes or discards the returned PendingObject."""
    with storage.write_aside(ARTIST_IDS_KEY) as (stream, pending):
        json.dump(
            {
                "source": source,
                "read_at": read_at,
                "rows": screened.rows,
                "duplicates": screened.duplicates,
                "invalid": screened.invalid,
                "ids": screened.valid,
            },
            stream,
        )
    return pending


def read_snapshot(storage: RawStorage) -> dict:
    """The published snapshot (keys source, read_at, rows, duplicates, invalid, ids)."""
    try:
        with storage.open_for_read(ARTIST_IDS_KEY) as stream:
            snapshot = json.load(stream)
    except RawObjectMissing:
        raise SnapshotUnreadable(
            f"no artist id snapshot at {storage.uri(ARTIST_IDS_KEY)}: materialize `artist_ids` first"
        ) from None
    except ValueError as error:
        raise SnapshotUnreadable(
            f"artist id snapshot {storage.uri(ARTIST_IDS_KEY)} is not valid JSON: {error}"
        ) from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("ids"), list):
        raise SnapshotUnreadable(f"artist id snapshot {storage.uri(ARTIST_IDS_KEY)} has no `ids` list")
    return snapshot


def read_artist_ids(storage: RawStorage) -> list[str]:
    return [str(value) for value in read_snapshot(storage)["ids"]]
