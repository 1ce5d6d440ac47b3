"""`raw_top_tracks`: every artist's top tracks per market, as Spotify returned them, kept as raw JSON."""

import time
from contextlib import ExitStack
from datetime import datetime, timezone

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Backoff,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    TableColumn,
    TableSchema,
    asset,
)

from toptracks_dagster import config as settings
from toptracks_dagster.artists_db.assets import artist_ids, read_snapshot, snapshot_attention
from toptracks_dagster.check_results import emit_check_results
from toptracks_dagster.common import utc_now_iso
from toptracks_dagster.jobs import country_partitions
from toptracks_dagster.raw_storage.resources import RawStorage
from toptracks_dagster.spotify import freshness
from toptracks_dagster.spotify.budget import (
    ROLLING_INTERVAL_S,
    RunBudget,
    adaptive_bound_days,
    run_capacity,
)
from toptracks_dagster.spotify.checks import (
    PUBLISH_CHECKS,
    RAW_CHECK_SPECS,
    evaluate_freshness_bound,
    evaluate_raw_checks,
)
from toptracks_dagster.spotify.client import SpotifyBudgetExhausted, SpotifyError
from toptracks_dagster.spotify.raw import (
    PartitionMerge,
    RawPartition,
    RawPartitionIncomplete,
    loaded_version,
    raw_partition_key,
)
from toptracks_dagster.spotify.refresh import RefreshConfig, RefreshPlanError, fetch_order, plan_run
from toptracks_dagster.spotify.resources import SpotifyResource

UNPUBLISHED_TAG = "toptracks/raw_not_published"  # markets of the run whose partition could not be published
RAW_SCHEMA = TableSchema(
    columns=[
        TableColumn("record", "string", description="`request` (first line), `outcome`, or `end` (last line)."),
        TableColumn("artist_id", "string", description="The Spotify artist id; outcomes are sorted by it."),
        TableColumn("requested_at", "string", description="When the list was fetched (UTC)."),
        TableColumn("status", "number", description="200 with tracks, or 404 for an artist Spotify does not know."),
        TableColumn("tracks", "list", description="Spotify's TrackObjects, in rank order."),
    ]
)


