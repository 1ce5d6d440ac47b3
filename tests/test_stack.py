"""The local stack in the background (`toptracks stack ...`), each test with its own state dir, instance and
free ports, so a developer's running stack is neither used nor disturbed.

DynamoDB Local needs Java and `npm ci`; without them these tests skip on a laptop and fail when CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance
from dagster._core.instance.ref import InstanceRef

from tests.conftest import unavailable
from toptracks_dagster.dev import stack, stack_processes

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def stack_env(tmp_path):
    """Variables of a private stack: state, raw dir and instance under tmp_path, any free ports."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DAGSTER_", "SPOTIFY_", "MYSQL_", "TOPTRACKS_", "DYNAMODB_", "AWS_"))
    }
    env.update(
        {
            "TOPTRACKS_LOCAL_DIR": str(tmp_path / "local"),
            "TOPTRACKS_RAW_DIR": str(tmp_path / "raw"),
            "DAGSTER_HOME": str(home),
            "TOPTRACKS_STACK_SPOTIFY_PORT": "0",
            "TOPTRACKS_STACK_DYNAMODB_PORT": "0",
        }
    )
    yield env
    subprocess.run(
        [sys.executable, "-m", "toptracks_dagster.cli", "stack", "stop"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
    )


def toptracks(env: dict, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "-m", "toptracks_dagster.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    return completed


def read_state(env: dict) -> dict:
    return json.loads((Path(env["TOPTRACKS_LOCAL_DIR"]) / "stack.json").read_text())


def ddb_client(state: dict):
    return boto3.client(
        "dynamodb",
        endpoint_url=stack.environment(state)["DYNAMODB_ENDPOINT_URL"],
        region_name="ap-northeast-2",
        aws_access_key_id=state["aws_access_key_id"],
        aws_secret_access_key=state["aws_secret_access_key"],
    )


def create_table(state: dict, name: str) -> None:
    client = ddb_client(state)
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
    )
    client.put_item(TableName=name, Item={"k": {"S": "kept"}})


@pytest.fixture
def dynamodb_local_present():
    if not (shutil.which("java") and stack_processes.find_jar()):
        unavailable("DynamoDB Local needs java and `npm ci`")


def test_stack_outlives_commands_and_keeps_data_across_stop_and_start(stack_env, tmp_path, dynamodb_local_present):
    assert toptracks(stack_env, tmp_path, "stack", "status", check=False).returncode == 3

    toptracks(stack_env, tmp_path, "stack", "start")
    first = read_state(stack_env)
    assert first["engine"] == stack_processes.DYNAMODB_LOCAL
    state_file = Path(stack_env["TOPTRACKS_LOCAL_DIR"]) / "stack.json"
    assert state_file.stat().st_mode & 0o077 == 0, "credentials must be private to the user"
    # The command that started it has exited; the processes still run and answer.
    assert all(stack_processes.is_our_process(p["pid"], p["marker"]) for p in first["processes"].values())
    create_table(first, "kept_between_commands")

    # Another command finds the same stack (same pids, same per-stack credentials), starts nothing.
    status = toptracks(stack_env, tmp_path, "stack", "status")
    assert "healthy" in status.stdout and "kept_between_commands" in status.stdout
    assert read_state(stack_env) == first
    assert first["spotify_client_secret"] not in status.stdout + status.stderr

    toptracks(stack_env, tmp_path, "stack", "stop")
    assert not any(stack_processes.is_our_process(p["pid"], p["marker"]) for p in first["processes"].values())
    assert not state_file.exists()
    assert toptracks(stack_env, tmp_path, "stack", "status", check=False).returncode == 3

    toptracks(stack_env, tmp_path, "stack", "start")
    second = read_state(stack_env)
    assert second["spotify_client_secret"] != first["spotify_client_secret"]
    item = ddb_client(second).get_item(TableName="kept_between_commands", Key={"k": {"S": "kept"}})
    assert item["Item"]["k"]["S"] == "kept", "DynamoDB Local's -dbPath keeps tables across stop/start"


def test_stale_pids_are_detected_and_a_new_stack_replaces_them(stack_env, tmp_path, dynamodb_local_present):
    toptracks(stack_env, tmp_path, "stack", "start")
    state = read_state(stack_env)
    spotify = state["processes"]["spotify"]
    os.kill(spotify["pid"], 9)
    # Waits for the kill to land: the pid is gone or a zombie, which is_our_process treats alike.
    for _ in range(100):
        if not stack_processes.is_our_process(spotify["pid"], spotify["marker"]):
            break
        import time

        time.sleep(0.05)

    status = toptracks(stack_env, tmp_path, "stack", "status", check=False)
    assert status.returncode == 3
    assert "stale" in status.stdout and "NOT healthy" in status.stdout

    # Whatever needs the stack next (here a query) restarts it.
    query = toptracks(stack_env, tmp_path, "query", "popular", "US", "--min", "80", check=False)
    assert "local stack started" in query.stderr
    replaced = read_state(stack_env)
    assert replaced["processes"]["spotify"]["pid"] != spotify["pid"]
    assert toptracks(stack_env, tmp_path, "stack", "status").returncode == 0


def test_reset_empties_dynamodb_and_raw_dir_and_the_instance_forgets(stack_env, tmp_path, dynamodb_local_present):
    toptracks(stack_env, tmp_path, "stack", "start")
    state = read_state(stack_env)
    create_table(state, "top_tracks")
    raw = Path(stack_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks" / "market=US"
    raw.mkdir(parents=True)
    (raw / "part.jsonl").write_text("{}\n")
    home = stack_env["DAGSTER_HOME"]
    with DagsterInstance.from_ref(InstanceRef.from_dir(home)) as instance:
        for key in ("artist_ids", "raw_top_tracks", "top_tracks"):
            instance.report_runless_asset_event(
                AssetMaterialization(key, partition=None if key == "artist_ids" else "US")
            )
        assert instance.get_latest_materialization_event(AssetKey("top_tracks")) is not None

    reset = toptracks(stack_env, tmp_path, "stack", "reset")
    assert "top_tracks" in reset.stdout

    assert ddb_client(state).list_tables()["TableNames"] == []
    assert not Path(stack_env["TOPTRACKS_RAW_DIR"]).exists()
    with DagsterInstance.from_ref(InstanceRef.from_dir(home)) as instance:
        for key in ("artist_ids", "raw_top_tracks", "top_tracks"):
            assert instance.get_latest_materialization_event(AssetKey(key)) is None, key
            observed = (
                instance.get_latest_observation_event(AssetKey(key))
                if hasattr(instance, "get_latest_observation_event")
                else None
            )
            if observed is not None:
                assert "reset" in str(observed.asset_observation.metadata["wiped"].value)
    # The stack itself kept running.
    assert toptracks(stack_env, tmp_path, "stack", "status").returncode == 0


def test_moto_serves_when_dynamodb_local_cannot(stack_env, tmp_path):
    """Without Java (here: forced), moto's server is the stack's DynamoDB; its tables live while it runs."""
    env = {**stack_env, "TOPTRACKS_STACK_ENGINE": "moto"}
    toptracks(env, tmp_path, "stack", "start")
    state = read_state(env)
    assert state["engine"] == stack_processes.MOTO and state["dynamodb_data"] is None
    create_table(state, "kept_between_commands")
    status = toptracks(env, tmp_path, "stack", "status")
    assert "kept_between_commands" in status.stdout and "in memory" in status.stdout


def test_engine_choice_follows_java_and_the_jar(monkeypatch, tmp_path):
    monkeypatch.delenv("TOPTRACKS_STACK_ENGINE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    engine, why = stack_processes.choose_engine()
    assert engine == stack_processes.MOTO and "java" in why
    monkeypatch.setenv("TOPTRACKS_STACK_ENGINE", "dynamodb-local")
    with pytest.raises(stack.StackError, match="java"):
        stack_processes.choose_engine()
    monkeypatch.setenv("TOPTRACKS_STACK_ENGINE", "mysql")
    with pytest.raises(ValueError, match="TOPTRACKS_STACK_ENGINE"):
        stack_processes.choose_engine()
