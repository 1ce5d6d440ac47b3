"""Checks on `top_tracks`, per market: the table's items equal the current raw partition's tracks.

Two costs, two places:
- In every load's step (`TABLE_CHECK_SPECS`): every artist the load wrote, re-read or deleted, plus a rotating
  sample of TOPTRACKS_CHECK_SAMPLE_SIZE other artists, each read back with one consistent Query and compared
  item by item (keys, rank, popularity and the whole track JSON). Cost: changed + sample Queries per market.
- `top_tracks_audit`, its own check (job `top_tracks_audit_job`, weekly schedule `weekly_audit`, or the Checks
  tab): the whole market, one consistent Query per artist plus one sweep of the market's GSI, every item found
  that way confirmed on the base table. Cost: artists + (items / ~4,000 per GSI page) reads per market.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import itertools
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Iterator

from botocore.exceptions import BotoCoreError, ClientError
from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    Output,
    asset_check,
)

from toptracks_dagster.check_results import CheckOutcome, check_spec
from toptracks_dagster.dynamodb.items import (
    deserialize_item,
    gsi_popularity,
    valid_track_id,
)
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import (
    GSI_NAME,
    PARTITION_KEY,
    PIPELINE_ATTRIBUTES,
    SORT_KEY,
    sort_key,
)
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage
from toptracks_dagster.spotify.raw import (
    RawPartition,
    RawPartitionIncomplete,
    raw_partition_key,
)

SAMPLE_SIZE = 10  # offending keys shown in a result's metadata; the counts always cover all of them


class _Unavailable(Exception):
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


def plain(value: Any) -> Any:
    """DynamoDB values back to JSON values: Decimal -> int or float, sets -> sorted lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    return value


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
def _open_raw(raw_storage: RawStorage, market: str) -> RawPartition:
    try:
        return RawPartition.open(raw_storage, market)
    except (RawObjectMissing, RawPartitionIncomplete) as error:
        raise _Unavailable(str(error)) from None


def query_artist_items(client, table: str, market: str, artist_id: str, keys_only: bool = False) -> dict[str, dict]:
    """'<market>#<track id>' -> item (deserialized) of one artist in one market: a consistent, paged Query."""
    found: dict[str, dict] = {}
    kwargs = {
        "TableName": table,
        "KeyConditionExpression": "#pk = :artist AND begins_with(#sk, :prefix)",
        "ExpressionAttributeNames": {"#pk": PARTITION_KEY, "#sk": SORT_KEY},
        "ExpressionAttributeValues": {":artist": {"S": artist_id}, ":prefix": {"S": f"{market}#"}},
        "ConsistentRead": True,
    }
    if keys_only:
        kwargs.update(
            ProjectionExpression="#sk, #rank, #pop",
            ExpressionAttributeNames={**kwargs["ExpressionAttributeNames"], "#rank": "rank", "#pop": "popularity"},
        )
    while True:
        page = client.query(**kwargs)
        for raw_item in page.get("Items", []):
            item = deserialize_item(raw_item)
            found[item[SORT_KEY]] = item
        if "LastEvaluatedKey" not in page:
            return found
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _query_artist(client, table: str, market: str, artist_id: str) -> dict[str, tuple[int | None, int | None]]:
    """'<market>#<track id>' -> (rank, popularity) of one artist's items in the market, strongly consistent."""
    return {
        key: (plain(item.get("rank")), plain(item.get("popularity")))
        for key, item in query_artist_items(client, table, market, artist_id, keys_only=True).items()
    }


