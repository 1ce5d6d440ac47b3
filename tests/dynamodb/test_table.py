"""The table's schema: created on demand with its GSI, and a table of another shape refused naming both."""

from __future__ import annotations

import pytest

from toptracks_dagster.dynamodb.table import GSI_NAME, TableSchemaMismatch, ensure_table


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
