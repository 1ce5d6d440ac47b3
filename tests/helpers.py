"""Helpers shared by tests: run the assets as Dagster would, and read the table back."""

from __future__ import annotations

from boto3.dynamodb.types import TypeDeserializer
from dagster import materialize

from toptracks_dagster.artists_db.assets import artist_ids, artists
from toptracks_dagster.deployments import build_resources
from toptracks_dagster.dynamodb.assets import top_tracks
from toptracks_dagster.spotify.assets import raw_top_tracks

ALL_ASSETS = [artists, artist_ids, raw_top_tracks, top_tracks]


def deserialize_item(item: dict) -> dict:
    return {k: TypeDeserializer().deserialize(v) for k, v in item.items()}


def run_partition(country: str, instance=None, deployment: str = "prod", raise_on_error: bool = True):
    """Materialize the whole graph for one country partition, with the deployment's resources."""
    return materialize(
        ALL_ASSETS,
        partition_key=country,
        resources=build_resources(deployment),
        instance=instance,
        raise_on_error=raise_on_error,
    )


def scan_table(client, table_name: str) -> dict[tuple[str, str], dict]:
    items: dict[tuple[str, str], dict] = {}
    kwargs = {"TableName": table_name, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for raw in page["Items"]:
            item = deserialize_item(raw)
            items[(item["artist_id"], item["country_track_id"])] = item
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def expected_keys(catalog, artist_ids_: list[str], markets: list[str]) -> dict[tuple[str, str], int]:
    """(artist_id, '<market>#<track id>') -> rank, straight from the emulator's catalog."""
    expected: dict[tuple[str, str], int] = {}
    for market in markets:
        for artist_id in artist_ids_:
            seen: set[str] = set()
            for rank, track in enumerate(catalog.top_tracks(artist_id, market) or [], start=1):
                if track["id"] not in seen:
                    seen.add(track["id"])
                    expected[(artist_id, f"{market}#{track['id']}")] = rank
    return expected


def _asset_events(result):
    """(asset key, partition, metadata) of every materialization and observation of the run."""
    for event in result.all_events:
        data = event.event_specific_data
        found = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
        if event.event_type_value in ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION") and found is not None:
            yield found.asset_key.to_user_string(), found.partition, {k: v.value for k, v in found.metadata.items()}


def metadata_of(result, asset_key: str) -> dict:
    for key, _, metadata in _asset_events(result):
        if key == asset_key:
            return metadata
    raise AssertionError(f"no materialization or observation of {asset_key}")


def run_all_markets(
    instance=None, mode: str = "full", raise_on_error: bool = True, tags: dict | None = None, **refresh
):
    """One run over every market (a single-run partition range), as `toptracks run` and the sensor launch it."""
    from toptracks_dagster.jobs import all_markets_tags

    run_config = {"ops": {"raw_top_tracks": {"config": {"mode": mode, **refresh}}}}
    return materialize(
        ALL_ASSETS,
        resources=build_resources("prod"),
        instance=instance,
        run_config=run_config,
        tags={**all_markets_tags(), **(tags or {})},
        raise_on_error=raise_on_error,
    )


def run_request(request, instance=None, raise_on_error: bool = True):
    """Execute a sensor's or schedule's RunRequest the way the daemon would: its run config and tags."""
    return materialize(
        ALL_ASSETS,
        resources=build_resources("prod"),
        instance=instance,
        run_config=request.run_config,
        tags=request.tags,
        raise_on_error=raise_on_error,
    )


def partition_metadata(result, asset_key: str) -> dict[str, dict]:
    """partition -> metadata of each materialization or observation of `asset_key` in the run (merged)."""
    found: dict[str, dict] = {}
    for key, partition, metadata in _asset_events(result):
        if key == asset_key:
            found.setdefault(partition, {}).update(metadata)
    return found


def check_results(result) -> dict[tuple[str, str | None], object]:
    """('<asset>:<check name>', partition) -> AssetCheckEvaluation of the run."""
    return {
        (f"{e.asset_key.to_user_string()}:{e.check_name}", e.partition): e for e in result.get_asset_check_evaluations()
    }
