"""Unit tests of spotify/freshness.py, of the history PartitionMerge writes, and of the adaptive refresh plan.

Proven here: a stored History is read back only when well-formed; the Cho & Garcia-Molina estimator recovers a
known Poisson rate from 1-day polls (where the naive count underestimates it); list changes are what a reader
sees; `choose` orders new, then bound, then gain (or age) pairs and returns exactly the budget; the expected and
estimated stale shares behave as the model says; a merge counts refetches and changes; plan_run (adaptive)
spends exactly `pairs`, new artists first.
"""

from __future__ import annotations

import io
import json
import random
from datetime import datetime, timezone

import pytest

from toptracks_dagster.spotify import freshness as f
from toptracks_dagster.spotify.client import TopTracksOutcome
from toptracks_dagster.spotify.freshness import History, PairState
from toptracks_dagster.spotify.raw import PartitionMerge, outcome_from_record
from toptracks_dagster.spotify.refresh import RefreshConfig, plan_run

A, B, C, D = (c * 22 for c in "ABCD")
T0, T1 = "2026-01-01T00:00:00.000Z", "2026-01-03T12:00:00.000Z"  # 2.5 days apart


def tracks(*pairs: tuple[str, int]) -> list[dict]:
    return [{"id": i, "popularity": p} for i, p in pairs]


@pytest.mark.parametrize(
    "value",
    [
        None,
        [1, 0, 1.0],
        {"polls": -1},
        {"polls": 2, "changes": 3},
        {"polls": 2, "changes": -1},
        {"polls": 2, "observed_days": float("nan")},
        {"polls": 2, "observed_days": float("inf")},
        {"polls": 2, "observed_days": -0.5},
        {"polls": "many"},
        {"polls": 2, "observed_days": "two"},
        {"polls": None},
    ],
)
def test_from_json_refuses_malformed_values_with_an_empty_history(value):
    assert History.from_json(value) == History()


def test_history_round_trips_through_json():
    history = History(7, 3, 12.25)
    assert History.from_json(json.loads(json.dumps(history.to_json()))) == history


def test_after_ignores_non_positive_days_and_otherwise_counts_the_refetch():
    history = History(2, 1, 3.0)
    assert history.after(0, True) == history and history.after(-1.0, True) == history
    assert history.after(1.5, True) == History(3, 2, 4.5)
    assert history.after(1.5, False) == History(3, 1, 4.5)


def poisson_history(rate: float, polls: int, seed: int) -> History:
    rng, history, now = random.Random(seed), History(), 0.0
    next_change = rng.expovariate(rate)
    for _ in range(polls):
        now += 1.0
        changed = next_change <= now
        while next_change <= now:
            next_change += rng.expovariate(rate)
        history = history.after(1.0, changed)
    return history


@pytest.mark.parametrize("prior", [f.Prior(0.01, 7.0), f.Prior(5.0, 7.0), f.Prior(0.05, 30.0)])
def test_change_rate_recovers_a_poisson_rate_better_than_the_naive_count(prior):
    rate = 0.5
    history = poisson_history(rate, 400, seed=0)
    estimate = f.change_rate(history, prior)
    naive = history.changes / history.observed_days
    assert abs(estimate - rate) <= 0.15 * rate
    assert naive < rate and abs(estimate - rate) < abs(naive - rate)


def test_change_rate_without_history_is_the_prior():
    assert f.change_rate(History(), f.Prior(0.123, 7.0)) == pytest.approx(0.123)


def state(artist="A", market="US", fetched_at=None, history=None, popularity=None) -> PairState:
    return PairState(artist, market, fetched_at, history or History(), popularity)


def test_pooled_prior_is_the_default_until_enough_days_of_history():
    short = [state(history=History(10, 9, 10.0)), state(history=History(10, 9, 19.0))]
    assert f.pooled_prior(short) == f.DEFAULT_PRIOR


def test_pooled_prior_has_the_pooled_rate_and_is_weak_when_rates_spread_and_strong_when_they_do_not():
    rng = random.Random(3)
    alike = [state(history=poisson_history(0.2, 60, seed=i)) for i in range(200)]
    spread = [state(history=poisson_history(rng.choice([0.02, 0.8]), 60, seed=i)) for i in range(200)]
    same, mixed = f.pooled_prior(alike), f.pooled_prior(spread)
    changes = sum(s.history.effective_changes() for s in alike)
    assert same.rate == pytest.approx(changes / sum(s.history.observed_days for s in alike))
    assert same.days == f.PRIOR_DAYS_RANGE[1] or same.days > 100  # Poisson noise only: the pooled rate is best
    assert mixed.days < 5  # quiet and busy lists: each pair's own history decides
    assert f.PRIOR_DAYS_RANGE[0] <= mixed.days


