"""The `top_tracks` table: its schema, its items, and how a market's raw data is loaded into it exactly.

Keys: partition key `artist_id`, sort key `country_track_id` = "<market>#<track id>", so the same track in US
and CA is two items. GSI `country-popularity-index` (hash `country`, range `popularity`, projection INCLUDE) makes
"tracks in a market above popularity N" a Query. Every market is one GSI partition key: at scale a market's
items share one GSI partition (about 1,000 writes/s and 3,000 reads/s each), which bounds how fast a single
market can be rewritten; see README "Scale".

Every item carries a numeric `popularity` (0 and `popularity_missing: true` when the track had none), so every
item is in the GSI: the sweep that deletes the items of artists gone from the artist list reads the GSI and
would never see an item left out of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError, ConnectionError as BotocoreConnectionError, HTTPClientError

from toptracks_dagster.counters import ThreadSafeCounters

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
# a GSI write billed by the projected size, so ALL would double the cost of each ~3 KB item; this keeps the GSI
# copy to a few hundred bytes (one write unit) and its pages ~5x denser for the loader's sweep.
GSI_PROJECTION = {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["id", "name", "rank", "artists", "fetched_at"]}
BATCH_SIZE = 25  # BatchWriteItem's limit
MAX_ITEM_BYTES = 400 * 1024  # DynamoDB's item limit, attribute names included
MAX_SORT_KEY_BYTES = 1024  # DynamoDB's limit for a sort key value
# Bump when build_item changes what it stores: every item's hash changes, so the next load rewrites them all.
ITEM_FORMAT = 2
# Attributes the pipeline owns; a track's own fields never overwrite them.
PIPELINE_ATTRIBUTES = (PARTITION_KEY, SORT_KEY, "country", "rank", "fetched_at", "content_hash", "popularity_missing")

# Errors after which a whole batch is resent with the loader's backoff. botocore's standard retry mode already
# retries them a few times, but its retry quota runs dry under sustained throttling (it then raises at once);
# the loader's own bounded loop keeps a long load alive and counts what it finally could not write.
RETRYABLE_ERROR_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
})
TRANSIENT_EXCEPTIONS = (BotocoreConnectionError, HTTPClientError)  # the same classes botocore retries

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class DynamoDBUnavailable(RuntimeError):
    """The endpoint cannot be reached."""


class TableSchemaMismatch(RuntimeError):
    """The table exists with another key schema."""


class ItemTooLarge(ValueError):
    """An item would exceed DynamoDB's 400 KB limit."""

    def __init__(self, message: str, artist_id: str = "", key: str = "", size: int = 0):
        super().__init__(message)
        self.artist_id = artist_id
        self.key = key
        self.size = size


class DynamoDBWriteIncomplete(RuntimeError):
    """Some write requests were still unprocessed when the retries ran out."""

    def __init__(self, unwritten: int, detail: str):
        super().__init__(f"{unwritten} write request(s) to DynamoDB were not applied after all retries: {detail}")
        self.unwritten = unwritten


def sort_key(market: str, track_id: str) -> str:
    return f"{market}#{track_id}"


def endpoint_of(client) -> str:
    return getattr(getattr(client, "meta", None), "endpoint_url", None) or "the DynamoDB endpoint"


