"""The `top_tracks` table: its schema, its items, and how a market's raw data is loaded into it exactly.

Keys: partition key `artist_id`, sort key `country_track_id` = "<market>#<track id>", so the same track in US
and CA is two items. GSI `country-popularity-index` (hash `country`, range `popularity`) makes "tracks in a
market above popularity N" a Query. Every market is one GSI partition key: at scale a market's items share
one GSI partition (about 1,000 writes/s and 3,000 reads/s each), which bounds how fast a single market can
be rewritten; see README "Scale".
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from typing import Any, Callable, Iterable

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError, EndpointConnectionError, ConnectTimeoutError

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
BATCH_SIZE = 25  # BatchWriteItem's limit
MAX_ITEM_BYTES = 400 * 1024
# Attributes the pipeline owns; a track's own fields never overwrite them.
PIPELINE_ATTRIBUTES = (PARTITION_KEY, SORT_KEY, "country", "rank", "fetched_at", "content_hash")

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class DynamoDBUnavailable(RuntimeError):
    """The endpoint cannot be reached."""


class TableSchemaMismatch(RuntimeError):
    """The table exists with another key schema."""


class ItemTooLarge(ValueError):
    """An item would exceed DynamoDB's 400 KB limit."""


class DynamoDBWriteIncomplete(RuntimeError):
    """Some write requests were still unprocessed when the retries ran out."""

    def __init__(self, unwritten: int, detail: str):
        super().__init__(f"{unwritten} write request(s) to DynamoDB were not applied after all retries: {detail}")
        self.unwritten = unwritten


def sort_key(market: str, track_id: str) -> str:
    return f"{market}#{track_id}"


