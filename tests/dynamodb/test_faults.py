"""Faults injected between boto3 and DynamoDB Local (tests/dynamodb/fault_proxy.py): throttling and dropped
connections, before and after DynamoDB applied the request. Transient faults still end in the exact table, with
botocore as the one retry layer; a permanent fault fails the load loudly and leaves nothing half-written."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.dynamodb.fault_proxy import FaultPlan, FaultProxy
from tests.dynamodb.support import T0, T1, assert_market_exact, load, outcomes, resource_client
from tests.dynamodb.test_load import change_some_artists
from tests.helpers import scan_table


@pytest.fixture
def proxy(dynamodb_local_endpoint):
    with FaultProxy(dynamodb_local_endpoint) as running:
        yield running


TRANSIENT = {
    "throttled": FaultPlan(throttle_share=0.4),
    "dropped connections": FaultPlan(drop_share=0.3),
    "both": FaultPlan(throttle_share=0.3, drop_share=0.3),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_faults_still_end_in_the_exact_table(ddb, new_table, proxy, catalog, artist_ids, name):
    proxy.plan = TRANSIENT[name]
    faulty, clean = new_table(), new_table()
    client = resource_client(proxy.endpoint, max_attempts=10)
    load(client, faulty, "US", outcomes(catalog, artist_ids, "US", T0))
    load(ddb, clean, "US", outcomes(catalog, artist_ids, "US", T0))
    changed = change_some_artists(catalog, artist_ids)
    listed = [a for a in artist_ids if a not in changed["removed"]]
    load(client, faulty, "US", outcomes(catalog, listed, "US", T1))
    load(ddb, clean, "US", outcomes(catalog, listed, "US", T1))
    assert_market_exact(scan_table(ddb, faulty), catalog, listed, "US")
    assert scan_table(ddb, faulty) == scan_table(ddb, clean)
    injected = proxy.stats
    if proxy.plan.throttle_share:
        assert injected.throttled > 0
    if proxy.plan.drop_share:
        assert injected.dropped_before > 0 and injected.dropped_after > 0


def test_permanent_throttling_fails_loudly_and_applies_nothing(ddb, table, proxy, catalog, artist_ids):
    proxy.plan = FaultPlan(throttle_share=1.0, max_hits=None)
    client = resource_client(proxy.endpoint, max_attempts=2)
    with pytest.raises(ClientError, match="ProvisionedThroughputExceeded"):
        load(client, table, "US", outcomes(catalog, artist_ids[:10], "US"))
    assert scan_table(ddb, table) == {}
    assert proxy.stats.forwarded["TransactWriteItems"] == 0
