"""The README's command and the sensor path against the baseline script's loop, on one stack, in one invocation.

Starts a Spotify emulator (own process, 50 ms latency), AWS's DynamoDB Local and a database on the machine's MariaDB,
then times what a user runs and prints one table; every figure is a ratio on this machine.

    .venv/bin/python benchmarks/run.py                       # baseline, W1, W2, sensor +k/-k: 500 artists x US,CA
    .venv/bin/python benchmarks/run.py --w4                  # plus W4: peak RSS of `toptracks run` at 2,000/20,000
    .venv/bin/python benchmarks/run.py --smoke               # seconds: what the test suite runs

baseline  the baseline script's loop: sequential GET per (artist, market), one put_item per track.
W1 / W2   `python -m toptracks_dagster.cli run` (= `toptracks run`) as a child process, DAGSTER_DEPLOYMENT=prod,
          a real instance directory (DAGSTER_HOME with the repo's dagster_home/dagster.yaml): first load, then the
          same command with nothing changed (its default mode `due`: no list is older than 20 h, nothing fetched),
          then `--mode full` (every pair fetched again). Wall time is the child's, start-up and imports included.
+k / -k   a real `dagster-daemon run` on the same instance with `artists_changed_sensor` switched on
          (`dagster sensor start`): k artists added to (then removed from) the MariaDB table; timed from the
          change to the success of the run the sensor launched.
W1 cold   W1 again on a second, fresh DynamoDB Local (its JVM has served nothing yet), a fresh instance directory,
          raw directory and table: what a first run sees on a DynamoDB Local started just before it.
W3        (--w3) W2 under a rolling limit of R req/s on the emulator and SPOTIFY_REQUESTS_PER_SECOND=R.
W4        (--w4) `toptracks run` for one market at N artists in a child process, 0 ms latency: its peak RSS.
write floor  plain parallel BatchWriteItem of the same items into DynamoDB Local, no API at all.

Spotify requests are the emulator's own count (admin stats, reset before each workload); DynamoDB read and write
requests, items and check reads come from the run's events in the instance (materialization and check metadata).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pymysql
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dynamodb_local import (  # noqa: E402
    LOCAL_CREDENTIALS,
    LOCAL_REGION,
    dynamodb_local,
    local_client,
)
from toptracks_dagster.dev.spotify_emulator import (  # noqa: E402
    Catalog,
    demo_artist_ids,
)
from toptracks_dagster.dynamodb.items import build_item, serialize_item  # noqa: E402
from toptracks_dagster.dynamodb.table import BATCH_SIZE, ensure_table  # noqa: E402

CLIENT_ID = "toptracks-benchmark"
MYSQL = {
    "host": os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("TEST_MYSQL_PORT", "3306")),
    "user": os.environ.get("TEST_MYSQL_USER", "root"),
    "password": os.environ.get("TEST_MYSQL_PASSWORD", ""),
}
MATCH_RAW_CHECK = "top_tracks_match_raw"  # its metadata carries the verification's reads (shared with round-trip)
SENSOR = "artists_changed_sensor"


# ------------------------------------------------------------------------------------------------ emulator
class EmulatorProcess:
    """The Spotify emulator in its own process, as Spotify is remote: its CPU does not compete with the
    client's for one process's GIL. Settings and statistics go through its admin endpoints."""

    def __init__(self, secret: str, latency_ms: float, seed: int):
        env = {**os.environ, "BENCH_SPOTIFY_SECRET": secret}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "toptracks_dagster.dev.spotify_emulator",
                "--port",
                "0",
                "--client-id",
                CLIENT_ID,
                "--client-secret-env",
                "BENCH_SPOTIFY_SECRET",
                "--latency-ms",
                str(latency_ms),
                "--seed",
                str(seed),
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        self.root = line.strip().rsplit(" ", 1)[-1]
        self.base_url, self.token_url = f"{self.root}/v1", f"{self.root}/api/token"

    def update(self, **settings) -> None:
        requests.post(f"{self.root}/_emulator/settings", json=settings, timeout=10).raise_for_status()

    def reset_stats(self) -> None:
        requests.post(f"{self.root}/_emulator/reset-stats", timeout=10).raise_for_status()

    def stats(self) -> dict:
        response = requests.get(f"{self.root}/_emulator/stats", timeout=10)
        response.raise_for_status()
        return response.json()

    def __enter__(self) -> "EmulatorProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


# ------------------------------------------------------------------------------------------------ baseline
def baseline_loop(
    database: str, emulator: EmulatorProcess, secret: str, endpoint: str, table: str, markets: list[str]
) -> dict:
    """The baseline script's loop: sequential GET per artist per market, one put_item per track, one token.

    Fixed only so it does the same work: the artist list is read once (not inside the country loop), the market
    actually sent is the loop's, and a 404 is skipped instead of crashing on raw['tracks'].
    """
    dynamodb = boto3.resource("dynamodb", endpoint_url=endpoint, region_name=LOCAL_REGION, **LOCAL_CREDENTIALS)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "artist_id", "KeyType": "HASH"}, {"AttributeName": "id", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "artist_id", "AttributeType": "S"},
            {"AttributeName": "id", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    ).wait_until_exists()
    started = time.monotonic()
    connection = pymysql.connect(database=database, **MYSQL)
    cursor = connection.cursor()
    cursor.execute("SELECT id FROM artists")
    artist_ids = [row[0] for row in cursor.fetchall()]
    token = requests.post(
        emulator.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, secret)
    ).json()["access_token"]
    target = dynamodb.Table(table)
    requests_sent = puts = 0
    for market in markets:
        for artist_id in artist_ids:
            response = requests.get(
                f"{emulator.base_url}/artists/{artist_id}/top-tracks",
                params={"market": market},
                headers={"Authorization": f"Bearer {token}"},
            )
            requests_sent += 1
            raw = response.json()
            for track in raw.get("tracks", []):
                target.put_item(Item={"artist_id": artist_id, "country": market, **track})
                puts += 1
    connection.close()
    return {"wall_s": time.monotonic() - started, "requests": requests_sent, "write_requests": puts, "429s": 0}


# ------------------------------------------------------------------------------------------------ write floor
def write_floor(
    catalog: Catalog, artist_ids: list[str], markets: list[str], endpoint: str, concurrency: int = 8
) -> dict:
    """The same items, plain parallel BatchWriteItem, no API and no diffing: what DynamoDB Local can absorb."""
    client = local_client(endpoint, max_pool_connections=concurrency * 2)
    table = f"floor_{uuid.uuid4().hex[:8]}"
    ensure_table(client, table, endpoint)
    items = [
        serialize_item(build_item(a, m, rank, t, "2026-01-01T00:00:00Z"))
        for m in markets
        for a in artist_ids
        for rank, t in enumerate(catalog.top_tracks(a, m) or [], 1)
    ]
    batches = [items[i : i + BATCH_SIZE] for i in range(0, len(items), BATCH_SIZE)]

    def send(batch: list[dict]) -> None:
        pending = {table: [{"PutRequest": {"Item": item}} for item in batch]}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, batches))
    wall = time.monotonic() - started
    return {"wall_s": wall, "requests": 0, "write_requests": len(batches), "429s": 0, "items": len(items)}


# ------------------------------------------------------------------------------------------------ the instance
def make_instance_home(parent: Path) -> Path:
    """A Dagster instance directory as a user has one: the repo's dagster.yaml, SQLite storage next to it."""
    home = parent / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return home