# ---------------------------------------------------------------------------------------------------- table
def ensure_table(client, table_name: str, endpoint: str) -> str:
    """Create the table (on-demand, with the GSI) if it is missing and wait until it and the GSI are active.

    Returns "created" or "exists". Fails when the table exists with another key schema.
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
    try:
        client.create_table(
            TableName=table_name,
            KeySchema=KEY_SCHEMA,
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in ATTRIBUTE_TYPES.items()],
            GlobalSecondaryIndexes=[
                {"IndexName": GSI_NAME, "KeySchema": GSI_KEY_SCHEMA, "Projection": GSI_PROJECTION}
            ],
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
        if index else None
    )
    if actual_gsi != wanted_gsi:
        found = "; ".join(
            f"{name}: {_schema_text(g['KeySchema'], types)}" for name, g in indexes.items()
        ) or "no GSI"
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


# ---------------------------------------------------------------------------------------------------- items
def dynamo_compatible(value: Any) -> Any:
    """JSON values -> what DynamoDB accepts: floats as Decimal, NaN/Infinity as null, empty sets dropped."""
    if value is None or isinstance(value, (bool, str, int, Decimal)):
        return value
    if isinstance(value, float):
        # boto3 refuses floats (it will not guess the precision); str() gives the shortest exact repr.
        return Decimal(str(value)) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): dynamo_compatible(v) for k, v in value.items() if not _is_empty_set(v)}
    if isinstance(value, (list, tuple)):
        return [dynamo_compatible(v) for v in value if not _is_empty_set(v)]
    if isinstance(value, (set, frozenset)):
        return {dynamo_compatible(v) for v in value}
    return value


def _is_empty_set(value: Any) -> bool:
    return isinstance(value, (set, frozenset)) and not value


def content_hash(market: str, rank: int, track: dict) -> str:
    """What decides whether an item must be rewritten: everything but when it was fetched."""
    canonical = json.dumps({"format": ITEM_FORMAT, "country": market, "rank": rank, "track": track},
                           sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def list_digest(items_by_key: dict[str, dict]) -> str:
    """One artist's list in one market as the loader writes it: keys and content hashes (empty for a 404)."""
    text = "\n".join(f"{key}={items_by_key[key]['content_hash']}" for key in sorted(items_by_key))
    return hashlib.sha256(f"{ITEM_FORMAT}\n{text}".encode()).hexdigest()[:32]


def valid_track_id(market: str, track_id: Any) -> bool:
    return isinstance(track_id, str) and bool(track_id) and len(sort_key(market, track_id).encode()) <= MAX_SORT_KEY_BYTES


