"""`artists_changed_sensor` on a real instance and MariaDB: it compares the table with what raw storage holds."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context

from tests.artists_db.test_resources import mysql_db
from toptracks_dagster.artists_db.assets import ARTIST_IDS_KEY
from toptracks_dagster.artists_db.sensors import artists_changed_sensor
from toptracks_dagster.raw_storage.resources import LocalRawStorage
from toptracks_dagster.spotify.raw import raw_partition_key

REPO = Path(__file__).resolve().parents[2]


def tick(artists_table, raw: Path) -> RunRequest | SkipReason:
    context = build_sensor_context(
        instance=DagsterInstance.ephemeral(),
        resources={"artists_db": mysql_db(artists_table), "raw_storage": LocalRawStorage(base_dir=str(raw))},
    )
    result = artists_changed_sensor(context)
    return result.run_requests[0] if getattr(result, "run_requests", None) else result


def store(raw: Path, fingerprint: str, read_at: str, markets=("US", "CA")) -> None:
    """What a successful run leaves: the snapshot and each market's request record, built from `fingerprint`."""
    snapshot = raw / ARTIST_IDS_KEY
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.write_text(json.dumps({"ids": [], "fingerprint": fingerprint, "read_at": read_at}))
    for market in markets:
        partition = raw / raw_partition_key(market)
        partition.parent.mkdir(parents=True, exist_ok=True)
        request = {"record": "request", "market": market, "artists_fingerprint": fingerprint}
        partition.write_text(json.dumps(request) + '\n{"record":"end","outcomes":0}\n')


def test_nothing_changed_launches_nothing_even_at_the_first_evaluation(artists_table, some_artist_ids, tmp_path):
    artists_table.set_ids(some_artist_ids[:5])
    store(tmp_path, mysql_db(artists_table).fingerprint(), "t1")
    skipped = tick(artists_table, tmp_path)
    assert isinstance(skipped, SkipReason) and "unchanged" in skipped.skip_message


def test_a_change_requests_one_run_for_every_market_with_a_stable_key(artists_table, some_artist_ids, tmp_path):
    artists_table.set_ids(some_artist_ids[:5])
    store(tmp_path, mysql_db(artists_table).fingerprint(), "t1")
    artists_table.add(*some_artist_ids[5:7])
    request = tick(artists_table, tmp_path)
    assert isinstance(request, RunRequest)
    tags = request.tags
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == ("US", "CA")
    assert int(tags["dagster/max_retries"]) >= 1 and tags["dagster/retry_on_asset_or_op_failure"] == "true"
    assert request.run_config == {
        "ops": {"raw_top_tracks": {"config": {"mode": "changed", "reason": "artists table changed"}}}
    }
    assert tick(artists_table, tmp_path).run_key == request.run_key  # re-evaluated: the same run, never two


def test_no_snapshot_yet_is_a_change(artists_table, some_artist_ids, tmp_path):
    artists_table.set_ids(some_artist_ids[:3])
    assert isinstance(tick(artists_table, tmp_path), RunRequest)


def test_a_run_that_failed_after_publishing_the_snapshot_leaves_the_change_visible(
    artists_table, some_artist_ids, tmp_path
):
    artists_table.set_ids(some_artist_ids[:5])
    old = mysql_db(artists_table).fingerprint()
    store(tmp_path, old, "t1")
    artists_table.add(some_artist_ids[5])
    new = mysql_db(artists_table).fingerprint()
    store(tmp_path, new, "t2", markets=("US",))  # the snapshot and US moved on; CA's fetch failed
    request = tick(artists_table, tmp_path)
    assert isinstance(request, RunRequest) and new in request.run_key
    store(tmp_path, new, "t2")  # the retried run finished CA
    assert isinstance(tick(artists_table, tmp_path), SkipReason)


def test_a_set_that_returns_to_an_earlier_fingerprint_is_a_new_change(artists_table, some_artist_ids, tmp_path):
    a, b = some_artist_ids[:4], some_artist_ids[:5]
    keys = []
    for step, ids in enumerate([b, a, b]):
        artists_table.set_ids(a if step % 2 == 0 else b)  # the state the previous run applied
        store(tmp_path, mysql_db(artists_table).fingerprint(), f"t{step}")
        artists_table.set_ids(ids)
        keys.append(tick(artists_table, tmp_path).run_key)
    assert len(set(keys)) == 3, keys


def test_failed_runs_are_retried_by_dagster_run_retries():
    for path in ("dagster_home/dagster.yaml", "docs/dagster.prod.yaml"):
        retries = yaml.safe_load((REPO / path).read_text())["run_retries"]
        assert retries["enabled"] and retries["retry_on_asset_or_op_failure"], path
    assert yaml.safe_load((REPO / "deploy/dagster.yaml").read_text())["run_retries"]["enabled"]
