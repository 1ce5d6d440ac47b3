"""`raw_top_tracks`: every artist's top tracks per market, as Spotify returned them, kept as raw JSON."""

import time
from contextlib import ExitStack

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Backoff,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from toptracks_dagster import config as settings
from toptracks_dagster.artists_db.assets import artist_ids
from toptracks_dagster.artists_db.snapshot import SnapshotUnreadable, read_snapshot
from toptracks_dagster.check_results import emit_check_results, failed_blocking
from toptracks_dagster.common import utc_now_iso
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.raw_storage.resources import RawStorage
from toptracks_dagster.spotify.checks import RAW_CHECK_SPECS, evaluate_raw_checks
from toptracks_dagster.spotify.client import (
    FATAL_ERRORS,
    SpotifyError,
    SpotifyUnreachable,
)
from toptracks_dagster.spotify.raw import (
    PartitionMerge,
    RawPartition,
    RawPartitionIncomplete,
    raw_partition_key,
)
from toptracks_dagster.spotify.refresh import (
    RefreshConfig,
    RefreshPlanError,
    fetch_order,
    plan_market,
)
from toptracks_dagster.spotify.resources import SpotifyResource


@asset(
    key="raw_top_tracks",
    group_name="toptracks",
    deps=[artist_ids],
    partitions_def=country_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=RAW_CHECK_SPECS,
    pool="spotify_api",  # concurrent runs share the Spotify budget and never merge one partition at once
    # Transient trouble (5xx storms, resets) gets two more tries; fatal errors (403, bad credentials, an
    # unreachable endpoint, a Retry-After above the cap) raise Failure(allow_retries=False) and stop at once.
    retry_policy=RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS),
    kinds={"spotify", "json"},
    owners=["team:data-eng"],
    description=(
        "Raw Spotify 'Get Artist's Top Tracks' answers per market, one JSON Lines object per market sorted by "
        "artist: what was asked, when, and what came back (tracks, or 404 for unknown artists). All markets of "
        "a run are fetched together under one rate limit. A run refreshes the artists its config chooses "
        "(mode full = every artist, 1 request per artist per market; changed = only artists new to the market; "
        "stalest = the `limit` oldest lists, new artists first; artists = a given list) and merges them into "
        "the partition: the other artists' outcomes are kept, artists gone from `artist_ids` dropped (no "
        "request). The merged partition is written aside and published only if its blocking checks pass."
    ),
)
def raw_top_tracks(context: AssetExecutionContext, config: RefreshConfig, spotify: SpotifyResource,
                   raw_storage: RawStorage):
    started = time.monotonic()
    markets = list(context.partition_keys)
    try:
        snapshot = read_snapshot(raw_storage)
    except SnapshotUnreadable as error:
        raise Failure(description=str(error), allow_retries=False) from None
    listed = sorted(set(snapshot["ids"]))
    previous = {}
    for market in markets:
        try:
            previous[market] = RawPartition.open_or_none(raw_storage, market)
        except RawPartitionIncomplete as error:
            # A damaged current partition cannot be merged into: refetch everything for this market.
            context.log.warning(f"{error}; refetching every artist of {market}")
            previous[market] = None
    try:
        plans = [plan_market(config if previous[m] is not None else RefreshConfig(mode="full", reason=config.reason),
                             m, listed, previous[m].requested_at if previous[m] else None) for m in markets]
    except RefreshPlanError as error:
        raise Failure(description=f"refresh config: {error}", allow_retries=False) from None
    pairs = fetch_order(plans)
    for plan in plans:
        context.log.info(f"{plan.market}: {plan.describe(config.mode if previous[plan.market] else 'full')}")

    with ExitStack() as cleanup:
        merges: dict[str, PartitionMerge] = {}
        pending = {}
        for plan in plans:
            stream, pending[plan.market] = cleanup.enter_context(raw_storage.write_aside(raw_partition_key(plan.market)))
            request = {"api_base_url": spotify.api_base_url,
                       "refresh": {"mode": config.mode, "reason": config.reason, "planned": len(plan.fetch),
                                   "run_id": context.run_id}}
            merges[plan.market] = PartitionMerge(
                stream, plan.market, listed, previous[plan.market].outcomes() if previous[plan.market] else (),
                request, planned=len(plan.fetch))
        stats = _fetch(context, spotify, pairs, merges)
        profiles = {market: merge.finish() for market, merge in merges.items()}

    now = utc_now_iso()
    checks = {}
    for plan in plans:
        market = plan.market
        profile = profiles[market]
        verify_error = None
        try:
            RawPartition.from_pending(pending[market], market)
        except RawPartitionIncomplete as error:
            verify_error = str(error)
        base = {"market": market, "raw_object": MetadataValue.path(raw_storage.uri(raw_partition_key(market)))}
        checks[market] = evaluate_raw_checks(profile, base, verify_error, settings.check_max_404_share())
        blocked = failed_blocking(checks[market], RAW_CHECK_SPECS)
        if blocked:
            pending[market].discard()
            context.log.error(f"{market}: not published ({', '.join(o.name for o in blocked)} failed); the previous "
                              "partition stays current")
        else:
            pending[market].publish()
        context.add_asset_metadata(
            _metadata(plan, profile, config, published=not blocked, now=now,
                      uri=raw_storage.uri(raw_partition_key(market))),
            partition_key=market,
        )
    context.log.info(_stats_line(stats, time.monotonic() - started))
    yield MaterializeResult(metadata=_run_metadata(stats, time.monotonic() - started))
    yield from emit_check_results(context, checks)


