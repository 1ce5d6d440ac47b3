"""The index of a published raw partition: what its readers need, without parsing the partition again.

`raw_top_tracks/market=XX/index.json` is written right after the partition is published. It holds the
partition's fingerprint (RawStorage.fingerprint), its request and end records, each artist's `requested_at`,
and the whole-partition numbers of its profile. A reader trusts it only while the fingerprint still matches
the partition: a partition replaced or edited by anything else is verified line by line again, as if there were
no index. Cost: one object of ~60 bytes per artist, written when the partition is; it saves every full parse of
an unchanged partition (~17 KB of JSON per artist), in the raw step and in the load.
"""

from __future__ import annotations

import json

from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage

INDEX_FORMAT = 1


def index_key(market: str) -> str:
    return f"raw_top_tracks/market={market}/index.json"


def write_index(
    storage: RawStorage,
    market: str,
    fingerprint: str,
    request: dict,
    end: dict,
    requested_at: dict[str, str],
    summary: dict,
) -> None:
    document = {
        "format": INDEX_FORMAT,
        "market": market,
        "fingerprint": fingerprint,
        "request": request,
        "end": end,
        "summary": summary,
        "requested_at": requested_at,
    }
    with storage.open_for_write(index_key(market)) as stream:
        json.dump(document, stream, ensure_ascii=False, separators=(",", ":"))


def read_index(storage: RawStorage, market: str, fingerprint: str) -> dict | None:
    """The market's index if it describes the partition with this fingerprint, else None."""
    try:
        with storage.open_for_read(index_key(market)) as stream:
            document = json.load(stream)
    except (RawObjectMissing, ValueError):
        return None
    if (
        not isinstance(document, dict)
        or document.get("format") != INDEX_FORMAT
        or document.get("market") != market
        or document.get("fingerprint") != fingerprint
        or not isinstance(document.get("requested_at"), dict)
        or not isinstance(document.get("summary"), dict)
    ):
        return None
    return document
