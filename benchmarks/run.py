"""The pipeline against the tutorial script's loop, on the same stack, in the same invocation.

Starts a Spotify emulator (own process, 50 ms latency), AWS's DynamoDB Local and a database on the machine's MariaDB,
then runs the workloads of issue #7 and prints one table; every figure is a ratio on this machine.

    .venv/bin/python benchmarks/run.py                       # W1-W3 + write floor, 500 artists x US,CA
    .venv/bin/python benchmarks/run.py --w4 2000,20000       # plus W4: peak RSS of the partition process
    .venv/bin/python benchmarks/run.py --smoke               # seconds: what the test suite runs

W1 first load; W2 the same refresh with nothing changed; W3 a refresh under a rolling limit of R req/s;
W4 one market at N artists in a child process (peak RSS). "write floor": plain parallel BatchWriteItem of the
same items into DynamoDB Local, no API at all. "dagster start-up": one run of a no-op asset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pymysql
import requests
from dagster import DagsterInstance, asset, materialize

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toptracks_dagster.dev.dynamodb_local import (  # noqa: E402
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
MYSQL = {"host": os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"), "port": int(os.environ.get("TEST_MYSQL_PORT", "3306")),
         "user": os.environ.get("TEST_MYSQL_USER", "root"), "password": os.environ.get("TEST_MYSQL_PASSWORD", "")}


# ------------------------------------------------------------------------------------------------ emulator
class EmulatorProcess:
    """The Spotify emulator in its own process, as Spotify is remote: its CPU does not compete with the
    client's for this process's GIL. Settings change through its admin endpoint."""

    def __init__(self, secret: str, latency_ms: float, seed: int):
        env = {**os.environ, "BENCH_SPOTIFY_SECRET": secret}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "toptracks_dagster.dev.spotify_emulator", "--port", "0", "--client-id", CLIENT_ID,
             "--client-secret-env", "BENCH_SPOTIFY_SECRET", "--latency-ms", str(latency_ms), "--seed", str(seed)],
            env=env, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        self.root = line.strip().rsplit(" ", 1)[-1]
        self.base_url, self.token_url = f"{self.root}/v1", f"{self.root}/api/token"

    def update(self, **settings) -> None:
        requests.post(f"{self.root}/_emulator/settings", json=settings, timeout=10).raise_for_status()

    def __enter__(self) -> "EmulatorProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


# ------------------------------------------------------------------------------------------------ baseline
def tutorial_baseline(database: str, emulator: EmulatorProcess, secret: str, endpoint: str, table: str,
                      markets: list[str]) -> dict:
    """The tutorial script's algorithm: sequential GET per artist per market, one put_item per track, one token.

    Fixed only so it does the same work: the artist list is read once (not inside the country loop), the market
    actually sent is the loop's, and a 404 is skipped instead of crashing on raw['tracks'].
    """
    dynamodb = boto3.resource("dynamodb", endpoint_url=endpoint, region_name=LOCAL_REGION, **LOCAL_CREDENTIALS)
    dynamodb.create_table(TableName=table, KeySchema=[{"AttributeName": "artist_id", "KeyType": "HASH"},
                                                      {"AttributeName": "id", "KeyType": "RANGE"}],
                          AttributeDefinitions=[{"AttributeName": "artist_id", "AttributeType": "S"},
                                                {"AttributeName": "id", "AttributeType": "S"}],
                          BillingMode="PAY_PER_REQUEST").wait_until_exists()
    started = time.monotonic()
    connection = pymysql.connect(database=database, **MYSQL)
    cursor = connection.cursor()
    cursor.execute("SELECT id FROM artists")
    artist_ids = [row[0] for row in cursor.fetchall()]
    token = requests.post(emulator.token_url, data={"grant_type": "client_credentials"},
                          auth=(CLIENT_ID, secret)).json()["access_token"]
    target = dynamodb.Table(table)
    requests_sent = puts = 0
    for market in markets:
        for artist_id in artist_ids:
            response = requests.get(f"{emulator.base_url}/artists/{artist_id}/top-tracks", params={"market": market},
                                    headers={"Authorization": f"Bearer {token}"})
            requests_sent += 1
            raw = response.json()
            for track in raw.get("tracks", []):
                target.put_item(Item={"artist_id": artist_id, "country": market, **track})
                puts += 1
    connection.close()
    return {"wall_s": time.monotonic() - started, "requests": requests_sent, "write_requests": puts, "429s": 0}


# ------------------------------------------------------------------------------------------------ pipeline
def pipeline_run(markets: list[str], instance: DagsterInstance) -> dict:
    """One Dagster run over every market (single-run backfill), through the prod deployment's resources."""
    from tests.helpers import ALL_ASSETS
    from toptracks_dagster.deployments import build_resources

    started = time.monotonic()
    result = materialize(ALL_ASSETS, resources=build_resources("prod"), instance=instance, tags={
        "dagster/asset_partition_range_start": markets[0], "dagster/asset_partition_range_end": markets[-1]})
    wall = time.monotonic() - started
    metadata = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        metadata[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    raw = _per_market(metadata["raw_top_tracks"], markets)
    table = _per_market(metadata["top_tracks"], markets)
    return {
        "wall_s": wall,
        "api_phase_s": sum(m["wall_time_s"] for m in raw.values()),
        "requests": sum(m["requests"] for m in raw.values()),
        "429s": sum(m["responses_429"] for m in raw.values()),
        "write_requests": sum(m["write_requests"] for m in table.values()),
        "items_written": sum(m["items_written"] for m in table.values()),
        "items": sum(m["dagster/row_count"] for m in table.values()),
    }


def _per_market(metadata: dict, markets: list[str]) -> dict:
    return metadata["markets"] if "markets" in metadata else {markets[0]: metadata}


def dagster_startup(instance: DagsterInstance) -> float:
    @asset
    def noop() -> None:
        return None

    started = time.monotonic()
    materialize([noop], instance=instance)
    return time.monotonic() - started


# ------------------------------------------------------------------------------------------------ write floor
def write_floor(catalog: Catalog, artist_ids: list[str], markets: list[str], endpoint: str, concurrency: int = 8) -> dict:
    """The same items, plain parallel BatchWriteItem, no API and no diffing: what DynamoDB Local can absorb."""
    client = local_client(endpoint, max_pool_connections=concurrency * 2)
    table = f"floor_{uuid.uuid4().hex[:8]}"
    ensure_table(client, table, endpoint)
    items = [serialize_item(build_item(a, m, rank, t, "2026-01-01T00:00:00Z"))
             for m in markets for a in artist_ids for rank, t in enumerate(catalog.top_tracks(a, m) or [], 1)]
    batches = [items[i:i + BATCH_SIZE] for i in range(0, len(items), BATCH_SIZE)]

    def send(batch: list[dict]) -> None:
        pending = {table: [{"PutRequest": {"Item": item}} for item in batch]}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, batches))
    wall = time.monotonic() - started
    return {"wall_s": wall, "requests": 0, "write_requests": len(batches), "429s": 0, "items": len(items)}


