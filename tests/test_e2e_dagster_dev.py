"""End to end against a running `dagster dev` (webserver + daemon), driven through the GraphQL API.

A backfill of all partitions lands the table; a new artist in MariaDB reaches DynamoDB through the sensor with no
person acting; with nothing changed, further sensor ticks launch no runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dagster_graphql import DagsterGraphQLClient
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION

from tests.conftest import free_port
from tests.helpers import expected_keys, scan_table

REPO = Path(__file__).resolve().parent.parent
SENSOR_INTERVAL_S = 3

BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on PythonError { message } } }
"""
START_SENSOR = """
mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
  __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }
"""
RUN_IDS = """
query { runsOrError { __typename ... on Runs { results { runId status } } } }
"""


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def dagster_dev(prod_env, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "TOPTRACKS_SENSOR_INTERVAL_S": str(SENSOR_INTERVAL_S)}
    log = open(tmp_path / "dagster_dev.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def webserver_up():
        if process.poll() is not None:
            raise AssertionError(f"dagster dev exited: {(tmp_path / 'dagster_dev.log').read_text()[-3000:]}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_for(webserver_up, 180, "the Dagster webserver")
        yield DagsterGraphQLClient("127.0.0.1", port_number=port), tmp_path / "dagster_dev.log"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_backfill_then_sensor_then_quiet(dagster_dev, prod_env, artists_table, emulator, ddb, some_artist_ids):
    client, log_path = dagster_dev
    table = prod_env["TOPTRACKS_TABLE"]
    initial, newcomer = some_artist_ids[:12], some_artist_ids[20]
    artists_table.set_ids(initial)

    # 1. A backfill of every partition of the whole graph, launched as the UI does.
    launched = client._execute(
        LAUNCH_PARTITION_BACKFILL_MUTATION,
        {
            "backfillParams": {
                "assetSelection": [{"path": ["artist_ids"]}, {"path": ["raw_top_tracks"]}, {"path": ["top_tracks"]}],
                "allPartitions": True,
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched

    def backfill_done():
        status = client._execute(BACKFILL_STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]["status"]
        assert status not in ("FAILED", "CANCELED", "COMPLETED_FAILED"), f"{status}: {log_path.read_text()[-3000:]}"
        return status in ("COMPLETED", "COMPLETED_SUCCESS")

    wait_for(backfill_done, 300, "the backfill", interval_s=2)
    assert set(scan_table(ddb, table)) == set(expected_keys(emulator.catalog, initial, ["US", "CA"]))

    # 2. A new artist in MariaDB; the sensor, once on, brings its tracks in with no one acting.
    artists_table.add(newcomer)
    assert emulator.catalog.top_tracks(newcomer, "US"), "pick an artist the emulator knows"
    started = client._execute(
        START_SENSOR,
        {
            "selector": {
                "repositoryLocationName": "toptracks_dagster",
                "repositoryName": "__repository__",
                "sensorName": "artists_changed_sensor",
            }
        },
    )["startSensor"]
    assert started["__typename"] == "Sensor", started
    wanted = set(expected_keys(emulator.catalog, [*initial, newcomer], ["US", "CA"]))
    wait_for(lambda: set(scan_table(ddb, table)) == wanted, 300, "the new artist's tracks", interval_s=2)

    # 3. Nothing changed: the sensor keeps ticking and launches nothing.
    def all_runs_finished():
        runs = client._execute(RUN_IDS)["runsOrError"]["results"]
        return runs if all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs) else None

    before = wait_for(all_runs_finished, 120, "the sensor's runs to finish", interval_s=2)
    assert all(r["status"] == "SUCCESS" for r in before), before
    time.sleep(SENSOR_INTERVAL_S * 5)
    after = client._execute(RUN_IDS)["runsOrError"]["results"]
    assert {r["runId"] for r in after} == {r["runId"] for r in before}
