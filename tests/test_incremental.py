"""Cost follows the change: requests, reads and writes grow with what changed, and the table stays exact."""

from __future__ import annotations

import json
from pathlib import Path

from dagster import instance_for_test

from tests.helpers import (
    expected_keys,
    partition_metadata,
    run_all_markets,
    run_request,
    scan_table,
)
from tests.test_orchestration import tick


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def _requests(emulator) -> int:
    return emulator.stats.as_dict()["requests"]


def _exact(ddb, prod_env, emulator, ids):
    assert set(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == set(expected_keys(emulator.catalog, ids, ["US", "CA"]))


def test_first_load_reads_only_what_it_wrote_and_one_run_covers_every_market(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        result = run_all_markets(instance)
    table = partition_metadata(result, "top_tracks")
    assert set(table) == {"US", "CA"}
    for market in ("US", "CA"):
        # A market never loaded is known empty (one GSI count): no read before writing; a sample of the written
        # artists (TOPTRACKS_CHECK_SAMPLE_SIZE, 20) is read back.
        assert table[market]["read_requests"] == 20, table[market]
        assert table[market]["items_written"] > 0
    assert _requests(emulator) == 2 * len(some_artist_ids)
    _exact(ddb, prod_env, emulator, some_artist_ids)


def test_added_artists_cost_k_times_markets_and_removed_artists_cost_no_request(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    base, added = some_artist_ids[:20], some_artist_ids[20:23]
    artists_table.set_ids(base)
    with instance_for_test() as instance:
        first = tick(None, artists_table)
        run_request(first.run_requests[0], instance)
        _exact(ddb, prod_env, emulator, base)

        artists_table.add(*added)
        before = _requests(emulator)
        second = tick(first.cursor, artists_table)
        assert len(second.run_requests) == 1  # one run for every market
        result = run_request(second.run_requests[0], instance)
        assert _requests(emulator) - before == len(added) * 2
        _exact(ddb, prod_env, emulator, base + added)
        raw = partition_metadata(result, "raw_top_tracks")
        assert {m: raw[m]["artists_fetched"] for m in raw} == {"US": 3, "CA": 3}
        table = partition_metadata(result, "top_tracks")
        # The load read the new artists (and a rotating sample of the others), not the whole market.
        assert all(table[m]["artists_read"] == len(added) + 20 for m in table), table

        artists_table.remove(*base[:4])  # 4 of 23: below the mass-deletion share
        before = _requests(emulator)
        third = tick(second.cursor, artists_table)
        result = run_request(third.run_requests[0], instance)
        assert _requests(emulator) == before  # removed artists: zero Spotify requests
        _exact(ddb, prod_env, emulator, base[4:] + added)
        assert {m: v["artists_removed"] for m, v in partition_metadata(result, "top_tracks").items()} == {
            "US": 4,
            "CA": 4,
        }


def test_an_unchanged_due_run_reads_nothing_and_claims_no_new_data(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        run_all_markets(instance)
        before = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
        requests = _requests(emulator)
        result = run_all_markets(instance, mode="due")
        assert result.success
        assert materialized(result) == {"artist_ids"}  # neither raw_top_tracks nor top_tracks: nothing changed
        assert _requests(emulator) == requests
        assert partition_metadata(result, "top_tracks") == {}  # the load did not run: not even an observation
        assert scan_table(ddb, prod_env["TOPTRACKS_TABLE"]) == before


def test_a_full_refresh_with_unchanged_lists_repairs_outside_damage(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    """Damage from outside (an edited name, a deleted market) is repaired by the next full refresh, whatever the
    raw data say: the load reads every artist's items, it trusts no record of what it wrote."""
    artists_table.set_ids(some_artist_ids)
    table = prod_env["TOPTRACKS_TABLE"]
    with instance_for_test() as instance:
        run_all_markets(instance)
        before = scan_table(ddb, table)
        (artist, key), _ = next(iter(before.items()))
        ddb.update_item(
            TableName=table,
            Key={"artist_id": {"S": artist}, "country_track_id": {"S": key}},
            UpdateExpression="SET #n = :n",
            ExpressionAttributeNames={"#n": "name"},
            ExpressionAttributeValues={":n": {"S": "edited by hand"}},
        )
        for artist_id, sort_key in [k for k in before if k[1].startswith("CA#")]:
            ddb.delete_item(TableName=table, Key={"artist_id": {"S": artist_id}, "country_track_id": {"S": sort_key}})
        result = run_all_markets(instance, mode="full")
    after = scan_table(ddb, table)
    # Equal but for fetched_at: a repaired item carries the time of the list that repaired it.
    assert {k: {**v, "fetched_at": ""} for k, v in after.items()} == {
        k: {**v, "fetched_at": ""} for k, v in before.items()
    }
    written = {m: v["items_written"] for m, v in partition_metadata(result, "top_tracks").items()}
    assert written == {"US": 1 if key.startswith("US#") else 0, "CA": sum(1 for _, k in before if k.startswith("CA#"))}


def test_stalest_mode_refreshes_new_artists_first_then_the_oldest_lists(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    ids = some_artist_ids[:10]
    artists_table.set_ids(ids[:8])
    with instance_for_test() as instance:
        run_all_markets(instance)
        raw_file = Path(prod_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks/market=US/top_tracks.jsonl"
        stamps = {
            r["artist_id"]: r["requested_at"]
            for r in map(json.loads, raw_file.read_text().splitlines())
            if r["record"] == "outcome"
        }
        oldest = min(stamps, key=lambda a: (stamps[a], a))
        artists_table.add(*ids[8:])
        before = _requests(emulator)
        result = run_all_markets(instance, mode="stalest", limit=3)
        assert _requests(emulator) - before == 3 * 2
        raw = partition_metadata(result, "raw_top_tracks")
        assert raw["US"]["artists_new"] == 2 and raw["US"]["artists_fetched"] == 3
        refreshed = {
            r["artist_id"]: r["requested_at"]
            for r in map(json.loads, raw_file.read_text().splitlines())
            if r["record"] == "outcome"
        }
        assert refreshed[oldest] > stamps[oldest]  # the oldest stored list was the third pair refreshed
        assert sum(1 for a in ids[:8] if refreshed[a] != stamps[a]) == 1
    _exact(ddb, prod_env, emulator, ids)


def test_due_mode_fetches_new_artists_and_aged_lists_only(prod_env, artists_table, emulator, ddb, some_artist_ids):
    """`toptracks run`'s default: a run right after another sends no request; new artists cost one request per
    market; lists older than max_age_hours are fetched again, the others kept as they are."""
    ids = some_artist_ids[:10]
    artists_table.set_ids(ids[:8])
    raw_file = Path(prod_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks/market=US/top_tracks.jsonl"

    def stamps() -> dict[str, str]:
        records = map(json.loads, raw_file.read_text().splitlines())
        return {r["artist_id"]: r["requested_at"] for r in records if r["record"] == "outcome"}

    with instance_for_test() as instance:
        loaded = run_all_markets(instance, mode="due")  # nothing stored: every list is due
        assert _requests(emulator) == 8 * 2
        first = stamps()

        before = _requests(emulator)
        written = raw_file.stat().st_mtime_ns, raw_file.stat().st_ino
        result = run_all_markets(instance, mode="due")
        assert _requests(emulator) == before  # nothing new, nothing aged: no request, no write
        assert (raw_file.stat().st_mtime_ns, raw_file.stat().st_ino) == written
        assert materialized(result) == {"artist_ids"}
        assert stamps() == first
        assert loaded.success

        artists_table.add(*ids[8:])
        before = _requests(emulator)
        result = run_all_markets(instance, mode="due")
        assert _requests(emulator) - before == 2 * 2
        assert all(v["rewritten"] for v in partition_metadata(result, "raw_top_tracks").values())
        second = stamps()
        assert {a for a in second if second[a] != first.get(a)} == set(ids[8:])

        before = _requests(emulator)
        run_all_markets(instance, mode="due", max_age_hours=0)  # every stored list has aged out
        assert _requests(emulator) - before == 10 * 2
    _exact(ddb, prod_env, emulator, ids)


def test_artists_mode_refreshes_only_the_given_artists(prod_env, artists_table, emulator, ddb, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:10])
    with instance_for_test() as instance:
        run_all_markets(instance)
        before = _requests(emulator)
        result = run_all_markets(instance, mode="artists", artist_ids=some_artist_ids[2:4], reason="a test")
        assert _requests(emulator) - before == 4
        raw = partition_metadata(result, "raw_top_tracks")
        assert raw["US"]["artists_fetched"] == 2 and raw["US"]["artists"] == 10
        refused = run_all_markets(instance, mode="artists", artist_ids=[some_artist_ids[20]], raise_on_error=False)
        assert not refused.success
    _exact(ddb, prod_env, emulator, some_artist_ids[:10])


def test_a_raw_partition_edited_by_hand_is_loaded_when_top_tracks_is_materialized_alone(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    """Materializing top_tracks on its own is a full reconcile of the published raw partition."""
    from dagster import materialize

    from tests.helpers import ALL_ASSETS
    from toptracks_dagster.deployments import build_resources

    artists_table.set_ids(some_artist_ids[:6])
    raw_file = Path(prod_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks/market=US/top_tracks.jsonl"
    with instance_for_test() as instance:
        run_all_markets(instance)
        records = [json.loads(line) for line in raw_file.read_text().splitlines()]
        edited = next(r for r in records if r.get("record") == "outcome" and r.get("tracks"))
        edited["tracks"][0]["name"] = "Renamed by hand"
        raw_file.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        result = materialize([ALL_ASSETS[-1]], partition_key="US", resources=build_resources("prod"), instance=instance)
    table = partition_metadata(result, "top_tracks")["US"]
    assert table["items_written"] == 1 and table["artists_read"] == 6, table
    item = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])[(edited["artist_id"], f"US#{edited['tracks'][0]['id']}")]
    assert item["name"] == "Renamed by hand"
