"""The code location loads, and `dagster definitions validate` passes from the repo root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagster import AssetKey

REPO = Path(__file__).resolve().parent.parent


def test_definitions_hold_the_three_assets_and_the_job():
    from toptracks_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"artist_ids", "raw_top_tracks", "top_tracks"} <= keys
    assert graph.get(AssetKey("top_tracks")).partitions_def.get_partition_keys() == ["US", "CA"]
    assert defs.resolve_assets_def(AssetKey("raw_top_tracks")).op.pool == "spotify_api"
    assert defs.resolve_job_def("top_tracks_job") is not None


def test_dagster_definitions_validate_passes_with_workspace_yaml():
    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "All code locations passed validation" in completed.stdout + completed.stderr


def test_refresh_job_runs_the_in_step_checks_and_leaves_the_audit_to_its_own_job():
    from toptracks_dagster.definitions import defs

    refresh = {key.name for key in defs.resolve_job_def("top_tracks_job").asset_layer.asset_graph.asset_check_keys}
    assert "top_tracks_match_raw" in refresh and "raw_top_tracks_complete" in refresh
    assert "top_tracks_audit" not in refresh
    # No asset carries the audit as a check, so a UI "Materialize all" never runs it; it is an op job.
    assert all(key.name != "top_tracks_audit" for key in defs.resolve_asset_graph().asset_check_keys)
    assert [node.name for node in defs.resolve_job_def("top_tracks_audit_job").nodes] == ["audit_top_tracks"]


def test_the_one_private_dagster_import_still_exists():
    # check_results.target_materialization is the only place that uses a Dagster class with no public path;
    # this fails loudly when an upgrade moves it.
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    data = AssetCheckEvaluationTargetMaterializationData(run_id="r", storage_id=1, timestamp=1.0)
    assert (data.run_id, data.storage_id) == ("r", 1)
    source = (REPO / "toptracks_dagster").rglob("*.py")
    users = [p.name for p in source if "dagster._" in p.read_text()]
    assert users == ["check_results.py"], users


def test_malloc_arenas_are_capped_on_glibc():
    import platform

    import pytest

    from toptracks_dagster.common import limit_malloc_arenas

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the arena cap is a glibc setting")
    assert limit_malloc_arenas() is True
