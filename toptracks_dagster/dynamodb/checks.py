"""Checks on `top_tracks`, per market: the table's items equal the current raw partition's tracks.

Two costs, two places:
- In every load's step (`TABLE_CHECK_SPECS`): every artist the load wrote, re-read or deleted, plus a rotating
  sample of TOPTRACKS_CHECK_SAMPLE_SIZE other artists, each read back with one consistent Query and compared
  item by item (keys, rank, popularity and the whole track JSON). Cost: changed + sample Queries per market.
- `top_tracks_audit_job` (dynamodb/audit.py; on demand or the `weekly_audit` schedule): the whole market, one
  consistent Query per artist plus one sweep of the market's GSI, every item found that way confirmed on the
  base table. Cost: artists + (items / ~4,000 per GSI page) reads per market.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from botocore.exceptions import BotoCoreError, ClientError
from dagster import (
    AssetCheckSeverity,
    MetadataValue,
)

from toptracks_dagster.check_results import CheckOutcome, Sample, check_spec
from toptracks_dagster.dynamodb.items import content_hash
from toptracks_dagster.dynamodb.reads import (
    expected_items,
    get_items,
    item_fields,
    plain,
    query_artist_items,
    same,
    stored_popularity,
    track_fields,
)
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import (
    SORT_KEY,
)
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.spotify.raw import (
    RawPartition,
)

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
            "consistent Query per verified artist; artists new to the market (no items before this load) are read "
            "by key instead, 100 items per consistent BatchGetItem."
        ),
    ),
    _spec(
        ROUND_TRIP,
        (
            "ERROR: every item read by the check above equals the raw track JSON, numbers normalised from Decimal "
            "and the pipeline's own attributes set aside. Items of new artists read by key are compared by the "
            "content hash of their raw track (keys, rank, popularity and hash projected), except a rotating sample "
            "of TOPTRACKS_CHECK_SAMPLE_SIZE new artists read and compared in full."
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
    missing: Sample = field(default_factory=Sample)
    changed: Sample = field(default_factory=Sample)
    extra: Sample = field(default_factory=Sample)
    mismatched: Sample = field(default_factory=Sample)


# What a read by key projects: enough to find a missing item, a wrong rank or popularity, and an item whose
# content is not what the load wrote (its content hash). Parsing whole items was most of a first load's check.
HASHED_READ = (SORT_KEY, "rank", "popularity", "country", "content_hash")


def verify_artists(
    client,
    table: str,
    raw: RawPartition,
    artists: set[str],
    concurrency: int = 8,
    had_no_items: set[str] | None = None,
    read_in_full: set[str] | None = None,
) -> Verification:
    """Read back `artists` and compare with the raw partition; an artist absent from the raw data must have no
    items. Streams the raw partition, parsing only these artists' lines (memory holds at most a few batches of
    outcomes, never the market).

    Artists the load knew had no items before it (`had_no_items`: new to the market) are read back by key,
    100 items per consistent BatchGetItem: nothing else writes their items, so only what the load wrote can be
    there. Those items are compared by content hash, except for the artists in `read_in_full`. Every other
    artist gets one consistent Query, which also finds items that should not be there, compared field by field.
    """
    market = raw.market
    result = Verification(market)
    had_no_items = had_no_items or set()
    read_in_full = read_in_full or set()
    lock = threading.Lock()

    def compare(artist_id: str, outcome, actual: dict[str, dict], expected=None, by_hash: bool = False) -> None:
        if outcome is not None and outcome.status not in (200, 404):
            return  # an error outcome keeps the previous list: nothing to compare with
        if expected is None:
            expected = expected_items(market, outcome) if outcome is not None else {}
        with lock:
            result.artists += 1
            result.items_read += len(actual)
            _compare_items(result, market, artist_id, expected, actual, by_hash)
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
        expected = {o.artist_id: expected_items(market, o) for o in batch}
        keys = [(artist_id, key) for artist_id, items in expected.items() for key in items]
        found = get_items(client, table, keys, attributes=HASHED_READ)
        with lock:
            result.read_requests += (len(keys) + 99) // 100
        for outcome in batch:
            actual = {sk: item for (artist, sk), item in found.items() if artist == outcome.artist_id}
            compare(outcome.artist_id, outcome, actual, expected[outcome.artist_id], by_hash=True)

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
        for outcome in raw.outcomes(only=artists):
            if outcome.artist_id not in artists:
                continue
            seen.add(outcome.artist_id)
            if (
                outcome.artist_id in had_no_items
                and outcome.artist_id not in read_in_full
                and outcome.status in (200, 404)
            ):
                keys = len(outcome.tracks or [])
                if batch and batch_keys + keys > 100:  # one BatchGetItem (100 keys at most) per batch
                    submit(by_keys, batch)
                    batch, batch_keys = [], 0
                batch.append(outcome)
                batch_keys += keys
            else:
                submit(by_query, outcome.artist_id, outcome)
        if batch:
            submit(by_keys, batch)
        for artist_id in sorted(artists - seen):  # removed artists: must have no items left
            submit(by_query, artist_id, None)
        for future in futures:
            future.result()
    return result


def _compare_rank_and_popularity(result: Verification, artist_id: str, key: str, rank: int, track, item) -> None:
    if (plain(item.get("rank")), plain(item.get("popularity"))) != (rank, stored_popularity(track)):
        result.changed.add(
            {
                "artist_id": artist_id,
                SORT_KEY: key,
                "raw": {"rank": rank, "popularity": stored_popularity(track)},
                "table": {"rank": plain(item.get("rank")), "popularity": plain(item.get("popularity"))},
            }
        )


def _compare_items(
    result: Verification, market: str, artist_id: str, expected: dict, actual: dict, by_hash: bool = False
) -> None:
    """Keys, rank and popularity always; the rest attribute by attribute, or (`by_hash`: items read with
    HASHED_READ) by the content hash the load computed from the same raw track."""
    for key, (rank, track) in expected.items():
        item = actual.get(key)
        if item is None:
            result.missing.add({"artist_id": artist_id, SORT_KEY: key})
            continue
        _compare_rank_and_popularity(result, artist_id, key, rank, track, item)
        if by_hash:
            differing = [] if item.get("content_hash") == content_hash(market, rank, track) else ["content_hash"]
        else:
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
                f"Re-materialize `top_tracks` for {market}; run `top_tracks_audit_job` to see the whole market."
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
            read_in_full=set(rotating_sample(had_no_items or (), set(), sample_size, seed)),
        )
    except (ClientError, BotoCoreError) as error:
        return evaluate_table_checks(
            None, f"reading table {dynamodb.table_name} at {dynamodb.describe_endpoint()} failed: {error}", base
        )
    return evaluate_table_checks(verification, None, base)
