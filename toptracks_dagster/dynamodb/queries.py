"""Reading `top_tracks`: a small Python API and the `toptracks query` CLI, each a keyed read, never a Scan.

- `get_track`: one item by its full key (artist, market, track id): GetItem, no scan.
- `artist_top_list`: an artist's top list in a market, in rank order: Query on the partition key with
  `begins_with(country_track_id, "<market>#")`, consistent.
- `popular_tracks`: tracks in a market with popularity above N, most popular first: a Query on the GSI
  `country-popularity-index` (`country = :market AND popularity > :n`), paginated by boto3's paginator.
  A FilterExpression without a key condition is rejected by DynamoDB's Query, and a Scan would read the
  whole table.

`name`, `rank`, `type`, ... are reserved words in DynamoDB expressions: every attribute an expression names
goes through ExpressionAttributeNames. Results are plain dicts (Decimals become int or float).

CLI (wired into `toptracks` as `toptracks query ...`; also `python -m toptracks_dagster.dynamodb.queries`):
  query track ARTIST MARKET TRACK_ID      one track
  query top ARTIST MARKET                  the artist's top list in rank order
  query popular MARKET --min N [--limit K] tracks above popularity N, most popular first
Each prints a table, or JSON with --json. The table and endpoint come from the config contract
(TOPTRACKS_TABLE, DYNAMODB_ENDPOINT_URL, AWS_REGION); --table overrides the table name.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from typing import Any, Iterator

from botocore.exceptions import ClientError

from toptracks_dagster import config
from toptracks_dagster.dynamodb.items import deserialize_item, plain
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


# ------------------------------------------------------------------------------------------------- the API
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
    pages = _pages(
        client,
        table,
        TableName=table,
        KeyConditionExpression="#pk = :artist AND begins_with(#sk, :prefix)",
        ExpressionAttributeNames={"#pk": PARTITION_KEY, "#sk": SORT_KEY},
        ExpressionAttributeValues={":artist": {"S": artist_id}, ":prefix": {"S": f"{market}#"}},
        ConsistentRead=True,
    )
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
        placeholders = {f"#a{i}": name for i, name in enumerate(attributes)}
        kwargs["ExpressionAttributeNames"].update(placeholders)
        kwargs["ProjectionExpression"] = ", ".join(placeholders)
    # With a limit and no page size, ask for just `limit` items per request: a GSI Query bills what it reads.
    pagination = {"MaxItems": limit, "PageSize": page_size or limit}
    pages = _pages(client, table, PaginationConfig={k: v for k, v in pagination.items() if v}, **kwargs)
    items = [plain(deserialize_item(raw)) for page in pages for raw in page.get("Items", [])]
    return items[:limit] if limit else items


def _pages(client, table: str, **kwargs) -> Iterator[dict]:
    # boto3's paginator follows LastEvaluatedKey; errors surface while iterating, hence the wrapper.
    paginator = client.get_paginator("query")
    try:
        yield from paginator.paginate(**kwargs)
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


# ------------------------------------------------------------------------------------------------- the CLI
def add_query_commands(subparsers) -> argparse.ArgumentParser:
    """Add `query {track,top,popular}` to an argparse subparsers object; returns the `query` parser."""
    query = subparsers.add_parser(
        "query",
        help="read the top_tracks table: one track, an artist's top list, or popular tracks in a market",
        description=__doc__.split("\n\n")[0],
    )
    kinds = query.add_subparsers(dest="query_command", required=True, metavar="{track,top,popular}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument("--table", help="table name (default: TOPTRACKS_TABLE, else top_tracks)")

    track = kinds.add_parser("track", parents=[common], help="one track by (artist, market, track id)")
    track.add_argument("artist_id")
    track.add_argument("market", type=_market)
    track.add_argument("track_id")

    top = kinds.add_parser("top", parents=[common], help="an artist's top list in a market, in rank order")
    top.add_argument("artist_id")
    top.add_argument("market", type=_market)

    popular = kinds.add_parser("popular", parents=[common], help="tracks in a market above a popularity")
    popular.add_argument("market", type=_market)
    popular.add_argument(
        "--min", dest="min_popularity", type=int, required=True, help="popularity strictly above this (0-100)"
    )
    popular.add_argument("--limit", type=_positive, help="at most this many tracks")
    popular.add_argument("--page-size", type=_positive, help="items per Query request (default: DynamoDB's 1 MB pages)")
    return query


def run_query_command(args: argparse.Namespace, client=None, out=None, err=None) -> int:
    """Run a parsed `query` command. Returns the exit code: 0 found, 1 nothing found / query failed, 2 config."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        table = args.table or config.table_name()
        client = client or dynamodb_resource().get_client()
        if args.query_command == "track":
            item = get_track(client, table, args.artist_id, args.market, args.track_id)
            if item is None:
                print(
                    f"no track {args.track_id} for artist {args.artist_id} in {args.market} (table {table})", file=err
                )
                return 1
            _print(out, item, args.json, _track_text)
        elif args.query_command == "top":
            items = artist_top_list(client, table, args.artist_id, args.market)
            if not items:
                print(f"no top tracks for artist {args.artist_id} in {args.market} (table {table})", file=err)
            _print(out, items, args.json, lambda rows: _table(rows, TOP_COLUMNS))
        else:
            items = popular_tracks(
                client,
                table,
                args.market,
                args.min_popularity,
                limit=args.limit,
                page_size=args.page_size,
                attributes=None if args.json else POPULAR_ATTRIBUTES,
            )
            if not items:
                print(
                    f"no tracks in {args.market} with popularity above {args.min_popularity} (table {table})", file=err
                )
            _print(out, items, args.json, lambda rows: _table(rows, POPULAR_COLUMNS))
        return 0
    except config.ConfigError as error:
        print(f"configuration error: {error}", file=err)
        return 2
    except QueryError as error:
        print(f"query failed: {error}", file=err)
        if isinstance(error, EndpointUnreachable) and config.deployment() == config.LOCAL:
            print(
                "DAGSTER_DEPLOYMENT=local: the embedded stack's DynamoDB only runs while the stack does; "
                "set DYNAMODB_ENDPOINT_URL to query another endpoint",
                file=err,
            )
        return 1


