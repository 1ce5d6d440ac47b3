"""The main job: artist ids -> raw top tracks -> DynamoDB, one country partition per run."""

from dagster import AssetSelection, define_asset_job

from toptracks_dagster.partitions import country_partitions

top_tracks_job = define_asset_job(
    "top_tracks_job",
    selection=AssetSelection.assets("artist_ids", "raw_top_tracks", "top_tracks"),
    partitions_def=country_partitions,
    description="Refresh one market end to end: read artist ids, fetch their top tracks, load DynamoDB exactly.",
)