def _fetch(context: AssetExecutionContext, spotify: SpotifyResource, pairs: list[tuple[str, str]],
           merges: dict[str, PartitionMerge]) -> dict:
    total = len(pairs)
    step = max(1, total // 10)
    with spotify.get_client(log=context.log.warning) as client:
        try:
            if pairs:
                client.check_credentials()
            for done, outcome in enumerate(client.iter_pairs(pairs), start=1):
                merges[outcome.market].push(outcome)
                if done % step == 0 or done == total:
                    context.log.info(f"{done}/{total} (artist, market) pairs fetched ({100 * done // total} %)")
        except FATAL_ERRORS + (SpotifyUnreachable,) as error:
            raise Failure(description=str(error), allow_retries=False) from None
        except SpotifyError as error:
            raise Failure(description=str(error)) from None
        return client.stats.snapshot()


def _metadata(plan, profile, config: RefreshConfig, published: bool, now: str, uri: str) -> dict:
    ages = profile.ages_days(now)
    preview = "\n".join(
        f"| {i} | {t['track']} | {t['artist_id']} | {t['popularity']} |" for i, t in enumerate(profile.top_preview, 1)
    )
    return {
        "dagster/row_count": profile.tracks,
        "dagster/uri": uri,
        "published": published,
        "refresh_mode": config.mode,
        "refresh_reason": config.reason or "-",
        "artists": profile.outcomes,
        "artists_fetched": profile.fetched,
        "artists_new": profile.fetched_new,
        "artists_kept": profile.kept,
        "artists_removed": profile.removed_artists,
        "artists_without_list": len(profile.pending_new),
        "artists_with_tracks": profile.with_tracks,
        "artists_not_found_404": profile.not_found,
        "tracks": profile.tracks,
        "tracks_dropped_vs_previous": profile.tracks_dropped,
        "mean_popularity": profile.mean_popularity,
        "list_age_oldest_days": ages["oldest"],
        "list_age_median_days": ages["median"],
        "list_age_p95_days": ages["p95"],
        "top_tracks_preview": MetadataValue.md(
            f"**Most popular tracks in {plan.market}**\n\n| # | track | artist | popularity |\n|---|---|---|---|\n{preview}"
        ),
    }


def _run_metadata(stats: dict, wall_s: float) -> dict:
    """Spotify numbers of the whole run (every market it fetched)."""
    return {
        "run_requests": int(stats["requests"]),
        "run_responses_2xx": int(stats["status_2xx"]),
        "run_responses_404": int(stats["status_404"]),
        "run_responses_429": int(stats["status_429"]),
        "run_responses_5xx": int(stats["status_5xx"]),
        "run_responses_401": int(stats["status_401"]),
        "run_transport_errors": int(stats["transport_errors"]),
        "run_malformed_bodies": int(stats["malformed_bodies"]),
        "run_pacer_wait_s": round(float(stats["paused_s"]), 3),
        "run_retries": int(stats["retries"]),
        "run_token_requests": int(stats["token_requests"]),
        "run_bytes_received": int(stats["bytes"]),
        "run_wall_time_s": round(wall_s, 3),
        "run_requests_per_second": round(stats["requests"] / wall_s, 2) if wall_s > 0 else 0.0,
    }


def _stats_line(stats: dict, wall_s: float) -> str:
    return (f"{int(stats['requests'])} top-tracks requests ({int(stats['status_429'])} answered 429, "
            f"{int(stats['retries'])} retries) in {wall_s:.1f} s")