# ------------------------------------------------------------------------------------------------ W4 child
def peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child started by a big
    # parent reports the parent's size (we measured exactly that: 322 MB at 2,000 and at 20,000 artists).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def w4_child(market: str) -> None:
    """Runs in a child process: one market's partition end to end; prints its peak RSS as JSON."""
    with DagsterInstance.ephemeral() as instance:
        stats = pipeline_run([market], instance)
    stats["peak_rss_mb"] = peak_rss_mb()
    print("W4-RESULT " + json.dumps(stats))


def w4(artists: int, database_for, env: dict) -> dict:
    database = database_for(demo_artist_ids(artists, seed=4))
    child_env = {**os.environ, **env, "MYSQL_DATABASE": database, "TOPTRACKS_TABLE": f"w4_{uuid.uuid4().hex[:8]}"}
    started = time.monotonic()
    completed = subprocess.run([sys.executable, __file__, "--w4-child", "US"], env=child_env, capture_output=True,
                               text=True, check=True)
    line = next(l for l in completed.stdout.splitlines() if l.startswith("W4-RESULT "))
    stats = json.loads(line.split(" ", 1)[1])
    stats["wall_s"] = time.monotonic() - started
    return stats


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artists", type=int, default=500)
    parser.add_argument("--markets", default="US,CA")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rate", type=float, default=20.0, help="W3: the rolling limit R, requests/s")
    parser.add_argument("--concurrency", type=int, default=32, help="SPOTIFY_CONCURRENCY of the pipeline")
    parser.add_argument("--w4", default="", help="comma list of artist counts for W4, e.g. 2000,20000")
    parser.add_argument("--only-w4", action="store_true", help="skip the baseline and W1-W3")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no W3/W4: for the test suite")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--w4-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.w4_child:
        w4_child(args.w4_child)
        return 0
    if args.smoke:
        args.artists, args.latency_ms, args.w4 = 12, 0.0, ""
    markets = [m.strip() for m in args.markets.split(",")]
    secret = secrets.token_urlsafe(24)
    catalog = Catalog(seed=42)
    ids = demo_artist_ids(args.artists, seed=42)
    databases: list[str] = []

    def database_for(artist_ids: list[str]) -> str:
        name = f"toptracks_bench_{uuid.uuid4().hex[:8]}"
        with pymysql.connect(autocommit=True, **MYSQL) as connection, connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
            cursor.execute(f"CREATE TABLE `{name}`.artists (id VARCHAR(64))")
            cursor.executemany(f"INSERT INTO `{name}`.artists (id) VALUES (%s)", artist_ids)
        databases.append(name)
        return name

    class Rows(list):
        def append(self, row: tuple[str, dict]) -> None:  # each result shows as soon as it is measured
            super().append(row)
            print(f"measured {row[0]}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                      for k, v in row[1].items()}), flush=True)

    rows = Rows()
    try:
        with EmulatorProcess(secret, args.latency_ms, seed=42) as emulator, dynamodb_local() as endpoint:
            database = database_for(ids)
            env = {"DAGSTER_DEPLOYMENT": "prod", "MYSQL_HOST": MYSQL["host"], "MYSQL_PORT": str(MYSQL["port"]),
                   "MYSQL_USER": MYSQL["user"], "MYSQL_PASSWORD": MYSQL["password"], "MYSQL_DATABASE": database,
                   "SPOTIFY_CLIENT_ID": CLIENT_ID, "SPOTIFY_CLIENT_SECRET": secret,
                   "SPOTIFY_API_BASE_URL": emulator.base_url, "SPOTIFY_TOKEN_URL": emulator.token_url,
                   "SPOTIFY_CONCURRENCY": str(args.concurrency), "SPOTIFY_REQUESTS_PER_SECOND": "0",
                   "DYNAMODB_ENDPOINT_URL": endpoint, "AWS_REGION": LOCAL_REGION,
                   "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
                   "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
                   "TOPTRACKS_TABLE": f"bench_{uuid.uuid4().hex[:8]}", "TOPTRACKS_COUNTRIES": ",".join(markets),
                   "TOPTRACKS_RAW_DIR": f"/tmp/toptracks-bench-{uuid.uuid4().hex[:8]}"}
            os.environ.update(env)

            if args.only_w4:
                emulator.update(latency_ms=0.0)
                for count in [int(c) for c in args.w4.split(",") if c.strip()]:
                    rows.append((f"pipeline W4 {count} artists x 1 market", w4(count, database_for, env)))
                return 0
            rows.append(("baseline W1 (tutorial loop)", tutorial_baseline(
                database, emulator, secret, endpoint, f"baseline_{uuid.uuid4().hex[:8]}", markets)))
            with DagsterInstance.ephemeral() as instance:
                startup = dagster_startup(instance)
                rows.append(("dagster start-up (no-op run)", {"wall_s": startup}))
                rows.append(("write floor (BatchWriteItem)", write_floor(catalog, ids, markets, endpoint)))
                rows.append(("pipeline W1 first load", pipeline_run(markets, instance)))
                rows.append(("pipeline W2 refresh, unchanged", pipeline_run(markets, instance)))
                if not args.smoke:
                    emulator.update(rate_limit_requests=int(args.rate * 30), rate_limit_window_s=30.0)
                    os.environ["SPOTIFY_REQUESTS_PER_SECOND"] = str(args.rate)
                    rows.append((f"pipeline W3 refresh, limit {args.rate:g}/s", pipeline_run(markets, instance)))
                    emulator.update(rate_limit_requests=None)
                    os.environ["SPOTIFY_REQUESTS_PER_SECOND"] = "0"
            emulator.update(latency_ms=0.0)  # W4 measures memory, not the API
            for count in [int(c) for c in args.w4.split(",") if c.strip()]:
                rows.append((f"pipeline W4 {count} artists x 1 market", w4(count, database_for, env)))
    finally:
        with pymysql.connect(autocommit=True, **MYSQL) as connection, connection.cursor() as cursor:
            for name in databases:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")

    print_table(rows, args.rate)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows), indent=2))
    return 0