@asset(
    key="raw_top_tracks",
    group_name="toptracks",
    deps=[artist_ids],
    partitions_def=country_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=RAW_CHECK_SPECS,
    output_required=False,  # a run that fetched and changed nothing claims no new data
    pool="spotify_api",  # runs share the Spotify rate and budget, and never merge one partition at once
    retry_policy=RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS),
    kinds={"spotify", "json"},
    owners=["team:data-eng"],
    metadata={"dagster/column_schema": RAW_SCHEMA},
    description=(
        "Spotify's top-tracks answers per market, one JSON Lines object per market. "
        "A run fetches what its refresh mode chooses and keeps every other artist's list as it was."
    ),
)
def raw_top_tracks(
    context: AssetExecutionContext, config: RefreshConfig, spotify: SpotifyResource, raw_storage: RawStorage
):
    started = time.monotonic()
    markets = list(context.partition_keys)
    with settings.permanent_errors():
        snapshot = read_snapshot(raw_storage)
    listed = sorted(set(snapshot["ids"]))
    attention = snapshot_attention(snapshot)
    previous = {}
    for market in markets:
        try:
            previous[market] = RawPartition.open_or_none(raw_storage, market)
        except RawPartitionIncomplete as error:
            context.log.warning(f"{error}; refetching every artist of {market}")
            previous[market] = None
    all_markets = len(country_partitions.get_partition_keys())
    try:
        plans = plan_run(
            config,
            markets,
            listed,
            {m: previous[m].requested_at if previous[m] else None for m in markets},
            _run_started(context),
            states={m: previous[m].states if previous[m] else [] for m in markets},
            bound_days=config.max_list_age_days or adaptive_bound_days(len(listed), all_markets),
            interval_days=ROLLING_INTERVAL_S / freshness.DAY_S,
            capacity=run_capacity(settings.requests_per_day()),
            attention=attention,
        )
    except RefreshPlanError as error:
        raise Failure(description=f"refresh config: {error}", allow_retries=False) from None
    for plan in plans:
        context.log.info(f"{plan.market}: {plan.describe(config.mode)}")
    # Unknown (a fresh instance) counts as not loaded: the next load then reads every artist.
    loaded = {
        m: previous[m] is not None and loaded_version(context.instance, m) == previous[m].request.get("version")
        for m in markets
    }
    rewrite = [p.market for p in plans if previous[p.market] is None or p.fetch or p.new or p.removed]
    if not rewrite and config.mode != "full" and all(loaded.values()):
        context.log.info("nothing to fetch, add or remove, and every market is loaded: no new data")
        yield from emit_check_results(context, {})
        return
    with settings.permanent_errors():
        budget = RunBudget.open(context, raw_storage, config.max_requests or None, len(listed), all_markets)
    pairs = fetch_order([p for p in plans if p.market in rewrite])
    if budget.cap == 0 and pairs:
        context.log.warning(budget.describe_cap())
        pairs = []

    failed: dict[str, str] = {}  # market -> why its partition could not be written
    with ExitStack() as cleanup:
        merges, pending = {}, {}
        for plan in plans:
            if plan.market not in rewrite:
                continue
            try:
                stream, pending[plan.market] = cleanup.enter_context(
                    raw_storage.write_aside(raw_partition_key(plan.market))
                )
            except settings.PermanentError as error:
                failed[plan.market] = str(error)
                continue
            partition = previous[plan.market]
            merges[plan.market] = PartitionMerge(
                stream,
                plan.market,
                listed,
                partition.outcomes_with_lines() if partition else (),
                {
                    "previous_version": partition.request.get("version") if partition else None,
                    "artists_fingerprint": snapshot.get("fingerprint"),
                    "refresh": {"mode": config.mode, "reason": config.reason, "run_id": context.run.run_id},
                },
                planned=len(plan.fetch),
                touched_all=not loaded[plan.market],
                popularity_change=settings.popularity_change(),
            )
        pairs = [(a, m) for a, m in pairs if m in merges]
        stats, stopped, fetch_error = _fetch(context, spotify, pairs, merges, budget)
        for merge in merges.values():
            if stopped or fetch_error:  # unfetched pairs keep their previous outcome
                merge.profile.unfetched = merge.profile.planned - merge.profile.fetched
                merge.profile.planned = merge.profile.fetched
        profiles = {}
        for market, merge in merges.items():
            try:
                profiles[market] = merge.finish()
            except settings.PermanentError as error:
                failed[market] = str(error)

    now = utc_now_iso()
    checks = {}
    for plan in plans:
        market = plan.market
        if market not in profiles:
            continue
        profile = profiles[market]
        verify_error = None
        try:
            merges[market].written(pending[market])
        except RawPartitionIncomplete as error:
            verify_error = str(error)
        uri = raw_storage.uri(raw_partition_key(market))
        checks[market] = evaluate_raw_checks(profile, {}, verify_error, settings.check_max_404_share())
        checks[market].append(evaluate_freshness_bound(profile, {}, now, budget.bound_days))
        blocked = [o for o in checks[market] if o.name in PUBLISH_CHECKS and not o.passed]
        try:
            if blocked:
                pending[market].discard()
                failed[market] = f"not published ({', '.join(o.name for o in blocked)} failed)"
            else:
                pending[market].publish()
        except settings.PermanentError as error:
            failed[market] = str(error)
        metadata = _metadata(profile, uri, not blocked and market not in failed)
        metadata["pairs_older_than_bound"] = profile.older_than(now, budget.bound_days)
        metadata.update(_stale_share(merges[market], profile, attention))
        context.add_asset_metadata(metadata, partition_key=market)
    for market in markets:
        if market not in checks and previous[market] is not None:
            context.add_asset_metadata(
                {"rewritten": False, "artists": len(previous[market].requested_at)}, partition_key=market
            )
    context.instance.add_run_tags(context.run.run_id, _run_tags(stats, time.monotonic() - started))
    context.log.info(
        f"{int(stats['requests'])} top-tracks requests ({int(stats['status_429'])} answered 429) in "
        f"{time.monotonic() - started:.1f} s" + (" (stopped by the request cap)" if stopped else "")
    )
    if failed:
        # The market keeps its previous partition; the others are loaded, and the load then fails the run.
        for market, why in failed.items():
            context.log.error(f"{market}: {why}; the previous partition stays current")
        context.instance.add_run_tags(
            context.run.run_id, {UNPUBLISHED_TAG: "; ".join(f"{m}: {w}" for m, w in failed.items())}
        )
    yield MaterializeResult(metadata=budget.metadata(stopped))
    yield from emit_check_results(context, checks)
    if fetch_error is not None:
        raise Failure(description=f"{fetch_error} (what was fetched is kept: a retry fetches only the rest)")


