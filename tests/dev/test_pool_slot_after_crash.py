"""A run killed with SIGKILL while it holds the `spotify_api` pool slot does not wedge the next run.

Real processes: `dagster dev` (webserver, daemon, code server) on a temporary DAGSTER_HOME with the repo's
dagster_home/dagster.yaml (pool limit 1, run monitoring with free_slots_after_run_end_seconds). The run worker of
the first run, and its step processes, are killed with SIGKILL while its Spotify step holds the slot; the code
server reports the run failed, the daemon's run monitoring frees the slot, and the next run's Spotify step runs.
Without `run_monitoring` in dagster.yaml the second run waits for the slot until the test times out (tried).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.instance.ref import InstanceRef

from tests.test_e2e_dagster_dev import REPO, dagster_dev, wait_for  # noqa: F401, F811  (dagster_dev is a fixture)

POOL = "spotify_api"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _run_worker_pid(instance: DagsterInstance, run_id: str) -> int:
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        match = re.search(r"Started process for run \(pid: (\d+)\)", record.message or "")
        if match:
            return int(match.group(1))
    raise AssertionError(f"no run worker pid in the events of run {run_id}")


def test_repo_instance_config_enables_run_monitoring_that_frees_slots():
    for path in ("dagster_home/dagster.yaml", "docs/dagster.prod.yaml"):
        monitoring = yaml.safe_load((REPO / path).read_text())["run_monitoring"]
        assert monitoring["enabled"] is True, path
        assert monitoring["free_slots_after_run_end_seconds"] > 0, path
        assert monitoring["poll_interval_seconds"] > 0, path


def test_slot_of_a_killed_run_is_freed_for_the_next_run(
    dagster_dev,  # noqa: F811  (the fixture imported above)
    prod_env,
    artists_table,
    emulator,
    some_artist_ids,
    tmp_path,
):
    client, log_path = dagster_dev
    artists_table.set_ids(some_artist_ids)
    # Slow answers keep the first run's Spotify step (and its slot) busy until it is killed.
    emulator.settings.update({"latency_ms": 3000.0})
    home = tmp_path / "dagster_home"

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        first = client.submit_job_execution("top_tracks_job", tags={"dagster/partition": "US"})

        def slot_held_by_first_run():
            assert instance.get_run_by_id(first).status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS), (
                log_path.read_text()[-3000:]
            )
            return first in instance.event_log_storage.get_concurrency_info(POOL).active_run_ids

        wait_for(slot_held_by_first_run, 180, f"the first run to claim the {POOL} slot", interval_s=0.5)

        worker = _run_worker_pid(instance, first)
        victims = _descendants(worker)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)

        wait_for(
            lambda: instance.get_run_by_id(first).status == DagsterRunStatus.FAILURE,
            120,
            "the killed run to be marked failed",
        )
        emulator.settings.update({"latency_ms": 0.0})

        second = client.submit_job_execution("top_tracks_job", tags={"dagster/partition": "CA"})

        def second_finished():
            return instance.get_run_by_id(second).status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)

        wait_for(second_finished, 300, "the next run (it waits for the pool slot until the dead run's is freed)")
        assert instance.get_run_by_id(second).status == DagsterRunStatus.SUCCESS, log_path.read_text()[-3000:]
        spotify_steps = [
            e
            for e in instance.all_logs(second, of_type=DagsterEventType.STEP_SUCCESS)
            if e.step_key == "raw_top_tracks"
        ]
        assert spotify_steps, "the next run's Spotify step did not run"
        assert first not in instance.event_log_storage.get_concurrency_info(POOL).active_run_ids
        assert all(not Path(f"/proc/{pid}").exists() or _is_zombie(pid) for pid in victims)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
