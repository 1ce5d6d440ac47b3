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
from toptracks_dagster.spotify.budget import (
    ROLLING_INTERVAL_S,
    BudgetLedger,
    BudgetLedgerUnreadable,
    RotationPlan,
    iso,
    utc_now,
)
from toptracks_dagster.spotify.checks import RAW_CHECK_SPECS, evaluate_freshness_bound, evaluate_raw_checks
from toptracks_dagster.spotify.client import FATAL_ERRORS, SpotifyBudgetExhausted, SpotifyError, SpotifyUnreachable
from toptracks_dagster.spotify.profile import MarketProfile
from toptracks_dagster.spotify.raw import (
    PartitionMerge,
    RawPartition,
    RawPartitionIncomplete,
    raw_partition_key,
)
from toptracks_dagster.spotify.refresh import RefreshConfig, RefreshPlanError, fetch_order, plan_run
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
        "due = new artists and lists fetched `max_age_hours` (20) or more ago; stalest = the `limit` oldest "
        "lists, new artists first; artists = a given list) and merges them into "
        "the partition: the other artists' outcomes are kept, artists gone from `artist_ids` dropped (no "
        "request). The merged partition is written aside and published only if its blocking checks pass; a "
        "market with nothing fetched, added or removed keeps its partition as it is (not rewritten). "
        "With TOPTRACKS_REQUESTS_PER_DAY every run is capped at what is left of the UTC day's budget (counted in "
        "a ledger in raw storage, retries and 404s included); a fetch stopped by the cap publishes what it got."
    ),
)
def raw_top_tracks(
    context: AssetExecutionContext, config: RefreshConfig, spotify: SpotifyResource, raw_storage: RawStorage
):
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
        plans = plan_run(
            config, markets, listed, {m: previous[m].requested_at if previous[m] else None for m in markets}
        )
    except RefreshPlanError as error:
        raise Failure(description=f"refresh config: {error}", allow_retries=False) from None
    pairs = fetch_order(plans)
    for plan in plans:
        mode = config.mode if previous[plan.market] or config.pairs else "full"
        context.log.info(f"{plan.market}: {plan.describe(mode)}")
    budget = _Budget.open(context, raw_storage, config, listed)
    capped_before_start = budget.cap == 0 and bool(pairs)
    if capped_before_start:
        pairs = []  # nothing left today: merge only (artists that left the list are still dropped)

    # A market whose plan fetches, adds and removes nothing keeps its partition byte for byte: it is streamed
    # once for the checks' numbers, not rewritten (cost follows the change, for raw storage writes too).
    unchanged = {
        plan.market
        for plan in plans
        if previous[plan.market] is not None and not plan.fetch and not plan.new and not plan.removed
    }
    with ExitStack() as cleanup:
        merges: dict[str, PartitionMerge] = {}
        pending = {}
        indexed = {}  # unchanged markets whose index has the profile: nothing to stream at all
        for plan in plans:
            partition = previous[plan.market]
            if plan.market in unchanged and partition.summary is not None:
                indexed[plan.market] = MarketProfile.of_unchanged(
                    plan.market, partition.summary, partition.requested_at
                )
                continue
            if plan.market in unchanged:
                stream = None  # profiled for the checks, not rewritten
            else:
                stream, pending[plan.market] = cleanup.enter_context(
                    raw_storage.write_aside(raw_partition_key(plan.market))
                )
            request = {
                "api_base_url": spotify.api_base_url,
                "refresh": {
                    "mode": config.mode,
                    "reason": config.reason,
                    "planned": len(plan.fetch),
                    "run_id": context.run.run_id,
                },
            }
            merges[plan.market] = PartitionMerge(
                stream,
                plan.market,
                listed,
                previous[plan.market].outcomes_with_lines() if previous[plan.market] else (),
                request,
                planned=len(plan.fetch),
            )
        stats, stopped = _fetch(context, spotify, pairs, merges, budget)
        stopped = stopped or capped_before_start
        if stopped:
            for merge in merges.values():
                # Pairs the cap left unfetched keep their previous outcome: the run stands for what it fetched.
                merge.profile.unfetched = merge.profile.planned - merge.profile.fetched
                merge.profile.planned = merge.profile.fetched
        profiles = {**indexed, **{market: merge.finish() for market, merge in merges.items()}}

    now = utc_now_iso()
    checks = {}
    for plan in plans:
        market = plan.market
        profile = profiles[market]
        verify_error = None
        written = None
        try:
            if market not in unchanged:  # an unchanged partition was verified when it was opened
                written = merges[market].written(pending[market])
        except RawPartitionIncomplete as error:
            verify_error = str(error)
        base = {"market": market, "raw_object": MetadataValue.path(raw_storage.uri(raw_partition_key(market)))}
        checks[market] = evaluate_raw_checks(profile, base, verify_error, settings.check_max_404_share())
        checks[market].append(evaluate_freshness_bound(profile, base, now, budget.bound_days))
        blocked = failed_blocking(checks[market], RAW_CHECK_SPECS)
        if market in unchanged:
            # Nothing was written aside: the current partition stays, whatever its checks say now. Its index is
            # written once if it had none, so that the next unchanged run reads no partition at all.
            if market not in indexed:
                previous[market].write_index(raw_storage, profile.summary())
        elif blocked:
            pending[market].discard()
            context.log.error(
                f"{market}: not published ({', '.join(o.name for o in blocked)} failed); the previous "
                "partition stays current"
            )
        else:
            pending[market].publish()
            written.fingerprint = raw_storage.published_fingerprint(raw_partition_key(market), pending[market])
            written.write_index(raw_storage, profile.summary())
        context.add_asset_metadata(
            {
                **_metadata(
                    plan,
                    profile,
                    config,
                    published=not blocked,
                    now=now,
                    uri=raw_storage.uri(raw_partition_key(market)),
                ),
                "freshness_bound_days": budget.bound_days,
                "pairs_older_than_bound": profile.older_than(now, budget.bound_days),
                "artists_not_fetched_cap": profile.unfetched,
                "partition_rewritten": market not in unchanged,
            },
            partition_key=market,
        )
    context.log.info(
        _stats_line(stats, time.monotonic() - started) + (" (stopped by the request cap)" if stopped else "")
    )
    yield MaterializeResult(metadata={**_run_metadata(stats, time.monotonic() - started), **budget.metadata(stopped)})
    yield from emit_check_results(context, checks)


