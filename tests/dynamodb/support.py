"""Helpers for the DynamoDB tests: outcomes from the emulator's catalog, written as real raw partitions and
loaded, and a wire-level recorder that counts what boto3 really sends."""

from __future__ import annotations

import tempfile
import threading
from collections import Counter

import boto3
from botocore.config import Config

from tests.conftest import TEST_AWS_ENV
from toptracks_dagster.dynamodb.load import MarketLoad, MarketLoader, storable
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import PIPELINE_ATTRIBUTES
from toptracks_dagster.raw_storage.resources import LocalRawStorage
from toptracks_dagster.spotify.client import TopTracksOutcome
from toptracks_dagster.spotify.raw import PartitionMerge, RawPartition, raw_partition_key

T0 = "2026-03-01T00:00:00.000Z"
T1 = "2026-03-02T00:00:00.000Z"
T2 = "2026-03-03T00:00:00.000Z"
WRITE_OPERATIONS = {"BatchWriteItem", "PutItem", "DeleteItem", "UpdateItem", "TransactWriteItems"}


def outcomes(catalog, artist_ids: list[str], market: str, requested_at: str = T0) -> list[TopTracksOutcome]:
    """What the Spotify client would have fetched, straight from the catalog."""
    result = []
    for artist_id in artist_ids:
        tracks = catalog.top_tracks(artist_id, market)
        result.append(TopTracksOutcome(artist_id, market, requested_at, 404 if tracks is None else 200, tracks))
    return result


def raw_partition(outs: list[TopTracksOutcome], market: str = "US", directory: str | None = None) -> RawPartition:
    """`outs` written as a real, published raw partition (through the merge the raw asset uses), opened."""
    storage = LocalRawStorage(base_dir=directory or tempfile.mkdtemp(prefix="raw-"))
    ordered = sorted(outs, key=lambda o: o.artist_id)
    with storage.write_aside(raw_partition_key(market)) as (stream, pending):
        merge = PartitionMerge(stream, market, [o.artist_id for o in ordered], (), {}, planned=len(ordered))
        for outcome in ordered:
            merge.push(outcome)
        merge.finish()
    pending.publish()
    return RawPartition.open(storage, market)


def load(client, table: str, market: str, outs, artists: set[str] | None = None, **options) -> MarketLoad:
    """Load `outs` as one market's raw partition; `artists` None: a full reconcile."""
    raw = raw_partition(list(outs), market)
    loader = MarketLoader(client, table, market, concurrency=options.pop("concurrency", 4), log=lambda m: None)
    return loader.load(raw, artists, options.pop("max_delete_share", 1.0), options.pop("delete_allowed", False))


def resource_client(endpoint: str, max_attempts: int = 3):
    """A client built the way the pipeline builds it (DynamoDBResource), pointed at `endpoint`."""
    return DynamoDBResource(
        endpoint_url=endpoint,
        region_name=TEST_AWS_ENV["AWS_REGION"],
        max_attempts=max_attempts,
        aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        write_concurrency=4,
    ).get_client()


def client_without_sdk_retries(endpoint: str):
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=TEST_AWS_ENV["AWS_REGION"],
        aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


class WireRecorder:
    """Every HTTP request a boto3 client sends (botocore's `before-send` fires once per attempt)."""

    def __init__(self, client):
        self.operations: Counter = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("before-send.dynamodb", self._record)

    def _record(self, request, **kwargs):
        operation = request.headers.get("X-Amz-Target", b"")
        operation = (operation.decode() if isinstance(operation, bytes) else operation).rsplit(".", 1)[-1]
        with self._lock:
            self.operations[operation] += 1
        return None

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.operations.items() if op in WRITE_OPERATIONS)


def expected_items(catalog, artist_ids: list[str], market: str) -> dict[tuple[str, str], dict]:
    """(artist_id, '<market>#<track id>') -> {'rank', 'track'} for the catalog's current lists."""
    expected = {}
    for artist_id in artist_ids:
        for rank, track in enumerate(catalog.top_tracks(artist_id, market) or [], start=1):
            expected.setdefault((artist_id, f"{market}#{track['id']}"), {"rank": rank, "track": track})
    return expected


def assert_market_exact(items: dict, catalog, artist_ids: list[str], market: str) -> None:
    """The table's items for `market` are exactly the catalog's lists: keys, ranks and every track field."""
    in_market = {key: item for key, item in items.items() if key[1].startswith(f"{market}#")}
    expected = expected_items(catalog, artist_ids, market)
    assert set(in_market) == set(expected), (
        f"missing {sorted(set(expected) - set(in_market))[:3]}, stale {sorted(set(in_market) - set(expected))[:3]}"
    )
    for key, item in in_market.items():
        want = expected[key]
        assert item["rank"] == want["rank"], key
        assert item["country"] == market
        track_fields = {k: v for k, v in item.items() if k not in PIPELINE_ATTRIBUTES}
        assert track_fields == {k: storable(v) for k, v in want["track"].items()}, key
