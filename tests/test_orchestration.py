"""Sensor, schedule and the production instance configuration (PostgreSQL)."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

from dagster import (
    DagsterInstance,
    RunRequest,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

from tests.helpers import expected_keys, run_partition, run_request, scan_table
from toptracks_dagster.artists_db.sensors import artists_changed_sensor
from toptracks_dagster.deployments import build_resources
from toptracks_dagster.schedules import daily_refresh

REPO = Path(__file__).resolve().parent.parent


def tick(cursor, artists_table):
    """One evaluation of the sensor with the prod resources (prod_env), as a SensorResult."""
    resources = build_resources("prod")
    context = build_sensor_context(
        cursor=cursor,
        instance=DagsterInstance.ephemeral(),
        resources={"artists_db": resources["artists_db"], "raw_storage": resources["raw_storage"]},
    )
    result = artists_changed_sensor(context)
    return SensorResult(run_requests=[result]) if isinstance(result, RunRequest) else result


def test_sensor_driven_runs_add_new_and_drop_removed_artists_then_go_quiet(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    with instance_for_test() as instance:
        for ids in (some_artist_ids[:8], [*some_artist_ids[1:8], some_artist_ids[10]]):
            artists_table.set_ids(ids)
            result = tick(None, artists_table)
            assert len(result.run_requests) == 1
            assert run_request(result.run_requests[0], instance).success
            assert set(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == set(
                expected_keys(emulator.catalog, ids, ["US", "CA"])
            )
            # The applied change is in raw storage: the next evaluation, on any instance, launches nothing.
            assert isinstance(tick(None, artists_table), SkipReason)


def test_schedules_request_one_run_for_every_market_and_are_off_by_default():
    context = build_schedule_context(scheduled_execution_time=datetime(2026, 11, 27, 6, tzinfo=timezone.utc))
    request = daily_refresh(context)
    assert request.run_key == "daily-2026-11-27"
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) == (
        "US",
        "CA",
    )
    assert request.run_config["ops"]["raw_top_tracks"]["config"]["mode"] == "full"
    assert daily_refresh.default_status.value == "STOPPED"
    assert artists_changed_sensor.default_status.value == "STOPPED"


def test_production_instance_config_runs_on_postgres(
    prod_env, artists_table, some_artist_ids, postgres_database, tmp_path, monkeypatch
):
    import psycopg2

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "docs" / "dagster.prod.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": postgres_database["host"],
        "DAGSTER_PG_PORT": str(postgres_database["port"]),
        "DAGSTER_PG_USER": postgres_database["user"],
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": postgres_database["dbname"],
    }.items():
        monkeypatch.setenv(name, value)
    artists_table.set_ids(some_artist_ids[:3])
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        result = run_partition("US", instance)
        assert instance.get_run_by_id(result.run_id).is_success
    with psycopg2.connect(**postgres_database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs")
        assert cursor.fetchall() == [(result.run_id, "SUCCESS")]
