"""The load ledger and its journal: what the table holds per market, known without reading the table.

`ledger.json`: each artist's list digest and item count as the last successful load left them, and the
fingerprint of the raw partition loaded. With it a load reads and writes only artists whose list changed, and
a load of the very partition loaded last reads neither the partition nor the table.
`journal.json`: written before a load's first write, naming every artist that load may touch; removed once the
new ledger is written. After a crash, the next load trusts the ledger for everyone but the journal's artists,
whose items it reads back from the table: recovery costs what the crashed load was changing, not the market.

Both live in raw storage next to each other under `top_tracks/market=XX/` and are trusted only for the same
table (name, endpoint, creation time) and item format. Writes to the table by anything else are outside their
view; `top_tracks_audit_job` compares the whole table.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from toptracks_dagster.dynamodb.table import ITEM_FORMAT
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage

ALL_ARTISTS = "*"  # a journal entry meaning the load could touch any artist of the market


def _key(market: str, name: str) -> str:
    return f"top_tracks/market={market}/{name}"


def table_identity(client, table_name: str, endpoint: str) -> dict:
    created = client.describe_table(TableName=table_name)["Table"].get("CreationDateTime")
    return {"table": table_name, "endpoint": endpoint, "created": str(created), "item_format": ITEM_FORMAT}


def _read(storage: RawStorage, key: str, identity: dict) -> dict | None:
    try:
        with storage.open_for_read(key) as stream:
            document = json.load(stream)
    except (RawObjectMissing, ValueError):
        return None
    return document if isinstance(document, dict) and document.get("identity") == identity else None


class Ledger:
    """{artist_id: (digest, item count)} of one market in one table, and the fingerprint of the raw partition
    that load made the table equal to ("" when unknown)."""

    def __init__(self, artists: dict[str, list], raw_fingerprint: str = ""):
        self.artists = artists
        self.raw_fingerprint = raw_fingerprint

    def digests(self) -> dict[str, str]:
        return {artist: entry[0] for artist, entry in self.artists.items()}

    def count(self, artist_id: str) -> int:
        entry = self.artists.get(artist_id)
        return int(entry[1]) if entry else 0

    def total_items(self) -> int:
        return sum(int(entry[1]) for entry in self.artists.values())


def read_ledger(storage: RawStorage, market: str, identity: dict) -> Ledger | None:
    document = _read(storage, _key(market, "ledger.json"), identity)
    if document is None or not isinstance(document.get("artists"), dict):
        return None
    return Ledger(document["artists"], str(document.get("raw_fingerprint", "")))


def write_ledger(
    storage: RawStorage, market: str, identity: dict, artists: Mapping[str, Sequence], raw_fingerprint: str
) -> None:
    document = {
        "identity": identity,
        "raw_fingerprint": raw_fingerprint,
        "artists": {a: list(v) for a, v in artists.items()},
    }
    with storage.open_for_write(_key(market, "ledger.json")) as stream:
        json.dump(document, stream, separators=(",", ":"))


def read_journal(storage: RawStorage, market: str, identity: dict) -> set[str] | None:
    """Artists a load that did not finish may have touched (ALL_ARTISTS in it: any), or None."""
    document = _read(storage, _key(market, "journal.json"), identity)
    return set(document.get("artists", [])) if document is not None else None


def write_journal(storage: RawStorage, market: str, identity: dict, artists: set[str]) -> None:
    with storage.open_for_write(_key(market, "journal.json")) as stream:
        json.dump({"identity": identity, "artists": sorted(artists)}, stream, separators=(",", ":"))


def clear_journal(storage: RawStorage, market: str) -> None:
    storage.delete(_key(market, "journal.json"))