def dynamodb_resource():
    """The DynamoDB resource from the config contract alone (a query needs no MySQL or Spotify settings)."""
    from toptracks_dagster.dynamodb.resources import (
        DynamoDBResource,  # dagster-aws: a heavy import, only when needed
    )

    local_default = f"http://127.0.0.1:{config.LOCAL_DYNAMODB_PORT}" if config.deployment() == config.LOCAL else None
    return DynamoDBResource(
        endpoint_url=config.env("DYNAMODB_ENDPOINT_URL", local_default),
        region_name=config.region(),
        table_name=config.table_name(),
        max_attempts=3,
    )


# What the tables show. Columns: (header, function of the item).
TOP_COLUMNS = [
    ("rank", lambda i: i.get("rank")),
    ("popularity", lambda i: i.get("popularity")),
    ("track id", lambda i: i.get("id")),
    ("name", lambda i: i.get("name")),
    ("album", lambda i: (i.get("album") or {}).get("name")),
]
POPULAR_COLUMNS = [
    ("popularity", lambda i: i.get("popularity")),
    ("artist id", lambda i: i.get(PARTITION_KEY)),
    ("rank", lambda i: i.get("rank")),
    ("track id", lambda i: i.get("id")),
    ("name", lambda i: i.get("name")),
    ("artists", lambda i: ", ".join(a.get("name", "") for a in i.get("artists") or [] if isinstance(a, dict))),
]
POPULAR_ATTRIBUTES = [PARTITION_KEY, "id", "name", "rank", "popularity", "artists"]  # name, rank: reserved words
TRACK_FIELDS = [
    "artist_id",
    "country",
    "id",
    "rank",
    "name",
    "popularity",
    "artists",
    "album",
    "duration_ms",
    "explicit",
    "is_playable",
    "preview_url",
    "external_urls",
    "fetched_at",
]


def _print(out, value, as_json: bool, as_text) -> None:
    if as_json:
        print(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True), file=out)
    elif value:
        print(as_text(value), file=out)


def _track_text(item: dict) -> str:
    rows = []
    for name in TRACK_FIELDS:
        if name not in item:
            continue
        value = item[name]
        if name == "artists":
            value = ", ".join(a.get("name", "") for a in value if isinstance(a, dict))
        elif name == "album" and isinstance(value, dict):
            value = f"{value.get('name', '')} ({value.get('release_date', '')})"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        rows.append((name, "" if value is None else str(value)))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def _table(items: list[dict], columns: list) -> str:
    cells = [[_cell(get(item)) for _, get in columns] for item in items]
    headers = [header for header, _ in columns]
    widths = [max([_width(h)] + [_width(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(_pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any, limit: int = 48) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _width(text: str) -> int:
    # Wide (CJK) characters take two columns in a terminal; without this the columns after them drift.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _market(text: str) -> str:
    code = text.strip().upper()
    if len(code) != 2 or not code.isalpha() or not code.isascii():
        raise argparse.ArgumentTypeError(f"{text!r} is not a two-letter market code")
    return code


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="toptracks")
    add_query_commands(parser.add_subparsers(dest="command", required=True))
    return run_query_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
