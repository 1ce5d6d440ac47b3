"""`top_tracks`: the DynamoDB table, one item per (artist, market, track), made equal to the raw partitions."""

from datetime import timedelta

from dagster import (
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    BackfillPolicy,
    Backoff,
    Failure,
    FreshnessPolicy,
    MetadataValue,
    RetryPolicy,
    TableColumn,
    TableSchema,
    asset,
)

from toptracks_dagster import config as settings
from toptracks_dagster.check_results import CheckOutcome, check_spec, emit_check_results
from toptracks_dagster.dynamodb.load import MarketLoader, rotating_sample
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import ensure_table
from toptracks_dagster.jobs import country_partitions
from toptracks_dagster.raw_storage.resources import RawStorage
from toptracks_dagster.spotify.assets import UNPUBLISHED_TAG, raw_top_tracks
from toptracks_dagster.spotify.raw import RawPartition, loaded_version

ASSET = "top_tracks"
EXACT = "exact"
QUARANTINE = "quarantine"

ITEM_SCHEMA = TableSchema(
    columns=[
        TableColumn("artist_id", "string", description="Partition key: the Spotify artist id."),
        TableColumn("country_track_id", "string", description="Sort key: market, `#`, track id."),
        TableColumn("country", "string", description="Market; hash key of the GSI country-popularity-index."),
        TableColumn("popularity", "number", description="0 to 100; range key of the GSI."),
        TableColumn("rank", "number", description="Position in the artist's top list, from 1."),
        TableColumn("fetched_at", "string", description="When this version of the list was first fetched (UTC)."),
        TableColumn("id, name, album, artists, ...", "various", description="The rest of Spotify's track."),
    ]
)

CHECK_SPECS = [
    check_spec(ASSET, EXACT, "Every artist the load read has exactly its raw tracks in the table.", country_partitions),
    check_spec(
        ASSET, QUARANTINE, "No artist kept old items because its answer or items were unusable.", country_partitions
    ),
]


@asset(
    key=ASSET,
    group_name="toptracks",
    deps=[raw_top_tracks],
    partitions_def=country_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=CHECK_SPECS,
    output_required=False,  # a market whose items did not change is observed, not materialized
    pool="dynamodb_top_tracks",
    retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL),
    kinds={"dynamodb"},
    owners=["team:data-eng"],
    metadata={"dagster/column_schema": ITEM_SCHEMA},
    freshness_policy=FreshnessPolicy.time_window(fail_window=timedelta(days=settings.freshness_target_days())),
    description=(
        "The DynamoDB table of top tracks, one item per artist, market and track. A full refresh reads every "
        "artist's items and repairs any difference; other refreshes read the artists they changed."
    ),
)
def top_tracks(context: AssetExecutionContext, dynamodb: DynamoDBResource, raw_storage: RawStorage):
    client = dynamodb.get_client()
    table = dynamodb.table_name
    with settings.permanent_errors():
        ensure_table(client, table, dynamodb.describe_endpoint(), settings.create_table(), settings.TABLE_TEMPLATE)
        raws = {market: RawPartition.open_or_none(raw_storage, market) for market in context.partition_keys}
    mode = _raw_mode(context)
    checks, failed = {}, []
    for market, raw in raws.items():
        if raw is None:
            context.log.warning(f"{market}: no raw partition published yet: nothing to load")
            continue
        artists = _artists_to_reconcile(context, raw, mode)
        if artists is not None and not artists:
            context.log.info(f"{market}: loaded already and unchanged since: nothing to read")
            continue
        loader = MarketLoader(
            client, table, market, dynamodb.write_concurrency, context.log.info, settings.check_sample_size()
        )
        with settings.permanent_errors():
            result = loader.load(
                raw, artists, settings.max_delete_share(), settings.mass_delete_allowed(context.run.tags)
            )
        context.log.info(
            f"{market}: {'full reconcile' if result.full else 'changed artists'}: {result.artists_read} artists "
            f"read, {result.items_written} items written, {result.items_deleted} deleted, "
            f"{result.quarantined.count} quarantined"
        )
        metadata = {
            "dagster/row_count": int(raw.end.get("tracks", 0)),
            "dagster/table_name": f"dynamodb.{dynamodb.region_name or 'default'}.{table}",
            "raw_version": raw.request.get("version", ""),
            "reconciled": "every artist" if result.full else "changed artists",
            "artists_read": result.artists_read,
            "artists_changed": result.artists_changed,
            "artists_removed": result.artists_removed,
            "items_written": result.items_written,
            "items_deleted": result.items_deleted,
            "items_unchanged": result.items_unchanged,
            "artists_quarantined": result.quarantined.count,
            "read_requests": result.read_requests,
            "write_requests": result.write_requests,
        }
        event = AssetMaterialization if result.changed else AssetObservation
        yield event(asset_key=ASSET, partition=market, metadata=metadata)
        checks[market] = [
            CheckOutcome(
                EXACT,
                result.mismatched.count == 0,
                description=None
                if not result.mismatched.count
                else f"{result.mismatched.count} item(s) in {market} differ from the raw partition after the load",
                metadata={
                    "artists_read": result.artists_read,
                    "artists_read_back": result.artists_read_back,
                    "mismatched_items": result.mismatched.count,
                    "mismatched_sample": MetadataValue.json(result.mismatched.first),
                    "artists_superseded": result.superseded.count,
                },
            ),
            CheckOutcome(
                QUARANTINE,
                result.quarantined.count == 0,
                severity=AssetCheckSeverity.WARN,
                description=None
                if not result.quarantined.count
                else f"{result.quarantined.count} artist(s) in {market} kept their previous items",
                metadata={
                    "artists_quarantined": result.quarantined.count,
                    "quarantined": MetadataValue.json(result.quarantined.first),
                },
            ),
        ]
        if result.mismatched.count:
            failed.append(market)
    yield from emit_check_results(context, checks)
    problems = [f"top_tracks differs from the raw partition after the load in {', '.join(failed)}"] if failed else []
    unpublished = context.instance.get_run_by_id(context.run.run_id).tags.get(UNPUBLISHED_TAG)
    if unpublished:
        problems.append(f"raw_top_tracks kept the previous partition of {unpublished}")
    if problems:
        raise Failure(description="; ".join(problems), allow_retries=False)


def _raw_mode(context: AssetExecutionContext) -> str | None:
    """The refresh mode of this run's raw step; None when the run does not fetch (then the load reconciles all)."""
    selection = context.run.asset_selection
    if selection is not None and AssetKey("raw_top_tracks") not in selection:
        return None
    config = context.run.run_config.get("ops", {}).get("raw_top_tracks", {}).get("config", {})
    return config.get("mode", "full")


def _artists_to_reconcile(context: AssetExecutionContext, raw: RawPartition, mode: str | None) -> set[str] | None:
    """None: every artist and every item of the market. A set: the artists this run changed, plus a sample."""
    if mode in (None, "full"):
        return None
    request = raw.request
    if request.get("refresh", {}).get("run_id") != context.run.run_id:
        # Not rewritten by this run: nothing to do if its load is known done, else load it whole.
        return set() if loaded_version(context.instance, raw.market) == request.get("version") else None
    touched = raw.end.get("touched")
    if touched is None:
        return None
    touched = set(touched)
    return touched | set(rotating_sample(raw.requested_at, touched, settings.check_sample_size(), context.run.run_id))