def _market_keys_from_gsi(client, table: str, market: str) -> Iterator[tuple[str, str]]:
    kwargs = {
        "TableName": table,
        "IndexName": GSI_NAME,
        "KeyConditionExpression": "#country = :market",
        "ProjectionExpression": "#pk, #sk",
        "ExpressionAttributeNames": {"#country": "country", "#pk": PARTITION_KEY, "#sk": SORT_KEY},
        "ExpressionAttributeValues": {":market": {"S": market}},
    }
    while True:
        page = client.query(**kwargs)
        for item in page.get("Items", []):
            yield item[PARTITION_KEY]["S"], item[SORT_KEY]["S"]
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _get_items(client, table: str, keys: list[tuple[str, str]], keys_only: bool = False) -> dict[tuple[str, str], dict]:
    """Consistent BatchGetItem of `keys` (any number), UnprocessedKeys resent with backoff."""
    found: dict[tuple[str, str], dict] = {}
    for start in range(0, len(keys), 100):  # BatchGetItem's limit
        request: dict = {
            "Keys": [{PARTITION_KEY: {"S": a}, SORT_KEY: {"S": s}} for a, s in keys[start : start + 100]],
            "ConsistentRead": True,
        }
        if keys_only:
            request.update(
                {
                    "ProjectionExpression": "#pk, #sk",
                    "ExpressionAttributeNames": {"#pk": PARTITION_KEY, "#sk": SORT_KEY},
                }
            )
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
            raise _Unavailable(f"DynamoDB left {sum(len(r['Keys']) for r in pending.values())} key(s) unprocessed")
    return found


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# ------------------------------------------------------------------------------------------ the diff
@dataclass
class _Sample:
    count: int = 0
    first: list = field(default_factory=list)

    def add(self, entry: Any) -> None:
        self.count += 1
        if len(self.first) < SAMPLE_SIZE:
            self.first.append(entry)


@dataclass
class MarketDiff:
    market: str
    artists: int = 0
    raw_tracks: int = 0
    table_items: int = 0
    missing: _Sample = field(default_factory=_Sample)  # in the raw data, not in the table
    changed: _Sample = field(default_factory=_Sample)  # in both, with another rank or popularity
    stale_tracks: _Sample = field(default_factory=_Sample)  # artist in the raw data, track not in its list
    stale_artists: _Sample = field(default_factory=_Sample)  # items of artists absent from the raw data
    stale_artist_ids: set = field(default_factory=set)


def diff_market(dynamodb: DynamoDBResource, raw: RawPartition) -> MarketDiff:
    client = dynamodb.get_client()
    table, market = dynamodb.table_name, raw.market
    diff = MarketDiff(market)
    present: set[str] = set()
    workers = max(1, dynamodb.write_concurrency)
    with ThreadPoolExecutor(workers, thread_name_prefix="check-query") as pool:
        # Outcomes stream in chunks (memory holds artist ids, never the tracks); queries run in parallel.
        for chunk in _chunks(raw.outcomes(), workers * 4):
            # Like the load, only an artist's first outcome counts (raw_top_tracks_complete flags repeats).
            chunk = [o for o in chunk if o.artist_id not in present]
            present.update(o.artist_id for o in chunk)
            actual_by_artist = pool.map(lambda o: _query_artist(client, table, market, o.artist_id), chunk)
            for outcome, actual in zip(chunk, actual_by_artist, strict=True):
                diff.artists += 1
                expected = {
                    key: (rank, stored_popularity(track))
                    for key, (rank, track) in expected_items(market, outcome).items()
                }
                diff.raw_tracks += len(expected)
                diff.table_items += len(actual)
                for key, (rank, popularity) in expected.items():
                    if key not in actual:
                        diff.missing.add({"artist_id": outcome.artist_id, SORT_KEY: key})
                    elif actual[key] != (rank, popularity):
                        diff.changed.add(
                            {
                                "artist_id": outcome.artist_id,
                                SORT_KEY: key,
                                "raw": {"rank": rank, "popularity": popularity},
                                "table": {"rank": actual[key][0], "popularity": actual[key][1]},
                            }
                        )
                for key in actual.keys() - expected.keys():
                    diff.stale_tracks.add({"artist_id": outcome.artist_id, SORT_KEY: key, "raw_status": outcome.status})
    # Artists gone from the raw data: found through the market's GSI (every item carries a numeric popularity,
    # so every item is in it), then confirmed on the base table, since the GSI may still show deleted items.
    candidates = [key for key in _market_keys_from_gsi(client, table, market) if key[0] not in present]
    for key in sorted(_get_items(client, table, candidates, keys_only=True)):
        diff.table_items += 1
        diff.stale_artist_ids.add(key[0])
        diff.stale_artists.add({"artist_id": key[0], SORT_KEY: key[1]})
    return diff


