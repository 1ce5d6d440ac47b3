"""The local Dagster instance's records of the assets whose data the local stack holds: wiped when that data is
gone, so the UI never shows a table that no longer exists as materialized."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_DAGSTER_HOME = "./dagster_home"
# The assets whose data the stack holds (raw dir + DynamoDB); their records in the Dagster instance must not
# outlive that data.
ASSETS_BACKED_BY_STACK = ("artist_ids", "raw_top_tracks", "top_tracks")
ASSETS_BACKED_BY_DYNAMODB = ("top_tracks",)


def dagster_home() -> Path:
    """The Dagster instance the `toptracks` commands use: $DAGSTER_HOME, else ./dagster_home."""
    return Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()


def forget_materializations(asset_keys: tuple[str, ...], reason: str) -> str:
    """Wipe the assets' materialization records in the local Dagster instance (run history stays), then record
    one observation per asset saying why, so the UI shows "never materialized" plus the reason."""
    home = dagster_home()
    if not (home / "history").exists() and not (home / "storage").exists():
        return f"no Dagster instance at {home} yet: nothing to forget"
    from dagster import AssetKey, AssetObservation, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        keys = [AssetKey(key) for key in asset_keys]
        instance.wipe_assets(keys)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key in keys:
            instance.report_runless_asset_event(
                AssetObservation(asset_key=key, metadata={"wiped": reason, "at": stamp})
            )
    return f"wiped the materializations of {', '.join(asset_keys)} in the Dagster instance at {home}"