def open_instance(home: Path):
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def run_figures(home: Path, run_id: str) -> dict:
    """What the run recorded: the load's DynamoDB requests and items per market, the checks' reads, and the
    Spotify numbers of the raw step; summed over the run's markets."""
    from dagster import DagsterEventType

    figures = {
        "write_requests": 0,
        "read_requests_load": 0,
        "read_requests_checks": 0,
        "items": 0,
        "items_written": 0,
        "items_deleted": 0,
        "markets": {},
    }
    with open_instance(home) as instance:
        entries = instance.all_logs(
            run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION}
        )
        for entry in entries:
            event = entry.dagster_event
            if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                materialization = event.event_specific_data.materialization
                values = {k: v.value for k, v in materialization.metadata.items()}
                asset = materialization.asset_key.to_user_string()
                if asset == "top_tracks" and materialization.partition:
                    market = figures["markets"].setdefault(materialization.partition, {})
                    market.update(
                        {
                            k: values.get(k, 0)
                            for k in (
                                "write_requests",
                                "read_requests",
                                "items_written",
                                "items_unchanged",
                                "items_deleted",
                                "artists_changed",
                                "artists_removed",
                                "table_state",
                                "wall_time_s",
                            )
                        }
                    )
                    market["items"] = values.get("dagster/row_count", 0)
                    figures["write_requests"] += values.get("write_requests", 0)
                    figures["read_requests_load"] += values.get("read_requests", 0)
                    figures["items"] += values.get("dagster/row_count", 0)
                    figures["items_written"] += values.get("items_written", 0)
                    figures["items_deleted"] += values.get("items_deleted", 0)
                elif asset == "raw_top_tracks" and "run_requests" in values:
                    figures["api_phase_s"] = values.get("run_wall_time_s", 0.0)
                    figures["run_requests"] = values.get("run_requests", 0)
                    figures["run_429s"] = values.get("run_responses_429", 0)
            else:
                evaluation = event.event_specific_data
                if evaluation.check_name == MATCH_RAW_CHECK:
                    values = {k: v.value for k, v in evaluation.metadata.items()}
                    reads = values.get("read_requests", 0)
                    figures["read_requests_checks"] += reads
                    if evaluation.partition:
                        figures["markets"].setdefault(evaluation.partition, {})["check_reads"] = reads
        # Where the run's time went: each step's duration, and each market's load (the rest of the
        # top_tracks step is its checks' read-back).
        figures["steps_s"] = {
            s.step_key: round(s.end_time - s.start_time, 2)
            for s in instance.get_run_step_stats(run_id)
            if s.start_time and s.end_time
        }
    figures["read_requests"] = figures["read_requests_load"] + figures["read_requests_checks"]
    return figures


