"""Where a request budget goes: each pair's change rate, learnt from its own refetches; where readers look; and the
refresh order that keeps the fewest stale lists in front of readers.

Model (Cho & Garcia-Molina, ACM TODS 2003 and TOIT 2003): a pair's list changes as a Poisson process of rate λ, and
a reader meets it with weight w. A pair refreshed at age τ days gains, in attention-weighted fresh time,
(w/λ)·(1 − (1 + λτ)·e^(−λτ)): the derivative of Cho's freshness F(λ, f) = (f/λ)(1 − e^(−λ/f)) at f = 1/τ. The
budget is spent best when every refreshed pair is refreshed at the same marginal gain, so each run refreshes the
pairs of highest gain first (an index policy, as in Azar et al. 2018); new artists come before all of them, and
lists about to pass the hard bound right after them.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Literal

from toptracks_dagster.common import parse_iso

DAY_S = 86400.0
Policy = Literal["adaptive", "uniform"]
PRIOR_DAYS_PER_CHANGE = 20.0
MIN_POOLED_DAYS = 30.0
# Spotify's popularity grows with the logarithm of plays; a reader's attention is taken to grow tenfold every
# ATTENTION_DECADE points of the artist's most popular track in the market.
ATTENTION_DECADE = 25.0
UNKNOWN_POPULARITY = 50  # an artist without a list yet (new, 404 or quarantined)
# The share of each coming run's pairs the bound counts on: other runs (the sensor's, manual ones) may spend part
# of a day's budget, and the bound must hold anyway.
BOUND_MARGIN = 0.8
PLAN_SAMPLE = 2000  # pairs `expected_stale_share` solves for (a uniform sample of the catalogue)


@dataclass(slots=True)
class History:
    """What the estimator keeps per pair: refetches compared with the list before, how many showed a change to
    readers, and the time those refetches covered."""

    polls: int = 0
    changes: int = 0
    observed_days: float = 0.0

    @classmethod
    def from_json(cls, value) -> History:
        if not isinstance(value, dict):
            return cls()
        try:
            polls, changes = int(value.get("polls", 0)), int(value.get("changes", 0))
            days = float(value.get("observed_days", 0.0))
        except (TypeError, ValueError):
            return cls()
        if polls < 0 or not 0 <= changes <= polls or not math.isfinite(days) or days < 0:
            return cls()
        return cls(polls, changes, days)

    def to_json(self) -> dict:
        return {"polls": self.polls, "changes": self.changes, "observed_days": round(self.observed_days, 6)}

    def after(self, days: float, changed: bool) -> History:
        """The history once a refetch `days` after the last one saw (or did not see) a change."""
        if days <= 0:
            return self
        return History(self.polls + 1, self.changes + int(changed), self.observed_days + days)

    def effective_changes(self) -> float:
        """Cho & Garcia-Molina's bias-reduced count of changes: a refetch that saw a change may hide several."""
        n, x = self.polls, self.changes
        return -n * math.log((n - x + 0.5) / (n + 0.5)) if n else 0.0


def list_changed(before: list | None, after: list | None, popularity_change: int) -> bool:
    """What a reader of the table would see: another ranked list of track ids, or a track's popularity moved by
    more than `popularity_change` points."""
    before, after = before or [], after or []
    if [_id(t) for t in before] != [_id(t) for t in after]:
        return True
    return any(abs(_popularity(a) - _popularity(b)) > popularity_change for a, b in zip(before, after, strict=True))


def _id(track) -> str | None:
    return track.get("id") if isinstance(track, dict) else None


