"""Where the request budget goes: the project's own planner (`freshness.choose`, the rolling refresh's hourly
allowance from `budget.run_allowance` / `run_pairs`) over simulated days, against the uniform rotation.

    .venv/bin/python benchmarks/freshness_simulation.py                 # 5,000 pairs, 30 days, every workload
    .venv/bin/python benchmarks/freshness_simulation.py --pairs 20000 --days 30 --out benchmarks/results/x.json

Model (Cho & Garcia-Molina): each pair's list changes as a Poisson process; a reader meets pair i with weight
w_i. The planner never sees either: it sees what a run sees, whether a refetched list differs from the stored one,
and the popularity of the artist's top track, and it learns each pair's rate from its refetches. Every change
timeline is drawn once per workload, so both policies meet the same changes. A list is stale from the first change
after its fetch to its next fetch; the figure is the attention-weighted share of stale lists, averaged over every
hourly tick. The table starts fully loaded at day 0 with no history (what a user has after the first run).

Workloads (attention Zipf 0.8 over the pairs; the popularity the planner sees is 100 − 20·log10(rank), so its
attention 10^(popularity/25) is proportional to the true weight; rates log-normal, median one change in 20 days,
σ = 1):
- independent: rates independent of attention;
- popular change more: log-rate and attention correlated (ρ = 0.7, Gaussian copula);
- noisy: popularity seen with Gaussian noise (σ = 10 points), and from day 10 on a new release makes one pair
  in ten change ten times as often (the planner must notice).

Checked on every tick, and the script exits 1 if broken: no day spends more than the budget, no pair is older
than the hard bound D after a run.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import NormalDist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toptracks_dagster.spotify import freshness  # noqa: E402
from toptracks_dagster.spotify.budget import (  # noqa: E402
    ROLLING_INTERVAL_S,
    RUNS_PER_DAY,
    RotationPlan,
    run_allowance,
    run_capacity,
    run_pairs,
)
from toptracks_dagster.spotify.freshness import DAY_S, History, PairState  # noqa: E402

START = datetime(2027, 1, 1, tzinfo=timezone.utc)
WORKLOADS = ("independent", "popular change more", "noisy")


@dataclass
class Pair:
    weight: float  # the reader's true attention
    popularity: int  # what the planner sees
    changes: list[float]  # change times, epoch seconds, sorted
    rate: float  # mean changes per day over the simulated days


def workload(name: str, n: int, days: int, seed: int) -> list[Pair]:
    rng = random.Random(seed)
    normal = NormalDist()
    pairs = []
    t0, end = START.timestamp(), START.timestamp() + days * DAY_S
    for rank in range(1, n + 1):
        weight = rank**-0.8
        popularity = 100 - 20 * math.log10(rank)
        z = rng.gauss(0, 1)
        if name == "popular change more":
            z = 0.7 * normal.inv_cdf(1 - rank / (n + 1)) + math.sqrt(1 - 0.7**2) * z
        rate = math.exp(math.log(1 / 20) + z) / DAY_S
        burst_from = t0 + 10 * DAY_S if name == "noisy" and rng.random() < 0.1 else math.inf
        if name == "noisy":
            popularity += rng.gauss(0, 10)
        changes, moment = [], t0
        while True:
            moment += rng.expovariate(rate * (10 if moment >= burst_from else 1))
            if moment >= end:
                break
            changes.append(moment)
        busy = max(0.0, end - burst_from) / (end - t0)
        mean_rate = rate * DAY_S * (1 + 9 * busy)
        pairs.append(Pair(weight, max(0, min(100, round(popularity))), changes, mean_rate))
    return pairs


def simulate(pairs: list[Pair], days: int, budget: int, bound_days: float, policy: str) -> dict:
    """Hourly rolling runs for `days`; the daily stale shares and what was checked."""
    n = len(pairs)
    t0 = START.timestamp()
    states = [PairState(str(i), "US", t0, History(), p.popularity) for i, p in enumerate(pairs)]
    fresh_until = [_next_change(p, t0) for p in pairs]
    weights = sum(p.weight for p in pairs)
    # Lists turn stale at their fresh_until; a heap of those moments keeps the stale sums without a pass per tick.
    pending = [(moment, i) for i, moment in enumerate(fresh_until) if moment < math.inf]
    heapq.heapify(pending)
    stale, stale_weight, stale_count = [False] * n, 0.0, 0
    daily, hourly_weighted, hourly_unweighted = [], [], []
    spent, day, worst_age, over_budget, cpu = 0, START.date(), 0.0, 0, 0.0
    for tick in range(days * 24):
        moment = START + timedelta(seconds=tick * ROLLING_INTERVAL_S)
        now = moment.timestamp()
        if moment.date() != day:
            over_budget += spent > budget
            spent, day = 0, moment.date()
        count = run_pairs(run_allowance(budget, spent, moment, ROLLING_INTERVAL_S), moment, ROLLING_INTERVAL_S)
        started = time.process_time()
        prior = freshness.pooled_prior(states) if policy == "adaptive" else freshness.DEFAULT_PRIOR
        interval = ROLLING_INTERVAL_S / DAY_S
        chosen = freshness.choose(states, count, now, bound_days, interval, policy, prior, run_capacity(budget))
        cpu += time.process_time() - started
        while pending and pending[0][0] <= now:
            moment, i = heapq.heappop(pending)
            if moment == fresh_until[i] and not stale[i]:
                stale[i], stale_weight, stale_count = True, stale_weight + pairs[i].weight, stale_count + 1
        for state in chosen:
            i = int(state.artist_id)
            changed = fresh_until[i] <= now
            state.history = state.history.after((now - state.fetched_at) / DAY_S, changed)
            state.fetched_at = now
            if stale[i]:
                stale[i], stale_weight, stale_count = False, stale_weight - pairs[i].weight, stale_count - 1
            fresh_until[i] = _next_change(pairs[i], now)
            if fresh_until[i] < math.inf:
                heapq.heappush(pending, (fresh_until[i], i))
        spent += len(chosen)
        worst_age = max(worst_age, (now - min(s.fetched_at for s in states)) / DAY_S)
        hourly_weighted.append(stale_weight / weights)
        hourly_unweighted.append(stale_count / n)
        if tick % 24 == 23:
            daily.append(round(sum(hourly_weighted[-24:]) / 24, 4))
    over_budget += spent > budget
    return {
        "weighted": sum(hourly_weighted) / len(hourly_weighted),
        "unweighted": sum(hourly_unweighted) / len(hourly_unweighted),
        "daily_weighted": daily,
        "worst_age_days": round(worst_age, 3),
        "bound_broken": worst_age > bound_days + 1e-9,
        "days_over_budget": over_budget,
        "planner_cpu_s_per_run": cpu / (days * 24),
    }


def _next_change(pair: Pair, after: float) -> float:
    i = bisect.bisect_right(pair.changes, after)
    return pair.changes[i] if i < len(pair.changes) else math.inf


def oracle(pairs: list[Pair], days: int, budget: int) -> float:
    """The optimum with rates and attention known, no bound (Cho & Garcia-Molina; steady state, day-0 rates)."""
    known = [(p.weight, p.rate) for p in pairs]
    return freshness.expected_stale_share(known, budget, len(pairs), 10 * days, "adaptive")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/freshness_simulation.json")
    parser.add_argument("--svg", default="benchmarks/results/freshness_simulation.svg")
    args = parser.parse_args()
    n, rows, ok = args.pairs, [], True
    # (budget as pairs per day, the adaptive hard bound D): P/1 keeps the default 7-day bound; at P/7 the default
    # bound is the rotation itself, so the adaptive row sets TOPTRACKS_MAX_LIST_AGE_DAYS=28 (and shows both).
    budgets = [("P/1", n, 7.0), ("P/7", n // 7, 7.0), ("P/7", n // 7, 28.0)]
    for name in WORKLOADS:
        pairs = workload(name, n, args.days, args.seed)
        for label, budget, bound in budgets:
            # The bounds the project derives (budget.RotationPlan): uniform, the rotation; adaptive, D or the rotation.
            rotation = RotationPlan(n, 1, budget, RUNS_PER_DAY, 7.0).bound_days
            bound = RotationPlan(n, 1, budget, RUNS_PER_DAY, 7.0, "adaptive", bound).bound_days
            uniform = simulate(pairs, args.days, budget, rotation, "uniform")
            adaptive = simulate(pairs, args.days, budget, bound, "adaptive")
            ratio = adaptive["weighted"] / uniform["weighted"]
            row = {
                "workload": name, "budget": label, "requests_per_day": budget, "bound_days": bound,
                "uniform": uniform, "adaptive": adaptive, "ratio": round(ratio, 3),
                "oracle": round(oracle(pairs, args.days, budget), 4),
            }  # fmt: skip
            rows.append(row)
            broken = [r for r in (uniform, adaptive) if r["bound_broken"] or r["days_over_budget"]]
            ok &= not broken
            print(
                f"{name:20} {label} D={bound:>4g}  uniform {uniform['weighted']:.3f} ({uniform['unweighted']:.3f})"
                f"  adaptive {adaptive['weighted']:.3f} ({adaptive['unweighted']:.3f})  ratio {ratio:.2f}"
                f"  oracle {row['oracle']:.3f}  worst age {adaptive['worst_age_days']:.2f} d"
                f"  planner {1000 * adaptive['planner_cpu_s_per_run']:.0f} ms/run{'  BROKEN' if broken else ''}",
                flush=True,
            )
    result = {"pairs": n, "days": args.days, "seed": args.seed, "rows": rows, "bound_and_budget_kept": ok}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    Path(args.svg).write_text(plot(rows, args.days))
    print(f"wrote {args.out} and {args.svg}")
    return 0 if ok else 1


def plot(rows: list[dict], days: int) -> str:
    """Daily attention-weighted stale share, one panel (own scale) per budget and bound, uniform dashed, adaptive
    solid."""
    colours = dict(zip(WORKLOADS, ("#1f77b4", "#d62728", "#2ca02c"), strict=True))
    panels = sorted({(r["budget"], r["bound_days"]) for r in rows}, key=lambda p: (p[0] != "P/1", p[1]))
    width, height, pad = 300, 220, 40
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{len(panels) * (width + pad) + pad}" height="{height + 90}"'
        ' font-family="sans-serif" font-size="11">'
    ]
    for k, (budget, bound) in enumerate(panels):
        x0, y0 = pad + k * (width + pad), 30
        mine = [r for r in rows if (r["budget"], r["bound_days"]) == (budget, bound)]
        top = max(max(r["uniform"]["daily_weighted"] + r["adaptive"]["daily_weighted"]) for r in mine) * 1.1
        svg.append(f'<text x="{x0}" y="18">budget {budget}, adaptive bound D = {bound:g} days</text>')
        svg.append(f'<rect x="{x0}" y="{y0}" width="{width}" height="{height}" fill="none" stroke="#999"/>')
        for frac in (0.25, 0.5, 0.75, 1.0):
            y = y0 + height * (1 - frac)
            svg.append(f'<text x="{x0 - 4}" y="{y + 4:.0f}" text-anchor="end">{frac * top:.2f}</text>')
        for row in mine:
            for policy, dash in (("uniform", ' stroke-dasharray="4 3"'), ("adaptive", "")):
                series = row[policy]["daily_weighted"]
                points = " ".join(
                    f"{x0 + width * (d + 1) / days:.1f},{y0 + height * (1 - v / top):.1f}" for d, v in enumerate(series)
                )
                svg.append(f'<polyline points="{points}" fill="none" stroke="{colours[row["workload"]]}"{dash}/>')
        for day in (0, days // 2, days):
            x = x0 + width * day / days
            svg.append(f'<text x="{x:.0f}" y="{y0 + height + 14}" text-anchor="middle">{day}</text>')
        svg.append(f'<text x="{x0 + width / 2}" y="{y0 + height + 28}" text-anchor="middle">day</text>')
    legend_y = height + 70
    for k, name in enumerate(WORKLOADS):
        svg.append(f'<text x="{pad + k * 170}" y="{legend_y}" fill="{colours[name]}">{name}</text>')
    svg.append(f'<text x="{pad + 3 * 170}" y="{legend_y}">dashed: uniform rotation; solid: adaptive</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


if __name__ == "__main__":
    sys.exit(main())
