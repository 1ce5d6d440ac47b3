"""The refresh job (all markets of a run in one run); the audit is an op job of the dynamodb room."""

from dagster import AssetSelection, define_asset_job

from toptracks_dagster.partitions import country_partitions

top_tracks_job = define_asset_job(
    "top_tracks_job",
    # The refresh verifies what it changed (checks inside the asset steps); the full audit is an op job.
    selection=AssetSelection.assets("artist_ids", "raw_top_tracks", "top_tracks"),
    description=(
        "Refresh the markets of the run end to end: read artist ids once, fetch the artists the refresh config "
        "chooses for every market together, load DynamoDB exactly. A partition range is one run."
    ),
)


def all_markets_tags() -> dict[str, str]:
    """Run tags that make one run cover every market (a single-run partition range)."""
    keys = country_partitions.get_partition_keys()
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
