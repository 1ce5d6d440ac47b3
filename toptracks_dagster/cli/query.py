"""`toptracks query`: read the top_tracks table, each a keyed read, never a Scan.

  query track ARTIST MARKET TRACK_ID      one track (GetItem)
  query top ARTIST MARKET                  the artist's top list in rank order (Query on the key)
  query popular MARKET --min N [--limit K] tracks above popularity N, most popular first (Query on the GSI)

Each prints a table, or JSON with --json. The table and endpoint come from the config contract
(TOPTRACKS_TABLE, DYNAMODB_ENDPOINT_URL, AWS_REGION); --table overrides the table name.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from decimal import Decimal
from functools import partial
from typing import Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from toptracks_dagster import config
from toptracks_dagster.dynamodb.load import artist_items
from toptracks_dagster.dynamodb.table import GSI_NAME, PARTITION_KEY, SORT_KEY, TRANSIENT_EXCEPTIONS, sort_key

_deserialize = TypeDeserializer().deserialize


class QueryError(RuntimeError):
    """A query could not be answered; the message names the table, the endpoint and what to do."""


def plain(value: Any) -> Any:
    """DynamoDB values back to JSON values: Decimal -> int or float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    return value


def _from_dynamodb(item: dict) -> dict:
    return plain({k: _deserialize(v) for k, v in item.items()})


def get_track(client, table: str, artist_id: str, market: str, track_id: str) -> dict | None:
    """The item of `track_id` in `artist_id`'s top list for `market`, or None."""
    key = {PARTITION_KEY: {"S": artist_id}, SORT_KEY: {"S": sort_key(market, track_id)}}
    response = _explained(client, table, lambda: client.get_item(TableName=table, ConsistentRead=True, Key=key))
    item = response.get("Item")
    return _from_dynamodb(item) if item else None


def artist_top_list(client, table: str, artist_id: str, market: str) -> list[dict]:
    """The artist's top tracks in `market`, in rank order (the sort key orders by track id)."""
    items, _ = _explained(client, table, lambda: artist_items(client, table, market, artist_id))
    return sorted((plain(i) for i in items.values()), key=lambda i: (i.get("rank", 0), i.get(SORT_KEY, "")))


def popular_tracks(client, table: str, market: str, min_popularity: int, limit: int | None = None) -> list[dict]:
    """Tracks in `market` with popularity above `min_popularity`, most popular first: a paginated GSI Query (a
    FilterExpression needs a key condition, and a Scan would read the whole table)."""
    pages = client.get_paginator("query").paginate(
        TableName=table,
        IndexName=GSI_NAME,
        KeyConditionExpression="#c = :m AND #p > :min",
        ExpressionAttributeNames={"#c": "country", "#p": "popularity"},
        ExpressionAttributeValues={":m": {"S": market}, ":min": {"N": str(int(min_popularity))}},
        ScanIndexForward=False,
        PaginationConfig={k: v for k, v in {"MaxItems": limit, "PageSize": limit}.items() if v},
    )
    found = _explained(client, table, lambda: [item for page in pages for item in page.get("Items", [])])
    return [_from_dynamodb(item) for item in found]  # MaxItems stops the paginator at the limit


def _explained(client, table: str, read):
    endpoint = client.meta.endpoint_url
    try:
        return read()
    except TRANSIENT_EXCEPTIONS as error:
        raise QueryError(f"DynamoDB at {endpoint} is unreachable: {error}; check DYNAMODB_ENDPOINT_URL") from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            raise QueryError(
                f"table {table} does not exist at {endpoint}: materialize top_tracks first (`toptracks run`), "
                "or point TOPTRACKS_TABLE / DYNAMODB_ENDPOINT_URL at the loaded table"
            ) from None
        if code == "ValidationException" and "index" in message.lower():
            raise QueryError(
                f"table {table} at {endpoint} has no GSI {GSI_NAME}: not created by this pipeline"
            ) from None
        raise QueryError(f"DynamoDB at {endpoint} refused the query on {table}: {code}: {message}") from None


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
    top = kinds.add_parser("top", parents=[common], help="an artist's top list in a market, in rank order")
    for parser in (track, top):
        parser.add_argument("artist_id")
        parser.add_argument("market", type=_market)
    track.add_argument("track_id")

    popular = kinds.add_parser("popular", parents=[common], help="tracks in a market above a popularity")
    popular.add_argument("market", type=_market)
    popular.add_argument(
        "--min", dest="min_popularity", type=int, required=True, help="popularity strictly above this (0-100)"
    )
    popular.add_argument("--limit", type=_positive, help="at most this many tracks")
    return query


def run_query_command(args: argparse.Namespace, client=None, out=None, err=None) -> int:
    """Run a parsed `query` command. Returns the exit code: 0 found, 1 nothing found / query failed, 2 config."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        table = args.table or config.table_name()
        client = client or dynamodb_resource().get_client()
        if args.query_command == "track":
            found = get_track(client, table, args.artist_id, args.market, args.track_id)
            missing = f"no track {args.track_id} for artist {args.artist_id} in {args.market}"
            as_text = _track_text
        elif args.query_command == "top":
            found = artist_top_list(client, table, args.artist_id, args.market)
            missing = f"no top tracks for artist {args.artist_id} in {args.market}"
            as_text = partial(_table, columns=TOP_COLUMNS)
        else:
            found = popular_tracks(client, table, args.market, args.min_popularity, limit=args.limit)
            missing = f"no tracks in {args.market} with popularity above {args.min_popularity}"
            as_text = partial(_table, columns=POPULAR_COLUMNS)
        if not found:
            print(f"{missing} (table {table})", file=err)
        if found is None:  # the one track asked for is not there; an empty list is an answer
            return 1
        if args.json:
            print(json.dumps(found, ensure_ascii=False, indent=2, sort_keys=True), file=out)
        elif found:
            print(as_text(found), file=out)
        return 0
    except config.ConfigError as error:
        print(f"configuration error: {error}", file=err)
        return 2
    except QueryError as error:
        print(f"query failed: {error}", file=err)
        return 1


def dynamodb_resource():
    """The DynamoDB resource from the config contract alone (a query needs no MySQL or Spotify settings)."""
    from toptracks_dagster.dynamodb.resources import DynamoDBResource

    return DynamoDBResource(
        endpoint_url=config.env("DYNAMODB_ENDPOINT_URL"),
        region_name=config.region(),
        table_name=config.table_name(),
        max_attempts=3,
        local_stack=config.deployment() == config.LOCAL,
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
TRACK_FIELDS = """artist_id country id rank name popularity artists album duration_ms explicit is_playable preview_url
    external_urls fetched_at""".split()


def _track_text(item: dict) -> str:
    rows = []
    for name in [name for name in TRACK_FIELDS if name in item]:
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
    rows = [[header for header, _ in columns]] + [[_cell(get(item)) for _, get in columns] for item in items]
    widths = [max(map(_width, column)) for column in zip(*rows, strict=True)]
    lines = ["  ".join(_pad(cell, w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))  # under the header
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
