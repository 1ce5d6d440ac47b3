"""The loader against DynamoDB Local: exact refreshes, no writes when nothing changed, convergence after crashes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import TEST_AWS_ENV, dynamodb_client
from tests.dynamodb.support import (
    T0,
    T1,
    T2,
    WireRecorder,
    assert_market_exact,
    expected_items,
    load,
    outcomes,
)
from tests.helpers import scan_table
from toptracks_dagster.dynamodb.table import DynamoDBWriteIncomplete
from toptracks_dagster.spotify.client import TopTracksOutcome

REPO = Path(__file__).resolve().parents[2]


def change_some_artists(catalog, artist_ids: list[str]) -> dict[str, set[str]]:
    """Revise twelve artists, make one 404 and drop one from the artist list; return who is affected how."""
    present = [a for a in artist_ids if catalog.top_tracks(a, "US")]
    revised = set(present[:12])
    for n, artist_id in enumerate(sorted(revised), start=1):
        catalog.set_revision(artist_id, n)
    gone_404, removed = present[12], present[13]
    catalog.set_missing(gone_404)
    return {"revised": revised, "404": {gone_404}, "removed": {removed}}


def test_refresh_is_exact_and_rewrites_only_what_changed(ddb, table, catalog, artist_ids):
    for market in ("US", "CA"):
        load(ddb, table, market, outcomes(catalog, artist_ids, market, T0))
    before = scan_table(ddb, table)
    before_us = {key: item["rank"] for key, item in before.items() if key[1].startswith("US#")}

    changed = change_some_artists(catalog, artist_ids)
    listed = [a for a in artist_ids if a not in changed["removed"]]
    after_us = {key: v["rank"] for key, v in expected_items(catalog, listed, "US").items()}
    # The revisions really drop, add and re-order tracks (else this test would prove little).
    for artist_id in changed["revised"]:
        old = {k[1] for k in before_us if k[0] == artist_id}
        new = {k[1] for k in after_us if k[0] == artist_id}
        assert old - new and new - old, f"revision of {artist_id} should drop and add tracks"
    assert any(before_us[k] != after_us[k] for k in before_us.keys() & after_us.keys()), "some rank moves"

    recorder = WireRecorder(ddb)
    stats = load(ddb, table, "US", outcomes(catalog, listed, "US", T1))
    after = scan_table(ddb, table)

    assert_market_exact(after, catalog, listed, "US")
    # CA was not refreshed: its items are untouched, byte for byte.
    assert {k: v for k, v in after.items() if k[1].startswith("CA#")} == {
        k: v for k, v in before.items() if k[1].startswith("CA#")
    }
    # Unchanged artists: no request touched them, and their items keep the first load's fetched_at.
    affected = set().union(*changed.values())
    touched = {artist for artist, _ in recorder.written("put") + recorder.written("delete")}
    assert touched <= affected
    assert touched >= changed["revised"] | changed["404"] | changed["removed"]
    for (artist_id, key), item in after.items():
        if artist_id not in affected and key.startswith("US#"):
            assert item["fetched_at"] == T0
    # Every put was a new or changed item, every delete a track that left; LoadStats agrees with the wire.
    puts, deletes = recorder.written("put"), recorder.written("delete")
    assert len(puts) == len(set(puts)) == stats.items_written
    assert set(deletes) == before_us.keys() - after_us.keys()
    assert stats.items_deleted == len(deletes)
    assert stats.stale_artist_items_deleted == sum(1 for k in before_us if k[0] in changed["removed"]) > 0
    assert stats.not_found >= 1 and stats.items_unchanged == len(after_us) - len(puts)


def test_unchanged_refresh_sends_zero_write_requests(ddb, table, catalog, artist_ids):
    load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T0))
    before = scan_table(ddb, table)
    recorder = WireRecorder(ddb)
    # A new fetch (new requested_at) of identical lists: nothing to write.
    stats = load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T1))
    assert recorder.writes == 0, recorder.operations
    assert recorder.operations["Query"] >= len(artist_ids)  # it did read: the zero is not from skipping work
    assert scan_table(ddb, table) == before
    assert stats.items_written == 0 and stats.items_deleted == 0 and stats.write_requests == 0
    assert stats.items_unchanged == len(before)


def test_duplicate_artist_outcomes_are_loaded_once(ddb, table, catalog, artist_ids):
    outs = outcomes(catalog, artist_ids[:5], "US")
    stats = load(ddb, table, "US", outs + outs[:2])
    assert stats.duplicate_artists == 2 and stats.artists == 5
    assert_market_exact(scan_table(ddb, table), catalog, artist_ids[:5], "US")


def test_error_outcome_keeps_the_latest_successful_list(ddb, table, catalog, artist_ids):
    load(ddb, table, "US", outcomes(catalog, artist_ids[:5], "US", T0))
    before = scan_table(ddb, table)
    outs = outcomes(catalog, artist_ids[:5], "US", T1)
    victim = next(o for o in outs if o.tracks)
    victim.status, victim.tracks = 500, None
    stats = load(ddb, table, "US", outs)
    assert stats.artists_kept_after_error == 1
    assert scan_table(ddb, table) == before


def test_outcome_of_another_market_is_refused(ddb, table, catalog, artist_ids):
    with pytest.raises(ValueError, match="market CA, not US"):
        load(ddb, table, "US", outcomes(catalog, artist_ids[:3], "CA"))


# ------------------------------------------------------------------------------------------------ crashes
class Crash(RuntimeError):
    pass


def crash_in_outcomes(outs, after: int):
    for n, outcome in enumerate(outs):
        if n == after:
            raise Crash(f"raw stream broke after {after} outcomes")
        yield outcome


def crash_after_batches(client, batches: int) -> None:
    """From the (batches+1)-th BatchWriteItem on, every call fails, as if the process lost its network."""
    calls = {"n": 0}

    def hook(**kwargs):
        calls["n"] += 1
        if calls["n"] > batches:
            raise Crash("connection lost mid-load")

    client.meta.events.register("before-call.dynamodb.BatchWriteItem", hook)


def crash_in_sweep(client) -> None:
    def hook(params, **kwargs):
        if "IndexName" in params:
            raise Crash("died during the sweep of removed artists")

    client.meta.events.register("before-parameter-build.dynamodb.Query", hook)


def revise(catalog, artist_ids):
    changed = change_some_artists(catalog, artist_ids)
    return [a for a in artist_ids if a not in changed["removed"]]


@pytest.mark.parametrize("crash", ["outcomes", "batches", "sweep"])
def test_crash_mid_load_then_rerun_equals_a_clean_run(
    ddb, dynamodb_local_endpoint, new_table, catalog, artist_ids, crash
):
    crashed, clean = new_table(), new_table()
    for table in (crashed, clean):
        load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T0))
    listed = revise(catalog, artist_ids)
    new_lists = outcomes(catalog, listed, "US", T1)

    load(ddb, clean, "US", new_lists)  # the same history, without a crash

    crashing_client = dynamodb_client(dynamodb_local_endpoint)
    if crash == "outcomes":
        source, expected_error = crash_in_outcomes(new_lists, len(new_lists) // 2), Crash
    elif crash == "batches":
        crash_after_batches(crashing_client, 2)
        source, expected_error = new_lists, DynamoDBWriteIncomplete
    else:
        crash_in_sweep(crashing_client)
        source, expected_error = new_lists, Crash
    with pytest.raises(expected_error):
        load(crashing_client, crashed, "US", source, concurrency=2)
    half_done = scan_table(ddb, crashed)
    assert half_done != scan_table(ddb, clean), "the crash should leave the table between the two states"

    load(ddb, crashed, "US", new_lists)
    assert scan_table(ddb, crashed) == scan_table(ddb, clean)
    assert_market_exact(scan_table(ddb, crashed), catalog, listed, "US")


def test_killed_process_then_rerun_equals_a_clean_run(ddb, dynamodb_local_endpoint, new_table, catalog, artist_ids):
    """A hard crash: the loading process dies (os._exit) in the middle of its writes, nothing cleaned up."""
    crashed, clean = new_table(), new_table()
    for table in (crashed, clean):
        load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T0))
    script = textwrap.dedent(f"""
        import os
        from tests.conftest import dynamodb_client
        from tests.dynamodb.support import T1, load, outcomes
        from tests.dynamodb.test_loader import revise
        from toptracks_dagster.dev.spotify_emulator import Catalog, demo_artist_ids

        catalog, ids = Catalog(seed=9), demo_artist_ids(40, seed=21)
        listed = revise(catalog, ids)
        client = dynamodb_client({dynamodb_local_endpoint!r})
        calls = []
        def die(**kwargs):
            calls.append(1)
            if len(calls) == 3:
                os._exit(17)  # mid-load: earlier batches applied or in flight, later ones never sent
        client.meta.events.register("before-call.dynamodb.BatchWriteItem", die)
        load(client, {crashed!r}, "US", outcomes(catalog, listed, "US", T1), concurrency=2)
    """)
    env = {**os.environ, **TEST_AWS_ENV, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 17, completed.stderr[-2000:]

    listed = revise(catalog, artist_ids)
    new_lists = outcomes(catalog, listed, "US", T1)
    load(ddb, clean, "US", new_lists)
    assert scan_table(ddb, crashed) != scan_table(ddb, clean)
    load(ddb, crashed, "US", new_lists)
    assert scan_table(ddb, crashed) == scan_table(ddb, clean)


def test_a_sequence_of_runs_converges_to_the_latest_lists(ddb, table, catalog, artist_ids):
    """Revisions back and forth, artists leaving and coming back: the table always equals the latest lists."""
    load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T0))
    catalog.set_revision(artist_ids[0], 3)
    load(ddb, table, "US", outcomes(catalog, artist_ids[5:], "US", T1))  # five artists left the list
    assert_market_exact(scan_table(ddb, table), catalog, artist_ids[5:], "US")
    catalog.set_revision(artist_ids[0], 0)
    stats = load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T2))  # and came back
    assert_market_exact(scan_table(ddb, table), catalog, artist_ids, "US")
    assert stats.items_written == len(expected_items(catalog, artist_ids[:5], "US"))


def test_a_failing_artist_stops_the_load_early(ddb):
    consumed = []

    def stream():
        for n in range(300):
            consumed.append(n)
            yield TopTracksOutcome(f"artist{n:016d}", "US", T0, 404, None)

    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        load(ddb, "no_such_table_anywhere", "US", stream())  # every artist's Query fails
    assert len(consumed) < 100  # it stopped reading the raw stream instead of failing 300 times
