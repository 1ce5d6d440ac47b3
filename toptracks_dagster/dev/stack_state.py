"""The local stack's state directory (`TOPTRACKS_LOCAL_DIR`, default `./data/local`, git-ignored):

  stack.json     engine, pids, ports, per-stack credentials (mode 0600)
  stack.env      the same addresses and credentials as shell variables, for `set -a; . data/local/stack.env`
  stack.lock     serialises concurrent starters (a UI, its daemon and a run may all load definitions at once)
  logs/          the processes' output
  dynamodb/      DynamoDB Local's data (-dbPath)
  artists.sqlite the seeded demo artists table

and the variables that point the `local` deployment at the stack.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from toptracks_dagster import config

DEFAULT_LOCAL_DIR = "./data/local"
STATE_VERSION = 1


def local_dir() -> Path:
    return Path(config.env("TOPTRACKS_LOCAL_DIR", DEFAULT_LOCAL_DIR) or DEFAULT_LOCAL_DIR).resolve()


def state_path(directory: Path) -> Path:
    return directory / "stack.json"


def env_path(directory: Path) -> Path:
    return directory / "stack.env"


def load_state(directory: Path) -> dict | None:
    try:
        state = json.loads(state_path(directory).read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("version") == STATE_VERSION else None


def save_state(directory: Path, state: dict) -> None:
    """Write stack.json and stack.env, readable by their owner only (they hold the per-stack credentials)."""
    _write_private(state_path(directory), json.dumps(state, indent=2) + "\n")
    lines = ["# The local stack's addresses and per-stack credentials (written by toptracks; git-ignored)."]
    lines += [f"{name}={value}" for name, value in environment(state).items()]
    _write_private(env_path(directory), "\n".join(lines) + "\n")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
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
