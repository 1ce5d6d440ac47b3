"""Checks on `top_tracks`, per country partition: the table's items for the market are exactly the latest raw
partition's tracks. They read the table through the `dynamodb` resource and the raw data through `raw_storage`.

Reads are strongly consistent where it matters: each artist's items come from a consistent Query on the base
table (the GSI lags writes, and these checks run seconds after the load). The GSI is only swept for artists
that are not in the raw data, and every item found that way is confirmed with a consistent read.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import itertools
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Iterator

from botocore.exceptions import BotoCoreError, ClientError
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from toptracks_dagster import config
from toptracks_dagster.dynamodb.assets import top_tracks
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import (
    GSI_NAME,
    PARTITION_KEY,
    PIPELINE_ATTRIBUTES,
    SORT_KEY,
    deserialize_item,
    gsi_popularity,
    sort_key,
    valid_track_id,
)
from toptracks_dagster.partitioned_checks import partition_results
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage
from toptracks_dagster.spotify.raw import RawPartition, RawPartitionIncomplete, raw_top_tracks_key

SAMPLE_SIZE = 10  # offending keys shown in a result's metadata; the counts always cover all of them
DEFAULT_ROUND_TRIP_SAMPLE = 20  # TOPTRACKS_CHECK_SAMPLE_SIZE


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
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
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
        return RawPartition(raw_storage, market)
    except (RawObjectMissing, RawPartitionIncomplete) as error:
        raise _Unavailable(str(error)) from None


def _query_artist(client, table: str, market: str, artist_id: str) -> dict[str, tuple[int | None, int | None]]:
    """'<market>#<track id>' -> (rank, popularity) of one artist's items in the market, strongly consistent."""
    found: dict[str, tuple[int | None, int | None]] = {}
    kwargs = {
        "TableName": table,
        "KeyConditionExpression": "#pk = :artist AND begins_with(#sk, :prefix)",
        "ProjectionExpression": "#sk, #rank, #pop",
        "ExpressionAttributeNames": {"#pk": PARTITION_KEY, "#sk": SORT_KEY, "#rank": "rank", "#pop": "popularity"},
        "ExpressionAttributeValues": {":artist": {"S": artist_id}, ":prefix": {"S": f"{market}#"}},
        "ConsistentRead": True,
    }
    while True:
        page = client.query(**kwargs)
        for raw_item in page.get("Items", []):
            item = plain(deserialize_item(raw_item))
            found[item[SORT_KEY]] = (item.get("rank"), item.get("popularity"))
        if "LastEvaluatedKey" not in page:
            return found
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


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
            "Keys": [{PARTITION_KEY: {"S": a}, SORT_KEY: {"S": s}} for a, s in keys[start:start + 100]],
            "ConsistentRead": True,
        }
        if keys_only:
            request.update({"ProjectionExpression": "#pk, #sk", "ExpressionAttributeNames": {"#pk": PARTITION_KEY, "#sk": SORT_KEY}})
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
            for outcome, actual in zip(chunk, actual_by_artist):
                diff.artists += 1
                expected = {key: (rank, stored_popularity(track)) for key, (rank, track) in expected_items(market, outcome).items()}
                diff.raw_tracks += len(expected)
                diff.table_items += len(actual)
                for key, (rank, popularity) in expected.items():
                    if key not in actual:
                        diff.missing.add({"artist_id": outcome.artist_id, SORT_KEY: key})
                    elif actual[key] != (rank, popularity):
                        diff.changed.add({
                            "artist_id": outcome.artist_id, SORT_KEY: key,
                            "raw": {"rank": rank, "popularity": popularity},
                            "table": {"rank": actual[key][0], "popularity": actual[key][1]},
                        })
                for key in actual.keys() - expected.keys():
                    diff.stale_tracks.add({"artist_id": outcome.artist_id, SORT_KEY: key,
                                           "raw_status": outcome.status})
    # Artists gone from the raw data: found through the market's GSI (every item carries a numeric popularity,
    # so every item is in it), then confirmed on the base table, since the GSI may still show deleted items.
    candidates = [key for key in _market_keys_from_gsi(client, table, market) if key[0] not in present]
    for key in sorted(_get_items(client, table, candidates, keys_only=True)):
        diff.table_items += 1
        diff.stale_artist_ids.add(key[0])
        diff.stale_artists.add({"artist_id": key[0], SORT_KEY: key[1]})
    return diff