def test_list_changed_is_what_a_reader_sees():
    before = tracks(("x", 50), ("y", 40))
    assert f.list_changed(before, tracks(("y", 40), ("x", 50)), 5)  # reordered
    assert not f.list_changed(before, tracks(("x", 55), ("y", 35)), 5)  # moved by exactly the threshold
    assert f.list_changed(before, tracks(("x", 56), ("y", 40)), 5)  # by threshold + 1
    assert not f.list_changed(None, [], 5)
    assert f.list_changed(before, before[:1], 5)  # shorter


def outcome(artist, requested_at, status, listed=None, history=None) -> TopTracksOutcome:
    return TopTracksOutcome(artist, "US", requested_at, status, listed, history=history)


def test_next_history_starts_empty_without_a_usable_previous_outcome():
    now = outcome(A, T1, 200, tracks(("x", 1)))
    assert f.next_history(None, now, 5) == History()
    quarantined = outcome(A, T0, 500, None, history={"polls": 4, "changes": 1, "observed_days": 4.0})
    assert f.next_history(quarantined, now, 5) == History()


def test_next_history_counts_a_200_to_404_transition_over_the_requested_at_gap():
    previous = outcome(A, T0, 200, tracks(("x", 1)), history={"polls": 4, "changes": 1, "observed_days": 4.0})
    assert f.next_history(previous, outcome(A, T1, 404), 5) == History(5, 2, 6.5)
    same = outcome(A, T1, 200, tracks(("x", 1)))
    assert f.next_history(previous, same, 5) == History(5, 1, 6.5)


def test_attention_grows_tenfold_every_decade_and_defaults_unknown_popularity():
    assert f.attention(60 + f.ATTENTION_DECADE) / f.attention(60) == pytest.approx(10.0)
    assert f.attention(0) == 1.0
    assert f.attention(None) == f.attention(f.UNKNOWN_POPULARITY)


NOW = 1_800_000_000.0


def aged(artist, days, history=None, popularity=None) -> PairState:
    return state(artist, fetched_at=NOW - days * f.DAY_S, history=history, popularity=popularity)


def pick(states, count, policy="adaptive", max_age=7.0):
    return [s.artist_id for s in f.choose(states, count, NOW, max_age, 1 / 24, policy, f.DEFAULT_PRIOR)]


def test_choose_orders_new_then_bound_then_gain_or_age():
    hot = aged("hot", 2.0, History(100, 60, 100.0), popularity=90)  # high rate, high attention
    cold = aged("cold", 2.0, History(100, 0, 100.0), popularity=10)
    older_cold = aged("older_cold", 3.0, History(100, 0, 100.0), popularity=10)
    bound_old, bound = aged("bound_old", 9.0), aged("bound", 6.99)  # age + interval >= 7 days
    new1, new2 = state("new1", popularity=0), state("new2")
    states = [cold, older_cold, hot, bound, new1, bound_old, new2]
    assert pick(states, 7) == ["new1", "new2", "bound_old", "bound", "hot", "older_cold", "cold"]
    assert pick(states, 7, "uniform") == [
        "new1",
        "new2",
        "bound_old",
        "bound",
        "older_cold",
        "cold",
        "hot",
    ]  # ties: input order
    assert pick([cold, hot], 1) == ["hot"]


def test_the_attention_column_outweighs_popularity_and_an_artist_without_a_value_gets_the_median():
    loud, quiet, unknown = (
        aged(a, 2.0, History(20, 4, 20.0), popularity=p) for a, p in [("loud", 90), ("quiet", 10), ("x", 50)]
    )
    assert pick([loud, quiet], 1) == ["loud"]
    f.apply_attention([loud, quiet, unknown], {"loud": 1.0, "quiet": 5000.0, "other": 3.0})
    assert pick([loud, quiet], 1) == ["quiet"]  # the column says readers look at `quiet`
    assert (loud.weight, quiet.weight, unknown.weight) == (1.0, 5000.0, 3.0)
    f.apply_attention([loud], None)  # no column: nothing changes
    assert loud.weight == 1.0


