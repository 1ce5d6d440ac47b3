"""What a run of `raw_top_tracks` fetches: the refresh modes and the plan per market.

full, due and changed are one rule: fetch new artists, and stored lists fetched before a cutoff (full: the run's
start, so a step retry keeps what the failed attempt fetched; due: `max_age_hours` ago; changed: none). stalest
and adaptive take new artists first, then the lists the hard bound needs now, then the oldest lists (stalest, the
uniform rotation) or those whose refresh gains readers the most fresh time (adaptive; spotify/freshness.py).
artists takes the given ids. Artists that left the list are dropped without a request. `max_requests` and the
daily budget cap a run's requests, retries included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from dagster import Config
from pydantic import Field

from toptracks_dagster.common import is_valid_spotify_id, parse_iso
from toptracks_dagster.spotify import freshness
from toptracks_dagster.spotify.freshness import PairState

RefreshMode = Literal["full", "changed", "due", "stalest", "adaptive", "artists"]


class RefreshConfig(Config):
    """Run config of `raw_top_tracks` (the launchpad shows it; the defaults are a full refresh)."""

    mode: RefreshMode = Field(
        default="full", description="full | changed | due | stalest | adaptive | artists (see the asset description)"
    )
    max_age_hours: float = Field(
        default=20.0,
        ge=0,
        description="due: a stored list fetched this many hours ago or more is fetched again (0: every list)",
    )
    limit: int = Field(default=0, ge=0, description="stalest: (artist, market) pairs to refresh per market")
    pairs: int = Field(
        default=0,
        ge=0,
        description=(
            "stalest, adaptive: (artist, market) pairs to refresh over all markets of the run together (new "
            "artists first); stalest: used instead of `limit` when above 0"
        ),
    )
    max_list_age_days: float = Field(
        default=0.0,
        ge=0,
        description="adaptive: the hard bound, every pair refreshed at least this often (0: the configured one)",
    )
    max_requests: int = Field(
        default=0,
        ge=0,
        description=(
            "Hard cap on this run's Spotify requests, retries and 404s included; 0 = none (the daily budget "
            "TOPTRACKS_REQUESTS_PER_DAY still applies)"
        ),
    )
    artist_ids: list[str] = Field(default_factory=list, description="artists: the ids to refresh")
    reason: str = Field(default="", description="Why this refresh ran; recorded in the metadata")


class RefreshPlanError(ValueError):
    """The run config asks for something that cannot be planned; the message says what."""


@dataclass
class MarketPlan:
    market: str
    fetch: list[str]  # sorted
    new: int  # listed artists the partition has no list for
    removed: int  # artists of the partition no longer listed (dropped without a request)

    def describe(self, mode: str) -> str:
        return f"{mode}: {len(self.fetch)} to fetch ({self.new} new), {self.removed} removed"


def plan_market(
    config: RefreshConfig, market: str, listed: list[str], stored: dict[str, str] | None, run_started: datetime
) -> MarketPlan:
    """`listed`: the artist list, sorted. `stored`: the partition's artist -> requested_at (None: no partition)."""
    stored = stored or {}
    listed_set = set(listed)
    new = [a for a in listed if a not in stored]
    removed = sum(1 for a in stored if a not in listed_set)
    if config.mode in ("full", "due", "changed"):
        cutoff = {
            "full": run_started,
            "due": datetime.now(timezone.utc) - timedelta(hours=config.max_age_hours),
            "changed": None,
        }[config.mode]
        fetch = [a for a in listed if a not in stored or (cutoff is not None and _fetched_before(stored[a], cutoff))]
    elif config.mode == "artists":
        bad = [a for a in config.artist_ids if not is_valid_spotify_id(a)]
        if bad:
            raise RefreshPlanError(f"not Spotify artist ids: {', '.join(repr(a)[:30] for a in bad[:5])}")
        unlisted = [a for a in config.artist_ids if a not in listed_set]
        if unlisted:
            raise RefreshPlanError(
                f"{len(unlisted)} artist id(s) are not in the artist list, e.g. {', '.join(unlisted[:5])}: "
                "add them to the artists table and materialize `artist_ids` first"
            )
        fetch = sorted(set(config.artist_ids))
    else:  # pydantic refuses other values; kept for type checkers
        raise RefreshPlanError(f"unknown mode {config.mode!r}")
    return MarketPlan(market=market, fetch=fetch, new=len(new), removed=removed)


