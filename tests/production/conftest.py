"""Fixtures for the production recipe tests: an emulated AWS account (moto server mode)."""

from __future__ import annotations

import pytest

from tests.production.aws import EmulatedAws


@pytest.fixture(scope="session")
def emulated_aws():
    aws = EmulatedAws()
    yield aws
    aws.stop()


@pytest.fixture
def postgres_database():
    """A throwaway PostgreSQL database for a production Dagster instance (dropped afterwards)."""
    import os
    import uuid

    from tests.conftest import unavailable

    try:
        import psycopg2
    except ImportError:  # installed with dagster-postgres (the `postgres` extra); never a silent skip in CI
        unavailable("psycopg2 is not installed: pip install -e '.[postgres]'")
    params = {
        "host": os.environ.get("TEST_PG_HOST", "127.0.0.1"),
        "port": int(os.environ.get("TEST_PG_PORT", "5432")),
        "user": os.environ.get("TEST_PG_USER", "postgres"),
    }
    name = f"toptracks_ecs_{uuid.uuid4().hex[:8]}"
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
