"""Reading `top_tracks` back: the paged per-artist Query and the sweep of a market's GSI (the only ones: the
load, the checks, the audit and `toptracks query` all use them), batched gets, and, for the checks, what the
table should hold for an outcome and how to compare."""

from __future__ import annotations

import itertools
import math
import random
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from toptracks_dagster.dynamodb.items import (
    deserialize_item,
    gsi_popularity,
    plain,
    valid_track_id,
)
from toptracks_dagster.dynamodb.table import (
    GSI_NAME,
    PARTITION_KEY,
    PIPELINE_ATTRIBUTES,
    SORT_KEY,
    sort_key,
)

if TYPE_CHECKING:
    from toptracks_dagster.raw_storage.resources import RawStorage
    from toptracks_dagster.spotify.raw import RawPartition


class Unavailable(Exception):
    """The raw partition or the table cannot be read; the message says which and why."""


# ------------------------------------------------------------------------------------------ expectations
def expected_items(market: str, outcome) -> dict[str, tuple[int, dict]]:
    """'<market>#<track id>' -> (rank, track) as the load stores them: tracks of a 200 answer with a usable id,
    first occurrence wins, rank = 1-based position in Spotify's list. A 404 artist has none."""
    wanted: dict[str, tuple[int, dict]] = {}
    if outcome.status != 200:
        return wanted
    for rank, track in enumerate(outcome.tracks or [], start=1):
        track_id = track.get("id") if isinstance(track, dict) else None
        if valid_track_id(market, track_id):
            wanted.setdefault(sort_key(market, track_id), (rank, track))
    return wanted


def stored_popularity(track: dict) -> int:
    # The table keeps a number for the GSI key: a missing or unusable popularity is stored as 0.
    popularity = gsi_popularity(track.get("popularity"))
    return 0 if popularity is None else popularity


def _json_normal(value: Any) -> Any:
    # What the load can store of a JSON value: non-finite floats become null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_normal(v) for v in value]
    return value


def same(a: Any, b: Any) -> bool:
    """JSON equality without Python's True == 1: numbers compare by value (1 == 1.0), booleans only to booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def track_fields(track: dict) -> dict:
    """The raw track as the table should hold it, without the pipeline's own attributes."""
    fields = {k: _json_normal(v) for k, v in track.items() if k not in PIPELINE_ATTRIBUTES}
    fields["popularity"] = stored_popularity(track)
    return fields


def item_fields(item: dict) -> dict:
    return {k: plain(v) for k, v in item.items() if k not in PIPELINE_ATTRIBUTES}


# ------------------------------------------------------------------------------------------ reading
def open_raw(raw_storage: RawStorage, market: str) -> RawPartition:
    # Imported here: raw storage pulls in dagster-aws, which the table reads below (and `toptracks query`) do
    # not need.
    from toptracks_dagster.raw_storage.resources import RawObjectMissing
    from toptracks_dagster.spotify.raw import RawPartition, RawPartitionIncomplete

    try:
        return RawPartition.open(raw_storage, market)
    except (RawObjectMissing, RawPartitionIncomplete) as error:
        raise Unavailable(str(error)) from None


def projection(names: dict[str, str], attributes: Sequence[str]) -> str:
    """A ProjectionExpression of `attributes`, each through a placeholder of `names` (the request's
    ExpressionAttributeNames, extended here): `name`, `rank` and others are reserved words."""
    placeholder_of = {name: placeholder for placeholder, name in names.items()}
    for name in attributes:
        if name not in placeholder_of:
            placeholder_of[name] = f"#a{len(names)}"
            names[placeholder_of[name]] = name
    return ", ".join(placeholder_of[name] for name in attributes)


def artist_item_pages(
    client, table: str, market: str, artist_id: str, attributes: Sequence[str] = (), **query_options: Any
) -> Iterator[dict]:
    """Pages of the consistent Query for one artist's items in one market, followed by boto3's paginator.

    `attributes` projects the items to these names (each through ExpressionAttributeNames: `rank` is a reserved
    word); `query_options` are further Query parameters (e.g. ReturnConsumedCapacity).
    """
    names = {"#pk": PARTITION_KEY, "#sk": SORT_KEY}
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "#pk = :artist AND begins_with(#sk, :prefix)",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": {":artist": {"S": artist_id}, ":prefix": {"S": f"{market}#"}},
        "ConsistentRead": True,
        **query_options,
    }
    if attributes:
        kwargs["ProjectionExpression"] = projection(names, attributes)
    return client.get_paginator("query").paginate(**kwargs)