def _popularity(track) -> int:
    value = track.get("popularity") if isinstance(track, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def next_history(previous, outcome, popularity_change: int) -> History:
    """The history after `outcome` (a usable answer) replaced `previous` (None or an earlier outcome)."""
    if previous is None or previous.status not in (200, 404):
        return History()
    before = History.from_json(getattr(previous, "history", None))
    try:
        days = (parse_iso(outcome.requested_at) - parse_iso(previous.requested_at)).total_seconds() / DAY_S
    except (TypeError, ValueError):
        return before
    changed = previous.status != outcome.status or list_changed(previous.tracks, outcome.tracks, popularity_change)
    return before.after(days, changed)


def max_popularity(tracks) -> int | None:
    values = [_popularity(t) for t in tracks or [] if isinstance(t, dict)]
    return max(values) if values else None


def attention(popularity: int | None) -> float:
    """A reader's attention to a pair, from the popularity of the artist's most popular track in the market."""
    return 10 ** ((UNKNOWN_POPULARITY if popularity is None else popularity) / ATTENTION_DECADE)


@dataclass(slots=True)
class PairState:
    """One (artist, market) pair as the planner sees it; `fetched_at` None: no list yet (a new artist)."""

    artist_id: str
    market: str
    fetched_at: float | None  # epoch seconds
    history: History
    popularity: int | None = None
    weight: float | None = None  # attention from the artists table's column, when one is named


def weight_of(state: PairState) -> float:
    return state.weight if state.weight is not None else attention(state.popularity)


def apply_attention(states: Iterable[PairState], attention_by_artist: dict | None) -> None:
    """Weigh pairs by the artists table's attention column (artist id -> value); an artist without a value gets
    the median one. None: popularity decides."""
    if attention_by_artist is None:
        return
    median = statistics.median(attention_by_artist.values()) if attention_by_artist else 1.0
    for state in states:
        state.weight = float(attention_by_artist.get(state.artist_id, median))


@dataclass(frozen=True)
class Prior:
    """What a pair is assumed to change at before its own refetches say: a Gamma prior of mean `rate` changes a
    day, worth `days` of the pair's own observation."""

    rate: float
    days: float


# Before the market has MIN_POOLED_DAYS of history: one change in PRIOR_DAYS_PER_CHANGE days, worth a week (about
# the strength of a Gamma fitted to rates spread log-normally with σ = 1).
DEFAULT_PRIOR = Prior(1 / PRIOR_DAYS_PER_CHANGE, 7.0)
PRIOR_DAYS_RANGE = (0.5, 365.0)


def pooled_prior(states: Iterable[PairState]) -> Prior:
    """The prior fitted to the market's pairs (empirical Bayes): the pooled rate, and a strength from how much the
    pairs' own rates spread beyond Poisson noise (method of moments, as DerSimonian & Laird). Pairs that all change
    alike get a strong prior; a catalogue of quiet and busy lists a weak one, so each pair's history decides."""
    pairs = changes = days = spread = days_squared = 0.0
    for state in states:
        t = state.history.observed_days
        if t <= 0:
            continue
        x = state.history.effective_changes()
        pairs += 1
        changes += x
        days += t
        spread += x * x / t
        days_squared += t * t
    if days < MIN_POOLED_DAYS:
        return DEFAULT_PRIOR
    rate = max(changes, 1.0) / days
    # Q = Σ tᵢ(rᵢ − rate)², E[Q] = (k − 1)·rate + variance·(Σt − Σt²/Σt) for Poisson counts around Gamma rates.
    q = spread - 2 * rate * changes + rate * rate * days
    variance = (q - (pairs - 1) * rate) / max(days - days_squared / days, 1e-9)
    low, high = PRIOR_DAYS_RANGE
    return Prior(rate, high if variance <= 0 else min(high, max(low, rate / variance)))


def change_rate(history: History, prior: Prior) -> float:
    """Changes per day: the posterior mean of Cho & Garcia-Molina's bias-reduced count under `prior`, so a pair
    with no history gets the prior and a long history its own rate."""
    return (history.effective_changes() + prior.rate * prior.days) / (history.observed_days + prior.days)


def gain(weight: float, rate: float, age_days: float) -> float:
    """Attention-weighted fresh time gained by refreshing now, at list age `age_days` (the index)."""
    age_days = max(age_days, 0.0)  # a list stamped in the future is as fresh as can be
    x = rate * age_days
    if x < 1e-6:
        return weight * rate * age_days * age_days / 2
    return weight / rate * -math.expm1(math.log1p(x) - x)


def stale_probability(rate: float, age_days: float) -> float:
    return -math.expm1(-rate * max(age_days, 0.0))


def choose(
    states: Iterable[PairState],
    count: int,
    now: float,
    max_age_days: float,
    interval_days: float,
    policy: Policy,
    prior: Prior | dict[str, Prior],
    capacity: float | None = None,
) -> list[PairState]:
    """The `count` pairs to refresh now, runs coming every `interval_days` with `capacity` pairs each (default
    `count`): new pairs first (in the order given), then as many of the oldest as the bound `max_age_days` needs
    now, then by gain (adaptive; `prior`: one, or one per market) or by age (uniform).

    The bound is kept by earliest deadline first: if the pairs due by the j-th next run outnumber what j runs can
    refresh, the excess is refreshed now. Looking only at the pairs about to pass the bound would let a first load,
    whose lists all share one fetch time, pass it all at once a bound later."""
    if count <= 0:
        return []
    states = states if isinstance(states, list) else list(states)
    new = [s for s in states if s.fetched_at is None][:count]
    room = count - len(new)
    if room <= 0:
        return new
    horizon = max(1, math.ceil(max_age_days / interval_days))
    due = [0] * (horizon + 1)  # pairs whose last allowed run is the j-th from now (0: this one)
    known = []
    for order, state in enumerate(states):
        if state.fetched_at is not None:
            age = (now - state.fetched_at) / DAY_S
            due[min(horizon, max(0, math.floor((max_age_days - age) / interval_days - 1e-9)))] += 1
            known.append((age, order, state))
    per_run, forced, total = BOUND_MARGIN * (capacity or count), 0, 0
    for j, pairs in enumerate(due):
        total += pairs
        forced = max(forced, math.ceil(total - j * per_run))
    oldest = heapq.nsmallest(min(room, forced), known, key=lambda e: (-e[0], e[1]))
    taken = {e[1] for e in oldest}
    rest = (e for e in known if e[1] not in taken)
    priors = (lambda state: prior[state.market]) if isinstance(prior, dict) else (lambda state: prior)
    if policy == "uniform":
        ranked = heapq.nsmallest(room - len(oldest), rest, key=lambda e: (-e[0], e[1]))
    else:
        ranked = heapq.nsmallest(
            room - len(oldest),
            rest,
            key=lambda e: (-gain(weight_of(e[2]), change_rate(e[2].history, priors(e[2])), e[0]), -e[0], e[1]),
        )
    return new + [e[2] for e in oldest] + [e[2] for e in ranked]


@dataclass
class StaleShare:
    """The estimated share of stale lists now: each pair stale with probability 1 − e^(−λ·age)."""

    unweighted: float
    weighted: float
    pairs: int


def estimated_stale_share(states: Iterable[PairState], now: float, prior: Prior) -> StaleShare:
    total = weighted = weights = 0.0
    pairs = 0
    for state in states:
        pairs += 1
        weight = weight_of(state)
        stale = (
            1.0
            if state.fetched_at is None
            else stale_probability(change_rate(state.history, prior), (now - state.fetched_at) / DAY_S)
        )
        total += stale
        weighted += weight * stale
        weights += weight
    if not pairs:
        return StaleShare(0.0, 0.0, 0)
    return StaleShare(total / pairs, weighted / weights if weights else 0.0, pairs)


# ------------------------------------------------------------------------------------------ expected figures
def _stale_at_interval(rate: float, interval_days: float) -> float:
    """Time-averaged stale share of a pair refreshed every `interval_days`: 1 − F(λ, 1/interval)."""
    x = rate * interval_days
    return 1.0 - (-math.expm1(-x) / x if x > 1e-9 else 1.0)


def _interval_at(weight: float, rate: float, level: float, max_age_days: float) -> float:
    """The refresh interval whose marginal gain is `level`, at most `max_age_days` (bisection: gain grows with τ)."""
    if gain(weight, rate, max_age_days) <= level:
        return max_age_days
    low, high = 0.0, max_age_days
    for _ in range(50):
        middle = (low + high) / 2
        if gain(weight, rate, middle) < level:
            low = middle
        else:
            high = middle
    return max(high, 1e-6)


def expected_stale_share(
    pairs: list[tuple[float, float]], budget_per_day: float, total_pairs: int, max_age_days: float, policy: Policy
) -> float:
    """Attention-weighted time-averaged stale share that `policy` keeps in steady state for (weight, rate) pairs,
    a sample of `total_pairs`, at `budget_per_day` refreshes a day. Adaptive: Cho & Garcia-Molina's optimal
    allocation with every interval at most `max_age_days`, which the index policy approximates run by run."""
    weights = sum(w for w, _ in pairs)
    if not pairs or weights <= 0:
        return 0.0
    per_pair_budget = budget_per_day * len(pairs) / max(total_pairs, 1)  # the sample's share of the budget
    if policy == "uniform":
        if per_pair_budget <= 0:
            return 1.0
        interval = len(pairs) / per_pair_budget
        return sum(w * _stale_at_interval(r, interval) for w, r in pairs) / weights
    # Bisection on the common marginal gain: a higher level means longer intervals, fewer refreshes.
    low, high = 0.0, max(gain(w, r, max_age_days) for w, r in pairs)
    if per_pair_budget <= 0:
        return 1.0
    if len(pairs) / max_age_days > BOUND_MARGIN * per_pair_budget:  # the bound takes it all: the rotation
        intervals = [len(pairs) / per_pair_budget] * len(pairs)
    else:
        for _ in range(40):
            level = (low + high) / 2
            refreshes = sum(1 / _interval_at(w, r, level, max_age_days) for w, r in pairs)
            low, high = (level, high) if refreshes > per_pair_budget else (low, level)
        intervals = [_interval_at(w, r, high, max_age_days) for w, r in pairs]
    return sum(w * _stale_at_interval(r, t) for (w, r), t in zip(pairs, intervals, strict=True)) / weights


def plan_sample(
    states: list[PairState], prior: Prior, total_pairs: int, size: int = PLAN_SAMPLE
) -> list[tuple[float, float]]:
    """(attention, rate) of a uniform sample of the catalogue's `total_pairs`, stored pairs as they are known. What
    is not known yet is drawn from the model the planner assumes: a rate without history from the prior (a Gamma),
    the attention of a pair without a list from a uniformly drawn rank of a Zipf 0.8 catalogue (popularity
    100 − 20·log10(rank), as in benchmarks/freshness_simulation.py)."""
    rng = random.Random(0)
    total = max(total_pairs, len(states), 1)
    known = min(len(states), round(size * len(states) / total))
    chosen = rng.sample(states, known) + [None] * min(total - len(states), size - known)
    sample = []
    for state in chosen:
        if state is not None and (state.weight is not None or state.popularity is not None):
            weight = weight_of(state)
        else:
            weight = attention(max(0.0, 100 - 20 * math.log10(rng.randint(1, total))))
        if state is not None and state.history.observed_days > 0:
            rate = change_rate(state.history, prior)
        else:
            rate = max(rng.gammavariate(prior.rate * prior.days, 1 / prior.days), 1e-6)
        sample.append((weight, rate))
    return sample


def epoch(moment: str | datetime | None) -> float | None:
    if moment is None:
        return None
    try:
        return (parse_iso(moment) if isinstance(moment, str) else moment).timestamp()
    except (TypeError, ValueError):
        return 0.0  # unreadable: as old as can be, so it is refreshed first