def _fetched_before(requested_at: str, cutoff: datetime) -> bool:
    """Whether a stored list was fetched at or before `cutoff`; a list without a readable time is due."""
    try:
        return parse_iso(requested_at) <= cutoff
    except (TypeError, ValueError):
        return True


def plan_pairs(
    config: RefreshConfig,
    markets: list[str],
    listed: list[str],
    states: dict[str, list[PairState]],
    bound_days: float,
    interval_days: float,
    capacity: float | None = None,
    attention: dict | None = None,
) -> list[MarketPlan]:
    """stalest and adaptive (freshness.choose): `config.pairs` over all `markets` (stalest: or `config.limit` per
    market), new artists first in artist-id then market order; runs of `capacity` pairs (default the run's) every
    `interval_days` keep the bound. `states`: market -> what is stored of each pair; `attention`: artist id -> the
    artists table's attention column (None: popularity)."""
    policy = "uniform" if config.mode == "stalest" else "adaptive"
    count = config.pairs or (config.limit if policy == "uniform" else 0)
    if count <= 0:
        needs = "a limit (per market) or pairs (over all markets)" if policy == "uniform" else "pairs"
        raise RefreshPlanError(f"mode {config.mode!r} needs {needs} above 0")
    known = {m: {s.artist_id: s for s in states.get(m) or []} for m in markets}
    prior = {m: freshness.pooled_prior(known[m].values()) for m in markets}
    now = datetime.now(timezone.utc).timestamp()
    candidates = [known[m].get(a) or PairState(a, m, None, freshness.History()) for a in listed for m in markets]
    freshness.apply_attention(candidates, attention)
    groups = [candidates] if config.pairs else [[s for s in candidates if s.market == m] for m in markets]
    chosen = [
        state
        for group in groups
        for state in freshness.choose(group, count, now, bound_days, interval_days, policy, prior, capacity)
    ]
    listed_set = set(listed)
    return [
        MarketPlan(
            market=market,
            fetch=sorted(s.artist_id for s in chosen if s.market == market),
            new=sum(1 for a in listed if a not in known[market]),
            removed=sum(1 for a in known[market] if a not in listed_set),
        )
        for market in markets
    ]


def plan_run(
    config: RefreshConfig,
    markets: list[str],
    listed: list[str],
    stored: dict[str, dict[str, str] | None],
    run_started: datetime,
    states: dict[str, list[PairState]] | None = None,
    bound_days: float = 7.0,
    interval_days: float = 1 / 24,
    capacity: float | None = None,
    attention: dict | None = None,
) -> list[MarketPlan]:
    """One plan per market. A market without a partition is fetched in full, except by stalest and adaptive (whose
    pairs without a list come first anyway)."""
    if config.mode in ("stalest", "adaptive"):
        return plan_pairs(config, markets, listed, states or {}, bound_days, interval_days, capacity, attention)
    return [
        plan_market(
            config if stored.get(m) is not None else RefreshConfig(mode="full", reason=config.reason),
            m,
            listed,
            stored.get(m),
            run_started,
        )
        for m in markets
    ]


def fetch_order(plans: list[MarketPlan]) -> list[tuple[str, str]]:
    """(artist, market) pairs in artist-id order, so that every market's merge streams in order."""
    return sorted((artist_id, plan.market) for plan in plans for artist_id in plan.fetch)
