"""The benchmark code cannot rot: its smoke size runs in the suite (no timing assertions).

It drives the same paths as the full benchmark: `toptracks run` in child processes on a real instance directory,
and a real `dagster-daemon` with `artists_changed_sensor` switched on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_runs_every_workload_and_reports_ratios(tmp_path, mysql_server, dynamodb_local_endpoint):
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
    baseline, floor, w1, w2 = (results["baseline"], results["write_floor"], results["W1"], results["W2"])
    w2_full = results["W2_full"]
    markets = 2
    # Same work on both sides: every (artist, market) asked once, every track written once.
    assert baseline["requests"] == w1["requests"] == w2_full["requests"] == 12 * markets
    # The default mode (`due`) fetches nothing right after a full load; `--mode full` fetches every pair again.
    assert w2["requests"] == 0
    assert w2_full["write_requests"] == 0 and w2_full["read_requests_load"] == 0
    assert baseline["write_requests"] == w1["items_written"] == w1["items"] == floor["items"]
    # W1 again on a fresh DynamoDB Local: the same first load, from nothing.
    w1_cold = results["W1_cold"]
    assert w1_cold["requests"] == w1["requests"] and w1_cold["items_written"] == w1_cold["items"] == w1["items"]
    assert w1_cold["read_requests_load"] == 0
    # The unchanged refresh writes nothing and reads nothing in the load; its checks read at most the sample.
    assert w2["write_requests"] == 0 and w2["items_written"] == 0 and w2["read_requests_load"] == 0
    assert w2["items"] == w1["items"]
    assert 0 < w2["read_requests_checks"] <= 20 * markets
    # The sensor path: its first tick changes nothing; +k costs k x markets requests, -k none.
    assert results["sensor_first_tick"]["requests"] == 0 and results["sensor_first_tick"]["write_requests"] == 0
    added, removed = results["sensor_add"], results["sensor_remove"]
    assert added["requests"] == 2 * markets and added["items_written"] > 0 and added["items_deleted"] == 0
    assert removed["requests"] == 0 and removed["items_deleted"] == added["items_written"]
    assert removed["items"] == w1["items"]
    assert "W1      baseline / toptracks run" in completed.stdout