def _diff_or_error(
    dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str
) -> tuple[MarketDiff | None, str | None]:
    try:
        return diff_market(dynamodb, _open_raw(raw_storage, market)), None
    except _Unavailable as error:
        return None, str(error)
    except (ClientError, BotoCoreError) as error:
        # The message names the operation and the table, never credentials.
        return None, f"reading table {dynamodb.table_name} at {dynamodb.describe_endpoint()} failed: {error}"


def _table_metadata(dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str) -> dict:
    return {
        "market": market,
        "table": dynamodb.table_name,
        "endpoint": dynamodb.describe_endpoint(),
        "raw_object": MetadataValue.path(raw_storage.uri(raw_partition_key(market))),
    }


# ------------------------------------------------------------------------------------------ per-load checks
MATCH_RAW = "top_tracks_match_raw"
ROUND_TRIP = "top_tracks_round_trip"
AUDIT = "top_tracks_audit"


def _spec(name: str, description: str):
    return check_spec("top_tracks", name, description, country_partitions)


TABLE_CHECK_SPECS = [
    _spec(
        MATCH_RAW,
        (
            "ERROR: every artist this load wrote, re-read or deleted, plus a rotating sample of "
            "TOPTRACKS_CHECK_SAMPLE_SIZE (20) other artists, has exactly the raw partition's tracks in the table "
            "(keys, rank, popularity; nothing missing, nothing extra; removed artists have no items). Cost: one "
            "consistent Query per verified artist."
        ),
    ),
    _spec(
        ROUND_TRIP,
        (
            "ERROR: every item read by the check above equals the raw track JSON, numbers normalised from Decimal "
            "and the pipeline's own attributes set aside."
        ),
    ),
]


def rotating_sample(artist_ids: Iterable[str], exclude: set[str], size: int, seed: str) -> list[str]:
    """`size` artists not in `exclude`, chosen by a hash of (seed, id): another run id, another sample, so that
    over many runs every artist is read back. Flat memory: a heap of `size`."""
    import hashlib
    import heapq

    def rank(artist_id: str) -> str:
        return hashlib.sha256(f"{seed}|{artist_id}".encode()).hexdigest()

    return [a for _, a in heapq.nsmallest(size, ((rank(a), a) for a in artist_ids if a not in exclude))]


@dataclass
class Verification:
    market: str
    artists: int = 0
    items_read: int = 0
    read_requests: int = 0
    missing: _Sample = field(default_factory=_Sample)
    changed: _Sample = field(default_factory=_Sample)
    extra: _Sample = field(default_factory=_Sample)
    mismatched: _Sample = field(default_factory=_Sample)


def verify_artists(
    client, table: str, raw: RawPartition, artists: set[str], concurrency: int = 8, had_no_items: set[str] | None = None
) -> Verification:
    """Read back `artists` and compare with the raw partition; an artist absent from the raw data must have no
    items. Streams the raw partition (memory holds at most a few batches of outcomes, never the market).

    Artists the load knew had no items before it (`had_no_items`: new to the market) are read back by key,
    100 items per consistent BatchGetItem: nothing else writes their items, so only what the load wrote can be
    there. Every other artist gets one consistent Query, which also finds items that should not be there.
    """
    market = raw.market
    result = Verification(market)
    had_no_items = had_no_items or set()
    lock = threading.Lock()

    def compare(artist_id: str, outcome, actual: dict[str, dict]) -> None:
        if outcome is not None and outcome.status not in (200, 404):
            return  # an error outcome keeps the previous list: nothing to compare with
        expected = expected_items(market, outcome) if outcome is not None else {}
        with lock:
            result.artists += 1
            result.items_read += len(actual)
            _compare_items(result, market, artist_id, expected, actual)
            for key in actual.keys() - expected.keys():
                result.extra.add(
                    {
                        "artist_id": artist_id,
                        SORT_KEY: key,
                        "raw_status": outcome.status if outcome is not None else "not in the raw data",
                    }
                )

    def by_query(artist_id: str, outcome) -> None:
        actual = query_artist_items(client, table, market, artist_id)
        with lock:
            result.read_requests += 1
        compare(artist_id, outcome, actual)

    def by_keys(batch: list) -> None:
        keys = [(o.artist_id, key) for o in batch for key in expected_items(market, o)]
        found = _get_items(client, table, keys)
        with lock:
            result.read_requests += (len(keys) + 99) // 100
        for outcome in batch:
            actual = {sk: item for (artist, sk), item in found.items() if artist == outcome.artist_id}
            compare(outcome.artist_id, outcome, actual)

    slots = threading.BoundedSemaphore(max(1, concurrency) * 2)
    futures = []
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="verify") as pool:

        def submit(function, *args) -> None:
            slots.acquire()
            future = pool.submit(function, *args)
            future.add_done_callback(lambda _: slots.release())
            futures.append(future)

        batch: list = []
        batch_keys = 0
        seen: set[str] = set()
        for outcome in raw.outcomes():
            if outcome.artist_id not in artists:
                continue
            seen.add(outcome.artist_id)
            if outcome.artist_id in had_no_items and outcome.status in (200, 404):
                batch.append(outcome)
                batch_keys += len(outcome.tracks or [])
                if batch_keys >= 100:
                    submit(by_keys, batch)
                    batch, batch_keys = [], 0
            else:
                submit(by_query, outcome.artist_id, outcome)
        if batch:
            submit(by_keys, batch)
        for artist_id in sorted(artists - seen):  # removed artists: must have no items left
            submit(by_query, artist_id, None)
        for future in futures:
            future.result()
    return result


