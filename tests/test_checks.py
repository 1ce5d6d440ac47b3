"""Asset checks: evaluated inside the asset steps, one result per check and market, each made to fail on purpose
(bad ids in MariaDB, a Spotify stand-in serving bad data, edited DynamoDB items) with its effect asserted."""

from __future__ import annotations

from dagster import AssetCheckSeverity, instance_for_test, materialize
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,
)

from tests.helpers import (
    ALL_ASSETS,
    check_results,
    run_all_markets,
    run_partition,
    scan_table,
)
from toptracks_dagster.artists_db.assets import ARTIST_IDS_CHECK_SPECS
from toptracks_dagster.deployments import build_resources
from toptracks_dagster.dynamodb.assets import CHECK_SPECS as TABLE_CHECK_SPECS
from toptracks_dagster.spotify.checks import RAW_CHECK_SPECS, evaluate_raw_checks
from toptracks_dagster.spotify.client import TopTracksOutcome
from toptracks_dagster.spotify.raw import PartitionMerge

ALL_SPECS = [*ARTIST_IDS_CHECK_SPECS, *RAW_CHECK_SPECS, *TABLE_CHECK_SPECS]


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_every_check_passes_once_per_market_in_one_run_and_is_recorded(prod_env, artists_table, some_artist_ids):
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        result = run_all_markets(instance)
        assert result.success
        found = check_results(result)
        expected = {
            (f"{s.asset_key.to_user_string()}:{s.name}", m)
            for s in ALL_SPECS
            for m in (("US", "CA") if s.partitions_def else (None,))
        }
        assert set(found) == expected
        assert all(e.passed for e in found.values()), {k: e.description for k, e in found.items() if not e.passed}
        for spec in RAW_CHECK_SPECS + TABLE_CHECK_SPECS:
            for market in ("US", "CA"):
                record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                    [spec.key], partition_filter=PartitionKeyFilter(key=market)
                )[spec.key]
                assert record.status == AssetCheckExecutionRecordStatus.SUCCEEDED, (spec.name, market)
        single = run_partition("US", instance)
        assert {(e.check_name, e.partition) for e in single.get_asset_check_evaluations()} == {
            (s.name, "US" if s.partitions_def else None) for s in ALL_SPECS
        }


def test_no_valid_id_blocks_fetch_and_load_and_keeps_the_published_list(prod_env, artists_table, ddb, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:5])
    with instance_for_test() as instance:
        run_partition("US", instance)
        before = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
        artists_table.set_ids(["not-an-id", "../../v1/me", "  "])
        result = run_partition("US", instance, raise_on_error=False)
        assert not result.success
        assert materialized(result) == {"artist_ids"}
        failed = check_results(result)[("artist_ids:has_valid_ids", "US")]
        assert not failed.passed and failed.blocking and failed.severity == AssetCheckSeverity.ERROR
        # The published list is still the good one: the table stays whole even when top_tracks runs alone.
        alone = materialize([ALL_ASSETS[-1]], partition_key="US", resources=build_resources("prod"), instance=instance)
        assert alone.success
    assert scan_table(ddb, prod_env["TOPTRACKS_TABLE"]) == before


def test_merge_profile_flags_long_lists_duplicates_bad_fields_and_404_share():
    import io

    good = {
        "id": "A" * 22,
        "name": "x",
        "popularity": 50,
        "type": "track",
        "uri": "spotify:track:" + "A" * 22,
        "duration_ms": 1,
        "explicit": False,
        "is_local": False,
        "track_number": 1,
        "disc_number": 1,
        "artists": [{"id": "B" * 22, "name": "b"}],
        "album": {"id": "C" * 22, "name": ""},
        "external_urls": {},
        "preview_url": None,
    }
    ids = [f"{c}" * 22 for c in "DEFG"]
    outcomes = [
        TopTracksOutcome(
            ids[0], "US", "2026-01-01T00:00:00.000Z", 200, [dict(good, id=f"{i:022d}") for i in range(11)]
        ),
        TopTracksOutcome(ids[1], "US", "2026-01-01T00:00:00.000Z", 200, [good, good]),
        TopTracksOutcome(ids[2], "US", "2026-01-01T00:00:00.000Z", 200, [dict(good, popularity="high")]),
        TopTracksOutcome(ids[3], "US", "2026-01-01T00:00:00.000Z", 404, None),
    ]
    merge = PartitionMerge(io.StringIO(), "US", ids, [], {}, planned=4)
    for outcome in outcomes:
        merge.push(outcome)
    results = {o.name: o for o in evaluate_raw_checks(merge.finish(), {}, None, max_404_share=0.1)}
    assert results["complete"].passed and results["not_empty"].passed
    assert not results["at_most_10"].passed
    assert not results["no_duplicates"].passed
    assert not results["fields_valid"].passed
    assert results["fields_valid"].metadata["invalid_tracks"] == 1
    assert not results["share_404"].passed
    assert results["share_404"].severity == AssetCheckSeverity.WARN


