"""The load ledger: per market, each artist's list digest as the last successful load wrote it.

With it an unchanged refresh reads nothing from the table and writes nothing. It is kept in raw storage next to
the raw partition and trusted only for the same table (name, endpoint, creation time) and item format. It is
removed before a load starts and written after the load succeeds, so after a crash at any point the next load
finds none and falls back to reading the table (consistent per-artist queries plus a GSI sweep). Writes to the
table by anything else are outside its view; the `top_tracks_match_raw` check compares the table itself.
"""

from __future__ import annotations

import json

from toptracks_dagster.dynamodb.table import ITEM_FORMAT
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage


def ledger_key(market: str) -> str:
    return f"top_tracks/market={market}/dynamodb_ledger.json"


def table_identity(client, table_name: str, endpoint: str) -> dict:
    created = client.describe_table(TableName=table_name)["Table"].get("CreationDateTime")
    return {"table": table_name, "endpoint": endpoint, "created": str(created), "item_format": ITEM_FORMAT}


def read_ledger(storage: RawStorage, market: str, identity: dict) -> dict[str, str] | None:
    try:
        with storage.open_for_read(ledger_key(market)) as stream:
            document = json.load(stream)
    except (RawObjectMissing, ValueError):
        return None
    if document.get("identity") != identity or not isinstance(document.get("artists"), dict):
        return None
    return document["artists"]


def forget_ledger(storage: RawStorage, market: str) -> None:
    storage.delete(ledger_key(market))


def write_ledger(storage: RawStorage, market: str, identity: dict, artists: dict[str, str]) -> None:
    with storage.open_for_write(ledger_key(market)) as stream:
        json.dump({"identity": identity, "artists": artists}, stream, separators=(",", ":"))
