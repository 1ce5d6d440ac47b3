"""`top_tracks`: the DynamoDB table, one item per (artist, market, track), refreshed exactly per market."""

import time
from datetime import timedelta

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Backoff,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    TableColumn,
    TableSchema,
    asset,
)

from toptracks_dagster import config as settings
from toptracks_dagster.check_results import emit_check_results
from toptracks_dagster.dynamodb.checks import (
    TABLE_CHECK_SPECS,
    verify_market_after_load,
)
from toptracks_dagster.dynamodb.load import MassDeletionRefused, load_market
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import (
    DynamoDBUnavailable,
    DynamoDBWriteIncomplete,
    ItemTooLarge,
    TableMissing,
    TableSchemaMismatch,
    ensure_table,
)
from toptracks_dagster.dynamodb.wire import consumed_capacity_mode
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage
from toptracks_dagster.spotify.assets import raw_top_tracks
from toptracks_dagster.spotify.raw import (
    RawPartition,
    RawPartitionIncomplete,
    raw_partition_key,
)

ITEM_SCHEMA = TableSchema(
    columns=[
        TableColumn("artist_id", "string", description="partition key: Spotify artist id"),
        TableColumn("country_track_id", "string", description="sort key: '<market>#<track id>'"),
        TableColumn("country", "string", description="market; GSI country-popularity-index hash key"),
        TableColumn(
            "popularity", "number", description="0..100; GSI range key (0 with popularity_missing when absent)"
        ),
        TableColumn("id", "string", description="Spotify track id"),
        TableColumn("rank", "number", description="1-based position in the artist's top list"),
        TableColumn("name", "string"),
        TableColumn("fetched_at", "string", description="when this version of the list was fetched (ISO 8601, UTC)"),
        TableColumn("content_hash", "string", description="what decides whether the item is rewritten"),
        TableColumn("album, artists, duration_ms, ...", "map/list/...", description="the rest of the track JSON"),
    ]
)


@asset(
    key="top_tracks",
    group_name="toptracks",
    deps=[raw_top_tracks],
    partitions_def=country_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=TABLE_CHECK_SPECS,
    pool="dynamodb_top_tracks",  # two loads of one market never interleave (instance pool limit 1)
    retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL),
    kinds={"dynamodb"},
    owners=["team:data-eng"],
    metadata={"dagster/column_schema": ITEM_SCHEMA},
    # The table as a whole: WARN after a day without a load (the rolling or daily refresh stopped), FAIL once no
    # load happened for TOPTRACKS_FRESHNESS_TARGET_DAYS (every list is then older than the target). The age of
    # each (artist, market) list is in raw_top_tracks' metadata and its freshness-bound check.
    freshness_policy=FreshnessPolicy.time_window(
        fail_window=timedelta(days=max(1.0, settings.freshness_target_days())),
        warn_window=timedelta(days=1) if settings.freshness_target_days() > 1 else None,
    ),
    description=(
        "The DynamoDB table (TOPTRACKS_TABLE, default `top_tracks`): key artist_id + country_track_id "
        "('<market>#<track id>'), GSI country-popularity-index. After a market's load its items are exactly "
        "the current raw partition's tracks. Cost per market: 0 requests for unchanged artists (the load "
        "ledger), one consistent Query plus the changed items' writes per changed or removed artist, and the "
        "check's read-back of those artists plus a sample of TOPTRACKS_CHECK_SAMPLE_SIZE. A load that would "
        "delete more than TOPTRACKS_MAX_DELETE_SHARE of a market's items stops before writing unless the run "
        "has the tag toptracks/allow_mass_delete=true."
    ),
)
def top_tracks(context: AssetExecutionContext, dynamodb: DynamoDBResource, raw_storage: RawStorage):
    client = dynamodb.get_client()
    endpoint = dynamodb.describe_endpoint()
    capacity_reported = consumed_capacity_mode(client) == "TOTAL"  # not asked of an emulator
    try:
        table_status = ensure_table(
            client, dynamodb.table_name, endpoint, create=settings.create_table(), template=settings.TABLE_TEMPLATE
        )
    except (DynamoDBUnavailable, TableSchemaMismatch, TableMissing) as error:
        raise Failure(description=str(error), allow_retries=False) from None
    if table_status == "created":
        context.log.info(f"created table {dynamodb.table_name} (on-demand) at {endpoint}")
    # Every raw partition is verified whole before the first write to any market.
    raws = {}
    for market in context.partition_keys:
        try:
            raws[market] = RawPartition.open(raw_storage, market)
        except (RawObjectMissing, RawPartitionIncomplete) as error:
            raise Failure(description=str(error), allow_retries=False) from None
    results = {}
    for market, raw in raws.items():
        started = time.monotonic()
        try:
            result = load_market(
                client,
                dynamodb.table_name,
                endpoint,
                raw,
                raw_storage,
                created_now=table_status == "created",
                concurrency=dynamodb.write_concurrency,
                max_batch_retries=dynamodb.max_batch_retries,
                max_delete_share=settings.max_delete_share(),
                delete_allowed=settings.mass_delete_allowed(context.run.tags),
                log=context.log.info,
            )
        except MassDeletionRefused as error:
            raise Failure(description=str(error), allow_retries=False) from None
        except DynamoDBUnavailable as error:
            raise Failure(description=str(error), allow_retries=False) from None
        except (DynamoDBWriteIncomplete, ItemTooLarge) as error:
            raise Failure(description=f"market {market}: {error}") from None
        results[market] = result
        numbers = result.stats.as_dict()
        if not capacity_reported:  # no zeros that look measured
            del numbers["consumed_write_capacity"], numbers["consumed_read_capacity"]
        wall_s = time.monotonic() - started
        context.log.info(
            f"{market}: {numbers['items_written']} written, {numbers['items_unchanged']} unchanged, "
            f"{numbers['items_deleted']} deleted, {numbers['write_requests']} write requests, "
            f"{numbers['read_requests']} reads in {wall_s:.1f} s (table state: {result.table_state})"
        )
        context.add_asset_metadata(
            {
                "dagster/row_count": int(numbers["items_written"] + numbers["items_unchanged"]),
                "dagster/table_name": dynamodb.table_name,
                "endpoint": endpoint,
                "raw_object": MetadataValue.path(raw_storage.uri(raw_partition_key(market))),
                **{name: value for name, value in numbers.items()},
                "artists_changed": len(result.changed_artists),
                "artists_removed": len(result.removed_artists),
                "table_state": result.table_state,
                "wall_time_s": round(wall_s, 3),
            },
            partition_key=market,
        )
    yield MaterializeResult()
    checks = {}
    for market, raw in raws.items():
        touched = results[market].changed_artists | results[market].removed_artists
        base = {"market": market, "table": dynamodb.table_name, "endpoint": endpoint}
        checks[market] = verify_market_after_load(
            dynamodb,
            raw,
            touched,
            settings.check_sample_size(),
            seed=context.run.run_id,
            base=base,
            had_no_items=results[market].had_no_items,
        )
    yield from emit_check_results(context, checks)
