"""A UI "Materialize all -> All -> Launch backfill" of the demo, timed on the path the UI takes.

Starts `toptracks dev` (the local stack, the webserver and the daemon) in an empty working directory, waits for
the webserver, then sends the GraphQL mutation the UI's launch dialog sends (`launchPartitionBackfill` with every
asset and every partition) and polls the backfill until it ends. Prints the seconds from the launch to the
backfill's end, the runs it made, and when the data was in the table. Run it on a quiet machine:

    .venv/bin/python benchmarks/ui_backfill.py [--port 3555] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ASSETS = ["artist_ids", "raw_top_tracks", "top_tracks"]
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""
STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numCancelable runs(limit: 10) { runId status startTime endTime } }
  }
}"""
PARTITIONS = """
query { assetNodes(assetKeys: [{path: ["top_tracks"]}]) { partitionKeys } }"""


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    answer = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=60)
    answer.raise_for_status()
    body = answer.json()
    if body.get("errors"):
        raise RuntimeError(json.dumps(body["errors"])[:2000])
    return body["data"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=3555)
    parser.add_argument("--workdir", help="working directory of `toptracks dev` (default: a new temp dir)")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="toptracks-ui-"))
    toptracks = Path(sys.executable).with_name("toptracks")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "TOPTRACKS_", "SPOTIFY_", "MYSQL_"))}
    env.update({"TOPTRACKS_STACK_SPOTIFY_PORT": "0", "TOPTRACKS_STACK_DYNAMODB_PORT": "0"})
    log = open(workdir / "dev.log", "w")
    started = time.monotonic()
    dev = subprocess.Popen(
        [str(toptracks), "dev", "--port", str(args.port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{args.port}/graphql"
    try:
        while True:
            try:
                keys = graphql(url, PARTITIONS)["assetNodes"][0]["partitionKeys"]
                break
            except (requests.RequestException, RuntimeError, IndexError, KeyError):
                if dev.poll() is not None or time.monotonic() - started > 300:
                    raise RuntimeError(f"toptracks dev did not come up; see {workdir / 'dev.log'}") from None
                time.sleep(1)
        print(f"webserver up after {time.monotonic() - started:.1f} s; partitions {keys}", flush=True)
        time.sleep(5)  # let the daemon start its loops, as a user reading the page would
        params = {"assetSelection": [{"path": [a]} for a in ASSETS], "partitionNames": keys, "fromFailure": False}
        launched = time.monotonic()
        result = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"launch failed: {result}")
        backfill = result["backfillId"]
        status = None
        while time.monotonic() - launched < args.timeout:
            state = graphql(url, STATUS, {"id": backfill})["partitionBackfillOrError"]
            if state["status"] != status:
                status = state["status"]
                print(f"{time.monotonic() - launched:6.1f} s  backfill {status}", flush=True)
            if status not in ("REQUESTED", None):
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - launched
        runs = state.get("runs") or []
        for run in runs:
            span = (run["endTime"] or 0) - (run["startTime"] or 0)
            print(f"run {run['runId']} {run['status']} ({span:.1f} s from start to end)")
        print(json.dumps({"launch_to_end_s": round(elapsed, 1), "status": status, "runs": len(runs)}))
        return 0 if status == "COMPLETED_SUCCESS" else 1
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
        subprocess.run([str(toptracks), "stack", "stop"], cwd=workdir, env=env, capture_output=True, timeout=120)


if __name__ == "__main__":
    sys.exit(main())