def test_pairs_of_no_attention_share_spare_budget_oldest_first_and_score_no_stale_share():
    states = [aged(f"z{i}", 1.0 + i, History(10, 5, 10.0)) for i in range(4)]
    f.apply_attention(states, {s.artist_id: 0.0 for s in states})
    assert pick(states, 2) == ["z3", "z2"]  # every gain is 0: the oldest, not the lowest ids every hour
    assert f.gain(1.0, 0.5, -3.0) == 0.0  # a list stamped in the future gains nothing
    assert f.expected_stale_share([(0.0, 0.1)] * 3, 1.0, 3, 7.0, "adaptive") == 0.0


@pytest.mark.parametrize("count", [-1, 0, 1, 3, 10])
def test_choose_returns_exactly_the_budget(count):
    states = [aged(f"a{i}", i + 0.5) for i in range(5)]
    assert len(pick(states, count)) == max(0, min(count, 5))


@pytest.mark.parametrize("policy", ["adaptive", "uniform"])
def test_after_a_first_load_hourly_runs_keep_every_pair_within_the_bound(policy):
    """A first load fetches every list at once; runs just big enough for the bound must spread the refreshes
    over the days before it, not meet every list at the bound together."""
    bound, capacity = 2.0, 3  # 96 pairs, 48 runs to the bound, 3 pairs a run: 144 refreshes for 96 pairs
    states = [state(f"a{i:02}", fetched_at=NOW, popularity=i) for i in range(96)]
    states[0].history = History(40, 40, 40.0)  # one busy pair the adaptive policy prefers
    worst = 0.0
    for run in range(24 * 6):
        now = NOW + run * f.DAY_S / 24
        for chosen in f.choose(states, capacity, now, bound, 1 / 24, policy, f.DEFAULT_PRIOR):
            chosen.fetched_at = now
        worst = max(worst, max((now - s.fetched_at) / f.DAY_S for s in states))
    assert worst <= bound


def test_expected_stale_share_below_one_refresh_per_bound_is_the_rotation_for_both_policies():
    same = [(1.0, 0.1)] * 10
    uniform = f.expected_stale_share(same, 0.1, 1000, 7.0, "uniform")
    assert f.expected_stale_share(same, 0.1, 1000, 7.0, "adaptive") == pytest.approx(uniform)
    assert f.expected_stale_share(same, 0, 1000, 7.0, "uniform") == 1.0


def test_plan_sample_keeps_the_known_share_and_draws_the_unknown_from_the_model():
    known = [aged(f"k{i}", 1.0, History(30, 3, 30.0), popularity=70) for i in range(100)]
    sample = f.plan_sample(known, f.DEFAULT_PRIOR, total_pairs=400, size=200)
    assert len(sample) == 200
    from_known = [s for s in sample if s == (f.attention(70), f.change_rate(History(30, 3, 30.0), f.DEFAULT_PRIOR))]
    assert len(from_known) == 50  # a quarter of the catalogue is stored
    drawn = [s for s in sample if s not in from_known]
    assert len({w for w, _ in drawn}) > 20 and len({r for _, r in drawn}) > 100  # spread, not one value
    assert f.plan_sample([], f.DEFAULT_PRIOR, total_pairs=10) and len(f.plan_sample([], f.DEFAULT_PRIOR, 10)) == 10


def test_expected_stale_share_adaptive_equals_uniform_for_identical_pairs():
    same = [(1.0, 0.2)] * 50
    for budget in (5.0, 20.0):
        adaptive = f.expected_stale_share(same, budget, 50, 1e4, "adaptive")
        assert adaptive == pytest.approx(f.expected_stale_share(same, budget, 50, 1e4, "uniform"), abs=1e-3)


