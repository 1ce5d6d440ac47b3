"""Each resource fails clearly when its system is unreachable or misconfigured, and never leaks a secret."""

from __future__ import annotations

import secrets

import pytest
from dagster import instance_for_test, materialize

from tests.conftest import TEST_AWS_ENV, free_port
from tests.helpers import run_partition
from toptracks_dagster.deployments import build_resources
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import DynamoDBUnavailable, ensure_table
from toptracks_dagster.spotify.assets import raw_top_tracks


def all_event_text(instance) -> str:
    """Every event of every run in the instance, as text (messages, metadata, errors)."""
    return " ".join(str(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id))


def test_dead_dynamodb_endpoint_is_named():
    endpoint = f"http://127.0.0.1:{free_port()}"
    resource = DynamoDBResource(
        endpoint_url=endpoint,
        region_name="ap-northeast-2",
        max_attempts=1,
        aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    with pytest.raises(DynamoDBUnavailable, match=endpoint):
        ensure_table(resource.get_client(), "top_tracks", resource.describe_endpoint())


def test_bad_spotify_credentials_fail_the_partition_without_leaking(
    prod_env, artists_table, emulator, some_artist_ids, monkeypatch
):
    artists_table.set_ids(some_artist_ids[:3])
    wrong_secret = secrets.token_urlsafe(24)
    monkeypatch.setenv("SPOTIFY_CLIENT_SECRET", wrong_secret)
    with instance_for_test() as instance:
        resources = build_resources("prod")
        from toptracks_dagster.artists_db.assets import artist_ids

        assert materialize([artist_ids], partition_key="US", resources=resources, instance=instance).success
        result = materialize(
            [raw_top_tracks], partition_key="US", resources=resources, instance=instance, raise_on_error=False
        )
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "invalid_client" in failure.step_failure_data.error.message
        assert emulator.stats.as_dict()["requests"] == 0  # no top-tracks request without a token
        everything = all_event_text(instance)
        assert wrong_secret not in everything


def test_secrets_never_reach_events_or_metadata(prod_env, artists_table, some_artist_ids, client_secret, capfd):
    artists_table.set_ids(some_artist_ids[:5])
    with instance_for_test() as instance:
        result = run_partition("US", instance)
        assert result.success
        text = all_event_text(instance)
    captured = capfd.readouterr()
    for secret in (client_secret, prod_env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in text
        assert secret not in captured.out + captured.err
    assert "STEP_SUCCESS" in text and "artists_fetched" in text  # the search above saw the real event log
