"""The load against DynamoDB Local: exact, cost following the change, repair of outside damage, quarantine of bad
records, the fetched_at fence between racing loads, and convergence after a killed load."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import TEST_AWS_ENV
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
from toptracks_dagster.dynamodb.load import MassDeletionRefused, serialize, wanted_items
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


def test_refresh_is_exact_and_writes_only_what_changed(ddb, table, catalog, artist_ids):
    for market in ("US", "CA"):
        load(ddb, table, market, outcomes(catalog, artist_ids, market, T0))
    before = scan_table(ddb, table)
    changed = change_some_artists(catalog, artist_ids)
    listed = [a for a in artist_ids if a not in changed["removed"]]
    recorder = WireRecorder(ddb)
    result = load(ddb, table, "US", outcomes(catalog, listed, "US", T1))
    after = scan_table(ddb, table)
    assert_market_exact(after, catalog, listed, "US")
    assert {k: v for k, v in after.items() if k[1].startswith("CA#")} == {
        k: v for k, v in before.items() if k[1].startswith("CA#")
    }
    affected = set().union(*changed.values())
    for (artist_id, key), item in after.items():
        if artist_id not in affected and key.startswith("US#"):
            assert item["fetched_at"] == T0  # unchanged lists are not rewritten
    # Writes only for the changed artists (the removed one included): unchanged ones keep their items as they are.
    assert recorder.writes == result.write_requests > 0
    assert result.artists_removed == 1 and result.mismatched.count == 0


def test_unchanged_refresh_sends_zero_write_requests(ddb, table, catalog, artist_ids):
    load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T0))
    before = scan_table(ddb, table)
    recorder = WireRecorder(ddb)
    result = load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T1))
    assert recorder.writes == 0, recorder.operations
    assert recorder.operations["Query"] >= len(artist_ids)  # it read the table: the zero is not from skipping
    assert scan_table(ddb, table) == before
    assert result.items_unchanged == len(before) and not result.changed


def test_a_full_reconcile_repairs_damage_from_outside(ddb, table, catalog, artist_ids):
    listed = artist_ids[:20]
    load(ddb, table, "US", outcomes(catalog, listed, "US", T0))
    items = scan_table(ddb, table)
    (a1, k1), (a2, k2), (a3, k3) = list(items)[:3]
    ddb.update_item(
        TableName=table,
        Key={"artist_id": {"S": a1}, "country_track_id": {"S": k1}},
        UpdateExpression="SET #n = :n",
        ExpressionAttributeNames={"#n": "name"},
        ExpressionAttributeValues={":n": {"S": "edited by hand"}},
    )
    ddb.update_item(
        TableName=table,
        Key={"artist_id": {"S": a2}, "country_track_id": {"S": k2}},
        UpdateExpression="SET popularity = :p",
        ExpressionAttributeValues={":p": {"N": "3"}},
    )
    ddb.delete_item(TableName=table, Key={"artist_id": {"S": a3}, "country_track_id": {"S": k3}})
    extra = {**items[(a1, k1)], "country_track_id": "US#" + "x" * 22, "id": "x" * 22}
    unlisted = {**items[(a1, k1)], "artist_id": artist_ids[30], "country_track_id": k1}
    for item in (extra, unlisted):
        ddb.put_item(TableName=table, Item=serialize(item))
    assert scan_table(ddb, table) != items

    result = load(ddb, table, "US", outcomes(catalog, listed, "US", T0), max_delete_share=0.2)

    assert_market_exact(scan_table(ddb, table), catalog, listed, "US")
    assert result.items_written == 3 and result.items_deleted == 2 and result.artists_removed == 1


def test_a_changed_artists_load_reads_only_them(ddb, table, catalog, artist_ids):
    load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T0))
    catalog.set_revision(artist_ids[0], 2)
    recorder = WireRecorder(ddb)
    result = load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T1), artists={artist_ids[0], "B" * 22})
    assert result.artists_read == 2 and recorder.operations["Query"] <= 4  # read, read back, the unlisted one
    assert_market_exact(scan_table(ddb, table), catalog, artist_ids, "US")


def test_an_unusable_answer_keeps_the_artists_items_and_names_it(ddb, table, catalog, artist_ids):
    load(ddb, table, "US", outcomes(catalog, artist_ids[:5], "US", T0))
    before = scan_table(ddb, table)
    outs = outcomes(catalog, artist_ids[:5], "US", T1)
    victim = next(o for o in outs if o.tracks)
    victim.status, victim.tracks, victim.error = 500, None, {"status": 500, "message": "HTTP 500 after 5 tries"}
    result = load(ddb, table, "US", outs)
    assert scan_table(ddb, table) == before
    assert result.quarantined.count == 1
    assert result.quarantined.first[0]["artist_id"] == victim.artist_id
    assert "HTTP 500" in result.quarantined.first[0]["reason"]


def test_an_oversized_item_costs_only_its_artist(ddb, table, catalog, artist_ids):
    outs = outcomes(catalog, artist_ids[:6], "US", T0)
    victim = next(o for o in outs if o.tracks)
    victim.tracks[0] = {**victim.tracks[0], "lyrics": "x" * 450_000}
    result = load(ddb, table, "US", outs)
    others = [o.artist_id for o in outs if o is not victim]
    items = scan_table(ddb, table)
    assert not any(artist == victim.artist_id for artist, _ in items)
    assert {k: v for k, v in items.items()} and set(expected_items(catalog, others, "US")) == set(items)
    assert result.quarantined.count == 1 and victim.artist_id in str(result.quarantined.first)
    assert "above 400 KB" in result.quarantined.first[0]["reason"]


def test_a_number_dynamodb_cannot_return_costs_only_its_artist(ddb, table, catalog, artist_ids):
    outs = outcomes(catalog, artist_ids[:4], "US", T0)
    big, bad = [o for o in outs if o.tracks][:2]
    big.tracks[0] = {**big.tracks[0], "duration_ms": 10**37, "score": 0.1}  # both fit, and come back exact
    bad.tracks[1] = {**bad.tracks[1], "duration_ms": 10**40, "score": 1.5e300}  # cannot be read back
    result = load(ddb, table, "US", outs)
    items = scan_table(ddb, table)
    stored = items[(big.artist_id, f"US#{big.tracks[0]['id']}")]
    assert stored["duration_ms"] == 10**37 and stored["score"] == Decimal("0.1")
    assert result.quarantined.count == 1
    reason = result.quarantined.first[0]["reason"]
    assert result.quarantined.first[0]["artist_id"] == bad.artist_id and "'duration_ms'" in reason
    assert bad.tracks[1]["id"] in reason
    assert not any(artist == bad.artist_id for artist, _ in items)


def test_an_older_load_never_overwrites_newer_data(ddb, table, catalog, artist_ids):
    """Two loads racing on one table (as from two Dagster instances): the one with older lists arrives last."""
    listed = artist_ids[:10]
    load(ddb, table, "US", outcomes(catalog, listed, "US", T0))
    catalog.set_revision(listed[0], 4)
    newer = outcomes(catalog, listed, "US", T2)
    catalog.set_revision(listed[0], 2)
    older = outcomes(catalog, listed, "US", T1)
    load(ddb, table, "US", newer)
    result = load(ddb, table, "US", older)
    catalog.set_revision(listed[0], 4)
    assert_market_exact(scan_table(ddb, table), catalog, listed, "US")
    assert result.superseded.count == 1 and result.items_written == 0


def test_a_load_that_would_empty_most_of_a_market_needs_consent(ddb, table, catalog, artist_ids):
    load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T0))
    before = scan_table(ddb, table)
    with pytest.raises(MassDeletionRefused, match="toptracks/allow_mass_delete"):
        load(ddb, table, "US", outcomes(catalog, artist_ids[:5], "US", T1), max_delete_share=0.2)
    assert scan_table(ddb, table) == before
    load(ddb, table, "US", outcomes(catalog, artist_ids[:5], "US", T1), max_delete_share=0.2, delete_allowed=True)
    assert_market_exact(scan_table(ddb, table), catalog, artist_ids[:5], "US")


def test_a_repeated_track_is_one_item_and_a_404_has_none():
    track = {"id": "a" * 22, "name": "Song", "popularity": 50}
    twice = TopTracksOutcome("b" * 22, "US", T0, 200, [track, {**track, "name": "again"}])
    assert list(wanted_items("US", twice).values())[0]["name"] == "Song"
    assert wanted_items("US", TopTracksOutcome("b" * 22, "US", T0, 404, None)) == {}
    missing = wanted_items("US", TopTracksOutcome("b" * 22, "US", T0, 200, [{"id": "c" * 22}]))
    assert list(missing.values())[0]["popularity"] == 0 and list(missing.values())[0]["popularity_missing"] is True


def test_killed_process_then_rerun_equals_a_clean_run(ddb, dynamodb_local_endpoint, new_table, catalog, artist_ids):
    """A hard crash: the loading process dies (os._exit) in the middle of its writes, nothing cleaned up."""
    crashed, clean = new_table(), new_table()
    for table in (crashed, clean):
        load(ddb, table, "US", outcomes(catalog, artist_ids, "US", T0))
    script = textwrap.dedent(f"""
        import os
        from tests.conftest import dynamodb_client
        from tests.dynamodb.support import T1, load, outcomes
        from tests.dynamodb.test_load import change_some_artists
        from toptracks_dagster.dev.spotify_emulator import Catalog, demo_artist_ids

        catalog, ids = Catalog(seed=9), demo_artist_ids(40, seed=21)
        changed = change_some_artists(catalog, ids)
        client = dynamodb_client({dynamodb_local_endpoint!r})
        calls = []
        def die(**kwargs):
            calls.append(1)
            if len(calls) == 2:
                os._exit(17)
        client.meta.events.register("before-call.dynamodb.TransactWriteItems", die)
        load(client, {crashed!r}, "US", outcomes(catalog, [a for a in ids if a not in changed["removed"]], "US", T1))
    """)
    env = {**os.environ, **TEST_AWS_ENV, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 17, completed.stderr[-2000:]
    changed = change_some_artists(catalog, artist_ids)
    listed = [a for a in artist_ids if a not in changed["removed"]]
    load(ddb, clean, "US", outcomes(catalog, listed, "US", T1))
    assert scan_table(ddb, crashed) != scan_table(ddb, clean)
    load(ddb, crashed, "US", outcomes(catalog, listed, "US", T1))
    assert scan_table(ddb, crashed) == scan_table(ddb, clean)
