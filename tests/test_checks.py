"""Asset checks: each one made to fail on purpose (bad ids in MariaDB, edited raw partitions, edited DynamoDB
items) with its failure and metadata asserted, and a run where all pass, read from the run and the instance.

Runs use the prod deployment: MariaDB -> Spotify emulator -> DynamoDB Local (fixtures in conftest.py).
"""

from __future__ import annotations

import json
import secrets
import string
from pathlib import Path
from typing import Callable

from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    Definitions,
    instance_for_test,
    materialize,
)
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from tests.helpers import ALL_ASSETS, scan_table
from toptracks_dagster.artists_db.assets import artist_ids
from toptracks_dagster.artists_db.checks import artist_ids_checks
from toptracks_dagster.artists_db.snapshot import ARTIST_IDS_KEY
from toptracks_dagster.deployments import build_resources
from toptracks_dagster.dynamodb.assets import top_tracks
from toptracks_dagster.dynamodb.checks import top_tracks_checks
from toptracks_dagster.jobs import top_tracks_job
from toptracks_dagster.spotify.assets import raw_top_tracks
from toptracks_dagster.spotify.checks import raw_top_tracks_checks
from toptracks_dagster.spotify.raw import raw_top_tracks_key

ALL_CHECKS = [*artist_ids_checks, *raw_top_tracks_checks, *top_tracks_checks]
CHECK_KEYS = [key for checks_def in ALL_CHECKS for key in checks_def.check_keys]
PARTITIONED_ASSETS = {"raw_top_tracks", "top_tracks"}


# ------------------------------------------------------------------------------------------ helpers
def run_with_checks(country: str, instance, deployment: str = "prod"):
    """The three assets and every check for one partition, in one run (checks run after their asset)."""
    return materialize([*ALL_ASSETS, *ALL_CHECKS], partition_key=country, resources=build_resources(deployment),
                       instance=instance, raise_on_error=False)


def run_checks_alone(instance, *assets, country: str | None = None):
    """Only the checks of `assets`, as the UI's "Execute checks" does: no asset is materialized.

    `materialize(partition_key=...)` refuses a selection without assets (it looks for a partitioned asset to
    validate the key against), so the partition goes in the run's tag, which is what the UI sets.
    """
    return materialize(
        [*ALL_ASSETS, *ALL_CHECKS], selection=AssetSelection.checks_for_assets(*assets),
        tags={"dagster/partition": country} if country else None,
        resources=build_resources("prod"), instance=instance, raise_on_error=False,
    )


def evaluations(result) -> dict[str, object]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def metadata(evaluation) -> dict:
    return {key: value.value for key, value in evaluation.metadata.items()}


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def raw_file(prod_env, market: str) -> Path:
    return Path(prod_env["TOPTRACKS_RAW_DIR"]) / raw_top_tracks_key(market)