def gsi_popularity(value: Any) -> int | None:
    """The track's popularity as the GSI's number key, or None when it has none usable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def build_item(artist_id: str, market: str, rank: int, track: dict, fetched_at: str) -> dict:
    item = {k: dynamo_compatible(v) for k, v in track.items() if k not in PIPELINE_ATTRIBUTES and not _is_empty_set(v)}
    popularity = gsi_popularity(track.get("popularity"))
    if popularity is None:
        # The GSI range key must be a number. A missing popularity becomes 0 (Spotify's own value for tracks
        # without plays) and is flagged, rather than leaving the item out of the GSI where the sweep of
        # removed artists could never find it.
        popularity = 0
        item["popularity_missing"] = True
    item.update(
        {
            PARTITION_KEY: artist_id,
            SORT_KEY: sort_key(market, track["id"]),
            "country": market,
            "rank": rank,
            "popularity": popularity,
            "fetched_at": fetched_at,
            "content_hash": content_hash(market, rank, track),
        }
    )
    return item


def serialize_item(item: dict) -> dict:
    serialized = {k: _serializer.serialize(v) for k, v in item.items()}
    size = item_size(serialized)
    if size > MAX_ITEM_BYTES:
        largest = sorted(((len(k.encode()) + _value_size(v), k) for k, v in serialized.items()), reverse=True)[:3]
        raise ItemTooLarge(
            f"item artist_id={item[PARTITION_KEY]} {SORT_KEY}={item[SORT_KEY]} is {size:,} bytes, above DynamoDB's "
            f"item limit of {MAX_ITEM_BYTES:,} bytes (400 KB); largest attributes: "
            + ", ".join(f"{name} {nbytes:,} B" for nbytes, name in largest),
            artist_id=item[PARTITION_KEY], key=item[SORT_KEY], size=size,
        )
    return serialized


def item_size(serialized: dict) -> int:
    """An item's size as DynamoDB counts it against the 400 KB limit (attribute names included).

    boto3 has no such function. The rules are AWS's ("Item sizes and formats"); the byte counts were checked
    against DynamoDB Local at the limit: strings and binaries by their bytes, numbers by base-100 digit pairs
    + 1 (+1 if negative), BOOL/NULL 1, lists and maps 3 + 1 per element (+ the names in maps), sets their elements.
    """
    return sum(len(name.encode()) + _value_size(value) for name, value in serialized.items())


def _value_size(attribute: dict) -> int:
    (kind, value), = attribute.items()
    if kind == "S":
        return len(value.encode())
    if kind == "N":
        return _number_size(value)
    if kind == "B":
        return len(getattr(value, "value", value))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in value)
    if kind == "NS":
        return sum(_number_size(n) for n in value)
    if kind == "BS":
        return sum(len(getattr(b, "value", b)) for b in value)
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in value)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in value.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def _number_size(text: str) -> int:
    number = Decimal(text)
    if number.is_zero():
        return 1
    sign, digits, exponent = number.normalize().as_tuple()
    highest, lowest = len(digits) - 1 + exponent, exponent  # powers of ten of the first and last digit
    return (highest // 2 - lowest // 2 + 1) + 1 + (1 if sign else 0)


def deserialize_item(item: dict) -> dict:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def _key(artist_id: str, country_track_id: str) -> dict:
    return {PARTITION_KEY: {"S": artist_id}, SORT_KEY: {"S": country_track_id}}


# ---------------------------------------------------------------------------------------------------- writes
@dataclass
class LoadStats(ThreadSafeCounters):
    artists: int = 0
    not_found: int = 0
    duplicate_artists: int = 0
    artists_kept_after_error: int = 0
    artists_with_oversized_items: int = 0
    items_written: int = 0
    items_unchanged: int = 0
    items_deleted: int = 0
    stale_artist_items_deleted: int = 0
    artists_skipped_unchanged: int = 0  # same list digest as the last successful load: no read, no write
    tracks_without_id: int = 0
    duplicate_tracks: int = 0
    tracks_without_popularity: int = 0
    write_requests: int = 0
    read_requests: int = 0
    unprocessed_items: int = 0  # write requests DynamoDB handed back in UnprocessedItems (summed over tries)
    unprocessed_retries: int = 0  # BatchWriteItem calls resending UnprocessedItems
    error_retries: int = 0  # whole batches resent after throttling / dropped connections
    sdk_retries: int = 0  # botocore's own retries (ResponseMetadata.RetryAttempts)
    consumed_write_capacity: float = 0.0
    consumed_read_capacity: float = 0.0


def _capacity(response: dict) -> float:
    """Capacity units a response reports (a list for BatchWriteItem, one object for Query), 0 if none."""
    consumed = response.get("ConsumedCapacity") or []
    if isinstance(consumed, dict):
        consumed = [consumed]
    return float(sum(c.get("CapacityUnits", 0.0) or 0.0 for c in consumed))


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
        try:
            future = self._pool.submit(self._send, batch)
        except RuntimeError:  # the writer was aborted: the load is failing anyway
            self._slots.release()
            raise
        future.add_done_callback(lambda done: self._batch_finished(done, len(batch)))

    def _batch_finished(self, future: Future, size: int) -> None:
        self._slots.release()
        # _send records its own failures; anything that still escapes it must not pass silently either.
        error = None if future.cancelled() else future.exception()
        if error is not None:
            self._record_failure(size, f"{type(error).__name__}: {error}")

    def _delay(self, attempt: int) -> float:
        # Exponential backoff with full jitter (AWS's advice for UnprocessedItems and throttling).
        return random.uniform(0, min(self._max_delay_s, self._base_delay_s * 2**attempt))

    def _send(self, batch: list[dict]) -> None:
        requests = {self._table: batch}
        detail = ""
        for attempt in range(self._max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1))
            try:
                response = self._client.batch_write_item(RequestItems=requests, ReturnConsumedCapacity="TOTAL")
            except ClientError as error:
                info = error.response.get("Error", {})
                code = info.get("Code", "ClientError")
                detail = f"{code}: {info.get('Message', '')}"
                self._stats.add(write_requests=1,
                                sdk_retries=error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
                if code not in RETRYABLE_ERROR_CODES:
                    break
                if attempt < self._max_retries:
                    self._stats.add(error_retries=1)
                continue
            except TRANSIENT_EXCEPTIONS as error:  # a dropped connection or timeout after botocore's own retries
                detail = f"{type(error).__name__}: {error}"
                self._stats.add(write_requests=1)
                if attempt < self._max_retries:
                    self._stats.add(error_retries=1)
                continue
            except Exception as error:  # anything else is not worth retrying; it is reported at close()
                detail = f"{type(error).__name__}: {error}"
                break
            self._stats.add(write_requests=1, consumed_write_capacity=_capacity(response),
                            sdk_retries=response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
            requests = response.get("UnprocessedItems") or {}
            if not requests:
                return
            left = sum(len(v) for v in requests.values())
            detail = f"{left} item(s) still in UnprocessedItems"
            self._stats.add(unprocessed_items=left)
            if attempt < self._max_retries:
                self._stats.add(unprocessed_retries=1)
        left = sum(len(v) for v in requests.values())
        self._record_failure(left, f"{detail} (after {self._max_retries} resend(s) at most)")

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

    def abort(self) -> None:
        """After a failure elsewhere: drop what was not sent yet and wait for the batches in flight.

        Nothing is lost by dropping: every write is derived from the raw data and the table's state, so the
        next load recomputes and sends whatever is still missing.
        """
        with self._lock:
            self._take_pending()
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------- loads
def wanted_items(outcome, market: str, stats: LoadStats | None = None) -> dict[str, dict]:
    """'<market>#<track id>' -> item, as the load stores one artist's outcome (a 404 or empty list: none).
    Tracks without a usable id are skipped; a repeated track keeps its first rank."""
    wanted: dict[str, dict] = {}
    if outcome.status != 200:
        return wanted
    for rank, track in enumerate(outcome.tracks or [], start=1):
        track_id = track.get("id") if isinstance(track, dict) else None
        if not valid_track_id(market, track_id):
            if stats:
                stats.add(tracks_without_id=1)
            continue
        key = sort_key(market, track_id)
        if key in wanted:
            if stats:
                stats.add(duplicate_tracks=1)
            continue
        wanted[key] = build_item(outcome.artist_id, market, rank, track, outcome.requested_at)
    return wanted


def outcome_digest(outcome, market: str) -> tuple[str, int] | None:
    """(list digest, item count) of an outcome as the load would write it; None for an error outcome, whose
    artist keeps its previous items."""
    if outcome.status not in (200, 404):
        return None
    wanted = wanted_items(outcome, market)
    return list_digest(wanted), len(wanted)


class MarketLoader:
    """Makes the table's items for one market equal a raw partition, writing only what changed.

    Per artist: read the artist's items for the market (consistent Query on the key, projection of key and
    hash), put new and changed tracks, delete tracks that left the list; a 404 artist keeps no items. Then a
    sweep of the market's GSI deletes items of artists absent from the partition (removed from RDS).

    Idempotent: every write is derived from (raw data, current table), so a re-run after a crash at any point
    computes and sends exactly what is still missing.
    """

    def __init__(self, client, table_name: str, market: str, *, concurrency: int = 8, max_batch_retries: int = 8,
                 log: Callable[[str], None] | None = None, base_delay_s: float = 0.05, max_delay_s: float = 5.0,
                 previous_ledger: dict[str, str] | None = None, untrusted: set[str] | None = None,
                 known_digests: dict[str, tuple[str, int]] | None = None):
        # previous_ledger: {artist_id: list digest} of the last successful load of this market into this table,
        # or None when unknown. With it, an artist whose list digest is unchanged is skipped without reading
        # the table, and only artists of the ledger can have items to sweep. `ledger` is this load's, filled as
        # artists are refreshed; store it only after load() returns.
        # untrusted: artists whose ledger entry a crashed load may have invalidated (read from the table).
        # known_digests: {artist_id: (list digest, item count)} computed before the load, to skip unchanged
        # artists without rebuilding their items.
        self._previous = previous_ledger
        self._untrusted = untrusted or set()
        self._known_digests = known_digests or {}
        self.ledger: dict[str, str] = {}
        self._ledger_lock = threading.Lock()
        self._client = client
        self._table = table_name
        self._market = market
        self._concurrency = concurrency
        self._log = log or (lambda message: None)
        self.stats = LoadStats()
        self._writer = BatchWriter(client, table_name, self.stats, concurrency, max_batch_retries,
                                   base_delay_s=base_delay_s, max_delay_s=max_delay_s)
        self._oversized: list[ItemTooLarge] = []
        self._oversized_lock = threading.Lock()

    def load(self, outcomes: Iterable) -> LoadStats:
        """`outcomes`: TopTracksOutcome-like objects (artist_id, market, status, tracks, requested_at), streamed.

        Raises DynamoDBWriteIncomplete (with the count) when writes could not be applied, ItemTooLarge after
        loading everything else when some tracks were too large (those artists keep their previous items),
        DynamoDBUnavailable when the endpoint cannot be reached.
        """
        try:
            seen_artists = self._refresh_artists(outcomes)
            if self._previous is None:
                self._delete_absent_artists(seen_artists)
            else:
                self._delete_artists(sorted((self._previous.keys() | self._untrusted) - seen_artists))
        except TRANSIENT_EXCEPTIONS as error:
            self._writer.abort()
            raise DynamoDBUnavailable(f"DynamoDB at {endpoint_of(self._client)} failed during the load of "
                                      f"{self._market}: {error}") from error
        except BaseException:
            self._writer.abort()
            raise
        self._writer.close()
        if self._oversized:
            first = self._oversized[0]
            raise ItemTooLarge(
                f"{len(self._oversized)} artist(s) in {self._market} have items above the 400 KB limit and kept "
                f"their previous items; first: {first}", first.artist_id, first.key, first.size,
            )
        return self.stats

    def _refresh_artists(self, outcomes: Iterable) -> set[str]:
        seen_artists: set[str] = set()
        pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="dynamodb-diff")
        try:
            slots = threading.BoundedSemaphore(self._concurrency * 2)
            failed = threading.Event()  # stop reading outcomes at the first failed artist

            def done(future: Future) -> None:
                slots.release()
                if not future.cancelled() and future.exception() is not None:
                    failed.set()

            futures: list[Future] = []
            for outcome in outcomes:
                if failed.is_set():
                    break
                market = getattr(outcome, "market", self._market)
                if market != self._market:
                    raise ValueError(f"outcome for artist {outcome.artist_id} is for market {market}, "
                                     f"not {self._market}: refusing to load it into {self._market}")
                if outcome.artist_id in seen_artists:
                    # Two refreshes of one artist would race; the raw partition has one outcome per artist.
                    self.stats.add(duplicate_artists=1)
                    continue
                seen_artists.add(outcome.artist_id)
                slots.acquire()
                future = pool.submit(self._refresh_artist, outcome)
                future.add_done_callback(done)
                futures.append(future)
                if len(futures) > 1000:
                    futures = self._raise_first_error(futures)
            self._raise_first_error(futures, wait=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return seen_artists

    @staticmethod
    def _raise_first_error(futures: list[Future], wait: bool = False) -> list[Future]:
        for future in futures:
            if wait or future.done():
                future.result()
        return [f for f in futures if not f.done()]

    def _refresh_artist(self, outcome) -> None:
        self.stats.add(artists=1)
        if outcome.status == 404:
            self.stats.add(not_found=1)
        elif outcome.status != 200:
            # Not a top list: the latest successful list stays (deleting it would lose data on a glitch).
            self.stats.add(artists_kept_after_error=1)
            self._log(f"artist {outcome.artist_id}: status {outcome.status} in the raw data, kept its items")
            if self._previous and outcome.artist_id in self._previous:
                self._remember(outcome.artist_id, self._previous[outcome.artist_id])
            return
        known = self._known_digests.get(outcome.artist_id)
        if (known is not None and self._previous is not None and outcome.artist_id not in self._untrusted
                and self._previous.get(outcome.artist_id) == known[0]):
            # Same list as the last successful load wrote (digest computed before the load): nothing to do.
            self.stats.add(items_unchanged=known[1], artists_skipped_unchanged=1)
            self._remember(outcome.artist_id, known[0])
            return
        wanted = wanted_items(outcome, self._market, self.stats)
        digest = list_digest(wanted)
        if (self._previous is not None and outcome.artist_id not in self._untrusted
                and self._previous.get(outcome.artist_id) == digest):
            # Same list as the last successful load wrote: nothing to read, nothing to write.
            self.stats.add(items_unchanged=len(wanted), artists_skipped_unchanged=1,
                           tracks_without_popularity=sum(1 for i in wanted.values() if i.get("popularity_missing")))
            self._remember(outcome.artist_id, digest)
            return
        if self._previous is None or outcome.artist_id in self._previous or outcome.artist_id in self._untrusted:
            existing = self._existing_hashes(outcome.artist_id)
        else:
            existing = {}  # the ledger covers every artist with items in this market: this one has none
        changed = {key: item for key, item in wanted.items() if existing.get(key) != item["content_hash"]}
        try:  # every changed item is checked before any is written: an artist is refreshed whole or not at all
            serialized = [serialize_item(item) for item in changed.values()]
        except ItemTooLarge as error:
            with self._oversized_lock:
                self._oversized.append(error)
            self.stats.add(artists_with_oversized_items=1)
            self._log(str(error))
            return
        for item in serialized:
            self._writer.put(item)
        gone = existing.keys() - wanted.keys()
        for key in gone:
            self._writer.delete(outcome.artist_id, key)
        self._remember(outcome.artist_id, digest)
        self.stats.add(
            items_unchanged=len(wanted) - len(changed), items_written=len(changed), items_deleted=len(gone),
            tracks_without_popularity=sum(1 for item in wanted.values() if item.get("popularity_missing")),
        )

    def _remember(self, artist_id: str, digest: str) -> None:
        with self._ledger_lock:
            self.ledger[artist_id] = digest

    def _delete_artists(self, artist_ids: list[str]) -> None:
        """Delete every item of these artists in this market (consistent reads: exact, no GSI lag)."""
        deleted = 0
        for artist_id in artist_ids:
            for key in self._existing_hashes(artist_id):
                self._writer.delete(artist_id, key)
                deleted += 1
        if deleted:
            self._log(f"deleting {deleted} item(s) of artists no longer in the artist list for {self._market}")
        self.stats.add(items_deleted=deleted, stale_artist_items_deleted=deleted)

    def _existing_hashes(self, artist_id: str) -> dict[str, str | None]:
        hashes: dict[str, str | None] = {}
        pages = self._client.get_paginator("query").paginate(
            TableName=self._table,
            KeyConditionExpression="#pk = :artist AND begins_with(#sk, :prefix)",
            ProjectionExpression="#sk, content_hash",
            ExpressionAttributeNames={"#pk": PARTITION_KEY, "#sk": SORT_KEY},
            ExpressionAttributeValues={":artist": {"S": artist_id}, ":prefix": {"S": f"{self._market}#"}},
            ConsistentRead=True,
            ReturnConsumedCapacity="TOTAL",
        )
        for page in pages:
            self.stats.add(read_requests=1, consumed_read_capacity=_capacity(page))
            for item in page.get("Items", []):
                hashes[item[SORT_KEY]["S"]] = item.get("content_hash", {}).get("S")
        return hashes

    def _delete_absent_artists(self, present: set[str]) -> None:
        # The GSI is eventually consistent: an item written a split second ago may be missing here. The items
        # this sweep looks for were written by earlier loads, so in practice it sees them; the next load
        # catches any it missed.
        pages = self._client.get_paginator("query").paginate(
            TableName=self._table,
            IndexName=GSI_NAME,
            KeyConditionExpression="#country = :market",
            ProjectionExpression="#pk, #sk",
            ExpressionAttributeNames={"#country": "country", "#pk": PARTITION_KEY, "#sk": SORT_KEY},
            ExpressionAttributeValues={":market": {"S": self._market}},
            ReturnConsumedCapacity="TOTAL",
        )
        deleted = 0
        for page in pages:
            self.stats.add(read_requests=1, consumed_read_capacity=_capacity(page))
            for item in page.get("Items", []):
                artist_id = item[PARTITION_KEY]["S"]
                if artist_id not in present:
                    self._writer.delete(artist_id, item[SORT_KEY]["S"])
                    deleted += 1
        if deleted:
            self._log(f"deleting {deleted} item(s) of artists no longer in the artist list for {self._market}")
        self.stats.add(items_deleted=deleted, stale_artist_items_deleted=deleted)
