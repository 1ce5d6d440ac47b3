"""README's first command: `toptracks run` on the embedded default, in a fresh working directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import expected_keys
from toptracks_dagster.dev.spotify_emulator import Catalog, demo_artist_ids
from toptracks_dagster.dev.stack import DEMO_ARTISTS

REPO = Path(__file__).resolve().parent.parent


def test_toptracks_run_on_the_embedded_default_prints_per_country_counts(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DAGSTER_", "SPOTIFY_", "MYSQL_", "TOPTRACKS_", "DYNAMODB_"))
    }
    # Its own stack (state under tmp_path, any free ports): a developer's running stack is left alone.
    env.update({"TOPTRACKS_STACK_SPOTIFY_PORT": "0", "TOPTRACKS_STACK_DYNAMODB_PORT": "0"})
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "toptracks_dagster.cli", "run"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        # The stack outlives the command, and a query right after finds the data without starting anything.
        query = subprocess.run(
            [sys.executable, "-m", "toptracks_dagster.cli", "query", "popular", "US", "--min", "0", "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert query.returncode == 0, query.stderr[-3000:]
        assert "local stack started" not in query.stderr
        assert len(json.loads(query.stdout)) > 0
    finally:
        subprocess.run(
            [sys.executable, "-m", "toptracks_dagster.cli", "stack", "stop"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=120,
        )
    ids = demo_artist_ids(DEMO_ARTISTS)
    catalog = Catalog(seed=0)
    for country in ("US", "CA"):
        line = next(row for row in completed.stdout.splitlines() if row.startswith(f"{country} "))
        artists, fetched, not_found, tracks, written, deleted = map(int, re.split(r"\s+", line)[1:7])
        assert artists == fetched == DEMO_ARTISTS
        assert not_found == sum(catalog.is_missing(a) for a in ids)
        assert tracks == written == len(expected_keys(catalog, ids, [country]))
        assert deleted == 0
    # Runs are recorded in the instance the UI reads (./dagster_home by default).
    assert (tmp_path / "dagster_home" / "history" / "runs.db").exists()
    # The emulator's per-start secret never reaches the output.
    assert "SPOTIFY_CLIENT_SECRET=" not in completed.stdout + completed.stderr


def test_toptracks_run_on_prod_loads_exactly_what_the_endpoint_serves(
    prod_env, artists_table, emulator, ddb, some_artist_ids, tmp_path
):
    """README's headless command with DAGSTER_DEPLOYMENT=prod: another MySQL, Spotify-compatible endpoint and
    DynamoDB endpoint, all from the config contract's variables; nothing local is started."""
    from tests.helpers import scan_table

    artists_table.set_ids(some_artist_ids)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "toptracks_dagster.cli", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "embedded stack" not in completed.stdout
    items = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
    assert set(items) == set(expected_keys(emulator.catalog, some_artist_ids, ["US", "CA"]))
    assert prod_env["SPOTIFY_CLIENT_SECRET"] not in completed.stdout + completed.stderr


def test_a_reader_that_closes_the_pipe_gets_no_traceback(tmp_path):
    """`toptracks ... | head` must not end in a BrokenPipeError traceback."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toptracks_dagster.cli",
            "plan",
            "--artists",
            "20000",
            "--markets",
            "5",
            "--budget",
            "20000",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # the reader is gone before the command writes its answer
    stderr = process.stderr.read()
    process.wait(timeout=120)
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert process.returncode == 1
