"""Item hygiene and table management: Decimal, empty sets, the 400 KB limit counted as DynamoDB counts it,
duplicates, popularity, and a table with another schema."""

from __future__ import annotations

import copy
import json
from decimal import Decimal

import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from tests.dynamodb.support import (
    T0,
    T1,
    WireRecorder,
    assert_market_exact,
    load,
    outcomes,
)
from tests.helpers import scan_table
from toptracks_dagster.dynamodb.items import (
    build_item,
    content_hash,
    item_attributes,
    item_json,
    item_size,
    serialize_item,
)
from toptracks_dagster.dynamodb.table import (
    GSI_NAME,
    MAX_ITEM_BYTES,
    ItemTooLarge,
    TableSchemaMismatch,
    ensure_table,
)
from toptracks_dagster.dynamodb.wire import batch_write_item
from toptracks_dagster.dynamodb.writer import BatchWriter, LoadStats
from toptracks_dagster.spotify.client import TopTracksOutcome


def a_track(catalog, artist_ids) -> tuple[str, dict]:
    artist_id = next(a for a in artist_ids if catalog.top_tracks(a, "US"))
    return artist_id, copy.deepcopy(catalog.top_tracks(artist_id, "US")[0])


def test_floats_become_decimals_and_empty_sets_disappear(ddb, table, catalog, artist_ids):
    artist_id, track = a_track(catalog, artist_ids)
    track.update(
        {
            "tempo": 120.5,
            "energy": 0.1,
            "audio": {"loudness": -5.25, "tags": set(), "nan": float("nan")},
            "genres": set(),
            "moods": {"calm"},
            "segments": [0.3, set(), 2],
        }
    )
    item = build_item(artist_id, "US", 1, track, T0)
    assert item["tempo"] == Decimal("120.5") and isinstance(item["tempo"], Decimal)
    assert item["energy"] == Decimal("0.1")  # str(0.1), not the binary expansion of the float
    assert item["audio"] == {"loudness": Decimal("-5.25"), "nan": None}
    assert "genres" not in item and item["moods"] == {"calm"}
    assert item["segments"] == [Decimal("0.3"), 2]

    load(ddb, table, "US", [TopTracksOutcome(artist_id, "US", T0, 200, [track])])
    raw = ddb.get_item(
        TableName=table, Key={"artist_id": {"S": artist_id}, "country_track_id": {"S": f"US#{track['id']}"}}
    )["Item"]
    assert raw["tempo"] == {"N": "120.5"} and raw["energy"] == {"N": "0.1"}
    assert raw["moods"] == {"SS": ["calm"]} and "genres" not in raw


