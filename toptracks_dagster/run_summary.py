"""What `toptracks run` prints after a run: per-market numbers, every failed or warning check by name, and the
root cause of a failure (not the wrapper Dagster puts around it). Also frees pool slots of runs whose process
died, so a crash never wedges the next headless run."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field

from dagster import AssetCheckSeverity, DagsterInstance, DagsterRunStatus

from toptracks_dagster.common import process_alive

_TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
POOLS = ("spotify_api", "dynamodb_top_tracks")


@dataclass
class RunSummary:
    run_id: str
    success: bool
    seconds: float
    rows: dict[str, dict] = field(default_factory=dict)  # market -> {asset: metadata}
    failed_checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    run_metadata: dict = field(default_factory=dict)


def summarize(result, markets: list[str], seconds: float, run_tags: dict | None = None) -> RunSummary:
    """The run's outcome for the terminal; a failed ERROR check fails the summary too (wrong data is a failure)."""
    summary = RunSummary(result.run_id, result.success, seconds, rows={m: {} for m in markets})
    summary.run_metadata = {k.split("/", 1)[1]: v for k, v in (run_tags or {}).items() if k.startswith("toptracks/")}
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            summary.failures.append(f"{event.step_key}: {root_cause(event.step_failure_data)}")
        data = event.event_specific_data
        found = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
        if event.event_type_value not in ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION") or found is None:
            continue
        if found.partition in summary.rows:
            values = {k: v.value for k, v in found.metadata.items()}
            summary.rows[found.partition].setdefault(found.asset_key.to_user_string(), {}).update(values)
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.passed:
            continue
        where = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}" + (
            f" [{evaluation.partition}]" if evaluation.partition else ""
        )
        line = f"{where}: {evaluation.description or 'failed'}"
        if evaluation.severity == AssetCheckSeverity.ERROR:
            summary.failed_checks.append(line)
            summary.success = False
        else:
            summary.warnings.append(line)
    return summary


def root_cause(failure_data) -> str:
    """The first line of what actually went wrong: a Failure's description, else the innermost error."""
    if failure_data.user_failure_data and failure_data.user_failure_data.description:
        return failure_data.user_failure_data.description.strip().splitlines()[0]
    error = failure_data.error
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None:
        return "failed"
    message = error.message.strip().splitlines()
    text = message[0] if message else error.cls_name or "failed"
    if "blocking asset check" in text and len(message) > 1:
        text += " " + "; ".join(line.strip() for line in message[1:])
    return text


def print_summary(summary: RunSummary) -> None:
    header = f"{'market':<8}{'artists':>8}{'fetched':>8}{'404':>6}{'tracks':>8}{'written':>9}{'deleted':>9}  raw"
    print("\n" + header)
    print("-" * len(header))
    for market, assets in summary.rows.items():
        raw = assets.get("raw_top_tracks", {})
        table = assets.get("top_tracks", {})
        outcome = "published" if raw.get("published") else "REJECTED (previous kept)"
        state = (outcome if raw.get("rewritten") else "unchanged") if raw else ""
        print(
            f"{market:<8}{raw.get('artists', '-'):>8}{raw.get('artists_fetched', '-'):>8}"
            f"{raw.get('artists_not_found', '-'):>6}{raw.get('tracks', '-'):>8}{table.get('items_written', '-'):>9}"
            f"{table.get('items_deleted', '-'):>9}  {state}"
        )
    spotify = summary.run_metadata
    print(
        f"\n{spotify.get('spotify_requests', 0)} Spotify requests ({spotify.get('spotify_status_429', 0)} answered "
        f"429) in {summary.seconds:.1f} s in all"
    )
    for line in summary.warnings:
        print(f"WARN  {line}")
    for line in summary.failed_checks:
        print(f"ERROR {line}", file=sys.stderr)
    for line in summary.failures:
        print(f"FAILED {line}", file=sys.stderr)
    print("run " + ("succeeded" if summary.success else "FAILED"), file=sys.stdout if summary.success else sys.stderr)


def free_slots_of_dead_runs(instance: DagsterInstance) -> list[str]:
    """Pool slots held by runs that can no longer release them: finished runs, and runs started by a
    `toptracks run` on this host whose process is gone (killed). Such a run is marked failed and its slots
    freed, instead of every later run waiting for it forever. Returns what was done, for the user."""
    messages = []
    storage = instance.event_log_storage
    host = socket.gethostname()
    for pool in POOLS:
        try:
            info = storage.get_concurrency_info(pool)
        except Exception:  # storages without pools: nothing held
            continue
        for run_id in {slot.run_id for slot in info.claimed_slots}:
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status not in _TERMINAL:
                pid = run.tags.get("toptracks/pid")
                if not pid or run.tags.get("toptracks/host") != host or process_alive(int(pid)):
                    messages.append(f"pool {pool}: slot held by run {run_id} ({run.status.value}); waiting for it")
                    continue
                instance.report_run_failed(
                    run, f"process {pid} of this run is gone (killed); its pool slots were freed"
                )
            storage.free_concurrency_slots_for_run(run_id)
            messages.append(f"pool {pool}: freed the slot of run {run_id}, whose process is gone")
    return messages


def cancel_run(instance: DagsterInstance, run_id: str, reason: str) -> None:
    """Record a run stopped from outside as canceled and free every pool slot it holds."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status not in _TERMINAL:
        instance.report_run_canceled(run, reason)
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