def test_all_404_is_not_published_and_the_table_keeps_its_data(prod_env, artists_table, emulator, ddb, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:6])
    with instance_for_test() as instance:
        run_partition("US", instance)
        before = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
        for artist_id in some_artist_ids[:6]:
            emulator.catalog.set_missing(artist_id)
        result = run_partition("US", instance, raise_on_error=False)
        assert not result.success and "top_tracks" not in materialized(result)
        assert not check_results(result)[("raw_top_tracks:not_empty", "US")].passed
        # Re-running the load alone loads the last good (published) partition: nothing is deleted.
        alone = materialize([ALL_ASSETS[-1]], partition_key="US", resources=build_resources("prod"), instance=instance)
        assert alone.success
    assert scan_table(ddb, prod_env["TOPTRACKS_TABLE"]) == before


def test_a_failed_error_check_fails_the_run(prod_env, artists_table, ddb, some_artist_ids, emulator):
    """Items that still differ from the raw data when the load reads them back fail the ERROR check `exact`, and
    with it the run."""
    from toptracks_dagster.dynamodb import load

    artists_table.set_ids(some_artist_ids[:8])
    with instance_for_test() as instance:
        assert run_partition("US", instance).success
        for artist_id in some_artist_ids[:8]:
            emulator.catalog.set_revision(artist_id, 2)
        real = load.artist_items
        reads = {"n": 0}

        def another_writer_between(client, table, market, artist_id):  # every read back sees a foreign edit
            found, pages = real(client, table, market, artist_id)
            reads["n"] += 1
            if reads["n"] > 8:
                found = {key: {**item, "name": "changed by someone else"} for key, item in found.items()}
            return found, pages

        load.artist_items = another_writer_between
        try:
            result = run_partition("US", instance, raise_on_error=False)
        finally:
            load.artist_items = real
    exact = check_results(result)[("top_tracks:exact", "US")]
    assert not exact.passed and exact.severity == AssetCheckSeverity.ERROR
    assert exact.metadata["mismatched_items"].value > 0
    assert not result.success


def test_a_partition_altered_before_read_back_is_not_published(
    prod_env, artists_table, emulator, ddb, some_artist_ids, monkeypatch
):
    """The merged partition is read back whole and compared byte for byte (SHA-256) with what was written: an
    object that lost its tail on the way (a full disk, a failing upload spool) fails the completeness check, is
    not published, and the previous partition and the table stay as they were."""
    from pathlib import Path

    from toptracks_dagster.raw_storage.resources import PendingObject

    artists_table.set_ids(some_artist_ids[:6])
    path = Path(prod_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks/market=US/top_tracks.jsonl"
    with instance_for_test() as instance:
        run_partition("US", instance)
        published, before = path.read_bytes(), scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
        for artist_id in some_artist_ids[:6]:
            emulator.catalog.set_revision(artist_id, 3)
        real_sha256 = PendingObject.sha256

        def truncated_then_read(self):
            data = self.path.read_bytes()
            self.path.write_bytes(data[: len(data) // 2])
            return real_sha256(self)

        monkeypatch.setattr(PendingObject, "sha256", truncated_then_read)
        result = run_partition("US", instance, raise_on_error=False)
    complete = check_results(result)[("raw_top_tracks:complete", "US")]
    assert not complete.passed and "not what was written" in complete.description
    assert not result.success and "top_tracks" not in materialized(result)
    assert path.read_bytes() == published
    assert scan_table(ddb, prod_env["TOPTRACKS_TABLE"]) == before
