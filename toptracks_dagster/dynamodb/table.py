"""The `top_tracks` table: its keys, its GSI and its creation.

Keys: `artist_id` + `country_track_id` ("<market>#<track id>"), so the same track in two markets is two items.
GSI `country-popularity-index` (hash `country`, range `popularity`) answers "tracks in a market above popularity
N" and lets a full refresh find items of artists no longer listed. Every item carries a numeric `popularity`
(0 and `popularity_missing` when the track had none), so no item is left out of the GSI.
"""

from __future__ import annotations

import time

from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.exceptions import HTTPClientError

from toptracks_dagster.config import PermanentError

PARTITION_KEY = "artist_id"
SORT_KEY = "country_track_id"
GSI_NAME = "country-popularity-index"
KEY_SCHEMA = [
    {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
    {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
]
GSI_KEY_SCHEMA = [
    {"AttributeName": "country", "KeyType": "HASH"},
    {"AttributeName": "popularity", "KeyType": "RANGE"},
]
ATTRIBUTE_TYPES = {PARTITION_KEY: "S", SORT_KEY: "S", "country": "S", "popularity": "N"}
# The GSI carries what "tracks in a market above popularity N" shows, not whole items: every base write is also
# a GSI write billed by the projected size, so ALL would double the cost of each ~3 KB item.
GSI_PROJECTION = {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["id", "name", "rank", "artists", "fetched_at"]}
MAX_SORT_KEY_BYTES = 1024  # DynamoDB's limit for a sort key value
MAX_ITEM_BYTES = 400 * 1024  # DynamoDB's item limit
# Attributes the pipeline owns; a track's own fields never overwrite them.
PIPELINE_ATTRIBUTES = (PARTITION_KEY, SORT_KEY, "country", "rank", "fetched_at", "popularity_missing")
TRANSIENT_EXCEPTIONS = (BotocoreConnectionError, HTTPClientError)  # what botocore retries on its own


class DynamoDBUnavailable(PermanentError):
    """The endpoint cannot be reached (after botocore's own retries)."""


class TableSchemaMismatch(PermanentError):
    """The table exists with another key schema."""


def sort_key(market: str, track_id: str) -> str:
    return f"{market}#{track_id}"


def endpoint_of(client) -> str:
    return getattr(getattr(client, "meta", None), "endpoint_url", None) or "the DynamoDB endpoint"


class TableMissing(PermanentError):
    """The table does not exist and this deployment may not create it."""


def ensure_table(client, table_name: str, endpoint: str, create: bool = True, template: str = "") -> str:
    """Create the table (on-demand, with the GSI) if it is missing and wait until it and the GSI are active.

    Returns "created" or "exists". Fails when the table exists with another key schema, and with TableMissing
    when it is missing and `create` is false (production: the table comes from `template`).
    """
    try:
        description = client.describe_table(TableName=table_name)["Table"]
    except client.exceptions.ResourceNotFoundException:
        description = None
    except TRANSIENT_EXCEPTIONS as error:
        raise DynamoDBUnavailable(f"DynamoDB endpoint {endpoint} is unreachable: {error}") from None
    if description is not None:
        _check_schema(table_name, endpoint, description)
        if not _is_active(description):  # another run is creating it right now
            _wait_active(client, table_name)
        return "exists"
    if not create:
        raise TableMissing(
            f"table {table_name} does not exist at {endpoint} and TOPTRACKS_CREATE_TABLE=false: create it from "
            f"{template or 'the CloudFormation template'} (or set TOPTRACKS_TABLE to the table you created)"
        )
    try:
        client.create_table(
            TableName=table_name,
            KeySchema=KEY_SCHEMA,
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in ATTRIBUTE_TYPES.items()],
            GlobalSecondaryIndexes=[{"IndexName": GSI_NAME, "KeySchema": GSI_KEY_SCHEMA, "Projection": GSI_PROJECTION}],
            BillingMode="PAY_PER_REQUEST",
        )
    except client.exceptions.ResourceInUseException:
        pass  # another run created it a moment ago
    _wait_active(client, table_name)
    _check_schema(table_name, endpoint, client.describe_table(TableName=table_name)["Table"])
    return "created"


def _is_active(description: dict) -> bool:
    return description.get("TableStatus", "ACTIVE") == "ACTIVE" and all(
        g.get("IndexStatus", "ACTIVE") == "ACTIVE" for g in description.get("GlobalSecondaryIndexes", [])
    )


def _wait_active(client, table_name: str) -> None:
    client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    for _ in range(300):  # boto3 has no waiter for a GSI: it can still be CREATING after the table is ACTIVE
        if _is_active(client.describe_table(TableName=table_name)["Table"]):
            return
        time.sleep(1)
    raise TableSchemaMismatch(f"table {table_name}: GSI {GSI_NAME} did not become ACTIVE within 300 s")


def _check_schema(table_name: str, endpoint: str, description: dict) -> None:
    types = {a["AttributeName"]: a["AttributeType"] for a in description.get("AttributeDefinitions", [])}
    actual = _schema_text(description.get("KeySchema", []), types)
    wanted = _schema_text(KEY_SCHEMA, ATTRIBUTE_TYPES)
    if actual != wanted:
        raise TableSchemaMismatch(
            f"table {table_name} at {endpoint} exists with key schema [{actual}], but this pipeline needs "
            f"[{wanted}]; set TOPTRACKS_TABLE to another table or migrate this one"
        )
    indexes = {g["IndexName"]: g for g in description.get("GlobalSecondaryIndexes", [])}
    wanted_gsi = f"{_schema_text(GSI_KEY_SCHEMA, ATTRIBUTE_TYPES)}, projection {_projection_text(GSI_PROJECTION)}"
    index = indexes.get(GSI_NAME)
    actual_gsi = (
        f"{_schema_text(index['KeySchema'], types)}, projection {_projection_text(index.get('Projection', {}))}"
        if index
        else None
    )
    if actual_gsi != wanted_gsi:
        found = "; ".join(f"{name}: {_schema_text(g['KeySchema'], types)}" for name, g in indexes.items()) or "no GSI"
        raise TableSchemaMismatch(
            f"table {table_name} at {endpoint} needs GSI {GSI_NAME} with [{wanted_gsi}], but has "
            f"[{actual_gsi or 'no such index'}] (indexes: {found}); set TOPTRACKS_TABLE to another table or "
            "migrate this one"
        )


def _projection_text(projection: dict) -> str:
    extra = sorted(projection.get("NonKeyAttributes", []))
    return projection.get("ProjectionType", "?") + (f" ({', '.join(extra)})" if extra else "")


def _schema_text(schema: list[dict], types: dict[str, str]) -> str:
    order = {"HASH": 0, "RANGE": 1}
    keys = sorted(schema, key=lambda k: order.get(k["KeyType"], 2))
    return ", ".join(f"{k['AttributeName']} ({k['KeyType']}, {types.get(k['AttributeName'], '?')})" for k in keys)