def test_expected_stale_share_adaptive_beats_uniform_and_more_budget_helps_both():
    spread = [(10.0 ** (i % 3), 10.0 ** (-2 + (i // 3) % 3)) for i in range(90)]  # weights 1..100, rates .01..1
    for policy in ("adaptive", "uniform"):
        shares = [f.expected_stale_share(spread, b, 90, 30.0, policy) for b in (5.0, 20.0, 40.0)]
        assert shares[0] > shares[1] > shares[2]
    for budget in (5.0, 20.0, 40.0):
        adaptive = f.expected_stale_share(spread, budget, 90, 30.0, "adaptive")
        assert adaptive < f.expected_stale_share(spread, budget, 90, 30.0, "uniform")


def test_estimated_stale_share_counts_new_pairs_stale_and_fresh_ones_not():
    new, fresh = state("new"), state("fresh", fetched_at=NOW, history=History(10, 10, 10.0), popularity=100)
    share = f.estimated_stale_share([new, fresh], NOW, f.DEFAULT_PRIOR)
    assert (share.unweighted, share.pairs) == (0.5, 2)
    assert share.weighted == pytest.approx(f.attention(None) / (f.attention(None) + f.attention(100)))
    busy = state(fetched_at=NOW - 3 * f.DAY_S, history=History(3, 3, 3.0))
    old = f.estimated_stale_share([busy], NOW, f.DEFAULT_PRIOR)
    assert 0.5 < old.unweighted < 1.0
    assert f.estimated_stale_share([], NOW, f.DEFAULT_PRIOR) == f.StaleShare(0.0, 0.0, 0)


def merged(previous, pushed, ids) -> tuple[PartitionMerge, dict[str, dict]]:
    stream = io.StringIO()
    merge = PartitionMerge(stream, "US", ids, previous, {}, planned=len(pushed), popularity_change=5)
    for each in pushed:
        merge.push(each)
    merge.finish()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    return merge, {r["artist_id"]: r for r in records if r["record"] == "outcome"}


def test_partition_merge_counts_refetches_and_changes_in_each_history():
    ids = [A, B, C]
    first = [outcome(A, T0, 200, tracks(("x", 50))), outcome(B, T0, 200, tracks(("y", 50))), outcome(C, T0, 404)]
    _, stored = merged((), first, ids)
    assert all(History.from_json(r["history"]) == History() for r in stored.values())
    lines = io.StringIO()
    for artist in ids:
        lines.write(json.dumps(stored[artist]) + "\n")
    previous = [(outcome_from_record(json.loads(line)), line) for line in lines.getvalue().splitlines()]
    again = [outcome(A, T1, 200, tracks(("z", 50))), outcome(B, T1, 200, tracks(("y", 53)))]  # C: not refetched
    merge, stored = merged(previous, again, ids)
    assert History.from_json(stored[A]["history"]) == History(1, 1, 2.5)
    assert History.from_json(stored[B]["history"]) == History(1, 0, 2.5)
    assert History.from_json(stored[C]["history"]) == History()  # kept as it was
    assert [(s.artist_id, s.history) for s in merge.states] == [
        (A, History(1, 1, 2.5)),
        (B, History(1, 0, 2.5)),
        (C, History()),
    ]


def test_plan_run_adaptive_spends_exactly_the_pairs_new_artists_first():
    markets, listed = ["US", "GB"], [A, B, C, D]
    now = datetime.now(timezone.utc).timestamp()
    stored = {m: {a: T0 for a in (A, B, C)} for m in markets}  # D is new in both markets
    states = {
        m: [PairState(a, m, now - (i + 1) * f.DAY_S, History(10, i, 10.0), 60) for i, a in enumerate((A, B, C))]
        for m in markets
    }
    for k in (1, 2, 3, 5, 8):
        plans = plan_run(RefreshConfig(mode="adaptive", pairs=k), markets, listed, stored, datetime.now(), states)
        pairs = [(a, p.market) for p in plans for a in p.fetch]
        assert len(pairs) == k and len(set(pairs)) == k
        assert {(D, m) for m in markets[:k]} <= set(pairs)  # new pairs before any stored one
        assert all(p.new == 1 and p.removed == 0 for p in plans)
    plans = plan_run(RefreshConfig(mode="adaptive", pairs=3), markets, listed, stored, datetime.now(), states)
    # After the new pairs, the stored pair of highest gain: the oldest, most changing list (C, first market first).
    assert {(a, p.market) for p in plans for a in p.fetch} == {(D, "US"), (D, "GB"), (C, "US")}
    # With the artists table's attention column, the artist readers look at goes first, whatever its list's gain.
    weighted = plan_run(
        RefreshConfig(mode="adaptive", pairs=3),
        markets,
        listed,
        stored,
        datetime.now(),
        states,
        attention={A: 1e6, B: 1.0, C: 1.0},
    )
    assert {(a, p.market) for p in weighted for a in p.fetch} == {(D, "US"), (D, "GB"), (A, "US")}
