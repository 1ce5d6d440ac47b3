"""`artists` and `artist_ids` on a real MariaDB: the guard compares with the published snapshot, not the instance."""

from __future__ import annotations

import json

from dagster import AssetCheckSeverity, AssetKey, instance_for_test, materialize
from dagster._core.definitions.observe import observe

from tests.artists_db.test_resources import mysql_db
from tests.test_last_good_data import local_instance_home, toptracks
from toptracks_dagster.artists_db.assets import ARTIST_IDS_KEY, artist_ids, artists, read_snapshot
from toptracks_dagster.config import ALLOW_MASS_DELETE_TAG
from toptracks_dagster.dev.spotify_emulator import demo_artist_ids
from toptracks_dagster.raw_storage.resources import LocalRawStorage


def resources(artists_table, tmp_path) -> dict:
    return {"artists_db": mysql_db(artists_table), "raw_storage": LocalRawStorage(base_dir=str(tmp_path / "raw"))}


def run(artists_table, tmp_path, **tags):
    # A fresh instance every time: the guard must not depend on what an instance remembers.
    with instance_for_test() as instance:
        return materialize(
            [artist_ids],
            partition_key="US",
            resources=resources(artists_table, tmp_path),
            instance=instance,
            tags=tags,
            raise_on_error=False,
        )


def evaluation(result, name: str):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


def test_a_collapse_is_refused_against_the_published_snapshot_even_in_a_fresh_instance(artists_table, tmp_path):
    storage = resources(artists_table, tmp_path)["raw_storage"]
    ids = demo_artist_ids(200, seed=5)
    artists_table.set_ids(ids)
    assert run(artists_table, tmp_path).success
    published = read_snapshot(storage)
    assert len(published["ids"]) == 200 and published["fingerprint"] == mysql_db(artists_table).fingerprint()

    artists_table.set_ids(ids[:3])
    refused = run(artists_table, tmp_path)
    assert not refused.success
    check = evaluation(refused, "count_stable")
    assert not check.passed and check.severity == AssetCheckSeverity.ERROR
    assert "from 200 (published) to 3" in check.description
    assert read_snapshot(storage) == published

    allowed = run(artists_table, tmp_path, **{ALLOW_MASS_DELETE_TAG: "true"})
    assert allowed.success
    assert sorted(read_snapshot(storage)["ids"]) == sorted(ids[:3])


def test_no_valid_id_is_refused_and_nothing_is_published(artists_table, tmp_path):
    artists_table.set_ids(["not-an-id", "../../v1/me", "  "])
    result = run(artists_table, tmp_path)
    assert not result.success
    check = evaluation(result, "has_valid_ids")
    assert not check.passed and check.blocking and check.severity == AssetCheckSeverity.ERROR
    assert not (tmp_path / "raw" / ARTIST_IDS_KEY).exists()


def test_invalid_rows_warn_and_are_listed(artists_table, tmp_path, some_artist_ids):
    artists_table.set_ids([*some_artist_ids[:4], "bad id"])
    result = run(artists_table, tmp_path)
    assert result.success
    check = evaluation(result, "rows_valid")
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert check.metadata["invalid_row_values"].value == ["'bad id'"]


def test_a_corrupt_snapshot_blocks_until_consent(artists_table, tmp_path, some_artist_ids):
    path = tmp_path / "raw" / ARTIST_IDS_KEY
    path.parent.mkdir(parents=True)
    path.write_text("{truncated")
    artists_table.set_ids(some_artist_ids[:4])
    refused = run(artists_table, tmp_path)
    assert not refused.success and str(path.resolve()) in evaluation(refused, "count_stable").description
    assert path.read_text() == "{truncated"
    assert run(artists_table, tmp_path, **{ALLOW_MASS_DELETE_TAG: "true"}).success
    assert len(json.loads(path.read_text())["ids"]) == 4


def test_the_source_is_observed_with_its_fingerprint_as_data_version(artists_table, tmp_path, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:6])
    with instance_for_test() as instance:
        observe([artists], resources=resources(artists_table, tmp_path), instance=instance)
        record = instance.fetch_observations(AssetKey("artists"), limit=1).records[0]
    observation = record.asset_observation
    assert observation.tags["dagster/data_version"] == mysql_db(artists_table).fingerprint()
    assert observation.metadata["dagster/row_count"].value == 6
    assert artists_table.database in observation.metadata["source"].value
    assert AssetKey("artists") in {dep.asset_key for dep in artist_ids.specs_by_key[AssetKey("artist_ids")].deps}


def test_artist_list_collapse_is_refused_by_the_cli_without_consent(
    prod_env, artists_table, ddb, some_artist_ids, tmp_path
):
    from tests.helpers import scan_table

    local_instance_home(tmp_path)
    artists_table.set_ids(some_artist_ids)
    assert toptracks(tmp_path, "run").returncode == 0
    before = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
    artists_table.set_ids(some_artist_ids[:3])
    refused = toptracks(tmp_path, "run")
    assert refused.returncode == 1
    assert "count_stable" in refused.stderr and "fell from 30 (published) to 3" in refused.stderr
    assert scan_table(ddb, prod_env["TOPTRACKS_TABLE"]) == before
    allowed = toptracks(tmp_path, "run", "--allow-mass-delete")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert {a for a, _ in scan_table(ddb, prod_env["TOPTRACKS_TABLE"])} <= set(some_artist_ids[:3])


def test_wrong_mysql_password_is_named_in_the_cli_summary(prod_env, artists_table, tmp_path, monkeypatch):
    local_instance_home(tmp_path)
    monkeypatch.setenv("MYSQL_USER", "toptracks_nobody")
    monkeypatch.setenv("MYSQL_PASSWORD", "Xq7Pw9zKsecret")
    completed = toptracks(tmp_path, "run")
    assert completed.returncode == 1
    assert "1045" in completed.stderr and "toptracks_nobody" in completed.stderr
    assert f"{artists_table.server['host']}:{artists_table.server['port']}/{artists_table.database}" in (
        completed.stderr
    )
    assert "Xq7Pw9zKsecret" not in completed.stdout + completed.stderr


def test_the_named_attention_column_is_published_with_the_ids(artists_table, tmp_path):
    ids = demo_artist_ids(4, seed=6)
    with artists_table.connect() as connection, connection.cursor() as cursor:
        cursor.execute("ALTER TABLE artists ADD COLUMN followers BIGINT")
        cursor.executemany(
            "INSERT INTO artists (id, followers) VALUES (%s, %s)", list(zip(ids, [10, 0, None, 99], strict=True))
        )
    with instance_for_test() as instance:
        result = materialize(
            [artist_ids],
            partition_key="US",
            resources={
                **resources(artists_table, tmp_path),
                "artists_db": mysql_db(artists_table, attention_column="followers"),
            },
            instance=instance,
        )
    snapshot = read_snapshot(LocalRawStorage(base_dir=str(tmp_path / "raw")))
    assert sorted(snapshot["ids"]) == sorted(ids)
    assert snapshot["attention"] == {ids[0]: 10.0, ids[1]: 0.0, ids[3]: 99.0}  # NULL: no value, the median later
    metadata = result.asset_materializations_for_node("artist_ids")[0].metadata
    assert metadata["ids_with_attention"].value == 3
    assert "attention" not in read_snapshot_after_plain_run(artists_table, tmp_path)


def read_snapshot_after_plain_run(artists_table, tmp_path) -> dict:
    assert run(artists_table, tmp_path).success  # no column named: the snapshot carries no attention
    return read_snapshot(LocalRawStorage(base_dir=str(tmp_path / "raw")))