def spotify_count(emulator: EmulatorProcess) -> dict:
    stats = emulator.stats()
    return {
        "requests": stats["requests"],
        "token_requests": stats["token_requests"],
        "429s": stats.get("rate_limited", 0),
    }


# ------------------------------------------------------------------------------------------------ `toptracks run`
def toptracks_run(env: dict, emulator: EmulatorProcess, home: Path, *extra: str) -> dict:
    """`toptracks run` as a user types it, in a child process; figures from the emulator and the instance."""
    emulator.reset_stats()
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "toptracks_dagster.cli", "run", *extra],
        cwd=REPO,
        env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(
            f"toptracks run {' '.join(extra)} failed ({completed.returncode}):\n"
            f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        )
    run_id = re.search(r"^run (\S+) recorded", completed.stdout, re.M).group(1)
    in_run = re.search(r"in ([0-9.]+) s in all", completed.stdout)
    return {
        "wall_s": wall,
        "in_run_s": float(in_run.group(1)) if in_run else None,
        "run_id": run_id,
        **spotify_count(emulator),
        **run_figures(home, run_id),
        "stdout": completed.stdout,
    }


# ------------------------------------------------------------------------------------------------ sensor path
class Daemon:
    """`dagster-daemon run` on the instance, with the workspace of the repo; its code server and the runs it
    launches inherit this environment (the prod variables)."""

    def __init__(self, env: dict, home: Path, log_path: Path):
        self.env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
        self.home = home
        self.log = open(log_path, "w")
        # Its own session, so stopping it stops its code server and run workers too, and nothing else.
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_sensor(self, name: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "dagster", "sensor", "start", name, "-w", "workspace.yaml"],
            cwd=REPO,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )

    def wait_for_run(self, seen: set[str], timeout_s: float) -> str:
        """The first run the sensor launched that is not in `seen`, once it ended; raises if it did not succeed."""
        from dagster import DagsterRunStatus, RunsFilter

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited ({self.process.returncode}); see {self.log.name}")
            with open_instance(self.home) as instance:
                runs = instance.get_runs(RunsFilter(tags={"trigger": "artists_changed"}))
                new = [r for r in runs if r.run_id not in seen]
                for run in new:
                    if run.status == DagsterRunStatus.SUCCESS:
                        return run.run_id
                    if run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                        raise RuntimeError(
                            f"sensor run {run.run_id} ended {run.status.value}; see the instance at {self.home}"
                        )
            time.sleep(0.25)
        raise TimeoutError(f"no successful sensor run within {timeout_s:.0f} s; daemon log {self.log.name}")

    def run_times(self, run_id: str) -> dict:
        with open_instance(self.home) as instance:
            record = instance.get_run_record_by_id(run_id)
            return {
                "created": record.create_timestamp.timestamp(),
                "started": record.start_time,
                "ended": record.end_time,
            }

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def sensor_change(daemon: Daemon, emulator: EmulatorProcess, change, seen: set[str], timeout_s: float) -> dict:
    """Apply `change` to the artists table, wait for the run the sensor launches, and measure it."""
    emulator.reset_stats()
    changed_at = time.time()
    change()
    run_id = daemon.wait_for_run(seen, timeout_s)
    seen.add(run_id)
    times = daemon.run_times(run_id)
    return {
        "wall_s": times["ended"] - changed_at,
        "launch_s": times["created"] - changed_at,
        "in_run_s": times["ended"] - times["started"],
        "run_id": run_id,
        **spotify_count(emulator),
        **run_figures(daemon.home, run_id),
    }