def edit_outcomes(path: Path, edit: Callable[[list[dict]], list[dict]]) -> None:
    """Rewrite a raw partition's outcome records, keeping it complete (end record count updated)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    request, outcomes, end = records[0], records[1:-1], records[-1]
    outcomes = edit(outcomes)
    end["outcomes"] = len(outcomes)
    path.write_text("".join(json.dumps(r) + "\n" for r in [request, *outcomes, end]))


def with_tracks(outcomes: list[dict], minimum: int = 3) -> list[dict]:
    return [o for o in outcomes if o["status"] == 200 and len(o["tracks"]) >= minimum]


def random_id() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(22))


def assert_failed(evaluation, severity: AssetCheckSeverity) -> None:
    assert not evaluation.passed, f"{evaluation.check_name} passed: {metadata(evaluation)}"
    assert evaluation.severity == severity
    assert evaluation.description


# ------------------------------------------------------------------------------------------ all pass
def test_every_check_passes_in_the_materializing_run_and_is_recorded_per_partition(
        prod_env, artists_table, some_artist_ids):
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        for country in ("US", "CA"):
            result = run_with_checks(country, instance)
            assert result.success
            assert materialized(result) == {"artist_ids", "raw_top_tracks", "top_tracks"}
            found = evaluations(result)
            assert sorted(found) == sorted(key.name for key in CHECK_KEYS), "every check runs in the same run"
            failed = {name: metadata(e) for name, e in found.items() if not e.passed}
            assert not failed
            for e in found.values():
                partitioned = e.asset_key.to_user_string() in PARTITIONED_ASSETS
                assert e.partition == (country if partitioned else None)
            reconciliation = metadata(found["top_tracks_match_raw"])
            assert reconciliation["raw_tracks"] == reconciliation["table_items"] > 0
            assert metadata(found["top_tracks_round_trip"])["sampled_items"] == 20

        # The instance (what the UI's asset pages read) holds a passing result for every check and partition.
        storage = instance.event_log_storage
        for key in CHECK_KEYS:
            if key.asset_key.to_user_string() in PARTITIONED_ASSETS:
                for country in ("US", "CA"):
                    record = storage.get_latest_asset_check_execution_by_key(
                        [key], partition_filter=PartitionKeyFilter(key=country))[key]
                    assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED, (key, country)
                    assert record.partition == country
                    assert record.event.dagster_event.event_specific_data.passed
            else:
                record = instance.get_latest_asset_check_evaluation_record(key)
                assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED, key

        # And the checks run on their own, without materializing anything.
        alone = run_checks_alone(instance, raw_top_tracks, top_tracks, country="CA")
        assert alone.success and not materialized(alone)
        assert sorted(evaluations(alone)) == sorted(
            key.name for key in CHECK_KEYS if key.asset_key.to_user_string() in PARTITIONED_ASSETS)
        assert all(e.passed and e.partition == "CA" for e in evaluations(alone).values())
        ids_alone = run_checks_alone(instance, artist_ids)
        assert ids_alone.success and not materialized(ids_alone)
        assert len(evaluations(ids_alone)) == len(artist_ids_checks)


def test_the_main_job_runs_the_checks_once_they_are_in_the_definitions(prod_env, artists_table, some_artist_ids):
    # What definitions.py gets: `asset_checks=[...]`. top_tracks_job selects assets, and Dagster adds their checks.
    artists_table.set_ids(some_artist_ids[:10])
    defs = Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=[top_tracks_job],
                       resources=build_resources("prod"))
    with instance_for_test() as instance:
        result = defs.resolve_job_def("top_tracks_job").execute_in_process(
            partition_key="US", instance=instance, raise_on_error=False)
    assert result.success
    assert sorted(evaluations(result)) == sorted(key.name for key in CHECK_KEYS)
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_a_single_run_backfill_records_one_result_per_partition(prod_env, artists_table, some_artist_ids):
    # BackfillPolicy.single_run hands the partitioned assets (and their checks) a range of partitions, as a
    # backfill of the whole graph from the UI does.
    artists_table.set_ids(some_artist_ids[:10])
    with instance_for_test() as instance:
        result = materialize(
            [*ALL_ASSETS, *ALL_CHECKS],
            tags={"dagster/asset_partition_range_start": "US", "dagster/asset_partition_range_end": "CA"},
            resources=build_resources("prod"), instance=instance, raise_on_error=False,
        )
        assert result.success
        by_partition = {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}
        expected = {(k.name, c) for k in CHECK_KEYS
                    for c in (("US", "CA") if k.asset_key.to_user_string() in PARTITIONED_ASSETS else (None,))}
        assert set(by_partition) == expected
        assert all(e.passed for e in by_partition.values())
        assert metadata(by_partition[("top_tracks_match_raw", "CA")])["market"] == "CA"
        key = AssetCheckKey(AssetKey("top_tracks"), "top_tracks_match_raw")
        for country in ("US", "CA"):
            record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [key], partition_filter=PartitionKeyFilter(key=country))[key]
            assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED


# ------------------------------------------------------------------------------------------ artist_ids
def test_no_valid_id_fails_not_empty_and_blocks_fetch_and_load(prod_env, artists_table):
    artists_table.set_ids(["not-an-id", "../../v1/me", "  "])
    with instance_for_test() as instance:
        result = run_with_checks("US", instance)
    assert not result.success
    assert materialized(result) == {"artist_ids"}, "the blocking check stops raw_top_tracks and top_tracks"
    found = evaluations(result)
    assert_failed(found["artist_ids_not_empty"], AssetCheckSeverity.ERROR)
    assert found["artist_ids_not_empty"].blocking
    assert metadata(found["artist_ids_not_empty"])["valid_ids"] == 0
    assert metadata(found["artist_ids_not_empty"])["rows_read"] == 3
    assert "raw_top_tracks_complete" not in found


def test_invalid_ids_warn_and_are_listed_while_the_load_goes_on(prod_env, artists_table, some_artist_ids):
    bad = ["../../v1/me", "short", "4Z8W4fKeB5YxbusRsdQVPb?market=XX"]
    artists_table.set_ids([*some_artist_ids[:6], *bad])
    with instance_for_test() as instance:
        result = run_with_checks("US", instance)
    assert result.success, "a WARN does not stop the run"
    assert "top_tracks" in materialized(result)
    check = evaluations(result)["artist_ids_valid"]
    assert_failed(check, AssetCheckSeverity.WARN)
    data = metadata(check)
    assert data["invalid_rows"] == 3
    assert data["invalid_row_values"] == [repr(b) for b in bad]
    assert data["invalid_ids_in_snapshot"] == 0
    assert "mysql://" in data["source"] and prod_env["MYSQL_DATABASE"] in data["source"]


def test_duplicates_are_collapsed_from_the_source_and_fail_in_the_snapshot(prod_env, artists_table, some_artist_ids):
    ids = some_artist_ids[:6]
    artists_table.set_ids([*ids, ids[0], f"  {ids[1]} "])  # the screening collapses both repeats
    with instance_for_test() as instance:
        result = run_with_checks("US", instance)
        check = evaluations(result)["artist_ids_unique"]
        assert check.passed
        assert metadata(check)["duplicate_rows_collapsed_from_source"] == 2

        # A snapshot that repeats an id (say, written by an older screening) fails, checked on its own.
        snapshot_path = Path(prod_env["TOPTRACKS_RAW_DIR"]) / ARTIST_IDS_KEY
        snapshot = json.loads(snapshot_path.read_text())
        snapshot["ids"] += [ids[2], f" {ids[3]}"]
        snapshot_path.write_text(json.dumps(snapshot))
        alone = evaluations(run_checks_alone(instance, artist_ids))
    assert_failed(alone["artist_ids_unique"], AssetCheckSeverity.ERROR)
    data = metadata(alone["artist_ids_unique"])
    assert data["repeated_ids"] == 2 and data["extra_copies"] == 2
    assert data["repeated_id_sample"] == [ids[2], ids[3]]
    # The padded id is also one that would reach a URL: the validity check escalates to ERROR.
    assert_failed(alone["artist_ids_valid"], AssetCheckSeverity.ERROR)
    assert metadata(alone["artist_ids_valid"])["invalid_ids_in_snapshot_sample"] == [repr(f" {ids[3]}")]


def test_a_sudden_drop_in_artist_count_warns(prod_env, artists_table, some_artist_ids):
    resources = build_resources("prod")
    with instance_for_test() as instance:
        def materialize_ids(ids: list[str]):
            artists_table.set_ids(ids)
            result = materialize([artist_ids, *artist_ids_checks], resources=resources, instance=instance)
            return evaluations(result)["artist_ids_count_stable"]

        first = materialize_ids(some_artist_ids[:30])
        assert first.passed and "no previous" in first.description
        small_drop = materialize_ids(some_artist_ids[:27])  # -10 %
        assert small_drop.passed and metadata(small_drop)["drop_pct"] == 10.0
        big_drop = materialize_ids(some_artist_ids[:12])  # -55.6 %
        previous_run = instance.fetch_materializations(AssetKey("artist_ids"), limit=2).records[1].run_id
    assert_failed(big_drop, AssetCheckSeverity.WARN)
    data = metadata(big_drop)
    assert (data["previous_ids"], data["current_ids"]) == (27, 12)
    assert data["drop_pct"] == 55.6 and data["threshold_pct"] == 20.0
    assert data["previous_run_id"] == previous_run


# ------------------------------------------------------------------------------------------ raw_top_tracks
def test_truncated_raw_partition_fails_completeness(prod_env, artists_table, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:10])
    with instance_for_test() as instance:
        assert run_with_checks("US", instance).success
        path = raw_file(prod_env, "US")
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:5]) + lines[5][:40])  # cut mid-record, as a crashed copy would
        found = evaluations(run_checks_alone(instance, raw_top_tracks, country="US"))
    check = found["raw_top_tracks_complete"]
    assert_failed(check, AssetCheckSeverity.ERROR)
    assert check.blocking and check.partition == "US"
    data = metadata(check)
    assert "incomplete" in data["error"] and data["raw_object"] == str(path.resolve())
    # Nothing else can be judged on a truncated object: each check says so rather than passing.
    assert not any(e.passed for e in found.values())
    assert all("cannot be evaluated" in e.description for e in found.values())


def test_missing_and_foreign_outcomes_fail_completeness(prod_env, artists_table, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:10])
    stranger = random_id()
    with instance_for_test() as instance:
        assert run_with_checks("CA", instance).success
        dropped = {}

        def drop_one_add_stranger(outcomes):
            dropped["id"] = outcomes[3]["artist_id"]
            copy = dict(outcomes[0], artist_id=stranger)
            return outcomes[:3] + outcomes[4:] + [copy]

        edit_outcomes(raw_file(prod_env, "CA"), drop_one_add_stranger)
        check = evaluations(run_checks_alone(instance, raw_top_tracks, country="CA"))["raw_top_tracks_complete"]
    assert_failed(check, AssetCheckSeverity.ERROR)
    data = metadata(check)
    assert (data["expected_artists"], data["outcomes"]) == (10, 10)
    assert data["artists_without_outcome"] == 1 and data["artists_without_outcome_sample"] == [dropped["id"]]
    assert data["unexpected_artists"] == 1 and data["unexpected_artist_sample"] == [stranger]
    assert data["artists_with_several_outcomes"] == 0


def test_more_than_ten_tracks_and_duplicate_tracks_warn(prod_env, artists_table, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:10])
    edited = {}
    with instance_for_test() as instance:
        assert run_with_checks("US", instance).success

        def edit(outcomes):
            long_list, repeating = with_tracks(outcomes, 10)[:2]
            long_list["tracks"].append(dict(long_list["tracks"][0], id=random_id()))  # 11 tracks
            repeating["tracks"][-1] = dict(repeating["tracks"][1])  # 10 tracks, one of them twice
            edited.update(long=long_list["artist_id"], repeating=repeating["artist_id"],
                          track=repeating["tracks"][1]["id"], ranks=[2, len(repeating["tracks"])])
            return outcomes

        edit_outcomes(raw_file(prod_env, "US"), edit)
        found = evaluations(run_checks_alone(instance, raw_top_tracks, country="US"))
    at_most = found["raw_top_tracks_at_most_10"]
    assert_failed(at_most, AssetCheckSeverity.WARN)
    assert metadata(at_most)["artists_over_limit"] == 1 and metadata(at_most)["longest_list"] == 11
    assert metadata(at_most)["over_limit_sample"] == [{"artist_id": edited["long"], "tracks": 11}]
    duplicates = found["raw_top_tracks_no_duplicate_tracks"]
    assert_failed(duplicates, AssetCheckSeverity.WARN)
    assert metadata(duplicates)["lists_with_duplicates"] == 1 and metadata(duplicates)["duplicate_entries"] == 1
    assert metadata(duplicates)["duplicate_sample"] == [
        {"artist_id": edited["repeating"], "track_id": edited["track"], "ranks": edited["ranks"]}]
    assert found["raw_top_tracks_complete"].passed and found["raw_top_tracks_fields_valid"].passed


def test_malformed_tracks_fail_the_field_check(prod_env, artists_table, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:10])
    edited = {}
    with instance_for_test() as instance:
        assert run_with_checks("US", instance).success

        def edit(outcomes):
            target = with_tracks(outcomes)[0]
            target["tracks"][0]["popularity"] = 101
            target["tracks"][1]["id"] = "not/base62"
            del target["tracks"][2]["name"]
            target["tracks"][2]["explicit"] = "no"
            edited["artist"] = target["artist_id"]
            return outcomes

        edit_outcomes(raw_file(prod_env, "US"), edit)
        check = evaluations(run_checks_alone(instance, raw_top_tracks, country="US"))["raw_top_tracks_fields_valid"]
    assert_failed(check, AssetCheckSeverity.ERROR)
    data = metadata(check)
    assert data["invalid_tracks"] == 3 and data["tracks_checked"] > 50
    assert data["problems_by_field"] == {"popularity": 1, "id": 1, "name": 1, "explicit": 1}
    assert [(p["artist_id"], p["rank"]) for p in data["invalid_track_sample"]] == [(edited["artist"], r) for r in (1, 2, 3)]
    assert data["invalid_track_sample"][0]["problems"] == ["popularity: 101 is not an integer in 0..100"]
    assert data["invalid_track_sample"][2]["problems"] == ["name: missing", "explicit: 'no' is not a boolean"]


def test_all_404_blocks_the_load_and_the_table_keeps_its_data(prod_env, artists_table, emulator, ddb, some_artist_ids):
    ids = some_artist_ids[:10]
    artists_table.set_ids(ids)
    with instance_for_test() as instance:
        assert run_with_checks("US", instance).success
        before = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
        for artist in ids:
            emulator.catalog.set_missing(artist)
        result = run_with_checks("US", instance)
    assert not result.success
    assert materialized(result) == {"artist_ids", "raw_top_tracks"}, "the load must not run"
    assert scan_table(ddb, prod_env["TOPTRACKS_TABLE"]) == before and before
    found = evaluations(result)
    not_empty = found["raw_top_tracks_not_empty"]
    assert_failed(not_empty, AssetCheckSeverity.ERROR)
    assert not_empty.blocking
    assert metadata(not_empty)["outcomes"] == 10 and metadata(not_empty)["artists_not_found_404"] == 10
    share = found["raw_top_tracks_404_share"]
    assert_failed(share, AssetCheckSeverity.WARN)
    assert metadata(share)["share_404_pct"] == 100.0
    assert not any(name.startswith("top_tracks_") for name in found)


def test_many_404s_warn_without_blocking(prod_env, artists_table, emulator, some_artist_ids):
    ids = some_artist_ids[:10]
    artists_table.set_ids(ids)
    missing = [a for a in ids if not emulator.catalog.is_missing(a)][:3]
    for artist in missing:
        emulator.catalog.set_missing(artist)
    expected_404 = sorted(a for a in ids if emulator.catalog.is_missing(a))
    with instance_for_test() as instance:
        result = run_with_checks("US", instance)
    assert result.success and "top_tracks" in materialized(result)
    check = evaluations(result)["raw_top_tracks_404_share"]
    assert_failed(check, AssetCheckSeverity.WARN)
    data = metadata(check)
    assert data["artists_not_found_404"] == len(expected_404) >= 3
    assert data["share_404_pct"] == round(100 * len(expected_404) / 10, 2) and data["threshold_pct"] == 10.0
    assert sorted(data["not_found_sample"]) == expected_404
    assert evaluations(result)["raw_top_tracks_not_empty"].passed


# ------------------------------------------------------------------------------------------ top_tracks
def _us_items(ddb, table: str) -> dict:
    return {k: v for k, v in scan_table(ddb, table).items() if k[1].startswith("US#")}


def test_extra_items_are_stale_and_break_reconciliation(prod_env, artists_table, ddb, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:10])
    table = prod_env["TOPTRACKS_TABLE"]
    gone_artist, extra_track = random_id(), random_id()
    with instance_for_test() as instance:
        assert run_with_checks("US", instance).success
        present_artist = next(iter(_us_items(ddb, table)))[0]
        for artist, track in ((gone_artist, random_id()), (present_artist, extra_track)):
            ddb.put_item(TableName=table, Item={
                "artist_id": {"S": artist}, "country_track_id": {"S": f"US#{track}"}, "country": {"S": "US"},
                "id": {"S": track}, "popularity": {"N": "50"}, "rank": {"N": "11"}, "name": {"S": "Planted"},
            })
        found = evaluations(run_checks_alone(instance, top_tracks, country="US"))
    stale = found["top_tracks_no_stale_items"]
    assert_failed(stale, AssetCheckSeverity.ERROR)
    data = metadata(stale)
    assert (data["stale_items"], data["stale_artist_items"], data["stale_artists"], data["stale_track_items"]) == (2, 1, 1, 1)
    assert data["stale_artist_item_sample"][0]["artist_id"] == gone_artist
    assert data["stale_track_sample"] == [
        {"artist_id": present_artist, "country_track_id": f"US#{extra_track}", "raw_status": 200}]
    reconciliation = found["top_tracks_match_raw"]
    assert_failed(reconciliation, AssetCheckSeverity.ERROR)
    data = metadata(reconciliation)
    assert data["extra_items"] == 2 and data["missing_items"] == 0 and data["changed_items"] == 0
    assert data["table_items"] == data["raw_tracks"] + 2
    assert found["top_tracks_round_trip"].passed


def test_missing_item_and_changed_popularity_break_reconciliation(prod_env, artists_table, ddb, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:10])
    table = prod_env["TOPTRACKS_TABLE"]
    with instance_for_test() as instance:
        assert run_with_checks("US", instance).success
        items = _us_items(ddb, table)
        (deleted_key, _), (changed_key, changed_item) = sorted(items.items())[:2]
        ddb.delete_item(TableName=table, Key={"artist_id": {"S": deleted_key[0]}, "country_track_id": {"S": deleted_key[1]}})
        new_popularity = (int(changed_item["popularity"]) + 7) % 101
        ddb.update_item(
            TableName=table, Key={"artist_id": {"S": changed_key[0]}, "country_track_id": {"S": changed_key[1]}},
            UpdateExpression="SET popularity = :p", ExpressionAttributeValues={":p": {"N": str(new_popularity)}},
        )
        found = evaluations(run_checks_alone(instance, top_tracks, country="US"))
    check = found["top_tracks_match_raw"]
    assert_failed(check, AssetCheckSeverity.ERROR)
    data = metadata(check)
    assert data["missing_items"] == 1 and data["changed_items"] == 1 and data["extra_items"] == 0
    assert data["missing_item_sample"] == [{"artist_id": deleted_key[0], "country_track_id": deleted_key[1]}]
    assert data["changed_item_sample"] == [{
        "artist_id": changed_key[0], "country_track_id": changed_key[1],
        "raw": {"rank": int(changed_item["rank"]), "popularity": int(changed_item["popularity"])},
        "table": {"rank": int(changed_item["rank"]), "popularity": new_popularity},
    }]
    assert found["top_tracks_no_stale_items"].passed


def test_edited_attributes_fail_the_round_trip(prod_env, artists_table, ddb, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:10])
    table = prod_env["TOPTRACKS_TABLE"]
    with instance_for_test() as instance:
        assert run_with_checks("US", instance).success
        items = _us_items(ddb, table)
        for artist, key in items:  # the sample is random: edit every item so any sample sees it
            ddb.update_item(
                TableName=table, Key={"artist_id": {"S": artist}, "country_track_id": {"S": key}},
                UpdateExpression="SET #n = :n, explicit = :e",
                ExpressionAttributeNames={"#n": "name"},
                ExpressionAttributeValues={":n": {"S": "Edited by hand"}, ":e": {"N": "1"}},
            )
        found = evaluations(run_checks_alone(instance, top_tracks, country="US"))
    check = found["top_tracks_round_trip"]
    assert_failed(check, AssetCheckSeverity.ERROR)
    data = metadata(check)
    assert data["sampled_items"] == 20 and data["mismatched_items"] == 20
    # explicit became the number 1: equal to True in Python, still a mismatch in JSON.
    assert all(m["differing_attributes"] == ["explicit", "name"] for m in data["mismatch_sample"])
    assert found["top_tracks_match_raw"].passed, "keys, ranks and popularity are untouched"


def test_every_check_passes_after_the_main_job_on_the_embedded_stack(tmp_path, monkeypatch):
    """The embedded default: SQLite seeded like the local stack, the emulator and moto, run through
    top_tracks_job with the checks in the Definitions; every check has a passing result in the instance."""
    from toptracks_dagster.dev.local_stack import LocalStack, seed_demo_artists

    artists_db = tmp_path / "artists.sqlite"
    seed_demo_artists(str(artists_db), count=20)
    with LocalStack(artists_db_path=str(artists_db)) as stack:
        for name, value in {**stack.environment(), "TOPTRACKS_RAW_DIR": str(tmp_path / "raw"),
                            "TOPTRACKS_TABLE": "top_tracks", "AWS_REGION": "ap-northeast-2"}.items():
            monkeypatch.setenv(name, value)
        defs = Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, jobs=[top_tracks_job],
                           resources=build_resources("local"))
        with instance_for_test() as instance:
            for country in ("US", "CA"):
                result = defs.resolve_job_def("top_tracks_job").execute_in_process(
                    partition_key=country, instance=instance, raise_on_error=False)
                assert result.success
            storage = instance.event_log_storage
            for key in CHECK_KEYS:
                countries = ("US", "CA") if key.asset_key.to_user_string() in PARTITIONED_ASSETS else (None,)
                for country in countries:
                    record = storage.get_latest_asset_check_execution_by_key(
                        [key], partition_filter=PartitionKeyFilter(key=country) if country else None)[key]
                    evaluation = record.event.dagster_event.event_specific_data
                    assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED, (key, country, metadata(evaluation))
                    assert evaluation.passed, (key, country, metadata(evaluation))
