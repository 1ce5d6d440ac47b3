"""`top_tracks`: the DynamoDB table, one item per (artist, market, track), refreshed exactly per market."""

import time

from dagster import (
    AssetExecutionContext,
    Backoff,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from toptracks_dagster.dynamodb.ledger import forget_ledger, read_ledger, table_identity, write_ledger
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import (
    DynamoDBUnavailable,
    DynamoDBWriteIncomplete,
    ItemTooLarge,
    MarketLoader,
    TableSchemaMismatch,
    ensure_table,
)
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage
from toptracks_dagster.spotify.assets import raw_top_tracks
from toptracks_dagster.spotify.raw import RawPartition, RawPartitionIncomplete


@asset(
    key="top_tracks",
    group_name="toptracks",
    deps=[raw_top_tracks],
    partitions_def=country_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL),
    kinds={"dynamodb"},
    owners=["team:data-eng"],
    description=(
        "The DynamoDB table (TOPTRACKS_TABLE, default `top_tracks`): key artist_id + country_track_id "
        "('<market>#<track id>'), GSI country-popularity-index. After a partition's load the table's items for "
        "that market are exactly the raw partition's tracks: changed items rewritten, unchanged ones left "
        "alone, tracks and artists that left deleted."
    ),
)
def top_tracks(context: AssetExecutionContext, dynamodb: DynamoDBResource, raw_storage: RawStorage) -> MaterializeResult:
    client = dynamodb.get_client()
    try:
        table_status = ensure_table(client, dynamodb.table_name, dynamodb.describe_endpoint())
    except (DynamoDBUnavailable, TableSchemaMismatch) as error:
        raise Failure(description=str(error), allow_retries=isinstance(error, DynamoDBUnavailable)) from None
    if table_status == "created":
        context.log.info(f"created table {dynamodb.table_name} (on-demand) at {dynamodb.describe_endpoint()}")
    per_market = {market: _load_market(context, client, dynamodb, raw_storage, market) for market in context.partition_keys}
    if len(per_market) == 1:
        return MaterializeResult(metadata=next(iter(per_market.values())))
    return MaterializeResult(metadata={
        "markets": MetadataValue.json(per_market),
        "dagster/row_count": sum(md["dagster/row_count"] for md in per_market.values()),
    })


def _load_market(context: AssetExecutionContext, client, dynamodb: DynamoDBResource, raw_storage: RawStorage,
                 market: str) -> dict:
    started = time.monotonic()
    try:
        raw = RawPartition(raw_storage, market)
    except (RawObjectMissing, RawPartitionIncomplete) as error:
        raise Failure(description=str(error), allow_retries=False) from None
    identity = table_identity(client, dynamodb.table_name, dynamodb.describe_endpoint())
    previous = read_ledger(raw_storage, market, identity)
    forget_ledger(raw_storage, market)  # a crash from here on leaves no ledger: the next load reads the table
    loader = MarketLoader(client, dynamodb.table_name, market, concurrency=dynamodb.write_concurrency,
                          max_batch_retries=dynamodb.max_batch_retries, log=context.log.info,
                          previous_ledger=previous)
    try:
        stats = loader.load(raw.outcomes())
    except (DynamoDBWriteIncomplete, ItemTooLarge) as error:
        raise Failure(description=f"market {market}: {error}") from None
    write_ledger(raw_storage, market, identity, loader.ledger)
    wall_s = time.monotonic() - started
    numbers = stats.as_dict()
    context.log.info(
        f"{market}: {numbers['items_written']} written, {numbers['items_unchanged']} unchanged, "
        f"{numbers['items_deleted']} deleted, {numbers['write_requests']} write requests in {wall_s:.1f} s"
    )
    return {
        "dagster/row_count": numbers["items_written"] + numbers["items_unchanged"],
        "market": market,
        "table": dynamodb.table_name,
        "endpoint": dynamodb.describe_endpoint(),
        **{name: value for name, value in numbers.items()},
        "wall_time_s": round(wall_s, 3),
        "table_read_skipped": previous is not None,  # the ledger of the last load made reading the table unneeded
    }