class _Budget:
    """The run's share of TOPTRACKS_REQUESTS_PER_DAY (or of `max_requests`): reserved in the ledger before the
    first request, settled to what was sent after the last one, failures included."""

    def __init__(
        self,
        context,
        storage: RawStorage,
        cap: int | None,
        ledger: BudgetLedger | None,
        plan: RotationPlan | None,
        spent_before: int,
        bound_days: float,
    ):
        self.context, self.storage, self.cap, self.ledger = context, storage, cap, ledger
        self.plan, self.spent_before, self.bound_days = plan, spent_before, bound_days
        self.entry = f"{context.run.run_id}/{context.retry_number}"
        self.used = 0

    @classmethod
    def open(cls, context, storage: RawStorage, config: RefreshConfig, listed: list[str]) -> "_Budget":
        per_day = settings.requests_per_day()
        cap = config.max_requests or None
        if per_day is None:
            return cls(context, storage, cap, None, None, 0, settings.freshness_target_days())
        plan = RotationPlan(
            artists=len(listed),
            markets=len(country_partitions.get_partition_keys()),
            budget=per_day,
            runs_per_day=86400 // ROLLING_INTERVAL_S,
            target_days=settings.freshness_target_days(),
        )
        now = utc_now()
        try:
            ledger = BudgetLedger.load(storage)
        except BudgetLedgerUnreadable as error:
            raise Failure(description=str(error), allow_retries=False) from None
        spent = ledger.spent_on(now.date())
        left = max(0, per_day - spent)
        cap = left if cap is None else min(cap, left)
        ledger.reserve(f"{context.run.run_id}/{context.retry_number}", cap, now)
        ledger.save(storage, now)
        context.log.info(
            f"request budget: {spent} of {per_day} spent today (UTC {now.date()}); this run may send {cap}"
        )
        return cls(context, storage, cap, ledger, plan, spent, plan.bound_days)

    def settle(self, used: int) -> None:
        self.used = used
        if self.ledger is not None:
            now = utc_now()
            self.ledger.settle(self.entry, used, now)
            self.ledger.save(self.storage, now)

    def metadata(self, stopped: bool) -> dict:
        found = {
            "run_request_cap": self.cap if self.cap is not None else -1,
            "run_stopped_by_cap": stopped,
            "freshness_bound_days": self.bound_days,
        }
        if self.plan is not None:
            found.update(
                {
                    **self.plan.metadata(),
                    "budget_spent_today_before": self.spent_before,
                    "budget_spent_today_after": self.spent_before + self.used,
                    "budget_checked_at": iso(utc_now()),
                }
            )
        return found


def _fetch(
    context: AssetExecutionContext,
    spotify: SpotifyResource,
    pairs: list[tuple[str, str]],
    merges: dict[str, PartitionMerge],
    budget: _Budget,
) -> tuple[dict, bool]:
    """(client stats, stopped by the request cap). Outcomes are pushed in order until the fetch ends."""
    total = len(pairs)
    step = max(1, total // 10)
    stopped = False
    with spotify.get_client(log=context.log.warning, max_requests=budget.cap) as client:
        try:
            if pairs:
                client.check_credentials()
            for done, outcome in enumerate(client.iter_pairs(pairs), start=1):
                merges[outcome.market].push(outcome)
                if done % step == 0 or done == total:
                    context.log.info(f"{done}/{total} (artist, market) pairs fetched ({100 * done // total} %)")
        except SpotifyBudgetExhausted as error:
            stopped = True
            context.log.warning(f"{error}: the outcomes fetched so far are merged, the rest keep their lists")
        except FATAL_ERRORS + (SpotifyUnreachable,) as error:
            raise Failure(description=str(error), allow_retries=False) from None
        except SpotifyError as error:
            raise Failure(description=str(error)) from None
        finally:
            budget.settle(max(client.allowance.used, int(client.stats.snapshot()["requests"])))
        return client.stats.snapshot(), stopped


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
            f"**Most popular tracks in {plan.market}**\n\n"
            f"| # | track | artist | popularity |\n|---|---|---|---|\n{preview}"
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
    return (
        f"{int(stats['requests'])} top-tracks requests ({int(stats['status_429'])} answered 429, "
        f"{int(stats['retries'])} retries) in {wall_s:.1f} s"
    )
