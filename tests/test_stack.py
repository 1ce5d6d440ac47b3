"""The local stack in the background (`toptracks stack ...`), each test with its own state dir, instance and
free ports, so a developer's running stack is neither used nor disturbed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance
from dagster._core.instance.ref import InstanceRef

from toptracks_dagster import config
from toptracks_dagster.dev import stack


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
    # The stack's commands run without AWS_REGION here, so they use the default region.
    return boto3.client(
        "dynamodb",
        endpoint_url=stack.environment(state)["DYNAMODB_ENDPOINT_URL"],
        region_name=config.DEFAULT_REGION,
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


def alive(state: dict) -> list[bool]:
    return [stack.is_our_process(p["pid"], p["marker"]) for p in state["processes"].values()]


def test_stack_outlives_commands_and_keeps_data_while_it_runs(stack_env, tmp_path):
    assert toptracks(stack_env, tmp_path, "stack", "status", check=False).returncode == 3

    toptracks(stack_env, tmp_path, "stack", "start")
    first = read_state(stack_env)
    state_file = Path(stack_env["TOPTRACKS_LOCAL_DIR"]) / "stack.json"
    assert state_file.stat().st_mode & 0o077 == 0, "credentials must be private to the user"
    assert (state_file.parent / "stack.env").stat().st_mode & 0o077 == 0
    # The command that started it has exited; the processes still run and answer.
    assert alive(first) == [True, True]
    create_table(first, "kept_between_commands")
    raw_file = Path(stack_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks" / "part.jsonl"
    raw_file.parent.mkdir(parents=True)
    raw_file.write_text("{}\n")

    # Another command finds the same stack (same pids, same per-stack credentials), starts nothing.
    status = toptracks(stack_env, tmp_path, "stack", "status")
    assert "healthy" in status.stdout and "kept_between_commands" in status.stdout
    assert read_state(stack_env) == first
    assert first["spotify_client_secret"] not in status.stdout + status.stderr

    toptracks(stack_env, tmp_path, "stack", "stop")
    assert alive(first) == [False, False]
    assert not state_file.exists() and not (state_file.parent / "stack.env").exists()
    assert toptracks(stack_env, tmp_path, "stack", "status", check=False).returncode == 3

    toptracks(stack_env, tmp_path, "stack", "start")
    second = read_state(stack_env)
    assert second["spotify_client_secret"] != first["spotify_client_secret"]
    # moto keeps its tables in memory: a restarted stack's DynamoDB is empty, while the raw dir stays.
    assert ddb_client(second).list_tables()["TableNames"] == []
    assert raw_file.read_text() == "{}\n"


def test_stale_pids_are_detected_and_a_new_stack_replaces_them(stack_env, tmp_path):
    toptracks(stack_env, tmp_path, "stack", "start")
    state = read_state(stack_env)
    spotify = state["processes"]["spotify"]
    os.kill(spotify["pid"], 9)
    # Waits for the kill to land: the pid is gone or a zombie, which is_our_process treats alike.
    for _ in range(200):
        if not stack.is_our_process(spotify["pid"], spotify["marker"]):
            break
        time.sleep(0.05)

    status = toptracks(stack_env, tmp_path, "stack", "status", check=False)
    assert status.returncode == 3
    assert "stale" in status.stdout and "NOT healthy" in status.stdout

    # Whatever needs the stack next (here a query) restarts it, and the survivor of the old one is stopped.
    query = toptracks(stack_env, tmp_path, "query", "popular", "US", "--min", "80", check=False)
    assert "local stack started" in query.stderr
    replaced = read_state(stack_env)
    assert replaced["processes"]["spotify"]["pid"] != spotify["pid"]
    assert alive(state) == [False, False] and alive(replaced) == [True, True]
    assert toptracks(stack_env, tmp_path, "stack", "status").returncode == 0


def test_reset_empties_dynamodb_and_raw_dir_and_the_instance_forgets(stack_env, tmp_path):
    toptracks(stack_env, tmp_path, "stack", "start")
    state = read_state(stack_env)
    create_table(state, "top_tracks")
    raw = Path(stack_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks" / "market=US"
    raw.mkdir(parents=True)
    (raw / "part.jsonl").write_text("{}\n")
    home = stack_env["DAGSTER_HOME"]
    keys = ("artist_ids", "raw_top_tracks", "top_tracks")
    with DagsterInstance.from_ref(InstanceRef.from_dir(home)) as instance:
        for key in keys:
            instance.report_runless_asset_event(
                AssetMaterialization(key, partition=None if key == "artist_ids" else "US")
            )
        assert instance.get_latest_materialization_event(AssetKey("top_tracks")) is not None

    reset = toptracks(stack_env, tmp_path, "stack", "reset")
    assert "top_tracks" in reset.stdout

    assert ddb_client(state).list_tables()["TableNames"] == []
    assert not Path(stack_env["TOPTRACKS_RAW_DIR"]).exists()
    with DagsterInstance.from_ref(InstanceRef.from_dir(home)) as instance:
        for key in keys:
            assert instance.get_latest_materialization_event(AssetKey(key)) is None, key
            [observed] = instance.fetch_observations(AssetKey(key), limit=1).records
            assert "reset" in str(observed.asset_observation.metadata["wiped"].value), key
    # The stack itself kept running.
    assert toptracks(stack_env, tmp_path, "stack", "status").returncode == 0


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket the process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            # /proc prints the address as 32-bit words in host (little-endian) order.
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def test_the_stack_listens_on_loopback_only(stack_env, tmp_path):
    toptracks(stack_env, tmp_path, "stack", "start")
    state = read_state(stack_env)
    for name, process in state["processes"].items():
        addresses = listening_addresses(process["pid"])
        assert ("127.0.0.1", process["port"]) in addresses, (name, addresses)
        assert {address for address, _ in addresses} == {"127.0.0.1"}, (name, addresses)
    env = stack.environment(state)
    urls = [env["SPOTIFY_API_BASE_URL"], env["SPOTIFY_TOKEN_URL"], env["DYNAMODB_ENDPOINT_URL"]]
    assert all(url.startswith("http://127.0.0.1:") for url in urls), urls


def test_a_state_file_of_another_format_is_replaced_and_its_processes_stopped(stack_env, tmp_path):
    """What `ensure_local_stack` finds may be any JSON: it never trusts it, and stops what it recorded."""
    toptracks(stack_env, tmp_path, "stack", "start")
    old = read_state(stack_env)
    state_file = Path(stack_env["TOPTRACKS_LOCAL_DIR"]) / "stack.json"
    state_file.write_text(json.dumps({**old, "version": 1}))
    assert toptracks(stack_env, tmp_path, "stack", "status", check=False).returncode == 3
    toptracks(stack_env, tmp_path, "stack", "start")
    assert alive(old) == [False, False] and alive(read_state(stack_env)) == [True, True]


def test_importing_the_package_starts_nothing(stack_env, tmp_path):
    """Every module, the code location included, imports without starting the stack (it starts at run time)."""
    code = (
        "import importlib, pkgutil, toptracks_dagster\n"
        "for module in pkgutil.walk_packages(toptracks_dagster.__path__, 'toptracks_dagster.'):\n"
        "    if not module.name.endswith('__main__'):\n"
        "        importlib.import_module(module.name)\n"
    )
    env = {**stack_env, "DAGSTER_DEPLOYMENT": "local"}
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert not Path(stack_env["TOPTRACKS_LOCAL_DIR"]).exists(), "an import started the local stack"