@pytest.mark.parametrize("extra", [0, 1])
def test_item_size_is_counted_exactly_as_dynamodb_counts_it(ddb, table, catalog, artist_ids, extra):
    """An item of exactly 400 KB by our count is accepted by DynamoDB Local; one byte more is refused by both."""
    artist_id, track = a_track(catalog, artist_ids)
    track["lyrics"] = ""
    item = build_item(artist_id, "US", 1, track, T0)
    base = item_size(serialize_item(item))
    item["lyrics"] = "é" * ((MAX_ITEM_BYTES - base) // 2) + "x" * ((MAX_ITEM_BYTES - base) % 2 + extra)
    wire = {k: TypeSerializer().serialize(v) for k, v in item.items()}
    assert item_size(wire) == MAX_ITEM_BYTES + extra
    if extra:
        with pytest.raises(ItemTooLarge):
            serialize_item(item)
        with pytest.raises(ClientError, match="Item size has exceeded the maximum allowed size"):
            ddb.put_item(TableName=table, Item=wire)
    else:
        assert serialize_item(item) == wire
        ddb.put_item(TableName=table, Item=wire)  # DynamoDB agrees: exactly at the limit is fine


def test_oversized_item_fails_the_load_clearly_and_only_its_artist_waits(ddb, table, catalog, artist_ids):
    ids = [a for a in artist_ids if catalog.top_tracks(a, "US")][:6]
    load(ddb, table, "US", outcomes(catalog, ids, "US", T0))
    before = scan_table(ddb, table)
    for artist_id in ids:
        catalog.set_revision(artist_id, 1)
    outs = outcomes(catalog, ids, "US", T1)
    big = outs[2]
    big.tracks[3]["album"]["name"] = "x" * (MAX_ITEM_BYTES + 10)
    with pytest.raises(ItemTooLarge) as raised:
        load(ddb, table, "US", outs)
    message = str(raised.value)
    assert f"artist_id={big.artist_id}" in message and f"US#{big.tracks[3]['id']}" in message
    assert "400 KB" in message and "largest attributes: album" in message
    assert raised.value.size > MAX_ITEM_BYTES
    after = scan_table(ddb, table)
    # The oversized artist kept its previous list whole; every other artist was refreshed.
    assert {k: v for k, v in after.items() if k[0] == big.artist_id} == {
        k: v for k, v in before.items() if k[0] == big.artist_id
    }
    others = [a for a in ids if a != big.artist_id]
    assert_market_exact({k: v for k, v in after.items() if k[0] != big.artist_id}, catalog, others, "US")


def test_duplicate_track_in_one_list_is_one_item(ddb, table, catalog, artist_ids):
    artist_id, _ = a_track(catalog, artist_ids)
    tracks = catalog.top_tracks(artist_id, "US")
    listed = tracks[:3] + [copy.deepcopy(tracks[1])] + tracks[3:5]
    stats = load(ddb, table, "US", [TopTracksOutcome(artist_id, "US", T0, 200, listed)])
    items = scan_table(ddb, table)
    assert len(items) == 5 and stats.duplicate_tracks == 1
    assert items[(artist_id, f"US#{tracks[1]['id']}")]["rank"] == 2  # the first occurrence's rank
    assert sorted(item["rank"] for item in items.values()) == [1, 2, 3, 5, 6]


def test_a_batch_never_holds_two_requests_for_one_key(ddb, table):
    recorder = WireRecorder(ddb)
    writer = BatchWriter(ddb, table, LoadStats(), concurrency=1)
    for n in range(30):
        writer.delete("artist", f"US#{n % 20}")  # keys 0-9 twice, within what would be one batch
    writer.close()  # DynamoDB rejects a whole batch with a repeated key: close() would raise
    assert all(len(batch) == len({(a, k) for _, a, k in batch}) for batch in recorder.batches)
    assert sum(len(batch) for batch in recorder.batches) == 30


def test_missing_popularity_is_zero_flagged_and_still_swept(ddb, table, catalog, artist_ids):
    artist_id, track = a_track(catalog, artist_ids)
    del track["popularity"]
    stats = load(ddb, table, "US", [TopTracksOutcome(artist_id, "US", T0, 200, [track])])
    item = scan_table(ddb, table)[(artist_id, f"US#{track['id']}")]
    assert item["popularity"] == 0 and item["popularity_missing"] is True
    assert stats.tracks_without_popularity == 1
    # In the GSI, hence found by the sweep when the artist leaves the artist list.
    in_gsi = ddb.query(
        TableName=table,
        IndexName=GSI_NAME,
        KeyConditionExpression="country = :m",
        ExpressionAttributeValues={":m": {"S": "US"}},
    )["Items"]
    assert len(in_gsi) == 1
    other = next(a for a in artist_ids if a != artist_id)
    load(ddb, table, "US", outcomes(catalog, [other], "US", T1))
    assert all(key[0] == other for key in scan_table(ddb, table))


def test_content_hash_ignores_fetch_time_but_sees_rank_and_content():
    track = {"id": "a" * 22, "name": "Song", "popularity": 50}
    assert build_item("x", "US", 1, track, T0)["content_hash"] == build_item("x", "US", 1, track, T1)["content_hash"]
    assert content_hash("US", 1, track) != content_hash("US", 2, track)
    assert content_hash("US", 1, track) != content_hash("CA", 1, track)
    assert content_hash("US", 1, track) != content_hash("US", 1, {**track, "popularity": 51})


# ------------------------------------------------------------------------------------------ the table itself
def test_ensure_table_creates_on_demand_with_an_active_gsi(ddb, dynamodb_local_endpoint, table_name):
    assert ensure_table(ddb, table_name, dynamodb_local_endpoint) == "created"
    description = ddb.describe_table(TableName=table_name)["Table"]
    assert description["TableStatus"] == "ACTIVE"
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    (index,) = description["GlobalSecondaryIndexes"]
    assert index["IndexName"] == GSI_NAME and index["IndexStatus"] == "ACTIVE"
    assert index["Projection"]["ProjectionType"] == "INCLUDE"
    assert set(index["Projection"]["NonKeyAttributes"]) == {"id", "name", "rank", "artists", "fetched_at"}
    assert ensure_table(ddb, table_name, dynamodb_local_endpoint) == "exists"


def test_table_with_another_key_schema_is_refused_showing_both(ddb, dynamodb_local_endpoint, table_name):
    # A table keyed (artist_id, id): the same track in two markets would overwrite itself.
    ddb.create_table(
        TableName=table_name,
        KeySchema=[{"AttributeName": "artist_id", "KeyType": "HASH"}, {"AttributeName": "id", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "artist_id", "AttributeType": "S"},
            {"AttributeName": "id", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(TableSchemaMismatch) as raised:
        ensure_table(ddb, table_name, dynamodb_local_endpoint)
    message = str(raised.value)
    assert table_name in message and dynamodb_local_endpoint in message
    assert "[artist_id (HASH, S), id (RANGE, S)]" in message  # what the table has
    assert "[artist_id (HASH, S), country_track_id (RANGE, S)]" in message  # what the pipeline needs


def test_table_with_a_number_sort_key_is_refused(ddb, dynamodb_local_endpoint, table_name):
    ddb.create_table(
        TableName=table_name,
        KeySchema=[
            {"AttributeName": "artist_id", "KeyType": "HASH"},
            {"AttributeName": "country_track_id", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "artist_id", "AttributeType": "S"},
            {"AttributeName": "country_track_id", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(TableSchemaMismatch, match=r"country_track_id \(RANGE, N\).*country_track_id \(RANGE, S\)"):
        ensure_table(ddb, table_name, dynamodb_local_endpoint)


def test_table_without_the_gsi_is_refused(ddb, dynamodb_local_endpoint, table_name):
    ddb.create_table(
        TableName=table_name,
        KeySchema=[
            {"AttributeName": "artist_id", "KeyType": "HASH"},
            {"AttributeName": "country_track_id", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "artist_id", "AttributeType": "S"},
            {"AttributeName": "country_track_id", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(
        TableSchemaMismatch,
        match=rf"{GSI_NAME} with \[country \(HASH, S\), popularity \(RANGE, N\), "
        r"projection INCLUDE \(artists, fetched_at, id, name, rank\)\], but has \[no such index\]",
    ):
        ensure_table(ddb, table_name, dynamodb_local_endpoint)


def test_the_load_builds_the_same_wire_item_as_boto3_in_one_pass(catalog, artist_ids):
    """item_attributes (what a load sends) equals boto3's TypeSerializer applied to build_item, on awkward values."""
    artist_id, track = a_track(catalog, artist_ids)
    track.update(
        {
            "tempo": 120.5,
            "energy": 1e-7,
            "big": 10**30,
            "audio": {"loudness": -5.25, "nan": float("nan"), "inf": float("-inf"), "empty": "", "flag": False},
            "segments": [0.3, 2, None, True, {"deep": [1.5, "ü"]}],
            "name": 'Ünïcödé "quoted" \\ slash',
        }
    )
    track.pop("popularity")
    item = build_item(artist_id, "US", 3, track, T0)
    wire = {k: TypeSerializer().serialize(v) for k, v in item.items()}
    assert item_attributes(artist_id, "US", 3, track, T0, item["content_hash"]) == wire
    assert json.loads(item_json(artist_id, "US", 3, track, T0, item["content_hash"])) == wire
    assert wire["popularity_missing"] == {"BOOL": True} and wire["energy"] == {"N": "1E-7"}
    with pytest.raises(ValueError, match="38 digits"):
        item_attributes(artist_id, "US", 3, {**track, "big": 10**40}, T0, item["content_hash"])


def test_a_prebuilt_batch_body_round_trips_and_without_it_nothing_is_written(ddb, table, catalog, artist_ids):
    """BatchWriteItem with the body encoded by json.dumps stores exactly the items; the placeholder botocore
    serializes instead is refused by DynamoDB, so a skipped hook could never pass as a successful write."""
    ids = [a for a in artist_ids if catalog.top_tracks(a, "US")][:3]
    items = [
        item_attributes(a, "US", rank, t, T0, content_hash("US", rank, t))
        for a in ids
        for rank, t in enumerate(catalog.top_tracks(a, "US"), 1)
    ][:25]
    response = batch_write_item(ddb, {table: [{"PutRequest": {"Item": item}} for item in items]})
    assert not response.get("UnprocessedItems")
    stored = ddb.scan(TableName=table, ConsistentRead=True)["Items"]
    assert len(stored) == len(items)
    assert sorted(stored, key=lambda i: (i["artist_id"]["S"], i["country_track_id"]["S"])) == sorted(
        items, key=lambda i: (i["artist_id"]["S"], i["country_track_id"]["S"])
    )
    with pytest.raises(ClientError, match="ValidationException"):
        ddb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": {}}}]})


def test_items_parsed_by_json_equal_botocores_parse(ddb, table, catalog, artist_ids, dynamodb_local_endpoint):
    """A client with parse_items_with_json returns the very dicts botocore's own parser returns, for Query,
    GetItem, BatchGetItem and Scan, paging included; an answer with a binary value is left to botocore."""
    from tests.conftest import dynamodb_client
    from toptracks_dagster.dynamodb.wire import parse_items_with_json

    ids = [a for a in artist_ids if catalog.top_tracks(a, "US")][:3]
    outs = outcomes(catalog, ids, "US", T0)
    outs[0].tracks[0]["tempo"] = 120.5
    load(ddb, table, "US", outs)
    ddb.put_item(
        TableName=table,
        Item={
            "artist_id": {"S": "binary"},
            "country_track_id": {"S": "US#x"},
            "country": {"S": "US"},
            "popularity": {"N": "1"},
            "blob": {"B": b"\x00\x01"},
        },
    )
    fast = dynamodb_client(dynamodb_local_endpoint)
    parse_items_with_json(fast)
    key = {"artist_id": {"S": ids[0]}, "country_track_id": {"S": f"US#{outs[0].tracks[0]['id']}"}}
    calls = [
        (
            "query",
            {
                "TableName": table,
                "KeyConditionExpression": "artist_id = :a",
                "ExpressionAttributeValues": {":a": {"S": ids[0]}},
                "Limit": 3,
                "ConsistentRead": True,
            },
        ),
        ("get_item", {"TableName": table, "Key": key, "ConsistentRead": True}),
        ("batch_get_item", {"RequestItems": {table: {"Keys": [key], "ConsistentRead": True}}}),
        ("scan", {"TableName": table, "ConsistentRead": True}),
        ("get_item", {"TableName": table, "Key": {"artist_id": {"S": "binary"}, "country_track_id": {"S": "US#x"}}}),
    ]
    for operation, params in calls:
        mine, theirs = getattr(fast, operation)(**params), getattr(ddb, operation)(**params)
        mine.pop("ResponseMetadata"), theirs.pop("ResponseMetadata")
        assert mine == theirs, operation
        assert mine.get("Items") or mine.get("Item") or mine.get("Responses"), operation
    assert fast.get_item(**calls[-1][1])["Item"]["blob"] == {"B": b"\x00\x01"}  # bytes, as botocore decodes them


def test_consumed_capacity_is_asked_of_aws_only(ddb, table, catalog, artist_ids):
    """AWS endpoints (regional, FIPS, VPC, China) get ReturnConsumedCapacity=TOTAL; any other endpoint (DynamoDB
    Local here) gets NONE on every write and read of a load, and the capacity does not appear as if measured."""
    import boto3

    from toptracks_dagster.dynamodb.wire import consumed_capacity_mode

    def client_for(endpoint_url):
        return boto3.client(
            "dynamodb",
            region_name="us-east-1",
            endpoint_url=endpoint_url,
            aws_access_key_id="x",
            aws_secret_access_key="y",
        )

    for url in (
        None,
        "https://dynamodb-fips.us-east-1.amazonaws.com",
        "https://vpce-0abc-xyz.dynamodb.us-east-1.vpce.amazonaws.com",
        "https://dynamodb.cn-north-1.amazonaws.com.cn",
    ):
        assert consumed_capacity_mode(client_for(url)) == "TOTAL", url
    for url in ("http://127.0.0.1:8000", "http://localhost:4566", "http://amazonaws.com.example.org"):
        assert consumed_capacity_mode(client_for(url)) == "NONE", url

    asked: list[str] = []

    def record(request, **_):
        asked.append(json.loads(request.body).get("ReturnConsumedCapacity", "absent"))

    ddb.meta.events.register("before-send.dynamodb.BatchWriteItem", record)
    ddb.meta.events.register("before-send.dynamodb.Query", record)
    ids = [a for a in artist_ids if catalog.top_tracks(a, "US")][:3]
    load(ddb, table, "US", outcomes(catalog, ids, "US", T0))
    changed = outcomes(catalog, ids, "US", T0)
    changed[0].tracks = changed[0].tracks[1:]
    stats = load(ddb, table, "US", changed, previous_ledger=None)
    assert asked and set(asked) == {"NONE"}, asked
    assert stats.write_requests and stats.read_requests  # both kinds were sent, and none asked for capacity
