"""Reading `top_tracks` from Python, each a keyed read, never a Scan (the `toptracks query` command is
cli/query.py).

- `get_track`: one item by its full key (artist, market, track id): GetItem, no scan.
- `artist_top_list`: an artist's top list in a market, in rank order: Query on the partition key with
  `begins_with(country_track_id, "<market>#")`, consistent.
- `popular_tracks`: tracks in a market with popularity above N, most popular first: a Query on the GSI
  `country-popularity-index` (`country = :market AND popularity > :n`), paginated by boto3's paginator.
  A FilterExpression without a key condition is rejected by DynamoDB's Query, and a Scan would read the
  whole table.

`name`, `rank`, `type`, ... are reserved words in DynamoDB expressions: every attribute an expression names
goes through ExpressionAttributeNames. Results are plain dicts (Decimals become int or float). Failures raise
a QueryError subclass whose message names the table, the endpoint and what to do.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from botocore.exceptions import ClientError

from toptracks_dagster.dynamodb.items import deserialize_item, plain
from toptracks_dagster.dynamodb.reads import artist_item_pages, projection
from toptracks_dagster.dynamodb.table import (
    GSI_NAME,
    PARTITION_KEY,
    SORT_KEY,
    TRANSIENT_EXCEPTIONS,
    endpoint_of,
    sort_key,
)


class QueryError(RuntimeError):
    """A query could not be answered; the message says why and what to do."""


class TableMissing(QueryError):
    """The table does not exist at the endpoint."""


class IndexMissing(QueryError):
    """The table exists without the popularity GSI."""


class EndpointUnreachable(QueryError):
    """The DynamoDB endpoint does not answer."""


def get_track(client, table: str, artist_id: str, market: str, track_id: str) -> dict | None:
    """The item of `track_id` in `artist_id`'s top list for `market`, or None."""
    response = _call(
        client,
        table,
        "get_item",
        TableName=table,
        ConsistentRead=True,
        Key={PARTITION_KEY: {"S": artist_id}, SORT_KEY: {"S": sort_key(market, track_id)}},
    )
    return plain(deserialize_item(response["Item"])) if "Item" in response else None


def artist_top_list(client, table: str, artist_id: str, market: str) -> list[dict]:
    """The artist's top tracks in `market`, in rank order (Query on the key, strongly consistent)."""
    pages = _explained(client, table, artist_item_pages(client, table, market, artist_id))
    items = [plain(deserialize_item(raw)) for page in pages for raw in page.get("Items", [])]
    # The sort key orders by track id; the list order is the `rank` attribute.
    return sorted(items, key=lambda item: (item.get("rank", 0), item.get(SORT_KEY, "")))


def popular_tracks(
    client,
    table: str,
    market: str,
    min_popularity: int,
    limit: int | None = None,
    page_size: int | None = None,
    attributes: list[str] | None = None,
) -> list[dict]:
    """Tracks in `market` with popularity > `min_popularity`, most popular first (GSI Query, paginated).

    `limit` caps the number of tracks returned; `page_size` the items per Query request (DynamoDB pages at
    1 MB anyway); `attributes` projects the items to these top-level attributes (default: all).
    """
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    kwargs: dict[str, Any] = {
        "TableName": table,
        "IndexName": GSI_NAME,
        "KeyConditionExpression": "#country = :market AND #popularity > :min",
        "ExpressionAttributeNames": {"#country": "country", "#popularity": "popularity"},
        "ExpressionAttributeValues": {":market": {"S": market}, ":min": {"N": str(int(min_popularity))}},
        "ScanIndexForward": False,  # descending popularity
    }
    if attributes:
        kwargs["ProjectionExpression"] = projection(kwargs["ExpressionAttributeNames"], attributes)
    # With a limit and no page size, ask for just `limit` items per request: a GSI Query bills what it reads.
    pagination = {"MaxItems": limit, "PageSize": page_size or limit}
    paginated = client.get_paginator("query").paginate(
        PaginationConfig={k: v for k, v in pagination.items() if v}, **kwargs
    )
    pages = _explained(client, table, paginated)
    items = [plain(deserialize_item(raw)) for page in pages for raw in page.get("Items", [])]
    return items[:limit] if limit else items


def _explained(client, table: str, pages: Iterable[dict]) -> Iterator[dict]:
    # boto3's paginator follows LastEvaluatedKey; errors surface while iterating, hence the wrapper.
    try:
        yield from pages
    except (ClientError, *TRANSIENT_EXCEPTIONS) as error:
        raise _explain(client, table, error) from None


def _call(client, table: str, operation: str, **kwargs) -> dict:
    try:
        return getattr(client, operation)(**kwargs)
    except (ClientError, *TRANSIENT_EXCEPTIONS) as error:
        raise _explain(client, table, error) from None


def _explain(client, table: str, error: Exception) -> Exception:
    endpoint = endpoint_of(client)
    if not isinstance(error, ClientError):
        return EndpointUnreachable(f"DynamoDB at {endpoint} is unreachable: {error}; check DYNAMODB_ENDPOINT_URL")
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    if code == "ResourceNotFoundException":
        return TableMissing(
            f"table {table} does not exist at {endpoint}: materialize the top_tracks asset first "
            f"(`toptracks run`), or point TOPTRACKS_TABLE / DYNAMODB_ENDPOINT_URL at the loaded table"
        )
    if code == "ValidationException" and "index" in message.lower():
        return IndexMissing(
            f"table {table} at {endpoint} has no GSI {GSI_NAME}: it was not created by this pipeline ({message})"
        )
    return QueryError(f"DynamoDB at {endpoint} refused the query on {table}: {code}: {message}")