def _diff_or_error(dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str) -> tuple[MarketDiff | None, str | None]:
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
        "raw_object": MetadataValue.path(raw_storage.uri(raw_top_tracks_key(market))),
    }


def _cannot_evaluate(error: str, metadata: dict) -> AssetCheckResult:
    return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR,
                            description=f"cannot be evaluated: {error}", metadata={**metadata, "error": error})


# ------------------------------------------------------------------------------------------ checks
def _reconcile(dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str) -> AssetCheckResult:
    metadata = _table_metadata(dynamodb, raw_storage, market)
    diff, error = _diff_or_error(dynamodb, raw_storage, market)
    if diff is None:
        return _cannot_evaluate(error, metadata)
    extra = diff.stale_tracks.count + diff.stale_artists.count
    passed = not (diff.missing.count or diff.changed.count or extra)
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=None if passed else (
            f"the table's items for {market} differ from the raw partition: {diff.missing.count} missing, "
            f"{diff.changed.count} with another rank or popularity, {extra} extra. Re-materialize `top_tracks` "
            f"for {market}."
        ),
        metadata={
            **metadata,
            "artists": diff.artists,
            "raw_tracks": diff.raw_tracks,
            "table_items": diff.table_items,
            "missing_items": diff.missing.count,
            "missing_item_sample": MetadataValue.json(diff.missing.first),
            "changed_items": diff.changed.count,
            "changed_item_sample": MetadataValue.json(diff.changed.first),
            "extra_items": extra,
            "extra_item_sample": MetadataValue.json((diff.stale_tracks.first + diff.stale_artists.first)[:SAMPLE_SIZE]),
        },
    )


def _no_stale(dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str) -> AssetCheckResult:
    metadata = _table_metadata(dynamodb, raw_storage, market)
    diff, error = _diff_or_error(dynamodb, raw_storage, market)
    if diff is None:
        return _cannot_evaluate(error, metadata)
    stale = diff.stale_tracks.count + diff.stale_artists.count
    return AssetCheckResult(
        passed=stale == 0,
        severity=AssetCheckSeverity.ERROR,
        description=None if stale == 0 else (
            f"{stale} item(s) in {market} are not in the latest raw data: {diff.stale_tracks.count} for tracks "
            f"that left their artist's top list (or of 404 artists), {diff.stale_artists.count} of "
            f"{len(diff.stale_artist_ids)} artist(s) no longer in the artist list. The next load of {market} "
            "deletes them; if it just ran, the deletion failed."
        ),
        metadata={
            **metadata,
            "stale_items": stale,
            "stale_track_items": diff.stale_tracks.count,
            "stale_track_sample": MetadataValue.json(diff.stale_tracks.first),
            "stale_artist_items": diff.stale_artists.count,
            "stale_artists": len(diff.stale_artist_ids),
            "stale_artist_item_sample": MetadataValue.json(diff.stale_artists.first),
        },
    )


def _sample_tracks(raw: RawPartition, size: int) -> list[tuple[str, int, str, dict]]:
    """A reservoir sample of (artist_id, rank, key, track) over the loadable tracks, one pass, flat memory.
    Seeded by the partition's end time: the same raw data gives the same sample, a new fetch a new one."""
    rng = random.Random(f"{raw.market}|{raw.end.get('finished_at', '')}")
    sample: list[tuple[str, int, str, dict]] = []
    seen = 0
    for outcome in raw.outcomes():
        for key, (rank, track) in expected_items(raw.market, outcome).items():
            seen += 1
            if len(sample) < size:
                sample.append((outcome.artist_id, rank, key, track))
            else:
                slot = rng.randrange(seen)
                if slot < size:
                    sample[slot] = (outcome.artist_id, rank, key, track)
    return sample


