"""What a user runs against the baseline script's loop, on one stack, in one invocation: every figure is a ratio
on this machine, every count comes from outside the timed code.

    .venv/bin/python benchmarks/run.py              # 500 artists x US,CA: baseline, floor, W1, W2, sensor, README
    .venv/bin/python benchmarks/run.py --w4 2000,20000   # plus W4: peak RSS of `toptracks run` at those sizes
    .venv/bin/python benchmarks/run.py --smoke      # tiny, no latency: what the test suite runs

Stack: the Spotify emulator in its own process (50 ms latency), AWS's DynamoDB Local, a database on the machine's
MariaDB. `toptracks run` runs as a child process (DAGSTER_DEPLOYMENT=prod) on a real instance directory; the
sensor rows run a real `dagster-daemon`. Spotify requests are the emulator's count; DynamoDB requests come from
the run's `top_tracks` events; `items` is a COUNT scan of the table after the row.
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pymysql
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dynamodb_local import LOCAL_CREDENTIALS, LOCAL_REGION, dynamodb_local, local_client  # noqa: E402
from toptracks_dagster.dev.spotify_emulator import Catalog, demo_artist_ids  # noqa: E402
from toptracks_dagster.dynamodb.load import serialize, wanted_items  # noqa: E402
from toptracks_dagster.dynamodb.table import ensure_table  # noqa: E402
from toptracks_dagster.spotify.client import TopTracksOutcome  # noqa: E402

CLIENT_ID = "toptracks-benchmark"
MYSQL = {
    "host": os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("TEST_MYSQL_PORT", "3306")),
    "user": os.environ.get("TEST_MYSQL_USER", "root"),
    "password": os.environ.get("TEST_MYSQL_PASSWORD", ""),
}
SENSOR = "artists_changed_sensor"
BATCH_SIZE = 25  # BatchWriteItem's limit
WAIT_S = 600.0  # longest wait for any one thing the benchmark starts (a process, a tick, a run)
LOAD_FIGURES = (
    "artists_read",
    "artists_changed",
    "artists_removed",
    "items_written",
    "items_deleted",
    "items_unchanged",
    "read_requests",
    "write_requests",
)
# `toptracks run` in this very process, then its peak RSS: VmHWM, not ru_maxrss, which Linux carries across
# fork+exec (a child of a big parent reports the parent's size).
W4_WRAPPER = """
import sys
from toptracks_dagster.cli import main
code = main(sys.argv[1:])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("PEAK-RSS-MB %.1f" % (int(line.split()[1]) / 1024), flush=True)
sys.exit(code)
"""


class EmulatorProcess:
    """The Spotify emulator in its own process, as Spotify is remote: it does not compete for the client's GIL."""

    def __init__(self, secret: str, latency_ms: float):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "toptracks_dagster.dev.spotify_emulator", "--port", "0", "--client-id", CLIENT_ID]
            + ["--client-secret-env", "BENCH_SPOTIFY_SECRET", "--latency-ms", str(latency_ms), "--seed", "42"],
            env={**os.environ, "BENCH_SPOTIFY_SECRET": secret},
            stdout=subprocess.PIPE,
            text=True,
        )
        self.root = self.process.stdout.readline().strip().rsplit(" ", 1)[-1]
        self.base_url, self.token_url = f"{self.root}/v1", f"{self.root}/api/token"

    def admin(self, path: str, **settings) -> dict:
        response = requests.post(f"{self.root}/_emulator/{path}", json=settings, timeout=10)
        response.raise_for_status()
        return response.json()

    def requests_served(self) -> int:
        """Top-tracks requests since the last reset-stats (token requests are counted apart)."""
        response = requests.get(f"{self.root}/_emulator/stats", timeout=10)
        response.raise_for_status()
        return response.json()["requests"]

    def __enter__(self) -> "EmulatorProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def table_items(endpoint: str, table: str, credentials: dict = LOCAL_CREDENTIALS) -> int:
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name=LOCAL_REGION, **credentials)
    pages = client.get_paginator("scan").paginate(TableName=table, Select="COUNT")
    return sum(page["Count"] for page in pages)