def _compare_items(result: Verification, market: str, artist_id: str, expected: dict, actual: dict) -> None:
    for key, (rank, track) in expected.items():
        item = actual.get(key)
        if item is None:
            result.missing.add({"artist_id": artist_id, SORT_KEY: key})
            continue
        if (plain(item.get("rank")), plain(item.get("popularity"))) != (rank, stored_popularity(track)):
            result.changed.add(
                {
                    "artist_id": artist_id,
                    SORT_KEY: key,
                    "raw": {"rank": rank, "popularity": stored_popularity(track)},
                    "table": {"rank": plain(item.get("rank")), "popularity": plain(item.get("popularity"))},
                }
            )
        expected_fields, actual_fields = track_fields(track), item_fields(item)
        differing = sorted(
            n
            for n in expected_fields.keys() | actual_fields.keys()
            if n not in expected_fields or n not in actual_fields or not same(expected_fields[n], actual_fields[n])
        )
        if item.get("country") != market:
            differing.append("country")
        if differing:
            result.mismatched.add({"artist_id": artist_id, SORT_KEY: key, "differing_attributes": differing[:20]})


def evaluate_table_checks(verification: Verification | None, error: str | None, base: dict) -> list[CheckOutcome]:
    if verification is None:
        return [
            CheckOutcome.cannot_evaluate(MATCH_RAW, error or "?", metadata=base),
            CheckOutcome.cannot_evaluate(ROUND_TRIP, error or "?", metadata=base),
        ]
    v, market = verification, verification.market
    off = v.missing.count + v.changed.count + v.extra.count
    common = {**base, "verified_artists": v.artists, "items_read": v.items_read, "read_requests": v.read_requests}
    return [
        CheckOutcome(
            MATCH_RAW,
            off == 0,
            AssetCheckSeverity.ERROR,
            None
            if off == 0
            else (
                f"the table's items for {market} differ from the raw partition for the verified artists: "
                f"{v.missing.count} missing, {v.changed.count} with another rank or popularity, {v.extra.count} extra. "
                f"Re-materialize `top_tracks` for {market}; run `top_tracks_audit` to see the whole market."
            ),
            {
                **common,
                "missing_items": v.missing.count,
                "missing_item_sample": MetadataValue.json(v.missing.first),
                "changed_items": v.changed.count,
                "changed_item_sample": MetadataValue.json(v.changed.first),
                "extra_items": v.extra.count,
                "extra_item_sample": MetadataValue.json(v.extra.first),
            },
        ),
        CheckOutcome(
            ROUND_TRIP,
            v.mismatched.count == 0,
            AssetCheckSeverity.ERROR,
            None
            if not v.mismatched.count
            else (
                f"{v.mismatched.count} of {v.items_read} items read back in {market} do not round-trip to the raw "
                "track "
                "JSON; something other than the load wrote them, or the load stores tracks wrongly"
            ),
            {
                **common,
                "mismatched_items": v.mismatched.count,
                "mismatch_sample": MetadataValue.json(v.mismatched.first),
            },
        ),
    ]


