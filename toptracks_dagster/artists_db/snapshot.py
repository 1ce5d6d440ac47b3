"""The `artist_ids` asset's output: a JSON snapshot in raw storage that the Spotify assets read."""

from __future__ import annotations

import json

from toptracks_dagster.artists_db.ids import ScreenedArtistIds
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage

ARTIST_IDS_KEY = "artist_ids/artist_ids.json"


def write_artist_ids_snapshot(storage: RawStorage, screened: ScreenedArtistIds, source: str, read_at: str) -> str:
    with storage.open_for_write(ARTIST_IDS_KEY) as stream:
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
    return storage.uri(ARTIST_IDS_KEY)


def read_artist_ids(storage: RawStorage) -> list[str]:
    try:
        with storage.open_for_read(ARTIST_IDS_KEY) as stream:
            return list(json.load(stream)["ids"])
    except RawObjectMissing:
        raise RawObjectMissing("no artist id snapshot yet: materialize the `artist_ids` asset first") from None