def print_table(rows: list[tuple[str, dict]], rate: float) -> None:
    print(f"\n{'workload':<40}{'wall s':>9}{'requests':>10}{'writes':>8}{'429s':>6}{'items':>8}{'RSS MB':>8}")
    print("-" * 89)
    for name, r in rows:
        cells = [f"{r['wall_s']:>9.2f}"] + [f"{r[k]:>{w}}" if k in r else f"{'':>{w}}"
                                            for k, w in (("requests", 10), ("write_requests", 8), ("429s", 6), ("items", 8))]
        rss = f"{r['peak_rss_mb']:>8.0f}" if "peak_rss_mb" in r else f"{'':>8}"
        print(f"{name:<40}{''.join(cells)}{rss}")
    by = dict(rows)
    base, w1, w2 = by["baseline W1 (tutorial loop)"], by["pipeline W1 first load"], by["pipeline W2 refresh, unchanged"]
    floor, startup = by["write floor (BatchWriteItem)"], by["dagster start-up (no-op run)"]["wall_s"]
    print("\nratios")
    print(f"  W1 baseline / pipeline                     {base['wall_s'] / w1['wall_s']:6.2f}x   (target >= 6)")
    print(f"  W1 pipeline / (write floor + start-up)     {w1['wall_s'] / (floor['wall_s'] + startup):6.2f}    (target <= 1.3)")
    print(f"  W2 baseline / pipeline                     {base['wall_s'] / w2['wall_s']:6.2f}x   (target >= 20), "
          f"{w2['write_requests']} write requests (target 0)")
    w3 = next((r for n, r in rows if n.startswith("pipeline W3")), None)
    if w3:
        print(f"  W3 API phase / (requests / R)              {w3['api_phase_s'] / (w3['requests'] / rate):6.2f}    "
              f"(target <= 1.1), 429s {w3['429s']} = {100 * w3['429s'] / max(w3['requests'], 1):.2f} % (target <= 1 %)")
    w4s = [(n, r) for n, r in rows if n.startswith("pipeline W4")]
    if len(w4s) >= 2:
        growth = w4s[-1][1]["peak_rss_mb"] / w4s[0][1]["peak_rss_mb"] - 1
        print(f"  W4 peak RSS growth {w4s[0][0].split()[2]} -> {w4s[-1][0].split()[2]} artists   {100 * growth:5.1f} %  "
              f"(target <= 25 %; largest {w4s[-1][1]['peak_rss_mb']:.0f} MB, target <= 300)")


if __name__ == "__main__":
    sys.exit(main())
