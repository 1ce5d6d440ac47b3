"""The benchmark cannot rot: its smoke size runs in the suite, and what it counts must hold (no timing asserts).

It drives the same paths as the full benchmark: `toptracks run` in child processes on a real instance directory,
and a real `dagster-daemon` with `artists_changed_sensor` switched on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTISTS, MARKETS, K = 12, 2, 2  # --smoke sizes


def test_benchmark_smoke_counts_what_each_workload_costs(tmp_path, mysql_server, dynamodb_local_endpoint):
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads(out.read_text())
    baseline, floor, w1, w1_cold = results["baseline"], results["write_floor"], results["W1"], results["W1_cold"]
    w2, w2_full = results["W2"], results["W2_full"]

    # Same work on both sides: every (artist, market) asked once, every track written once.
    pairs = ARTISTS * MARKETS
    assert baseline["requests"] == w1["requests"] == w2_full["requests"] == w1_cold["requests"] == pairs
    assert w1["spotify_tags"]["spotify_requests"] == str(pairs)  # the run's own count agrees with the emulator's
    assert baseline["items_written"] == floor["items_written"] == floor["items"] > 0

    # First load: every item written, artists sharing transactions of up to 100 actions (at least one transaction
    # per market, never more than one per artist with tracks), no read before writing (the market
    # was empty), and the read-back confirms at most the sample of written artists (one Query each).
    for first in (w1, w1_cold):
        assert first["items_written"] == first["items"] == floor["items"]
        assert MARKETS <= first["write_requests"] < floor["artists_with_tracks"]
        assert first["read_requests"] == first["artists_read_back"] == min(20, ARTISTS) * MARKETS
        assert first["materializations"]["top_tracks"] == MARKETS and first["exact_failed"] == 0

    # Due refresh right after a full load: no request, no DynamoDB read or write, nothing materialized.
    assert w2["requests"] == 0 and w2["read_requests"] == 0 and w2["write_requests"] == 0
    assert w2["materializations"].get("raw_top_tracks", 0) == 0 and w2["materializations"].get("top_tracks", 0) == 0
    assert w2["items"] == w1["items"]

    # Full refresh with unchanged lists: every artist read once per market, nothing written, only observed.
    assert w2_full["artists_read"] == w2_full["read_requests"] == pairs
    assert all(m["artists_read"] == ARTISTS and m["reconciled"] == "every artist" for m in w2_full["markets"].values())
    assert w2_full["write_requests"] == w2_full["items_written"] == w2_full["items_deleted"] == 0
    assert w2_full["items_unchanged"] == w1["items_written"] and w2_full["materializations"].get("top_tracks", 0) == 0
    assert w2_full["items"] == w1["items"]

    # The sensor: its first tick launches nothing; +k costs k x markets requests, -k none and deletes what +k wrote.
    first_tick, added, removed = results["sensor_first_tick"], results["sensor_add"], results["sensor_remove"]
    assert first_tick["tick"] == "SKIPPED" and first_tick["runs_launched"] == 0
    assert added["runs_launched"] == 1 and added["requests"] == K * MARKETS
    assert added["items_written"] > 0 and added["items_deleted"] == 0
    assert added["items"] == w1["items"] + added["items_written"]
    assert removed["requests"] == 0 and removed["items_written"] == 0
    assert removed["items_deleted"] == added["items_written"] and removed["items"] == w1["items"]
    assert "W1       baseline / toptracks run" in completed.stdout