def query_artist_items(client, table: str, market: str, artist_id: str, keys_only: bool = False) -> dict[str, dict]:
    """'<market>#<track id>' -> item (deserialized) of one artist in one market: a consistent, paged Query.
    `keys_only` reads the sort key, rank and popularity alone."""
    attributes = (SORT_KEY, "rank", "popularity") if keys_only else ()
    found: dict[str, dict] = {}
    for page in artist_item_pages(client, table, market, artist_id, attributes):
        for raw_item in page.get("Items", []):
            item = deserialize_item(raw_item)
            found[item[SORT_KEY]] = item
    return found


def query_artist_ranks(client, table: str, market: str, artist_id: str) -> dict[str, tuple[int | None, int | None]]:
    """'<market>#<track id>' -> (rank, popularity) of one artist's items in the market, strongly consistent."""
    return {
        key: (plain(item.get("rank")), plain(item.get("popularity")))
        for key, item in query_artist_items(client, table, market, artist_id, keys_only=True).items()
    }


def market_key_pages(client, table: str, market: str, **query_options: Any) -> Iterator[dict]:
    """Pages of the sweep of one market through the GSI, keys only, followed by boto3's paginator.

    The GSI is eventually consistent: an item written a split second ago may be missing. `query_options` are
    further Query parameters (e.g. ReturnConsumedCapacity).
    """
    return client.get_paginator("query").paginate(
        TableName=table,
        IndexName=GSI_NAME,
        KeyConditionExpression="#country = :market",
        ProjectionExpression="#pk, #sk",
        ExpressionAttributeNames={"#country": "country", "#pk": PARTITION_KEY, "#sk": SORT_KEY},
        ExpressionAttributeValues={":market": {"S": market}},
        **query_options,
    )


def keys_of(page: dict) -> Iterator[tuple[str, str]]:
    """(artist id, sort key) of every item of a Query page (items as DynamoDB sends them)."""
    for item in page.get("Items", []):
        yield item[PARTITION_KEY]["S"], item[SORT_KEY]["S"]


def market_keys_from_gsi(client, table: str, market: str) -> Iterator[tuple[str, str]]:
    for page in market_key_pages(client, table, market):
        yield from keys_of(page)


def get_items(
    client, table: str, keys: list[tuple[str, str]], attributes: Sequence[str] = ()
) -> dict[tuple[str, str], dict]:
    """Consistent BatchGetItem of `keys` (any number), UnprocessedKeys resent with backoff; with `attributes`
    only those attributes of each item (the keys are always included)."""
    found: dict[tuple[str, str], dict] = {}
    wanted = [PARTITION_KEY, SORT_KEY, *(a for a in attributes if a not in (PARTITION_KEY, SORT_KEY))]
    for start in range(0, len(keys), 100):  # BatchGetItem's limit
        request: dict = {
            "Keys": [{PARTITION_KEY: {"S": a}, SORT_KEY: {"S": s}} for a, s in keys[start : start + 100]],
            "ConsistentRead": True,
        }
        if attributes:
            names: dict[str, str] = {}
            request["ProjectionExpression"] = projection(names, wanted)
            request["ExpressionAttributeNames"] = names
        pending = {table: request}
        for attempt in range(10):
            response = client.batch_get_item(RequestItems=pending)
            for raw_item in response.get("Responses", {}).get(table, []):
                item = deserialize_item(raw_item)
                found[(item[PARTITION_KEY], item[SORT_KEY])] = item
            pending = response.get("UnprocessedKeys") or {}
            if not pending:
                break
            time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
        else:
            raise Unavailable(f"DynamoDB left {sum(len(r['Keys']) for r in pending.values())} key(s) unprocessed")
    return found


def chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