def _run_started(context: AssetExecutionContext) -> datetime:
    stats = context.instance.get_run_stats(context.run.run_id)
    moment = stats.start_time if stats and stats.start_time else time.time()
    return datetime.fromtimestamp(moment, timezone.utc)


def _fetch(context, spotify: SpotifyResource, pairs, merges, budget) -> tuple[dict, bool, SpotifyError | None]:
    """(client stats, stopped by the request cap, the retryable error that ended the fetch early)."""
    total, step = len(pairs), max(1, len(pairs) // 10)
    stopped, error = False, None
    with spotify.get_client(log=context.log.warning, max_requests=budget.cap) as client:
        try:
            if pairs:
                client.check_credentials()
            for done, outcome in enumerate(client.iter_pairs(pairs), start=1):
                merges[outcome.market].push(outcome)
                if done % step == 0 or done == total:
                    context.log.info(f"{done}/{total} (artist, market) pairs fetched")
        except SpotifyBudgetExhausted as exhausted:
            stopped = True
            context.log.warning(f"{exhausted}: what was fetched is kept, the rest keep their lists")
        except settings.PermanentError as fatal:
            raise Failure(description=str(fatal), allow_retries=False) from None
        except SpotifyError as transient:
            error = transient
            context.log.error(f"{transient}: publishing what was fetched")
        finally:
            budget.settle(max(client.allowance.used, int(client.stats.snapshot()["requests"])))
        return client.stats.snapshot(), stopped, error


def _metadata(profile, uri: str, published: bool) -> dict:
    preview = "\n".join(
        f"| {i} | {t['track']} | {t['artist_id']} | {t['popularity']} |" for i, t in enumerate(profile.top_preview, 1)
    )
    return {
        "dagster/row_count": profile.tracks,
        "dagster/uri": uri,
        "rewritten": True,
        "published": published,
        "artists": profile.outcomes,
        "artists_fetched": profile.fetched,
        "artists_new": profile.fetched_new,
        "artists_removed": profile.removed_artists,
        "artists_not_found": profile.not_found,
        "artists_quarantined": profile.quarantined.count,
        "artists_without_list": len(profile.pending_new),
        "artists_not_fetched_cap": profile.unfetched,
        "tracks": profile.tracks,
        "mean_popularity": profile.mean_popularity,
        "top_tracks_preview": MetadataValue.md(
            f"| # | track | artist | popularity |\n|---|---|---|---|\n{preview}" if preview else "no tracks"
        ),
    }


def _stale_share(merge: PartitionMerge, profile, attention: dict | None) -> dict:
    """The estimated share of the market's stale lists now, each pair from its own change rate; a listed artist
    without a list counts as stale. Weighted: by where readers look (spotify/freshness.py)."""
    prior = freshness.pooled_prior(merge.states)
    missing = [freshness.PairState(a, merge.market, None, freshness.History()) for a in profile.pending_new]
    freshness.apply_attention([*merge.states, *missing], attention)
    share = freshness.estimated_stale_share([*merge.states, *missing], time.time(), prior)
    return {
        "stale_share_estimated": round(share.unweighted, 4),
        "stale_share_weighted_estimated": round(share.weighted, 4),
        "change_rate_prior_per_day": round(prior.rate, 5),
        "change_rate_prior_days": round(prior.days, 2),
    }


def _run_tags(stats: dict, wall_s: float) -> dict[str, str]:
    """The run's Spotify numbers: on the run, not copied onto every partition."""
    names = ("requests", "status_429", "status_5xx", "retries", "token_requests", "quarantined")
    return {f"toptracks/spotify_{name}": str(int(stats.get(name, 0))) for name in names} | {
        "toptracks/spotify_seconds": f"{wall_s:.1f}"
    }
