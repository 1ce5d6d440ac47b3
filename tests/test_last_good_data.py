"""The last good data is only replaced by data that passed; failures stop fast, loudly and by name."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import instance_for_test, materialize

from tests.helpers import (
    ALL_ASSETS,
    expected_keys,
    partition_metadata,
    run_all_markets,
    run_partition,
    scan_table,
)
from toptracks_dagster import config
from toptracks_dagster.deployments import build_resources

REPO = Path(__file__).resolve().parent.parent


def toptracks(tmp_path, *args, timeout=300, **popen):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, "-m", "toptracks_dagster.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def local_instance_home(tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")  # pools limited to one slot
    return home


def test_killed_run_never_wedges_the_next_run(prod_env, artists_table, emulator, ddb, some_artist_ids, tmp_path):
    artists_table.set_ids(some_artist_ids)
    home = local_instance_home(tmp_path)
    emulator.settings.update({"latency_ms": 300.0})
    env = {**os.environ, "DAGSTER_HOME": str(home), "SPOTIFY_CONCURRENCY": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "toptracks_dagster.cli", "run", "--log-level", "INFO"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while emulator.stats.as_dict()["requests"] < 3:  # the run holds the spotify_api slot and is fetching
        assert process.poll() is None and time.monotonic() < deadline, "the first run never started fetching"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    emulator.settings.update({"latency_ms": 0.0})
    second = subprocess.run(
        [sys.executable, "-m", "toptracks_dagster.cli", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "freed the slot of run" in second.stdout
    assert not list((Path(prod_env["TOPTRACKS_RAW_DIR"])).rglob("*.tmp")), "orphaned temp files were left behind"
    from tests.helpers import expected_keys

    assert set(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == set(
        expected_keys(emulator.catalog, some_artist_ids, ["US", "CA"])
    )


def test_corrupt_middle_line_is_refused_before_any_write_naming_file_line_and_market(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    artists_table.set_ids(some_artist_ids[:10])
    with instance_for_test() as instance:
        run_partition("US", instance)
        before = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
        emulator.catalog.set_revision(some_artist_ids[0], 2)
        emulator.catalog.set_revision(some_artist_ids[9], 2)
        path = Path(prod_env["TOPTRACKS_RAW_DIR"]) / "raw_top_tracks/market=US/top_tracks.jsonl"
        # A raw partition whose first artist changed and whose middle line is broken.
        materialize(ALL_ASSETS[:3], partition_key="US", resources=build_resources("prod"), instance=instance)
        lines = path.read_text().splitlines()
        lines[5] = lines[5][: len(lines[5]) // 2]
        path.write_text("\n".join(lines) + "\n")
        result = materialize(
            [ALL_ASSETS[-1]],
            partition_key="US",
            resources=build_resources("prod"),
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert path.resolve().as_uri() in message and "line 6" in message and "market US" in message
    assert sum(1 for e in result.all_events if e.event_type_value == "STEP_RESTARTED") == 0  # not retried
    assert scan_table(ddb, prod_env["TOPTRACKS_TABLE"]) == before  # nothing written before the refusal


def test_load_refuses_to_delete_most_of_a_market_without_consent(
    prod_env, artists_table, emulator, ddb, some_artist_ids
):
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        run_partition("US", instance)
        before = scan_table(ddb, prod_env["TOPTRACKS_TABLE"])
        for artist_id in some_artist_ids[:25]:  # most artists now answer 404: their items would go
            emulator.catalog.set_missing(artist_id)
        refused = run_partition("US", instance, raise_on_error=False)
        assert not refused.success
        failure = next(e for e in refused.all_events if e.is_step_failure)
        assert "would leave" in failure.step_failure_data.user_failure_data.description
        assert scan_table(ddb, prod_env["TOPTRACKS_TABLE"]) == before
        allowed = materialize(
            ALL_ASSETS,
            partition_key="US",
            resources=build_resources("prod"),
            instance=instance,
            tags={config.ALLOW_MASS_DELETE_TAG: "true"},
        )
        assert allowed.success
        assert partition_metadata(allowed, "top_tracks")["US"]["items_deleted"] > 0


@pytest.mark.parametrize(
    "name,value,words",
    [
        ("SPOTIFY_REQUESTS_PER_SECOND", "-5", "at least 0"),
        ("SPOTIFY_REQUESTS_PER_SECOND", "nan", "finite"),
        ("SPOTIFY_CONCURRENCY", "0", "at least 1"),
        ("SPOTIFY_CONCURRENCY", "-1", "at least 1"),
        ("DYNAMODB_WRITE_CONCURRENCY", "0", "at least 1"),
        ("TOPTRACKS_COUNTRIES", " ", "empty"),
        ("AWS_REGION", "moon-1", "not an AWS region"),
        ("TOPTRACKS_MAX_DELETE_SHARE", "2", "at most 1"),
    ],
)
def test_bad_config_values_are_clear_errors(monkeypatch, name, value, words):
    from toptracks_dagster.deployments import build_resources as build

    monkeypatch.setenv(name, value)
    # The prod deployment: building resources reads every variable but starts nothing.
    monkeypatch.setenv("MYSQL_HOST", "127.0.0.1")
    monkeypatch.setenv("MYSQL_USER", "root")
    with pytest.raises(config.ConfigError) as raised:
        config.countries()
        build("prod")
        config.max_delete_share()
    assert name in str(raised.value) and words in str(raised.value)


def test_unreachable_dynamodb_fails_at_once_with_the_endpoint_in_the_summary(
    prod_env, artists_table, some_artist_ids, tmp_path, monkeypatch
):
    artists_table.set_ids(some_artist_ids[:3])
    local_instance_home(tmp_path)
    monkeypatch.setenv("DYNAMODB_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    completed = toptracks(tmp_path, "run")
    assert completed.returncode == 1
    assert "http://127.0.0.1:9" in completed.stderr and "unreachable" in completed.stderr
    assert "max_retries" not in completed.stderr
    assert time.monotonic() - started < 120  # sanity bound only: no step-level retries with 10-40 s delays


def test_orphaned_temp_files_of_dead_writers_are_removed(tmp_path):
    from toptracks_dagster.raw_storage.resources import LocalRawStorage

    storage = LocalRawStorage(base_dir=str(tmp_path))
    directory = tmp_path / "raw_top_tracks/market=US"
    directory.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = directory / f".top_tracks.jsonl.{dead.pid}.abc123.tmp"
    live = directory / f".top_tracks.jsonl.{os.getpid()}.def456.tmp"
    orphan.write_text("half")
    live.write_text("in progress")
    with storage.open_for_write("raw_top_tracks/market=US/top_tracks.jsonl") as stream:
        stream.write("{}\n")
    assert not orphan.exists() and live.exists()


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_a_run_promptly_and_release_its_slots(
    prod_env, artists_table, emulator, some_artist_ids, tmp_path, signal_number
):
    from dagster import DagsterInstance, DagsterRunStatus

    artists_table.set_ids(some_artist_ids)
    home = local_instance_home(tmp_path)
    emulator.settings.update({"latency_ms": 300.0})
    env = {**os.environ, "DAGSTER_HOME": str(home), "SPOTIFY_CONCURRENCY": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "toptracks_dagster.cli", "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while emulator.stats.as_dict()["requests"] < 3:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal_number)
    output, _ = process.communicate(timeout=60)  # promptly: well before the fetch would have finished
    assert process.returncode != 0, output[-2000:]
    assert emulator.stats.as_dict()["requests"] < len(some_artist_ids) * 2, "the fetch went on after the signal"
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        instance = DagsterInstance.from_config(str(home))
        runs = instance.get_runs()
        assert runs and runs[0].status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
        assert not instance.event_log_storage.get_concurrency_info("spotify_api").claimed_slots
    finally:
        del os.environ["DAGSTER_HOME"]


def test_unreachable_spotify_fails_at_once_naming_the_endpoint(prod_env, artists_table, some_artist_ids, monkeypatch):
    from dagster import DagsterEventType

    artists_table.set_ids(some_artist_ids[:3])
    monkeypatch.setenv("SPOTIFY_TOKEN_URL", "http://127.0.0.1:9/api/token")  # nothing listens there
    with instance_for_test() as instance:
        result = run_partition("US", instance, raise_on_error=False)
    assert not result.success
    event_types = [event.event_type for event in result.all_events]
    assert DagsterEventType.STEP_UP_FOR_RETRY not in event_types  # an unreachable endpoint is not retried
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert "http://127.0.0.1:9/api/token" in message and "unreachable" in message
    assert prod_env["SPOTIFY_CLIENT_SECRET"] not in message


def test_a_step_retry_after_an_outage_fetches_only_what_the_failed_attempt_did_not(
    prod_env, artists_table, emulator, ddb, some_artist_ids, monkeypatch
):
    """Spotify goes down in the middle of a full refresh: the attempt publishes what it fetched and fails; the
    step's retry fetches only the rest."""
    import threading
    import time

    from dagster import RetryPolicy

    def back_up_before_the_retry(self, attempt_num):  # Spotify is back by the time the step is retried
        emulator.settings.update({"error_5xx_share": 0.0})
        return 0

    monkeypatch.setattr(RetryPolicy, "calculate_delay", back_up_before_the_retry)
    artists_table.set_ids(some_artist_ids)
    with instance_for_test() as instance:
        run_all_markets(instance)
        for artist_id in some_artist_ids:
            emulator.catalog.set_revision(artist_id, 2)

        def answered(*statuses: int) -> int:
            by_status = emulator.stats.as_dict()["by_status"]
            return sum(by_status.get(status, 0) + by_status.get(str(status), 0) for status in statuses)

        ok_before = answered(200, 404)
        done = threading.Event()

        def outage() -> None:  # down after ten answers, until the step is retried
            while answered(200, 404) - ok_before < 10 and not done.is_set():
                time.sleep(0.005)
            emulator.settings.update({"error_5xx_share": 1.0})

        watcher = threading.Thread(target=outage, daemon=True)
        watcher.start()
        try:
            result = run_all_markets(instance, mode="full")
        finally:
            done.set()
            watcher.join(10)
    assert result.success
    restarts = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]
    assert [e.step_key for e in restarts] == ["raw_top_tracks"]
    # Nothing the failed attempt had handed over is fetched again: at most the requests it had in flight when it
    # stopped (the client's concurrency, 8) are answered twice.
    pairs = 2 * len(some_artist_ids)
    assert pairs <= answered(200, 404) - ok_before <= pairs + 8
    assert set(scan_table(ddb, prod_env["TOPTRACKS_TABLE"])) == set(
        expected_keys(emulator.catalog, some_artist_ids, ["US", "CA"])
    )
