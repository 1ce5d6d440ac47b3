"""Resources per deployment (DAGSTER_DEPLOYMENT): `local` = the embedded stack, `prod` = the config contract.

Secrets are EnvVars: Dagster resolves them when a run starts and never displays them.
"""

from __future__ import annotations

import os

from dagster import EnvVar

from toptracks_dagster import config
from toptracks_dagster.artists_db.resources import (
    MySQLArtistsDatabase,
    SQLiteArtistsDatabase,
)
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.raw_storage.resources import LocalRawStorage, RawStorage
from toptracks_dagster.spotify.resources import SpotifyResource


def build_resources(deployment: str | None = None) -> dict:
    deployment = deployment or config.deployment()
    return _local_resources() if deployment == config.LOCAL else _prod_resources()


def _spotify(api_default: str, token_default: str, concurrency: int, rate: float) -> SpotifyResource:
    return SpotifyResource(
        client_id=EnvVar("SPOTIFY_CLIENT_ID"),
        client_secret=EnvVar("SPOTIFY_CLIENT_SECRET"),
        api_base_url=config.env("SPOTIFY_API_BASE_URL", api_default),
        token_url=config.env("SPOTIFY_TOKEN_URL", token_default),
        concurrency=config.spotify_concurrency(concurrency),
        requests_per_second=config.spotify_requests_per_second(rate),
        max_retry_after_s=config.spotify_max_retry_after_s(),
    )


def _dynamodb(endpoint_default: str | None, write_concurrency: int = 8) -> DynamoDBResource:
    return DynamoDBResource(
        endpoint_url=config.env("DYNAMODB_ENDPOINT_URL", endpoint_default),
        region_name=config.region(),
        table_name=config.table_name(),
        write_concurrency=config.dynamodb_write_concurrency(write_concurrency),
    )


def _local_resources() -> dict:
    # The background local stack (toptracks_dagster/dev/stack.py): found through its state file, started when it
    # is not running, and its addresses and per-stack credentials exported for this process and its children
    # (run workers), where the EnvVars resolve. An explicit DYNAMODB_ENDPOINT_URL (not one the stack exported)
    # means someone runs their own services: then the variables are used as they are.
    from toptracks_dagster.dev import stack

    # A malformed value fails here, before anything is started.
    config.region(), config.table_name(), config.countries(), config.dynamodb_write_concurrency(16)
    if stack.wanted():
        os.environ.update(stack.ensure_local_stack())
    host = "127.0.0.1"
    return {
        "artists_db": SQLiteArtistsDatabase(
            path=config.env("TOPTRACKS_LOCAL_ARTISTS_DB", config.DEFAULT_LOCAL_ARTISTS_DB)
        ),
        "spotify": _spotify(
            f"http://{host}:{config.LOCAL_SPOTIFY_PORT}/v1",
            f"http://{host}:{config.LOCAL_SPOTIFY_PORT}/api/token",
            concurrency=16,
            rate=0.0,
        ),
        # DynamoDB Local on disk absorbs more parallel batches than it gets from 8 writers.
        "dynamodb": _dynamodb(f"http://{host}:{config.LOCAL_DYNAMODB_PORT}", write_concurrency=16),
        "raw_storage": LocalRawStorage(base_dir=config.env("TOPTRACKS_RAW_DIR", config.DEFAULT_RAW_DIR)),
    }


def _prod_resources() -> dict:
    host = config.env("MYSQL_HOST")
    user = config.env("MYSQL_USER")
    if not host or not user:
        raise config.ConfigError("DAGSTER_DEPLOYMENT=prod needs MYSQL_HOST and MYSQL_USER (see README, Configuration)")
    iam_auth = config.env_bool("MYSQL_IAM_AUTH")
    # An empty MYSQL_PASSWORD is a valid (if unwise) password; an unset one means none.
    password = EnvVar("MYSQL_PASSWORD") if not iam_auth and config.is_set("MYSQL_PASSWORD") else None
    bucket = config.env("TOPTRACKS_RAW_S3_BUCKET")
    raw_storage = (
        _s3_raw_storage(bucket)
        if bucket
        else LocalRawStorage(base_dir=config.env("TOPTRACKS_RAW_DIR", config.DEFAULT_RAW_DIR))
    )
    return {
        "artists_db": MySQLArtistsDatabase(
            host=host,
            port=config.env_int("MYSQL_PORT", 3306, minimum=1),
            user=user,
            password=password,
            database=config.env("MYSQL_DATABASE", "production"),
            iam_auth=iam_auth,
            region_name=config.region(),
            ssl_ca=config.env("MYSQL_SSL_CA"),
        ),
        "spotify": _spotify(
            config.DEFAULT_SPOTIFY_API_BASE_URL, config.DEFAULT_SPOTIFY_TOKEN_URL, concurrency=8, rate=20.0
        ),
        "dynamodb": _dynamodb(None),
        "raw_storage": raw_storage,
    }


def _s3_raw_storage(bucket: str) -> RawStorage:
    # Imported here: only a deployment that keeps raw data in S3 pays for importing dagster-aws.
    from dagster_aws.s3 import S3Resource

    from toptracks_dagster.raw_storage.s3 import S3RawStorage

    return S3RawStorage(s3=S3Resource(region_name=config.region()), bucket=bucket)
