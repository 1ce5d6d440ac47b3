"""The code location loads, and `dagster definitions validate` passes from the repo root."""

from __future__ import annotations

import os
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


def test_the_refresh_job_runs_every_check_inside_its_steps_and_names_are_short():
    from toptracks_dagster.definitions import defs

    checks = {
        (k.asset_key.to_user_string(), k.name)
        for k in defs.resolve_job_def("top_tracks_job").asset_layer.asset_graph.asset_check_keys
    }
    assert ("top_tracks", "exact") in checks and ("raw_top_tracks", "complete") in checks
    assert all(not name.startswith(asset) for asset, name in checks)  # the UI shows the asset beside the name
    assert defs.resolve_asset_graph().get(AssetKey("artist_ids")).parent_keys == {AssetKey("artists")}


def test_loading_the_code_location_starts_nothing_and_warns_nothing(tmp_path):
    """`dg check defs` and `dg list defs` on a clean environment: no process, no Preview/Beta warning, and no
    address of this machine baked into the resources."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOPTRACKS_", "DYNAMODB_", "SPOTIFY_"))}
    env.update(TOPTRACKS_LOCAL_DIR=str(tmp_path / "local"), DAGSTER_HOME=str(tmp_path), DAGSTER_DEPLOYMENT="local")
    dg = str(Path(sys.executable).with_name("dg"))
    for command in ([dg, "check", "defs"], [dg, "list", "defs"]):
        completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        output = completed.stdout + completed.stderr
        assert completed.returncode == 0, output[-3000:]
        assert "PreviewWarning" not in output and "BetaWarning" not in output, output[-3000:]
    assert not (tmp_path / "local" / "stack.json").exists()  # no local stack was started
    script = (
        "import json; from toptracks_dagster.definitions import defs; "
        "values = {k: r.model_dump() for k, r in defs.resources.items() if hasattr(r, 'model_dump')}; "
        "print(json.dumps(values, default=str))"
    )
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "127.0.0.1" not in completed.stdout and "http://" not in completed.stdout.replace("https://", "")


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