# ------------------------------------------------------------------------------------------------ W4
# `toptracks run` in this very process, then its peak RSS: VmHWM, not getrusage's ru_maxrss, which Linux carries
# across fork+exec (a child of a big parent reports the parent's size).
W4_WRAPPER = """
import sys
from toptracks_dagster.cli import main
code = main(sys.argv[1:])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("PEAK-RSS-MB %.1f" % (int(line.split()[1]) / 1024), flush=True)
sys.exit(code)
"""


def w4(count: int, env: dict, emulator: EmulatorProcess, database_for, workdir: Path, market: str) -> dict:
    database = database_for(demo_artist_ids(count, seed=4))
    home = make_instance_home(workdir / f"w4_{count}")
    child_env = {
        **os.environ,
        **env,
        "DAGSTER_HOME": str(home),
        "MYSQL_DATABASE": database,
        "TOPTRACKS_TABLE": f"w4_{uuid.uuid4().hex[:8]}",
        "TOPTRACKS_COUNTRIES": market,
        "TOPTRACKS_RAW_DIR": str(workdir / f"w4_{count}" / "raw"),
    }
    emulator.reset_stats()
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-c", W4_WRAPPER, "run"], cwd=REPO, env=child_env, capture_output=True, text=True
    )
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"W4 at {count} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    rss = float(re.search(r"^PEAK-RSS-MB ([0-9.]+)", completed.stdout, re.M).group(1))
    run_id = re.search(r"^run (\S+) recorded", completed.stdout, re.M).group(1)
    in_run = re.search(r"in ([0-9.]+) s in all", completed.stdout)
    return {
        "wall_s": wall,
        "in_run_s": float(in_run.group(1)) if in_run else None,
        "peak_rss_mb": rss,
        "run_id": run_id,
        **spotify_count(emulator),
        **run_figures(home, run_id),
    }


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artists", type=int, default=500)
    parser.add_argument("--markets", default="US,CA")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16, help="SPOTIFY_CONCURRENCY of `toptracks run`")
    parser.add_argument("--k", type=int, default=5, help="artists added, then removed, on the sensor path")
    parser.add_argument("--sensor-interval", type=int, default=5, help="TOPTRACKS_SENSOR_INTERVAL_S of the daemon")
    parser.add_argument("--no-sensor", action="store_true", help="skip the sensor path")
    parser.add_argument("--no-cold", action="store_true", help="skip W1 on a fresh DynamoDB Local")
    parser.add_argument("--w3", action="store_true", help="also W3: an unchanged refresh under a rolling limit")
    parser.add_argument("--rate", type=float, default=20.0, help="W3: the rolling limit R, requests/s")
    parser.add_argument(
        "--w4",
        nargs="?",
        const="2000,20000",
        default="",
        help="also W4: peak RSS of `toptracks run` at these artist counts (default 2000,20000)",
    )
    parser.add_argument("--only-w4", action="store_true", help="skip everything but W4")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no latency, no W3/W4: for the test suite")
    parser.add_argument("--timeout", type=float, default=900.0, help="longest wait for one sensor-launched run, s")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (instance, raw data, logs)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.smoke:
        args.artists, args.latency_ms, args.k, args.sensor_interval, args.w3, args.w4 = 12, 0.0, 2, 1, False, ""
    if args.only_w4 and not args.w4:
        args.w4 = "2000,20000"
    markets = [m.strip() for m in args.markets.split(",")]
    secret = secrets.token_urlsafe(24)
    catalog = Catalog(seed=42)
    ids = demo_artist_ids(args.artists, seed=42)
    added = [a for a in demo_artist_ids(args.k + 50, seed=4242) if a not in set(ids)][: args.k]
    databases: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="toptracks-bench-"))
    machine = {"cores": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    print(f"work directory {workdir}; {machine['cores']} cores, load average {machine['loadavg_start']}", flush=True)

    def database_for(artist_ids: list[str]) -> str:
        name = f"toptracks_bench_{uuid.uuid4().hex[:8]}"
        with pymysql.connect(autocommit=True, **MYSQL) as connection, connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
            cursor.execute(f"CREATE TABLE `{name}`.artists (id VARCHAR(64))")
            cursor.executemany(f"INSERT INTO `{name}`.artists (id) VALUES (%s)", [(a,) for a in artist_ids])
        databases.append(name)
        return name

    def change_artists(database: str, sql: str, artist_ids: list[str]):
        def apply() -> None:
            with (
                pymysql.connect(database=database, autocommit=True, **MYSQL) as connection,
                connection.cursor() as cursor,
            ):
                cursor.executemany(sql, [(a,) for a in artist_ids])

        return apply

    results: dict[str, dict] = {}

    def record(key: str, label: str, figures: dict) -> None:  # each result shows as soon as it is measured
        figures = {k: v for k, v in figures.items() if k != "stdout"}
        results[key] = {"label": label, **figures}
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items() if k != "markets"}
        print(f"measured {label}: {json.dumps(shown)}", flush=True)

    try:
        with EmulatorProcess(secret, args.latency_ms, seed=42) as emulator, dynamodb_local() as endpoint:
            database = database_for(ids)
            env = {
                "DAGSTER_DEPLOYMENT": "prod",
                "MYSQL_HOST": MYSQL["host"],
                "MYSQL_PORT": str(MYSQL["port"]),
                "MYSQL_USER": MYSQL["user"],
                "MYSQL_PASSWORD": MYSQL["password"],
                "MYSQL_DATABASE": database,
                "SPOTIFY_CLIENT_ID": CLIENT_ID,
                "SPOTIFY_CLIENT_SECRET": secret,
                "SPOTIFY_API_BASE_URL": emulator.base_url,
                "SPOTIFY_TOKEN_URL": emulator.token_url,
                "SPOTIFY_CONCURRENCY": str(args.concurrency),
                "SPOTIFY_REQUESTS_PER_SECOND": "0",
                "DYNAMODB_ENDPOINT_URL": endpoint,
                "AWS_REGION": LOCAL_REGION,
                "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
                "TOPTRACKS_TABLE": f"bench_{uuid.uuid4().hex[:8]}",
                "TOPTRACKS_COUNTRIES": ",".join(markets),
                "TOPTRACKS_RAW_DIR": str(workdir / "raw"),
                "TOPTRACKS_SENSOR_INTERVAL_S": str(args.sensor_interval),
            }
            for name in ("TOPTRACKS_RAW_S3_BUCKET", "MYSQL_IAM_AUTH", "DAGSTER_HOME"):
                os.environ.pop(name, None)

            if not args.only_w4:
                record(
                    "baseline",
                    "baseline loop (sequential GET, put_item)",
                    baseline_loop(database, emulator, secret, endpoint, f"baseline_{uuid.uuid4().hex[:8]}", markets),
                )
                record(
                    "write_floor", "write floor (BatchWriteItem, no API)", write_floor(catalog, ids, markets, endpoint)
                )
                home = make_instance_home(workdir)
                record("W1", "W1 first load: toptracks run", toptracks_run(env, emulator, home))
                record("W2", "W2 unchanged refresh: toptracks run", toptracks_run(env, emulator, home))
                # The same with every pair fetched again: what the daily schedule and "Materialize all" do.
                record(
                    "W2_full",
                    "W2 unchanged, --mode full: toptracks run",
                    toptracks_run(env, emulator, home, "--mode", "full"),
                )
                if not args.no_cold:
                    # The same first load on a DynamoDB Local whose JVM has served nothing: it compiles its write
                    # and read paths while serving them.
                    with dynamodb_local() as cold_endpoint:
                        cold = workdir / "cold"
                        cold.mkdir()
                        cold_env = {
                            **env,
                            "DYNAMODB_ENDPOINT_URL": cold_endpoint,
                            "TOPTRACKS_TABLE": f"bench_{uuid.uuid4().hex[:8]}",
                            "TOPTRACKS_RAW_DIR": str(cold / "raw"),
                        }
                        record(
                            "W1_cold",
                            "W1 on a fresh DynamoDB Local",
                            toptracks_run(cold_env, emulator, make_instance_home(cold)),
                        )
                if args.w3:
                    emulator.update(rate_limit_requests=int(args.rate * 30), rate_limit_window_s=30.0)
                    record(
                        "W3",
                        f"W3 unchanged, limit {args.rate:g}/s: toptracks run",
                        toptracks_run(
                            {**env, "SPOTIFY_REQUESTS_PER_SECOND": str(args.rate)}, emulator, home, "--mode", "full"
                        ),
                    )
                    emulator.update(rate_limit_requests=None)
                if not args.no_sensor:
                    daemon = Daemon(env, home, workdir / "daemon.log")
                    seen: set[str] = set()
                    try:
                        # The sensor's first tick has no cursor yet: it launches one `changed` run, which finds
                        # nothing new. Measured too, and waited for, so that it is not mistaken for the +k run.
                        record(
                            "sensor_first_tick",
                            "sensor on, first tick (no change)",
                            sensor_change(daemon, emulator, lambda: daemon.start_sensor(SENSOR), seen, args.timeout),
                        )
                        record(
                            "sensor_add",
                            f"sensor +{args.k} artists (dagster-daemon)",
                            sensor_change(
                                daemon,
                                emulator,
                                change_artists(database, "INSERT INTO artists (id) VALUES (%s)", added),
                                seen,
                                args.timeout,
                            ),
                        )
                        record(
                            "sensor_remove",
                            f"sensor -{args.k} artists (dagster-daemon)",
                            sensor_change(
                                daemon,
                                emulator,
                                change_artists(database, "DELETE FROM artists WHERE id = %s", added),
                                seen,
                                args.timeout,
                            ),
                        )
                    finally:
                        daemon.stop()
            emulator.update(latency_ms=0.0)  # W4 measures memory, not the API
            for count in [int(c) for c in args.w4.split(",") if c.strip()]:
                record(
                    f"W4_{count}",
                    f"W4 {count} artists x {markets[0]}: toptracks run",
                    w4(count, env, emulator, database_for, workdir, markets[0]),
                )
    finally:
        with pymysql.connect(autocommit=True, **MYSQL) as connection, connection.cursor() as cursor:
            for name in databases:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    busiest = max(machine["loadavg_start"][0], machine["loadavg_end"][0])
    machine["busy"] = busiest > 0.5 * (machine["cores"] or 1)
    results["machine"] = machine
    print_report(results, markets, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_report(results: dict, markets: list[str], args) -> None:
    print(
        f"\n{'workload':<46}{'wall s':>8}{'run s':>8}{'Spotify':>8}{'writes':>8}{'reads':>7}{'chk rd':>7}"
        f"{'items':>8}{'RSS MB':>8}"
    )
    print("-" * 108)

    def cell(r: dict, key: str, width: int, fmt: str = "") -> str:
        value = r.get(key)
        return f"{'':>{width}}" if value is None else f"{value:>{width}{fmt}}"

    for key, r in results.items():
        if key == "machine":
            continue
        print(
            f"{r['label']:<46}{cell(r, 'wall_s', 8, '.2f')}{cell(r, 'in_run_s', 8, '.2f')}{cell(r, 'requests', 8)}"
            f"{cell(r, 'write_requests', 8)}{cell(r, 'read_requests_load', 7)}{cell(r, 'read_requests_checks', 7)}"
            f"{cell(r, 'items', 8)}{cell(r, 'peak_rss_mb', 8, '.0f')}"
        )
    print(
        "wall s: child process (or, for the sensor, from the change to the run's success); run s: the run itself; "
        "Spotify: top-tracks requests the emulator served; writes / reads: the load's DynamoDB requests; chk rd: "
        "the checks' read-back Queries"
    )
    machine = results["machine"]
    print(
        f"\nmachine: {machine['cores']} cores, load average {machine['loadavg_start']} at start, "
        f"{machine['loadavg_end']} at end" + (": BUSY with other work, ratios are noisy" if machine["busy"] else "")
    )
    sample = int(os.environ.get("TOPTRACKS_CHECK_SAMPLE_SIZE", "20"))
    print("\nagainst the targets")
    base = results.get("baseline")
    for key, target in (("W1", 6), ("W1_cold", 6), ("W2", 20), ("W2_full", 20)):
        r = results.get(key)
        if base and r:
            ratio = base["wall_s"] / r["wall_s"]
            extra = f", {r['write_requests']} write requests (target 0)" if key.startswith("W2") else ""
            print(f"  {key:<7} baseline / toptracks run    {ratio:7.2f}x  (target >= {target}){extra}")
    w2 = results.get("W2")
    if w2:
        bound = sample * len(markets)
        print(
            f"  W2 check reads                      {w2['read_requests_checks']:>7}   (target <= sample x markets = "
            f"{bound}); load reads {w2['read_requests_load']}"
        )
    for key, expected in (("sensor_add", args.k * len(markets)), ("sensor_remove", 0)):
        r = results.get(key)
        if r:
            print(
                f"  {r['label']:<36}{r['requests']:>7} requests (target {expected}), {r['wall_s']:.1f} s from the "
                f"change to success (launched after {r['launch_s']:.1f} s, run {r['in_run_s']:.1f} s)"
            )
    w3 = results.get("W3")
    if w3 and w3.get("api_phase_s"):
        print(
            f"  W3 API phase / (requests / R)       {w3['api_phase_s'] / (w3['requests'] / args.rate):7.2f}   "
            f"(target <= 1.1), 429s {w3['429s']}"
        )
    w4s = [r for k, r in results.items() if k.startswith("W4_")]
    if len(w4s) >= 2:
        growth = w4s[-1]["peak_rss_mb"] / w4s[0]["peak_rss_mb"] - 1
        print(
            f"  W4 peak RSS growth                  {100 * growth:6.1f} %  (target <= 25 %; largest "
            f"{w4s[-1]['peak_rss_mb']:.0f} MB, target <= 300)"
        )


if __name__ == "__main__":
    sys.exit(main())
