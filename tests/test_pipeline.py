"""The asset graph end to end on the prod deployment: MariaDB -> Spotify emulator -> DynamoDB Local."""

from __future__ import annotations

import json
from pathlib import Path

from dagster import AssetKey, instance_for_test

from tests.helpers import expected_keys, metadata_of, run_partition, scan_table


def test_two_countries_load_exactly_what_the_endpoint_serves(prod_env, artists_table, emulator, ddb, some_artist_ids):
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        for country in ("US", "CA"):
            run_partition(country, instance)
    items = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
    expected = expected_keys(emulator.catalog, some_artist_ids, ["US", "CA"])
    assert expected, "the catalog should serve tracks for these artists"
    assert set(items) == set(expected)
    for key, item in items.items():
        market, track_id = key[1].split("#")
        assert item["country"] == market and item["id"] == track_id
        assert item["rank"] == expected[key]
        track = emulator.catalog.top_tracks(key[0], market)[expected[key] - 1]
        assert item["name"] == track["name"] and item["popularity"] == track["popularity"]
        assert item["fetched_at"]


def test_same_track_in_two_markets_is_two_items(prod_env, artists_table, emulator, ddb, some_artist_ids):
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        run_partition("US", instance)
        run_partition("CA", instance)
    items = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
    us = {(a, sk.split("#")[1]) for a, sk in items if sk.startswith("US#")}
    ca = {(a, sk.split("#")[1]) for a, sk in items if sk.startswith("CA#")}
    shared = us & ca
    assert shared, "the emulator serves overlapping top lists for US and CA"
    artist, track = next(iter(shared))
    assert items[(artist, f"US#{track}")]["country"] == "US"
    assert items[(artist, f"CA#{track}")]["country"] == "CA"


def test_rerun_leaves_identical_table_and_writes_nothing(prod_env, artists_table, ddb, some_artist_ids):
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        run_partition("US", instance)
        before = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
        second = run_partition("US", instance)
    after = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
    assert after == before
    table_metadata = metadata_of(second, "top_tracks")
    assert table_metadata["write_requests"] == 0
    assert table_metadata["items_written"] == 0
    assert table_metadata["items_unchanged"] == len(before)
    # A full refresh reads what it claims is right: every artist's items, one Query each.
    assert table_metadata["artists_read"] == len(some_artist_ids)
    # Nothing changed in the table: the load is an observation, not a new materialization.
    assert not [e for e in second.get_asset_materialization_events() if e.asset_key.to_user_string() == "top_tracks"]


def test_malformed_ids_never_reach_the_api(prod_env, artists_table, emulator, ddb, some_artist_ids):
    good = some_artist_ids[:5]
    bad = ["../../v1/me", "short", "x" * 22 + "/", "4Z8W4fKeB5YxbusRsdQVPb?market=XX", ""]
    artists_table.set_ids([f"  {good[0]}  ", *good, *bad])
    with instance_for_test() as instance:
        result = run_partition("US", instance)
    ids_metadata = metadata_of(result, "artist_ids")
    assert ids_metadata["valid_ids"] == 5
    assert ids_metadata["invalid_ids"] == len(bad)
    assert ids_metadata["duplicate_rows"] == 1
    stats = emulator.stats.as_dict()
    assert stats["requests"] == 5, stats  # one request per valid artist, nothing else
    raw_file = Path(prod_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks/market=US/top_tracks.jsonl"
    requested = [json.loads(line) for line in raw_file.read_text().splitlines()[1:-1]]
    assert sorted(r["artist_id"] for r in requested) == sorted(good)


def test_each_asset_materializes_on_its_own(prod_env, artists_table, emulator, ddb, some_artist_ids):
    from dagster import materialize

    from toptracks_dagster.artists_db.assets import artist_ids
    from toptracks_dagster.deployments import build_resources
    from toptracks_dagster.dynamodb.assets import top_tracks
    from toptracks_dagster.spotify.assets import raw_top_tracks

    artists_table.set_ids(some_artist_ids[:8])
    resources = build_resources("prod")
    with instance_for_test() as instance:
        assert materialize([artist_ids], partition_key="CA", resources=resources, instance=instance).success
        raw = materialize([raw_top_tracks], partition_key="CA", resources=resources, instance=instance)
        assert metadata_of(raw, "raw_top_tracks")["artists_fetched"] == 8
        table = materialize([top_tracks], partition_key="CA", resources=resources, instance=instance)
        written = metadata_of(table, "top_tracks")["items_written"]
    assert written == len(expected_keys(emulator.catalog, some_artist_ids[:8], ["CA"]))
    assert len(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == written


def test_single_run_backfill_handles_a_partition_range(prod_env, artists_table, emulator, ddb, some_artist_ids):
    """BackfillPolicy.single_run: one run covers every market (the assets loop over context.partition_keys)."""
    from dagster import materialize

    from tests.helpers import ALL_ASSETS
    from toptracks_dagster.deployments import build_resources

    artists_table.set_ids(some_artist_ids[:6])
    with instance_for_test() as instance:
        result = materialize(
            ALL_ASSETS,
            resources=build_resources("prod"),
            instance=instance,
            tags={"dagster/asset_partition_range_start": "US", "dagster/asset_partition_range_end": "CA"},
        )
        assert result.success
        materialized = instance.get_materialized_partitions(AssetKey("top_tracks"))
    assert materialized == {"US", "CA"}
    assert set(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == set(
        expected_keys(emulator.catalog, some_artist_ids[:6], ["US", "CA"])
    )
    per_market = {
        event.partition: event.event_specific_data.materialization.metadata["dagster/row_count"].value
        for event in result.get_asset_materialization_events()
        if event.asset_key.to_user_string() == "top_tracks"
    }
    expected = expected_keys(emulator.catalog, some_artist_ids[:6], ["US", "CA"])
    assert per_market == {m: sum(1 for _, key in expected if key.startswith(f"{m}#")) for m in ("US", "CA")}