def verify_market_after_load(
    dynamodb: DynamoDBResource,
    raw: RawPartition,
    touched: set[str],
    sample_size: int,
    seed: str,
    base: dict,
    had_no_items: set[str] | None = None,
) -> list[CheckOutcome]:
    artists = touched | set(rotating_sample(raw.requested_at, touched, sample_size, seed))
    try:
        verification = verify_artists(
            dynamodb.get_client(),
            dynamodb.table_name,
            raw,
            artists,
            dynamodb.write_concurrency,
            had_no_items=had_no_items,
        )
    except (ClientError, BotoCoreError) as error:
        return evaluate_table_checks(
            None, f"reading table {dynamodb.table_name} at {dynamodb.describe_endpoint()} failed: {error}", base
        )
    return evaluate_table_checks(verification, None, base)


# ------------------------------------------------------------------------------------------ the audit
def _audit(dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str) -> AssetCheckResult | AssetCheckEvaluation:
    metadata = _table_metadata(dynamodb, raw_storage, market)
    diff, error = _diff_or_error(dynamodb, raw_storage, market)
    if diff is None:
        return CheckOutcome.cannot_evaluate(AUDIT, error, metadata=metadata)
    extra = diff.stale_tracks.count + diff.stale_artists.count
    passed = not (diff.missing.count or diff.changed.count or extra)
    return CheckOutcome(
        AUDIT,
        passed,
        AssetCheckSeverity.ERROR,
        None
        if passed
        else (
            f"the table's items for {market} differ from the raw partition: {diff.missing.count} missing, "
            f"{diff.changed.count} with another rank or popularity, {diff.stale_tracks.count} stale tracks, "
            f"{diff.stale_artists.count} items of {len(diff.stale_artist_ids)} artist(s) no longer listed. "
            f"Re-materialize `top_tracks` for {market}."
        ),
        {
            **metadata,
            "artists": diff.artists,
            "raw_tracks": diff.raw_tracks,
            "table_items": diff.table_items,
            "missing_items": diff.missing.count,
            "missing_item_sample": MetadataValue.json(diff.missing.first),
            "changed_items": diff.changed.count,
            "changed_item_sample": MetadataValue.json(diff.changed.first),
            "stale_track_items": diff.stale_tracks.count,
            "stale_track_sample": MetadataValue.json(diff.stale_tracks.first),
            "stale_artist_items": diff.stale_artists.count,
            "stale_artists": len(diff.stale_artist_ids),
            "stale_artist_item_sample": MetadataValue.json(diff.stale_artists.first),
        },
    )


@asset_check(
    asset="top_tracks",
    name=AUDIT,
    partitions_def=country_partitions,
    description=(
        "ERROR: full reconciliation of a market: every item of the market in DynamoDB, with its rank and "
        "popularity, equals the raw partition; no item of a track that left a list or of an artist no longer "
        "listed. Not part of the refresh runs (they verify what they changed): run it from the Checks tab, with "
        "`top_tracks_audit_job`, or the `weekly_audit` schedule. Cost per market: one consistent Query per "
        "artist plus one sweep of the market's GSI."
    ),
)
def top_tracks_audit(context: AssetCheckExecutionContext, dynamodb: DynamoDBResource, raw_storage: RawStorage):
    markets = (
        context.partition_keys
        if context.has_partition_key_range or context.has_partition_key
        else country_partitions.get_partition_keys()
    )
    for market in markets:
        outcome = _audit(dynamodb, raw_storage, market)
        yield AssetCheckEvaluation(
            asset_key=context.check_specs[0].asset_key,
            check_name=AUDIT,
            passed=outcome.passed,
            severity=outcome.severity,
            description=outcome.description,
            metadata=outcome.metadata,
            partition=market,
        )
    yield Output(None, output_name=context.op_def.output_defs[0].name)
