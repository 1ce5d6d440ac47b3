"""The shape of a run: country partitions (TOPTRACKS_COUNTRIES) and the refresh job over all of them at once."""

from dagster import AssetSelection, StaticPartitionsDefinition, define_asset_job

from toptracks_dagster.config import countries

country_partitions = StaticPartitionsDefinition(countries())

top_tracks_job = define_asset_job(
    "top_tracks_job",
    selection=AssetSelection.assets("artist_ids", "raw_top_tracks", "top_tracks"),
    description="Read the artist ids, fetch what the refresh mode chooses, make the table equal the raw data.",
)


def all_markets_tags() -> dict[str, str]:
    """Run tags that make one run cover every market (a single-run partition range)."""
    keys = country_partitions.get_partition_keys()
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