# ------------------------------------------------------------------------------------------------ the references
def baseline_loop(database: str, emulator: EmulatorProcess, secret: str, endpoint: str, markets: list[str]) -> dict:
    """The baseline script's loop: sequential GET per artist per market, one put_item per track, one token.

    Fixed only so it does the same work: the artist list is read once (not inside the country loop), the market
    actually sent is the loop's, and a 404 is skipped instead of crashing on raw['tracks'].
    """
    dynamodb = boto3.resource("dynamodb", endpoint_url=endpoint, region_name=LOCAL_REGION, **LOCAL_CREDENTIALS)
    target = dynamodb.create_table(
        TableName=f"baseline_{uuid.uuid4().hex[:8]}",
        KeySchema=[{"AttributeName": "artist_id", "KeyType": "HASH"}, {"AttributeName": "id", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "artist_id", "AttributeType": "S"},
            {"AttributeName": "id", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    target.wait_until_exists()
    started = time.monotonic()
    with pymysql.connect(database=database, **MYSQL) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT id FROM artists")
        artist_ids = [row[0] for row in cursor.fetchall()]
    token = requests.post(
        emulator.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, secret), timeout=30
    ).json()["access_token"]
    sent = puts = 0
    for market in markets:
        for artist_id in artist_ids:
            raw = requests.get(
                f"{emulator.base_url}/artists/{artist_id}/top-tracks",
                params={"market": market},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).json()
            sent += 1
            for track in raw.get("tracks", []):
                target.put_item(Item={"artist_id": artist_id, "country": market, **track})
                puts += 1
    return {"wall_s": time.monotonic() - started, "requests": sent, "write_requests": puts, "items_written": puts}


def write_floor(catalog: Catalog, artist_ids: list[str], markets: list[str], endpoint: str) -> dict:
    """The pipeline's items, plain parallel BatchWriteItem (8 in flight), no API, no reads: what DynamoDB Local
    can absorb."""
    client = local_client(endpoint, max_pool_connections=16)
    table = f"floor_{uuid.uuid4().hex[:8]}"
    ensure_table(client, table, endpoint)
    items, artists_with_tracks = [], 0
    for market in markets:
        for artist_id in artist_ids:
            tracks = catalog.top_tracks(artist_id, market)
            outcome = TopTracksOutcome(artist_id, market, "2026-01-01T00:00:00Z", 200 if tracks else 404, tracks)
            wanted = wanted_items(market, outcome)
            artists_with_tracks += bool(wanted)
            items += [serialize({**item, "fetched_at": outcome.requested_at}) for item in wanted.values()]
    batches = [items[i : i + BATCH_SIZE] for i in range(0, len(items), BATCH_SIZE)]

    def send(batch: list[dict]) -> None:
        pending = {table: [{"PutRequest": {"Item": item}} for item in batch]}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, batches))
    return {
        "wall_s": time.monotonic() - started,
        "requests": 0,
        "write_requests": len(batches),
        "items_written": len(items),
        "artists_with_tracks": artists_with_tracks,
        "items": table_items(endpoint, table),
    }


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
    """What the run recorded: the load's figures summed over markets (from `top_tracks`' materializations and
    observations), the `exact` check's read-back, materializations per asset, the Spotify run tags, step times."""
    from dagster import DagsterEventType as Type

    figures = dict.fromkeys(LOAD_FIGURES, 0) | {"artists_read_back": 0, "exact_failed": 0, "markets": {}}
    materialized = Counter()
    with open_instance(home) as instance:
        kinds = {Type.ASSET_MATERIALIZATION, Type.ASSET_OBSERVATION, Type.ASSET_CHECK_EVALUATION}
        for entry in instance.all_logs(run_id, of_type=kinds):
            event = entry.dagster_event
            data = event.event_specific_data
            if event.event_type == Type.ASSET_CHECK_EVALUATION:
                if data.check_name == "exact":
                    figures["artists_read_back"] += data.metadata["artists_read_back"].value
                    figures["exact_failed"] += not data.passed
                continue
            found = data.materialization if event.event_type == Type.ASSET_MATERIALIZATION else data.asset_observation
            asset = found.asset_key.to_user_string()
            materialized[asset] += event.event_type == Type.ASSET_MATERIALIZATION
            if asset == "top_tracks":
                values = {k: v.value for k, v in found.metadata.items()}
                figures["markets"][found.partition] = {k: values.get(k) for k in ("reconciled", *LOAD_FIGURES)}
                for name in LOAD_FIGURES:
                    figures[name] += values.get(name, 0)
        tags = instance.get_run_by_id(run_id).tags
        steps = instance.get_run_step_stats(run_id)
    figures["materializations"] = dict(materialized)
    figures["spotify_tags"] = {k.split("/")[1]: v for k, v in tags.items() if k.startswith("toptracks/spotify_")}
    figures["steps_s"] = {s.step_key: round(s.end_time - s.start_time, 2) for s in steps if s.start_time and s.end_time}
    return figures


