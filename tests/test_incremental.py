"""Cost follows the change: requests, reads and writes grow with what changed, and the table stays exact."""

from __future__ import annotations

import json
from pathlib import Path

from dagster import instance_for_test

from tests.helpers import (
    check_results,
    expected_keys,
    partition_metadata,
    run_all_markets,
    run_request,
    scan_table,
)
from tests.test_orchestration import tick


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
        # A market never loaded is known empty (one GSI count): no read before writing, one read back per artist.
        assert table[market]["read_requests"] == len(some_artist_ids), table[market]
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
        # Only the new artists were read back (they had no items: not even a read to write them) + the sample.
        assert all(table[m]["read_requests"] == 0 for m in table), table

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


def test_unchanged_refresh_writes_nothing_and_its_checks_read_only_the_sample(
    prod_env, artists_table, emulator, ddb, some_artist_ids, monkeypatch
):
    monkeypatch.setenv("TOPTRACKS_CHECK_SAMPLE_SIZE", "4")
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        run_all_markets(instance)
        before = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
        result = run_all_markets(instance)
    assert scan_table(ddb, prod_env["TOPTRACKS_TABLE"]) == before
    table = partition_metadata(result, "top_tracks")
    for market in ("US", "CA"):
        assert table[market]["write_requests"] == 0 and table[market]["read_requests"] == 0
        assert table[market]["items_unchanged"] == sum(1 for _, k in before if k.startswith(f"{market}#"))
    checks = check_results(result)
    for market in ("US", "CA"):
        match = checks[("top_tracks_match_raw", market)]
        assert match.passed
        assert match.metadata["verified_artists"].value == 4  # the sample, not the 30 artists


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
        assert all(v["write_requests"] == 0 for v in partition_metadata(result, "top_tracks").values())
        # The raw partitions are not rewritten either, and their checks still ran on them.
        assert (raw_file.stat().st_mtime_ns, raw_file.stat().st_ino) == written
        raw = partition_metadata(result, "raw_top_tracks")
        assert {m: (v["partition_rewritten"], v["artists"]) for m, v in raw.items()} == {
            "US": (False, 8),
            "CA": (False, 8),
        }
        verdicts = {k: e.passed for k, e in check_results(loaded).items() if k[0].startswith("raw_")}
        assert {k: e.passed for k, e in check_results(result).items() if k[0].startswith("raw_")} == verdicts
        assert stamps() == first
        # Neither step parsed the partitions: the raw step took its numbers from the index written at publish
        # time, the load saw the fingerprint its ledger recorded. The numbers are the ones the full parse gave.
        parsed = partition_metadata(loaded, "raw_top_tracks")
        same = ("artists", "artists_with_tracks", "artists_not_found_404", "tracks", "mean_popularity")
        assert {m: [v[k] for k in same] for m, v in raw.items()} == {m: [v[k] for k in same] for m, v in parsed.items()}
        table = partition_metadata(result, "top_tracks")
        assert all("raw partition unchanged" in v["table_state"] and v["read_requests"] == 0 for v in table.values())
        assert {m: v["dagster/row_count"] for m, v in table.items()} == {
            m: v["dagster/row_count"] for m, v in partition_metadata(loaded, "top_tracks").items()
        }

        artists_table.add(*ids[8:])
        before = _requests(emulator)
        result = run_all_markets(instance, mode="due")
        assert _requests(emulator) - before == 2 * 2
        assert all(v["partition_rewritten"] for v in partition_metadata(result, "raw_top_tracks").values())
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
        assert raw["US"]["refresh_reason"] == "a test" and raw["US"]["artists_kept"] == 8
        refused = run_all_markets(instance, mode="artists", artist_ids=[some_artist_ids[20]], raise_on_error=False)
        assert not refused.success
    _exact(ddb, prod_env, emulator, some_artist_ids[:10])


def test_a_raw_partition_edited_by_hand_is_read_again_not_trusted_from_its_index(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    """The index and the ledger vouch for one exact partition (its fingerprint). A valid edit made by hand after
    publishing changes the fingerprint: the load parses the partition again and writes the edit."""
    from dagster import materialize

    from tests.helpers import ALL_ASSETS
    from toptracks_dagster.deployments import build_resources

    artists_table.set_ids(some_artist_ids[:6])
    raw_file = Path(prod_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks/market=US/top_tracks.jsonl"
    with instance_for_test() as instance:
        run_all_markets(instance)
        assert (raw_file.parent / "index.json").exists()
        records = [json.loads(line) for line in raw_file.read_text().splitlines()]
        edited = next(r for r in records if r.get("record") == "outcome" and r.get("tracks"))
        edited["tracks"][0]["name"] = "Renamed by hand"
        raw_file.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        result = materialize([ALL_ASSETS[2]], partition_key="US", resources=build_resources("prod"), instance=instance)
    table = partition_metadata(result, "top_tracks")["US"]
    assert "unchanged" not in table["table_state"] and table["items_written"] == 1, table
    item = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])[(edited["artist_id"], f"US#{edited['tracks'][0]['id']}")]
    assert item["name"] == "Renamed by hand"
