"""Faults injected between boto3 and DynamoDB Local (tests/dynamodb/fault_proxy.py): UnprocessedItems,
ProvisionedThroughputExceededException and dropped connections. Transient faults still end in the exact
table; permanent ones fail the load loudly, with the number of writes that were not applied."""

from __future__ import annotations

import random

import pytest

from tests.dynamodb.fault_proxy import FaultPlan, FaultProxy
from tests.dynamodb.support import (
    T0,
    T1,
    assert_market_exact,
    client_without_sdk_retries,
    expected_items,
    load,
    outcomes,
    resource_client,
)
from tests.dynamodb.test_loader import revise
from tests.helpers import scan_table
from toptracks_dagster.dynamodb.table import DynamoDBWriteIncomplete
from toptracks_dagster.dynamodb.writer import BatchWriter, LoadStats


@pytest.fixture
def proxy(dynamodb_local_endpoint):
    with FaultProxy(dynamodb_local_endpoint) as running:
        yield running


TRANSIENT = {
    # name: (plan, whether botocore retries too)
    "unprocessed": (FaultPlan(unprocessed_share=0.4, max_hits=2), True),
    "throttled, botocore retries": (FaultPlan(throttle_share=0.3), True),
    "throttled, loader retries": (FaultPlan(throttle_share=0.5, max_hits=2), False),
    "dropped connections": (FaultPlan(drop_share=0.3), True),
    "dropped connections, loader retries": (
        FaultPlan(drop_share=0.5, drop_operations=frozenset({"BatchWriteItem"})),
        False,
    ),
    "all at once": (FaultPlan(unprocessed_share=0.3, throttle_share=0.2, drop_share=0.2), True),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_faults_still_end_in_the_exact_table(ddb, new_table, proxy, catalog, artist_ids, name):
    plan, sdk_retries = TRANSIENT[name]
    artist_ids = artist_ids[:30]
    proxy.plan = plan
    faulty, clean = new_table(), new_table()
    client = resource_client(proxy.endpoint) if sdk_retries else client_without_sdk_retries(proxy.endpoint)

    stats_first = load(client, faulty, "US", outcomes(catalog, artist_ids, "US", T0))
    load(ddb, clean, "US", outcomes(catalog, artist_ids, "US", T0))
    listed = revise(catalog, artist_ids)  # the second load puts, deletes and sweeps through the faults too
    stats_second = load(client, faulty, "US", outcomes(catalog, listed, "US", T1))
    load(ddb, clean, "US", outcomes(catalog, listed, "US", T1))

    assert_market_exact(scan_table(ddb, faulty), catalog, listed, "US")
    assert scan_table(ddb, faulty) == scan_table(ddb, clean)
    # The faults really happened, and the loader saw (and counted) what it had to resend.
    injected = proxy.stats
    resent = {
        k: stats_first.as_dict()[k] + stats_second.as_dict()[k]
        for k in ("unprocessed_items", "unprocessed_retries", "error_retries", "sdk_retries")
    }
    if plan.unprocessed_share:
        assert injected.unprocessed_items > 0
        if plan.drop_share:  # items held back in an answer that was then dropped never reach the loader
            assert 0 < resent["unprocessed_items"] <= injected.unprocessed_items
        else:
            assert resent["unprocessed_items"] == injected.unprocessed_items
        assert resent["unprocessed_retries"] > 0
    if plan.throttle_share:
        assert injected.throttled > 0
    if plan.drop_share:
        assert injected.dropped_before > 0 and injected.dropped_after > 0
    if not sdk_retries:  # botocore did not retry: the loader's own loop resent every failed batch
        assert resent["sdk_retries"] == 0
        assert resent["error_retries"] == injected.throttled + injected.dropped_before + injected.dropped_after
    elif plan.throttle_share or plan.drop_share:
        assert resent["sdk_retries"] > 0


def test_permanently_unprocessed_items_fail_loudly_with_the_count(ddb, table, proxy, catalog, artist_ids):
    proxy.plan = FaultPlan(unprocessed_share=1.0, max_hits=None)  # DynamoDB never takes anything
    client = resource_client(proxy.endpoint)
    expected = len(expected_items(catalog, artist_ids, "US"))
    with pytest.raises(DynamoDBWriteIncomplete) as raised:
        load(client, table, "US", outcomes(catalog, artist_ids, "US"), max_batch_retries=3)
    assert raised.value.unwritten == expected
    assert str(raised.value).startswith(f"{expected} write request(s) to DynamoDB were not applied")
    assert "UnprocessedItems" in str(raised.value)
    batches = -(-expected // 25)
    assert proxy.stats.calls["BatchWriteItem"] == batches * 4  # first try + 3 resends per batch, no more
    assert scan_table(ddb, table) == {}


def test_permanent_throttling_fails_loudly_with_the_count(ddb, table, proxy, catalog, artist_ids):
    proxy.plan = FaultPlan(throttle_share=1.0, max_hits=None)
    client = client_without_sdk_retries(proxy.endpoint)
    expected = len(expected_items(catalog, artist_ids[:10], "US"))
    with pytest.raises(DynamoDBWriteIncomplete) as raised:
        load(client, table, "US", outcomes(catalog, artist_ids[:10], "US"), max_batch_retries=2)
    assert raised.value.unwritten == expected
    assert "ProvisionedThroughputExceededException" in str(raised.value)
    assert scan_table(ddb, table) == {}


def test_a_non_retryable_error_is_not_retried_and_is_counted(ddb, table, catalog, artist_ids):
    # A batch DynamoDB refuses outright (here: a table that does not exist) is reported, not resent.
    stats = LoadStats()
    writer = BatchWriter(ddb, "no_such_table_here", stats, concurrency=2, max_retries=5)
    for n in range(30):
        writer.delete("artist", f"US#{n}")
    with pytest.raises(DynamoDBWriteIncomplete) as raised:
        writer.close()
    assert raised.value.unwritten == 30
    assert "ResourceNotFoundException" in str(raised.value)
    assert stats.write_requests == 2 and stats.error_retries == 0


def test_backoff_is_exponential_with_full_jitter_and_capped(monkeypatch):
    writer = BatchWriter(
        client=None, table_name="t", stats=LoadStats(), concurrency=1, base_delay_s=0.05, max_delay_s=1.0
    )
    bounds = []
    monkeypatch.setattr(random, "uniform", lambda low, high: bounds.append((low, high)) or high)
    delays = [writer._delay(attempt) for attempt in range(8)]
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert all(low == 0 for low, _ in bounds)  # full jitter: anywhere between 0 and the bound
    writer.abort()
