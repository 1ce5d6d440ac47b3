"""`top_tracks_audit_job`: the full reconciliation of each market against its raw partition (on demand, or weekly).

Cost per market: one consistent Query per artist plus one sweep of the market's GSI, every item found that way
confirmed on the base table.
"""


# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError
from dagster import (
    AssetCheckSeverity,
    AssetObservation,
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    job,
    op,
)
from pydantic import Field

from toptracks_dagster.check_results import CheckOutcome, Sample
from toptracks_dagster.dynamodb.checks import AUDIT
from toptracks_dagster.dynamodb.reads import (
    Unavailable,
    chunks,
    expected_items,
    get_items,
    market_keys_from_gsi,
    open_raw,
    query_artist_ranks,
    stored_popularity,
)
from toptracks_dagster.dynamodb.resources import DynamoDBResource
from toptracks_dagster.dynamodb.table import (
    PARTITION_KEY,
    SORT_KEY,
)
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.raw_storage.resources import RawStorage
from toptracks_dagster.spotify.raw import (
    RawPartition,
    raw_partition_key,
)


# ------------------------------------------------------------------------------------------ the diff
@dataclass
class MarketDiff:
    market: str
    artists: int = 0
    raw_tracks: int = 0
    table_items: int = 0
    missing: Sample = field(default_factory=Sample)  # in the raw data, not in the table
    changed: Sample = field(default_factory=Sample)  # in both, with another rank or popularity
    stale_tracks: Sample = field(default_factory=Sample)  # artist in the raw data, track not in its list
    stale_artists: Sample = field(default_factory=Sample)  # items of artists absent from the raw data
    stale_artist_ids: set = field(default_factory=set)


def diff_market(dynamodb: DynamoDBResource, raw: RawPartition) -> MarketDiff:
    client = dynamodb.get_client()
    table, market = dynamodb.table_name, raw.market
    diff = MarketDiff(market)
    present: set[str] = set()
    workers = max(1, dynamodb.write_concurrency)
    with ThreadPoolExecutor(workers, thread_name_prefix="check-query") as pool:
        # Outcomes stream in chunks (memory holds artist ids, never the tracks); queries run in parallel.
        for chunk in chunks(raw.outcomes(), workers * 4):
            # Like the load, only an artist's first outcome counts (raw_top_tracks_complete flags repeats).
            chunk = [o for o in chunk if o.artist_id not in present]
            present.update(o.artist_id for o in chunk)
            actual_by_artist = pool.map(lambda o: query_artist_ranks(client, table, market, o.artist_id), chunk)
            for outcome, actual in zip(chunk, actual_by_artist, strict=True):
                diff.artists += 1
                expected = {
                    key: (rank, stored_popularity(track))
                    for key, (rank, track) in expected_items(market, outcome).items()
                }
                diff.raw_tracks += len(expected)
                diff.table_items += len(actual)
                for key, (rank, popularity) in expected.items():
                    if key not in actual:
                        diff.missing.add({"artist_id": outcome.artist_id, SORT_KEY: key})
                    elif actual[key] != (rank, popularity):
                        diff.changed.add(
                            {
                                "artist_id": outcome.artist_id,
                                SORT_KEY: key,
                                "raw": {"rank": rank, "popularity": popularity},
                                "table": {"rank": actual[key][0], "popularity": actual[key][1]},
                            }
                        )
                for key in actual.keys() - expected.keys():
                    diff.stale_tracks.add({"artist_id": outcome.artist_id, SORT_KEY: key, "raw_status": outcome.status})
    # Artists gone from the raw data: found through the market's GSI (every item carries a numeric popularity,
    # so every item is in it), then confirmed on the base table, since the GSI may still show deleted items.
    candidates = [key for key in market_keys_from_gsi(client, table, market) if key[0] not in present]
    for key in sorted(get_items(client, table, candidates, attributes=(PARTITION_KEY, SORT_KEY))):
        diff.table_items += 1
        diff.stale_artist_ids.add(key[0])
        diff.stale_artists.add({"artist_id": key[0], SORT_KEY: key[1]})
    return diff