def _round_trip(dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str) -> AssetCheckResult:
    metadata = _table_metadata(dynamodb, raw_storage, market)
    size = config.env_int("TOPTRACKS_CHECK_SAMPLE_SIZE", DEFAULT_ROUND_TRIP_SAMPLE)
    try:
        sample = _sample_tracks(_open_raw(raw_storage, market), size)
        items = _get_items(dynamodb.get_client(), dynamodb.table_name, [(a, key) for a, _, key, _ in sample])
    except _Unavailable as error:
        return _cannot_evaluate(str(error), metadata)
    except (ClientError, BotoCoreError) as error:
        return _cannot_evaluate(f"reading table {dynamodb.table_name} at {dynamodb.describe_endpoint()} failed: {error}", metadata)
    mismatches = _Sample()
    for artist_id, rank, key, track in sample:
        item = items.get((artist_id, key))
        if item is None:
            mismatches.add({"artist_id": artist_id, SORT_KEY: key, "problem": "no item"})
            continue
        expected, actual = track_fields(track), item_fields(item)
        differing = sorted(name for name in expected.keys() | actual.keys()
                           if name not in expected or name not in actual or not same(expected[name], actual[name]))
        if item.get("country") != market:
            differing.append("country")
        if plain(item.get("rank")) != rank:
            differing.append("rank")
        if differing:
            mismatches.add({"artist_id": artist_id, SORT_KEY: key, "differing_attributes": differing[:20]})
    passed = mismatches.count == 0
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=None if passed else (
            f"{mismatches.count} of {len(sample)} sampled items in {market} do not round-trip to the raw track "
            "JSON; something other than the load wrote them, or the load stores tracks wrongly"
        ),
        metadata={
            **metadata,
            "sampled_items": len(sample),
            "mismatched_items": mismatches.count,
            "mismatch_sample": MetadataValue.json(mismatches.first),
            "sampled_keys": MetadataValue.json([f"{a} {key}" for a, _, key, _ in sample[:SAMPLE_SIZE]]),
        },
    )


_PARTITIONED = dict(asset=top_tracks, partitions_def=country_partitions)


@asset_check(
    **_PARTITIONED,
    description=(
        "ERROR: reconciliation. The set of (artist, track) items of the market in DynamoDB, with their rank and "
        "popularity, equals the raw partition exactly: nothing missing, nothing changed, nothing extra."
    ),
)
def top_tracks_match_raw(context: AssetCheckExecutionContext, dynamodb: DynamoDBResource, raw_storage: RawStorage):
    yield from partition_results(context, lambda market: _reconcile(dynamodb, raw_storage, market))


@asset_check(
    **_PARTITIONED,
    description=(
        "ERROR: no stale item. Every item of the market belongs to an artist of the latest raw data and to a "
        "track of that artist's latest top list."
    ),
)
def top_tracks_no_stale_items(context: AssetCheckExecutionContext, dynamodb: DynamoDBResource, raw_storage: RawStorage):
    yield from partition_results(context, lambda market: _no_stale(dynamodb, raw_storage, market))


@asset_check(
    **_PARTITIONED,
    description=(
        "ERROR: a sample of items (TOPTRACKS_CHECK_SAMPLE_SIZE, default 20) read back from DynamoDB equals the raw "
        "track JSON, numbers normalised from Decimal and the pipeline's own attributes set aside."
    ),
)
def top_tracks_round_trip(context: AssetCheckExecutionContext, dynamodb: DynamoDBResource, raw_storage: RawStorage):
    yield from partition_results(context, lambda market: _round_trip(dynamodb, raw_storage, market))


top_tracks_checks = [top_tracks_match_raw, top_tracks_no_stale_items, top_tracks_round_trip]