# ---------------------------------------------------------------------------------------------------- table
def ensure_table(client, table_name: str, endpoint: str) -> str:
    """Create the table (on-demand, with the GSI) if it is missing and wait until it is active.

    Returns "created" or "exists". Fails when the table exists with another key schema.
    """
    try:
        description = client.describe_table(TableName=table_name)["Table"]
    except client.exceptions.ResourceNotFoundException:
        description = None
    except (EndpointConnectionError, ConnectTimeoutError) as error:
        raise DynamoDBUnavailable(f"DynamoDB endpoint {endpoint} is unreachable: {error}") from None
    if description is not None:
        _check_schema(table_name, description)
        return "exists"
    try:
        client.create_table(
            TableName=table_name,
            KeySchema=KEY_SCHEMA,
            AttributeDefinitions=[
                {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
                {"AttributeName": SORT_KEY, "AttributeType": "S"},
                {"AttributeName": "country", "AttributeType": "S"},
                {"AttributeName": "popularity", "AttributeType": "N"},
            ],
            GlobalSecondaryIndexes=[
                {"IndexName": GSI_NAME, "KeySchema": GSI_KEY_SCHEMA, "Projection": {"ProjectionType": "ALL"}}
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except client.exceptions.ResourceInUseException:
        pass  # another run created it a moment ago
    client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    for _ in range(300):  # the GSI can still be CREATING after the table is ACTIVE
        table = client.describe_table(TableName=table_name)["Table"]
        if all(g.get("IndexStatus", "ACTIVE") == "ACTIVE" for g in table.get("GlobalSecondaryIndexes", [])):
            break
        time.sleep(1)
    return "created"


def _check_schema(table_name: str, description: dict) -> None:
    actual = description.get("KeySchema", [])
    if sorted(map(json.dumps, actual)) != sorted(map(json.dumps, KEY_SCHEMA)):
        raise TableSchemaMismatch(
            f"table {table_name} exists with key schema {_schema_text(actual)}, but this pipeline needs "
            f"{_schema_text(KEY_SCHEMA)}; use another TOPTRACKS_TABLE or migrate the table"
        )
    indexes = {g["IndexName"]: g["KeySchema"] for g in description.get("GlobalSecondaryIndexes", [])}
    if indexes.get(GSI_NAME) != GSI_KEY_SCHEMA:
        raise TableSchemaMismatch(
            f"table {table_name} lacks GSI {GSI_NAME} with key schema {_schema_text(GSI_KEY_SCHEMA)} "
            f"(it has {json.dumps(indexes) if indexes else 'no GSI'})"
        )


def _schema_text(schema: list[dict]) -> str:
    return ", ".join(f"{k['AttributeName']} ({k['KeyType']})" for k in schema)


# ---------------------------------------------------------------------------------------------------- items
def dynamo_compatible(value: Any) -> Any:
    """JSON values -> what DynamoDB accepts: floats as Decimal, empty sets dropped."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: dynamo_compatible(v) for k, v in value.items() if not (isinstance(v, (set, frozenset)) and not v)}
    if isinstance(value, list):
        return [dynamo_compatible(v) for v in value]
    return value


def content_hash(market: str, rank: int, track: dict) -> str:
    """What decides whether an item must be rewritten: everything but when it was fetched."""
    canonical = json.dumps({"country": market, "rank": rank, "track": track}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def build_item(artist_id: str, market: str, rank: int, track: dict, fetched_at: str) -> dict:
    item = {k: dynamo_compatible(v) for k, v in track.items() if k not in PIPELINE_ATTRIBUTES}
    popularity = track.get("popularity")
    if not (isinstance(popularity, int) and not isinstance(popularity, bool)):
        item.pop("popularity", None)  # a non-numeric GSI key would reject the whole batch
    item.update(
        {
            PARTITION_KEY: artist_id,
            SORT_KEY: sort_key(market, track["id"]),
            "country": market,
            "rank": rank,
            "fetched_at": fetched_at,
            "content_hash": content_hash(market, rank, track),
        }
    )
    return item


def serialize_item(item: dict) -> dict:
    serialized = {k: _serializer.serialize(v) for k, v in item.items()}
    size = sum(len(k.encode()) for k in serialized) + len(json.dumps(serialized, ensure_ascii=False).encode())
    if size > MAX_ITEM_BYTES:  # an upper estimate: JSON framing counts too
        raise ItemTooLarge(
            f"item {item[PARTITION_KEY]} / {item[SORT_KEY]} is about {size} bytes, above DynamoDB's 400 KB limit"
        )
    return serialized


def deserialize_item(item: dict) -> dict:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def _key(artist_id: str, country_track_id: str) -> dict:
    return {PARTITION_KEY: {"S": artist_id}, SORT_KEY: {"S": country_track_id}}


# ---------------------------------------------------------------------------------------------------- writes
@dataclass
class LoadStats:
    artists: int = 0
    not_found: int = 0
    items_written: int = 0
    items_unchanged: int = 0
    items_deleted: int = 0
    stale_artist_items_deleted: int = 0
    tracks_without_id: int = 0
    duplicate_tracks: int = 0
    write_requests: int = 0
    read_requests: int = 0
    unprocessed_retries: int = 0
    consumed_write_capacity: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


class BatchWriter:
    """BatchWriteItem in batches of 25, several in flight, UnprocessedItems resent with backoff and jitter.

    Hand-written because boto3's `batch_writer` resends UnprocessedItems at once, without backoff, and spins
    under throttling; it also cannot run batches in parallel or report what it could not write.
    """

    def __init__(self, client, table_name: str, stats: LoadStats, concurrency: int = 8, max_retries: int = 8,
                 base_delay_s: float = 0.05, max_delay_s: float = 5.0):
        self._client = client
        self._table = table_name
        self._stats = stats
        self._max_retries = max_retries
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._lock = threading.Lock()
        self._pending: list[dict] = []
        self._pending_keys: set[tuple[str, str]] = set()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="dynamodb-write")
        self._slots = threading.BoundedSemaphore(concurrency * 2)  # bounds memory: batches queued or in flight
        self._futures: list[Future] = []
        self._unwritten = 0
        self._errors: list[str] = []

    def put(self, serialized_item: dict) -> None:
        key = (serialized_item[PARTITION_KEY]["S"], serialized_item[SORT_KEY]["S"])
        self._add({"PutRequest": {"Item": serialized_item}}, key)

    def delete(self, artist_id: str, country_track_id: str) -> None:
        self._add({"DeleteRequest": {"Key": _key(artist_id, country_track_id)}}, (artist_id, country_track_id))

    def _add(self, request: dict, key: tuple[str, str]) -> None:
        batch = None
        with self._lock:
            # Two requests for one key in a batch make DynamoDB reject the whole batch: cut the batch first.
            if key in self._pending_keys or len(self._pending) >= BATCH_SIZE:
                batch = self._take_pending()
            self._pending.append(request)
            self._pending_keys.add(key)
        if batch:
            self._submit(batch)

    def _take_pending(self) -> list[dict]:
        batch, self._pending, self._pending_keys = self._pending, [], set()
        return batch

    def _submit(self, batch: list[dict]) -> None:
        self._slots.acquire()
        future = self._pool.submit(self._send, batch)
        future.add_done_callback(lambda _: self._slots.release())
        with self._lock:
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(future)

    def _send(self, batch: list[dict]) -> None:
        requests = {self._table: batch}
        try:
            for attempt in range(self._max_retries + 1):
                response = self._client.batch_write_item(RequestItems=requests, ReturnConsumedCapacity="TOTAL")
                capacity = sum(c.get("CapacityUnits", 0.0) for c in response.get("ConsumedCapacity", []) or [])
                self._stats.add(write_requests=1, consumed_write_capacity=capacity)
                requests = response.get("UnprocessedItems") or {}
                if not requests:
                    return
                if attempt < self._max_retries:
                    self._stats.add(unprocessed_retries=1)
                    # Exponential backoff with full jitter (AWS's advice for UnprocessedItems).
                    time.sleep(random.uniform(0, min(self._max_delay_s, self._base_delay_s * 2**attempt)))
            left = sum(len(v) for v in requests.values())
            self._record_failure(left, f"{left} still unprocessed after {self._max_retries} resends")
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "ClientError")
            left = sum(len(v) for v in requests.values())
            self._record_failure(left, f"{code}: {error.response.get('Error', {}).get('Message', '')}")
        except Exception as error:  # connection dropped after botocore's own retries
            left = sum(len(v) for v in requests.values())
            self._record_failure(left, f"{type(error).__name__}: {error}")

    def _record_failure(self, count: int, detail: str) -> None:
        with self._lock:
            self._unwritten += count
            if len(self._errors) < 5:
                self._errors.append(detail)

    def close(self) -> None:
        """Send what is pending, wait for every batch, and raise if anything was not written."""
        with self._lock:
            batch = self._take_pending()
        if batch:
            self._submit(batch)
        self._pool.shutdown(wait=True)
        if self._unwritten:
            raise DynamoDBWriteIncomplete(self._unwritten, "; ".join(self._errors))


# ---------------------------------------------------------------------------------------------------- loads
class MarketLoader:
    """Makes the table's items for one market equal a raw partition, writing only what changed.

    Per artist: read the artist's items for the market (consistent Query on the key, projection of key and
    hash), put new and changed tracks, delete tracks that left the list; a 404 artist keeps no items. Then a
    sweep of the market's GSI deletes items of artists absent from the partition (removed from RDS).
    """

    def __init__(self, client, table_name: str, market: str, *, concurrency: int = 8, max_batch_retries: int = 8,
                 log: Callable[[str], None] | None = None):
        self._client = client
        self._table = table_name
        self._market = market
        self._concurrency = concurrency
        self._log = log or (lambda message: None)
        self.stats = LoadStats()
        self._writer = BatchWriter(client, table_name, self.stats, concurrency, max_batch_retries)

    def load(self, outcomes: Iterable) -> LoadStats:
        """`outcomes`: TopTracksOutcome-like objects (artist_id, status, tracks, requested_at), streamed."""
        seen_artists: set[str] = set()
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="dynamodb-diff") as pool:
            slots = threading.BoundedSemaphore(self._concurrency * 2)
            futures: list[Future] = []
            for outcome in outcomes:
                seen_artists.add(outcome.artist_id)
                slots.acquire()
                future = pool.submit(self._refresh_artist, outcome)
                future.add_done_callback(lambda _: slots.release())
                futures.append(future)
                if len(futures) > 1000:
                    futures = self._raise_first_error(futures)
            self._raise_first_error(futures, wait=True)
        self._delete_absent_artists(seen_artists)
        self._writer.close()
        return self.stats

    @staticmethod
    def _raise_first_error(futures: list[Future], wait: bool = False) -> list[Future]:
        for future in futures:
            if wait or future.done():
                future.result()
        return [f for f in futures if not f.done()]

    def _refresh_artist(self, outcome) -> None:
        self.stats.add(artists=1, not_found=1 if outcome.status == 404 else 0)
        wanted: dict[str, dict] = {}
        for rank, track in enumerate(outcome.tracks or [], start=1):
            track_id = track.get("id") if isinstance(track, dict) else None
            if not isinstance(track_id, str) or not track_id:
                self.stats.add(tracks_without_id=1)
                continue
            key = sort_key(self._market, track_id)
            if key in wanted:
                self.stats.add(duplicate_tracks=1)
                continue
            wanted[key] = build_item(outcome.artist_id, self._market, rank, track, outcome.requested_at)
        existing = self._existing_hashes(outcome.artist_id)
        unchanged = 0
        for key, item in wanted.items():
            if existing.get(key) == item["content_hash"]:
                unchanged += 1
            else:
                self._writer.put(serialize_item(item))
        for key in existing.keys() - wanted.keys():
            self._writer.delete(outcome.artist_id, key)
        self.stats.add(items_unchanged=unchanged, items_written=len(wanted) - unchanged,
                       items_deleted=len(existing.keys() - wanted.keys()))

    def _existing_hashes(self, artist_id: str) -> dict[str, str | None]:
        hashes: dict[str, str | None] = {}
        kwargs = {
            "TableName": self._table,
            "KeyConditionExpression": "#pk = :artist AND begins_with(#sk, :prefix)",
            "ProjectionExpression": "#sk, content_hash",
            "ExpressionAttributeNames": {"#pk": PARTITION_KEY, "#sk": SORT_KEY},
            "ExpressionAttributeValues": {":artist": {"S": artist_id}, ":prefix": {"S": f"{self._market}#"}},
            "ConsistentRead": True,
        }
        while True:
            page = self._client.query(**kwargs)
            self.stats.add(read_requests=1)
            for item in page.get("Items", []):
                hashes[item[SORT_KEY]["S"]] = item.get("content_hash", {}).get("S")
            if "LastEvaluatedKey" not in page:
                return hashes
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _delete_absent_artists(self, present: set[str]) -> None:
        kwargs = {
            "TableName": self._table,
            "IndexName": GSI_NAME,
            "KeyConditionExpression": "#country = :market",
            "ProjectionExpression": "#pk, #sk",
            "ExpressionAttributeNames": {"#country": "country", "#pk": PARTITION_KEY, "#sk": SORT_KEY},
            "ExpressionAttributeValues": {":market": {"S": self._market}},
        }
        deleted = 0
        while True:
            page = self._client.query(**kwargs)
            self.stats.add(read_requests=1)
            for item in page.get("Items", []):
                artist_id = item[PARTITION_KEY]["S"]
                if artist_id not in present:
                    self._writer.delete(artist_id, item[SORT_KEY]["S"])
                    deleted += 1
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        if deleted:
            self._log(f"deleting {deleted} item(s) of artists no longer in the artist list for {self._market}")
        self.stats.add(items_deleted=deleted, stale_artist_items_deleted=deleted)
