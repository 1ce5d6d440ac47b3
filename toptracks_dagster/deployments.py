"""Resources per deployment (DAGSTER_DEPLOYMENT): `local` = the local stack, `prod` = the config contract.

Secrets are EnvVars, resolved when a run starts and never displayed. The `local` resources hold no address:
each finds (or starts) the local stack when a run first uses it, unless its variable names other services.
"""

from __future__ import annotations

from dagster import EnvVar

from toptracks_dagster import config
from toptracks_dagster.artists_db.resources import MySQLArtistsDatabase, SQLiteArtistsDatabase
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.raw_storage.resources import LocalRawStorage
from toptracks_dagster.spotify.resources import SpotifyResource


def build_resources(deployment: str | None = None) -> dict:
    deployment = deployment or config.deployment()
    return _local_resources() if deployment == config.LOCAL else _prod_resources()


def _dynamodb(concurrency: int = 8, **fields) -> DynamoDBResource:
    return DynamoDBResource(
        endpoint_url=config.env("DYNAMODB_ENDPOINT_URL"),
        region_name=config.region(),
        table_name=config.table_name(),
        write_concurrency=config.dynamodb_write_concurrency(concurrency),
        **fields,
    )


def _raw_storage():
    bucket = config.env("TOPTRACKS_RAW_S3_BUCKET")
    if not bucket:
        return LocalRawStorage(base_dir=config.env("TOPTRACKS_RAW_DIR", config.DEFAULT_RAW_DIR))
    # Imported here: only a deployment that keeps raw data in S3 imports dagster-aws.
    from dagster_aws.s3 import S3Resource

    from toptracks_dagster.raw_storage.s3 import S3RawStorage

    return S3RawStorage(s3=S3Resource(region_name=config.region()), bucket=bucket)


def _local_resources() -> dict:
    config.countries()  # a malformed value fails here, before anything is started
    # Variables the stack exported (TOPTRACKS_LOCAL_STACK) are not someone else's services: the stack is found again.
    own_services = config.env("DYNAMODB_ENDPOINT_URL") is not None and not config.env("TOPTRACKS_LOCAL_STACK")
    spotify = (
        {
            "client_id": EnvVar("SPOTIFY_CLIENT_ID"),
            "client_secret": EnvVar("SPOTIFY_CLIENT_SECRET"),
            "api_base_url": config.env("SPOTIFY_API_BASE_URL", config.DEFAULT_SPOTIFY_API_BASE_URL),
            "token_url": config.env("SPOTIFY_TOKEN_URL", config.DEFAULT_SPOTIFY_TOKEN_URL),
        }
        if own_services
        else {"local_stack": True}
    )
    artists_path = config.env("TOPTRACKS_LOCAL_ARTISTS_DB") if own_services else None
    return {
        "artists_db": SQLiteArtistsDatabase(path=artists_path, attention_column=config.attention_column())
        if artists_path
        else SQLiteArtistsDatabase(local_stack=True, attention_column=config.attention_column()),
        "spotify": SpotifyResource(
            **spotify,
            concurrency=config.spotify_concurrency(16),
            requests_per_second=config.spotify_requests_per_second(0.0),
            max_retry_after_s=config.spotify_max_retry_after_s(),
        ),
        # DynamoDB Local answers one connection's requests one after another: more of them in flight pays.
        "dynamodb": _dynamodb(16, local_stack=not own_services),
        "raw_storage": _raw_storage(),
    }


def _prod_resources() -> dict:
    host = config.env("MYSQL_HOST")
    user = config.env("MYSQL_USER")
    if not host or not user:
        raise config.ConfigError("DAGSTER_DEPLOYMENT=prod needs MYSQL_HOST and MYSQL_USER (see docs/configuration.md)")
    iam_auth = config.env_bool("MYSQL_IAM_AUTH")
    # An empty MYSQL_PASSWORD is a valid (if unwise) password; an unset one means none.
    password = EnvVar("MYSQL_PASSWORD") if not iam_auth and config.is_set("MYSQL_PASSWORD") else None
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
            attention_column=config.attention_column(),
        ),
        "spotify": SpotifyResource(
            client_id=EnvVar("SPOTIFY_CLIENT_ID"),
            client_secret=EnvVar("SPOTIFY_CLIENT_SECRET"),
            api_base_url=config.env("SPOTIFY_API_BASE_URL", config.DEFAULT_SPOTIFY_API_BASE_URL),
            token_url=config.env("SPOTIFY_TOKEN_URL", config.DEFAULT_SPOTIFY_TOKEN_URL),
            concurrency=config.spotify_concurrency(8),
            requests_per_second=config.spotify_requests_per_second(20.0),
            max_retry_after_s=config.spotify_max_retry_after_s(),
        ),
        "dynamodb": _dynamodb(),
        "raw_storage": _raw_storage(),
    }