def toptracks_run(env: dict, home: Path, emulator: EmulatorProcess | None, *args: str, wrapper: bool = False) -> dict:
    """`toptracks run` as a user types it, in a child process; figures from the emulator and the instance."""
    if emulator:
        emulator.admin("reset-stats")
    command = [sys.executable, "-c", W4_WRAPPER] if wrapper else [sys.executable, "-m", "toptracks_dagster.cli"]
    started = time.monotonic()
    completed = subprocess.run(
        [*command, "run", *args],
        cwd=REPO,
        env={**env, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=WAIT_S * 3,
    )
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(
            f"toptracks run {' '.join(args)} failed:\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
        )
    run_id = re.search(r"^run (\S+) recorded", completed.stdout, re.M).group(1)
    figures = {"wall_s": wall, "in_run_s": float(re.search(r"in ([0-9.]+) s in all", completed.stdout).group(1))}
    if wrapper:
        figures["peak_rss_mb"] = float(re.search(r"^PEAK-RSS-MB ([0-9.]+)", completed.stdout, re.M).group(1))
    if emulator:
        figures["requests"] = emulator.requests_served()
    return figures | run_figures(home, run_id)


# ------------------------------------------------------------------------------------------------ sensor path
class Daemon:
    """`dagster-daemon run` on the instance with the repo's workspace, in its own session so that stopping it stops
    its code server and run workers too, and nothing else."""

    def __init__(self, env: dict, home: Path, log_path: Path):
        self.env, self.home = {**env, "DAGSTER_HOME": str(home)}, home
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_sensor(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "dagster", "sensor", "start", SENSOR, "-w", "workspace.yaml"],
            cwd=REPO,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=WAIT_S,
        )

    def _poll(self, probe, what: str):
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited ({self.process.returncode}); see {self.log.name}")
            with open_instance(self.home) as instance:
                found = probe(instance)
            if found is not None:
                return found
            time.sleep(0.25)
        raise TimeoutError(f"no {what} within {WAIT_S:.0f} s; daemon log {self.log.name}")

    def next_tick(self, after: float, launching: bool):
        """The first finished tick of the sensor that started after `after` (with `launching`, that launched)."""
        from dagster._core.scheduler.instigation import InstigatorType, TickStatus

        def probe(instance):
            for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
                if state.instigator_name != SENSOR:
                    continue
                ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
                for tick in sorted(ticks, key=lambda t: t.timestamp):
                    if tick.status == TickStatus.FAILURE:
                        raise RuntimeError(f"sensor tick failed: {tick.error.message if tick.error else ''}")
                    if tick.status == TickStatus.SUCCESS or (tick.status == TickStatus.SKIPPED and not launching):
                        return tick
            return None

        return self._poll(probe, "sensor tick")

    def finished(self, run_id: str):
        from dagster import DagsterRunStatus

        def probe(instance):
            record = instance.get_run_record_by_id(run_id)
            if record.dagster_run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                raise RuntimeError(f"sensor run {run_id} ended {record.dagster_run.status.value}; see {self.home}")
            return record if record.dagster_run.status == DagsterRunStatus.SUCCESS else None

        return self._poll(probe, f"success of run {run_id}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def sensor_change(daemon: Daemon, emulator: EmulatorProcess, change, table: tuple[str, str]) -> dict:
    """Apply `change`, then follow the tick that launched a run to that run's success."""
    emulator.admin("reset-stats")
    changed_at = time.time()
    change()
    tick = daemon.next_tick(changed_at, launching=True)
    run_id = tick.run_ids[0]
    record = daemon.finished(run_id)
    return {
        "wall_s": record.end_time - changed_at,
        "launch_s": record.create_timestamp.timestamp() - changed_at,
        "in_run_s": record.end_time - record.start_time,
        "runs_launched": len(tick.run_ids),
        "requests": emulator.requests_served(),
        "items": table_items(*table),
    } | run_figures(daemon.home, run_id)


# ------------------------------------------------------------------------------------------------ README command
def readme_runs(workdir: Path) -> list[dict]:
    """The README's `toptracks run` on a fresh clone's state (no stack, no instance, no raw data), twice; stops the
    stack it started."""
    home, local = make_instance_home(workdir / "readme"), workdir / "readme" / "local"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "TOPTRACKS_", "SPOTIFY_", "MYSQL_"))}
    env = {k: v for k, v in env.items() if not k.startswith(("AWS_", "DYNAMODB_"))}  # a clone's shell has none
    env |= {
        "TOPTRACKS_LOCAL_DIR": str(local),
        "TOPTRACKS_RAW_DIR": str(workdir / "readme" / "raw"),
        "TOPTRACKS_STACK_SPOTIFY_PORT": "0",  # never someone else's stack on the default ports
        "TOPTRACKS_STACK_DYNAMODB_PORT": "0",
    }
    try:
        rows = [toptracks_run(env, home, None), toptracks_run(env, home, None)]
        state = json.loads((local / "stack.json").read_text())
        credentials = {k: state[k] for k in ("aws_access_key_id", "aws_secret_access_key")}
        endpoint = f"http://127.0.0.1:{state['processes']['dynamodb']['port']}"
        for row in rows:
            row["requests"] = int(row["spotify_tags"].get("spotify_requests", 0))
        rows[-1]["items"] = table_items(endpoint, "top_tracks", credentials)
        return rows
    finally:
        toptracks = [sys.executable, "-m", "toptracks_dagster.cli", "stack", "stop"]
        subprocess.run(toptracks, cwd=REPO, env=env, capture_output=True, timeout=120)


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artists", type=int, default=500)
    parser.add_argument("--markets", default="US,CA")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16, help="SPOTIFY_CONCURRENCY of `toptracks run`")
    parser.add_argument("--k", type=int, default=5, help="artists added, then removed, on the sensor path")
    parser.add_argument("--sensor-interval", type=int, default=5, help="TOPTRACKS_SENSOR_INTERVAL_S of the daemon")
    parser.add_argument("--no-sensor", action="store_true", help="skip the sensor rows")
    parser.add_argument("--no-cold", action="store_true", help="skip W1 on a fresh DynamoDB Local")
    parser.add_argument("--no-readme", action="store_true", help="skip the README command on a fresh clone's state")
    parser.add_argument(
        "--w4", default="", help="W4: peak RSS of `toptracks run` at these artist counts, e.g. 2000,20000"
    )
    parser.add_argument("--smoke", action="store_true", help="12 artists, no latency, k=2: for the test suite")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (instances, raw data, logs)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.smoke:
        args.artists, args.latency_ms, args.k, args.sensor_interval, args.no_readme = 12, 0.0, 2, 1, True
    markets = [m.strip() for m in args.markets.split(",")]
    secret = secrets.token_urlsafe(24)
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

    def change_artists(sql: str):
        def apply() -> None:
            with pymysql.connect(database=database, autocommit=True, **MYSQL) as connection:
                connection.cursor().executemany(sql, [(a,) for a in added])

        return apply

    results: dict[str, dict] = {}

    def record(key: str, label: str, figures: dict) -> None:  # each row shows as soon as it is measured
        results[key] = {"label": label, **figures}
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items() if k != "markets"}
        print(f"measured {label}: {json.dumps(shown)}", flush=True)

    try:
        with EmulatorProcess(secret, args.latency_ms) as emulator, dynamodb_local() as endpoint:
            database = database_for(ids)
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("DAGSTER_", "TOPTRACKS_", "MYSQL_", "AWS_", "DYNAMODB_"))
            } | {
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
            table = (endpoint, env["TOPTRACKS_TABLE"])

            def run(key: str, label: str, home: Path, *extra: str, run_env: dict = env) -> None:
                figures = toptracks_run(run_env, home, emulator, *extra)
                record(key, label, figures | {"items": table_items(endpoint, run_env["TOPTRACKS_TABLE"])})

            record(
                "baseline",
                "baseline loop (sequential GET, put_item)",
                baseline_loop(database, emulator, secret, endpoint, markets),
            )
            record(
                "write_floor",
                "write floor (BatchWriteItem, no API)",
                write_floor(Catalog(seed=42), ids, markets, endpoint),
            )
            home = make_instance_home(workdir)
            run("W1", "W1 first load", home)
            run("W2", "W2 unchanged, due (default)", home)
            run("W2_full", "W2 unchanged, --mode full", home, "--mode", "full")
            if not args.no_cold:
                # The same first load on a DynamoDB Local whose JVM has served nothing yet.
                with dynamodb_local() as cold_endpoint:
                    cold_env = env | {
                        "DYNAMODB_ENDPOINT_URL": cold_endpoint,
                        "TOPTRACKS_TABLE": f"bench_{uuid.uuid4().hex[:8]}",
                        "TOPTRACKS_RAW_DIR": str(workdir / "cold" / "raw"),
                    }
                    figures = toptracks_run(cold_env, make_instance_home(workdir / "cold"), emulator)
                    figures["items"] = table_items(cold_endpoint, cold_env["TOPTRACKS_TABLE"])
                    record("W1_cold", "W1 on a fresh DynamoDB Local", figures)
            if not args.no_sensor:
                daemon = Daemon(env, home, workdir / "daemon.log")
                try:
                    switched_on = time.time()
                    daemon.start_sensor()
                    tick = daemon.next_tick(switched_on, launching=False)
                    record(
                        "sensor_first_tick",
                        "sensor on, first tick (no change)",
                        {
                            "tick": tick.status.value,
                            "runs_launched": len(tick.run_ids),
                            "wall_s": tick.timestamp - switched_on,
                        },
                    )
                    add = change_artists("INSERT INTO artists (id) VALUES (%s)")
                    record("sensor_add", f"sensor +{args.k} artists", sensor_change(daemon, emulator, add, table))
                    remove = change_artists("DELETE FROM artists WHERE id = %s")
                    record("sensor_remove", f"sensor -{args.k} artists", sensor_change(daemon, emulator, remove, table))
                finally:
                    daemon.stop()
            emulator.admin("settings", latency_ms=0.0)  # W4 measures memory, not the API
            for count in [int(c) for c in args.w4.split(",") if c.strip()]:
                w4_env = env | {
                    "MYSQL_DATABASE": database_for(demo_artist_ids(count, seed=4)),
                    "TOPTRACKS_TABLE": f"w4_{uuid.uuid4().hex[:8]}",
                    "TOPTRACKS_COUNTRIES": markets[0],
                    "TOPTRACKS_RAW_DIR": str(workdir / f"w4_{count}" / "raw"),
                }
                figures = toptracks_run(w4_env, make_instance_home(workdir / f"w4_{count}"), emulator, wrapper=True)
                record(f"W4_{count}", f"W4 {count} artists x {markets[0]}", figures)
        if not args.no_readme:
            first, second = readme_runs(workdir)
            record("readme_first", "README `toptracks run`, fresh clone", first)
            record("readme_second", "README `toptracks run`, again", second)
    finally:
        with pymysql.connect(autocommit=True, **MYSQL) as connection, connection.cursor() as cursor:
            for name in databases:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["machine"] = machine
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_report(results: dict) -> None:
    columns = [
        ("wall s", "wall_s", ".2f"),
        ("run s", "in_run_s", ".2f"),
        ("Spotify", "requests", ""),
        ("writes", "write_requests", ""),
        ("reads", "read_requests", ""),
        ("read back", "artists_read_back", ""),
        ("written", "items_written", ""),
        ("deleted", "items_deleted", ""),
        ("items", "items", ""),
        ("RSS MB", "peak_rss_mb", ".0f"),
    ]
    print(f"\n{'workload':<40}" + "".join(f"{title:>10}" for title, _, _ in columns))
    for key, row in results.items():
        if key != "machine":
            cells = ("" if row.get(name) is None else format(row[name], fmt) for _, name, fmt in columns)
            print(f"{row['label']:<40}" + "".join(f"{cell:>10}" for cell in cells))
    print(
        "wall s: the child process (sensor: from the change to the run's success); Spotify: top-tracks requests "
        "served; writes / reads: the load's DynamoDB requests (reads include the read-back); items: in the table after"
    )
    print(f"machine: {results['machine']}")
    base = results["baseline"]
    for key, target in (("W1", 6), ("W1_cold", 6), ("W2", 20), ("W2_full", 20)):
        if key in results:
            print(
                f"  {key:<8} baseline / toptracks run {base['wall_s'] / results[key]['wall_s']:7.2f}x "
                f"(target >= {target})"
            )
    w4s = [r for k, r in results.items() if k.startswith("W4_")]
    if len(w4s) >= 2:
        growth = w4s[-1]["peak_rss_mb"] / w4s[0]["peak_rss_mb"] - 1
        print(f"  W4 peak RSS growth {100 * growth:.1f} % (target <= 25 %), largest {w4s[-1]['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
