"""Helpers for the DynamoDB tests: outcomes straight from the emulator's catalog, loads with fast backoff,
and a wire-level request recorder that counts what boto3 really sends (independently of LoadStats)."""

from __future__ import annotations

import json
import threading
from collections import Counter

import boto3
from botocore.config import Config

from tests.conftest import TEST_AWS_ENV
from toptracks_dagster.dynamodb.items import dynamo_compatible
from toptracks_dagster.dynamodb.loader import MarketLoader
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import PIPELINE_ATTRIBUTES
from toptracks_dagster.dynamodb.writer import LoadStats
from toptracks_dagster.spotify.client import TopTracksOutcome

T0 = "2026-03-01T00:00:00.000Z"
T1 = "2026-03-02T00:00:00.000Z"
T2 = "2026-03-03T00:00:00.000Z"
WRITE_OPERATIONS = {
    "BatchWriteItem",
    "PutItem",
    "DeleteItem",
    "UpdateItem",
    "TransactWriteItems",
    "BatchExecuteStatement",
    "ExecuteStatement",
    "ExecuteTransaction",
}
FAST = {"base_delay_s": 0.001, "max_delay_s": 0.01}


def outcomes(catalog, artist_ids: list[str], market: str, requested_at: str = T0) -> list[TopTracksOutcome]:
    """What the Spotify client would have written to the raw partition, straight from the catalog."""
    result = []
    for artist_id in artist_ids:
        tracks = catalog.top_tracks(artist_id, market)
        result.append(TopTracksOutcome(artist_id, market, requested_at, 404 if tracks is None else 200, tracks))
    return result


def load(client, table: str, market: str, outs, **kwargs) -> LoadStats:
    options = {**FAST, "concurrency": 4, **kwargs}
    return MarketLoader(client, table, market, **options).load(outs)


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
    """A client on which botocore never retries, so only the loader's own resends remain."""
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=TEST_AWS_ENV["AWS_REGION"],
        aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        # `total_max_attempts` counts the first try; the `max_attempts` key of this dict counts retries only.
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


class WireRecorder:
    """Every HTTP request a boto3 client sends (botocore's `before-send` event fires once per attempt)."""

    def __init__(self, client):
        self.operations: Counter = Counter()
        self.batches: list[list[tuple[str, str, str]]] = []  # per BatchWriteItem: (kind, artist_id, sort key)
        self._lock = threading.Lock()
        client.meta.events.register("before-send.dynamodb", self._record)

    def _record(self, request, **kwargs):
        operation = request.headers.get("X-Amz-Target", b"")
        operation = (operation.decode() if isinstance(operation, bytes) else operation).rsplit(".", 1)[-1]
        with self._lock:
            self.operations[operation] += 1
            if operation == "BatchWriteItem":
                body = json.loads(request.body)
                batch = []
                for requests in body["RequestItems"].values():
                    for entry in requests:
                        kind = "put" if "PutRequest" in entry else "delete"
                        key = entry["PutRequest"]["Item"] if kind == "put" else entry["DeleteRequest"]["Key"]
                        batch.append((kind, key["artist_id"]["S"], key["country_track_id"]["S"]))
                self.batches.append(batch)
        return None  # continue with the real request

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.operations.items() if op in WRITE_OPERATIONS)

    def written(self, kind: str) -> list[tuple[str, str]]:
        return [(artist, key) for batch in self.batches for k, artist, key in batch if k == kind]


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
        assert track_fields == {k: dynamo_compatible(v) for k, v in want["track"].items()}, key
