"""Fixtures for the DynamoDB tests: a catalog, artist ids, and fresh tables on DynamoDB Local."""

from __future__ import annotations

import uuid

import pytest

from toptracks_dagster.dev.spotify_emulator import Catalog, demo_artist_ids
from toptracks_dagster.dynamodb.table import ensure_table


@pytest.fixture
def catalog():
    return Catalog(seed=9)


@pytest.fixture
def artist_ids():
    return demo_artist_ids(40, seed=21)


@pytest.fixture
def new_table(ddb, dynamodb_local_endpoint):
    """new_table() -> the name of a fresh, empty top_tracks table on DynamoDB Local."""

    def make() -> str:
        name = f"top_tracks_{uuid.uuid4().hex[:10]}"
        assert ensure_table(ddb, name, dynamodb_local_endpoint) == "created"
        return name

    return make


@pytest.fixture
def table(new_table):
    return new_table()
