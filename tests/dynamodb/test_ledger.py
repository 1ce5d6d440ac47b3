"""The load ledger and journal: an unchanged refresh reads and writes nothing; after a crash only the artists
the crashed load was touching are read again; on another table nothing is trusted; the table always ends exact."""

from __future__ import annotations

import json
from pathlib import Path

from dagster import instance_for_test

from tests.helpers import expected_keys, metadata_of, run_partition, scan_table
from toptracks_dagster.dynamodb import writer as writer_module


def ledger_path(prod_env) -> Path:
    return Path(prod_env["TOPTRACKS_RAW_DIR"]) / "top_tracks/market=US/ledger.json"


def journal_path(prod_env) -> Path:
    return Path(prod_env["TOPTRACKS_RAW_DIR"]) / "top_tracks/market=US/journal.json"


def test_unchanged_refresh_reads_nothing_and_changed_artists_are_read(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    ids = some_artist_ids[:10]
    artists_table.set_ids(ids)
    with instance_for_test() as instance:
        first = metadata_of(run_partition("US", instance), "top_tracks")
        assert first["table_state"].startswith("empty") and first["read_requests"] == 0
        assert ledger_path(prod_env).exists() and not journal_path(prod_env).exists()
        second = metadata_of(run_partition("US", instance), "top_tracks")
        assert second["table_state"] == "ledger"
        assert (second["read_requests"], second["write_requests"]) == (0, 0)
        assert second["artists_skipped_unchanged"] == len(ids)
        # Two artists change, one leaves the artists table: only those are read and written.
        emulator.catalog.set_revision(ids[0], 1)
        emulator.catalog.set_revision(ids[1], 1)
        artists_table.set_ids(ids[:-1])
        third = metadata_of(run_partition("US", instance), "top_tracks")
    assert third["artists_skipped_unchanged"] == len(ids) - 3
    assert third["read_requests"] == 3  # two changed artists + the removed one, each one consistent Query
    assert set(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == set(expected_keys(emulator.catalog, ids[:-1], ["US"]))


def test_crash_mid_load_leaves_a_journal_and_the_rerun_reads_only_its_artists(
    prod_env, artists_table, emulator, ddb, some_artist_ids, monkeypatch
):
    ids = some_artist_ids[:20]
    artists_table.set_ids(ids)
    with instance_for_test() as instance:
        run_partition("US", instance)
        for artist_id in ids:  # enough changes for several write batches
            emulator.catalog.set_revision(artist_id, 2)
        sent = {"batches": 0}
        real_send = writer_module.BatchWriter._send

        def crash_after_one_batch(self, batch):
            sent["batches"] += 1
            if sent["batches"] > 1:
                raise RuntimeError("simulated crash mid-load")
            return real_send(self, batch)

        monkeypatch.setattr(writer_module.BatchWriter, "_send", crash_after_one_batch)
        assert not run_partition("US", instance, raise_on_error=False).success
        assert journal_path(prod_env).exists(), "a failed load leaves its journal behind"
        journaled = json.loads(journal_path(prod_env).read_text())["artists"]
        assert 0 < len(journaled) <= len(ids)
        monkeypatch.setattr(writer_module.BatchWriter, "_send", real_send)
        rerun = metadata_of(run_partition("US", instance), "top_tracks")
        assert "journal" in rerun["table_state"]
        assert rerun["read_requests"] == len(journaled)  # the journal's artists only, no GSI sweep
        assert not journal_path(prod_env).exists()
    assert set(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == set(expected_keys(emulator.catalog, ids, ["US"]))


def test_ledger_of_another_table_is_not_trusted(prod_env, artists_table, emulator, ddb, some_artist_ids):
    ids = some_artist_ids[:5]
    artists_table.set_ids(ids)
    with instance_for_test() as instance:
        run_partition("US", instance)
        ddb.delete_table(TableName=prod_env["TOPTRACKS_TABLE"])
        ddb.get_waiter("table_not_exists").wait(TableName=prod_env["TOPTRACKS_TABLE"])
        recreated = metadata_of(run_partition("US", instance), "top_tracks")
    assert recreated["table_state"] == "empty (table created by this run)"
    assert recreated["items_written"] == len(expected_keys(emulator.catalog, ids, ["US"]))
    assert set(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == set(expected_keys(emulator.catalog, ids, ["US"]))
