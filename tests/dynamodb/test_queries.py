"""The queries from Python and from the CLI, against the table the
main job filled: one track, an artist's top list in rank order, popular tracks via the GSI."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import instance_for_test

from tests.conftest import TEST_AWS_ENV, dynamodb_client, free_port
from tests.dynamodb.support import WireRecorder, expected_items
from tests.helpers import run_partition
from toptracks_dagster.cli.query import (
    QueryError,
    add_query_commands,
    artist_top_list,
    get_track,
    popular_tracks,
    run_query_command,
)

REPO = Path(__file__).resolve().parents[2]


def cli(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="toptracks")
    add_query_commands(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    code = run_query_command(parser.parse_args(["query", *argv]), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def filled(prod_env, artists_table, emulator, some_artist_ids):
    """The table after the main job ran both partitions; returns (table, catalog, artist ids)."""
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        for country in ("US", "CA"):
            run_partition(country, instance)
    return prod_env["TOPTRACKS_TABLE"], emulator.catalog, some_artist_ids


def test_python_api(ddb, filled):
    table, catalog, ids = filled
    artist = next(a for a in ids if len(catalog.top_tracks(a, "US") or []) >= 5)
    served = catalog.top_tracks(artist, "US")

    top = artist_top_list(ddb, table, artist, "US")
    assert [t["id"] for t in top] == [t["id"] for t in served]  # rank order, not sort-key order
    assert [t["rank"] for t in top] == list(range(1, len(served) + 1))
    assert {t["country"] for t in top} == {"US"}
    assert [t["id"] for t in top] != sorted(t["id"] for t in top), "the test needs a list not in id order"
    assert isinstance(top[0]["popularity"], int)  # plain values, not Decimal

    third = get_track(ddb, table, artist, "US", served[2]["id"])
    assert third == top[2] and third["name"] == served[2]["name"]
    assert get_track(ddb, table, artist, "US", "0" * 22) is None
    ca = catalog.top_tracks(artist, "CA")
    in_ca = get_track(ddb, table, artist, "CA", ca[0]["id"])
    assert in_ca["country"] == "CA" and in_ca["rank"] == 1  # same track, other market: its own item

    expected = {key: v for key, v in expected_items(catalog, ids, "US").items() if v["track"]["popularity"] > 60}
    popular = popular_tracks(ddb, table, "US", 60)
    assert {(t["artist_id"], f"US#{t['id']}") for t in popular} == set(expected)
    assert [t["popularity"] for t in popular] == sorted((t["popularity"] for t in popular), reverse=True)
    assert all(t["popularity"] > 60 for t in popular) and len(popular) > 20

    recorder = WireRecorder(ddb)
    top5 = popular_tracks(ddb, table, "US", 60, limit=5)
    assert len(top5) == 5 and [t["popularity"] for t in top5] == [t["popularity"] for t in popular[:5]]
    assert recorder.operations["Query"] == 1  # a limit asks for just that many items


def test_cli_commands(filled):
    table, catalog, ids = filled
    artist = next(a for a in ids if len(catalog.top_tracks(a, "US") or []) >= 5)
    served = catalog.top_tracks(artist, "US")

    code, out, err = cli("top", artist, "us")  # market case-insensitive
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["rank", "popularity", "track"] and set(lines[1]) <= {"-", " "}
    rows = lines[2:]
    assert len(rows) == len(served)
    assert [row.split()[0] for row in rows] == [str(n) for n in range(1, len(served) + 1)]
    assert [row.split()[2] for row in rows] == [t["id"] for t in served]

    code, out, err = cli("track", artist, "US", served[0]["id"])
    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["id"] == served[0]["id"] and fields["name"] == served[0]["name"] and fields["rank"] == "1"

    code, out, err = cli("track", artist, "US", "0" * 22)
    assert code == 1 and "no track" in err and out == ""

    code, out, err = cli("popular", "US", "--min", "70", "--json")
    assert code == 0, err
    tracks = json.loads(out)
    expected = {k for k, v in expected_items(catalog, ids, "US").items() if v["track"]["popularity"] > 70}
    assert {(t["artist_id"], t["country_track_id"]) for t in tracks} == expected

    code, out, err = cli("popular", "US", "--min", "70", "--limit", "4")
    assert code == 0, err
    rows = out.splitlines()[2:]
    assert len(rows) == 4
    popularities = [int(row.split()[0]) for row in rows]
    assert popularities == sorted(popularities, reverse=True) and min(popularities) > 70

    # The same commands as a process, configured only by the config contract's environment.
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "toptracks_dagster.cli",
            "query",
            "popular",
            "CA",
            "--min",
            "50",
            "--limit",
            "3",
            "--json",
        ],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    tracks = json.loads(completed.stdout)
    assert len(tracks) == 3 and all(t["country"] == "CA" and t["popularity"] > 50 for t in tracks)


@pytest.fixture
def query_env(monkeypatch, dynamodb_local_endpoint):
    for name, value in {
        **TEST_AWS_ENV,
        "DAGSTER_DEPLOYMENT": "prod",
        "DYNAMODB_ENDPOINT_URL": dynamodb_local_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_missing_table_is_named_with_its_endpoint(ddb, dynamodb_local_endpoint, query_env, table_name):
    query_env.setenv("TOPTRACKS_TABLE", table_name)  # never created
    expected = f"table {table_name} does not exist at {dynamodb_local_endpoint}"
    for call in (
        lambda: get_track(ddb, table_name, "a" * 22, "US", "b" * 22),
        lambda: artist_top_list(ddb, table_name, "a" * 22, "US"),
        lambda: popular_tracks(ddb, table_name, "US", 50),
    ):
        with pytest.raises(QueryError, match=expected):
            call()
    for argv in (["track", "a" * 22, "US", "b" * 22], ["top", "a" * 22, "US"], ["popular", "US", "--min", "50"]):
        code, out, err = cli(*argv)
        assert code == 1 and expected in err and out == ""


def test_table_without_the_gsi_is_explained(ddb, table_name):
    ddb.create_table(
        TableName=table_name,
        KeySchema=[
            {"AttributeName": "artist_id", "KeyType": "HASH"},
            {"AttributeName": "country_track_id", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "artist_id", "AttributeType": "S"},
            {"AttributeName": "country_track_id", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(QueryError, match=f"table {table_name} .* has no GSI country-popularity-index"):
        popular_tracks(ddb, table_name, "US", 50)


def test_unreachable_endpoint_is_named(query_env):
    endpoint = f"http://127.0.0.1:{free_port()}"
    query_env.setenv("DYNAMODB_ENDPOINT_URL", endpoint)
    code, out, err = cli("top", "a" * 22, "US")
    assert code == 1 and f"DynamoDB at {endpoint} is unreachable" in err
    client = dynamodb_client(endpoint)
    with pytest.raises(QueryError, match=endpoint):
        get_track(client, "top_tracks", "a" * 22, "US", "b" * 22)


def test_bad_market_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli("top", "a" * 22, "USA")
    assert "not a two-letter market code" in capsys.readouterr().err
