"""The benchmark code cannot rot: its smoke size runs in the suite (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_runs_every_workload_and_reports_ratios(tmp_path, mysql_server, dynamodb_local_endpoint):
    out = tmp_path / "bench.json"
    completed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--json", str(out)],
                               cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())
    baseline, w1, w2 = (results["baseline W1 (tutorial loop)"], results["pipeline W1 first load"],
                        results["pipeline W2 refresh, unchanged"])
    # Same work on both sides: every (artist, market) asked once, every track written once.
    assert baseline["requests"] == w1["requests"] == w2["requests"] == 24
    assert baseline["write_requests"] == w1["items_written"] == results["write floor (BatchWriteItem)"]["items"]
    assert w2["write_requests"] == 0 and w2["items_written"] == 0
    assert "W1 baseline / pipeline" in completed.stdout