def _diff_or_error(
    dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str
) -> tuple[MarketDiff | None, str | None]:
    try:
        return diff_market(dynamodb, open_raw(raw_storage, market)), None
    except Unavailable as error:
        return None, str(error)
    except (ClientError, BotoCoreError) as error:
        # The message names the operation and the table, never credentials.
        return None, f"reading table {dynamodb.table_name} at {dynamodb.describe_endpoint()} failed: {error}"


def _table_metadata(dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str) -> dict:
    return {
        "market": market,
        "table": dynamodb.table_name,
        "endpoint": dynamodb.describe_endpoint(),
        "raw_object": MetadataValue.path(raw_storage.uri(raw_partition_key(market))),
    }


# ------------------------------------------------------------------------------------------ the audit
def _audit(dynamodb: DynamoDBResource, raw_storage: RawStorage, market: str) -> CheckOutcome:
    metadata = _table_metadata(dynamodb, raw_storage, market)
    diff, error = _diff_or_error(dynamodb, raw_storage, market)
    if diff is None:
        return CheckOutcome.cannot_evaluate(AUDIT, error, metadata=metadata)
    extra = diff.stale_tracks.count + diff.stale_artists.count
    passed = not (diff.missing.count or diff.changed.count or extra)
    return CheckOutcome(
        AUDIT,
        passed,
        AssetCheckSeverity.ERROR,
        None
        if passed
        else (
            f"the table's items for {market} differ from the raw partition: {diff.missing.count} missing, "
            f"{diff.changed.count} with another rank or popularity, {diff.stale_tracks.count} stale tracks, "
            f"{diff.stale_artists.count} items of {len(diff.stale_artist_ids)} artist(s) no longer listed. "
            f"Re-materialize `top_tracks` for {market}."
        ),
        {
            **metadata,
            "artists": diff.artists,
            "raw_tracks": diff.raw_tracks,
            "table_items": diff.table_items,
            "missing_items": diff.missing.count,
            "missing_item_sample": MetadataValue.json(diff.missing.first),
            "changed_items": diff.changed.count,
            "changed_item_sample": MetadataValue.json(diff.changed.first),
            "stale_track_items": diff.stale_tracks.count,
            "stale_track_sample": MetadataValue.json(diff.stale_tracks.first),
            "stale_artist_items": diff.stale_artists.count,
            "stale_artists": len(diff.stale_artist_ids),
            "stale_artist_item_sample": MetadataValue.json(diff.stale_artists.first),
        },
    )


class AuditConfig(Config):
    """Run config of `top_tracks_audit_job` (the launchpad shows it)."""

    markets: list[str] = Field(default_factory=list, description="markets to audit; empty: every partition")


@op(
    name="audit_top_tracks",
    description=(
        "Full reconciliation of each market: every item of the market in DynamoDB, with its rank and popularity, "
        "equals the raw partition; no item of a track that left a list or of an artist no longer listed. Reports "
        "one `top_tracks` observation per market (`audit_passed` and the differences) and fails the run when a "
        "market differs or cannot be read. Cost per market: one consistent Query per artist plus one sweep of "
        "the market's GSI."
    ),
)
def audit_top_tracks(
    context: OpExecutionContext, config: AuditConfig, dynamodb: DynamoDBResource, raw_storage: RawStorage
):
    unknown = sorted(set(config.markets) - set(country_partitions.get_partition_keys()))
    if unknown:
        raise Failure(description=f"not among the partitions: {', '.join(unknown)}", allow_retries=False)
    failed = []
    for market in config.markets or country_partitions.get_partition_keys():
        outcome = _audit(dynamodb, raw_storage, market)
        metadata = {"audit_passed": outcome.passed, **outcome.metadata}
        if outcome.description:
            metadata["audit_finding"] = outcome.description
        context.log_event(AssetObservation(asset_key="top_tracks", partition=market, metadata=metadata))
        if not outcome.passed:
            failed.append(outcome.description)
    if failed:
        raise Failure(description="top_tracks audit: " + " | ".join(failed), allow_retries=False)


@job(
    name="top_tracks_audit_job",
    description=(
        "Reconcile every item of every market against the raw partitions. An op job, not an asset check, so that "
        "materializing `top_tracks` (a UI backfill included) never pays for it: run it on demand or with the "
        "`weekly_audit` schedule."
    ),
)
def top_tracks_audit_job():
    audit_top_tracks()
