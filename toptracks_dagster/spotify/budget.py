"""The daily Spotify request budget (TOPTRACKS_REQUESTS_PER_DAY): what a UTC day may spend, what it has spent,
how big a run may be, and the freshness bound the budget keeps for a catalogue.

- `BudgetLedger`: a small JSON object in raw storage (`spotify_budget/ledger.json`). A run of `raw_top_tracks`
  reserves its allowance before its first request and settles to what it really sent afterwards (every HTTP
  request to the Web API: retries, 401/429 repeats and 404s included; token requests go to the accounts host and
  are not counted). A run that dies without settling keeps its whole reservation, so a crash can only make the
  ledger count too much, never too little. Runs of `raw_top_tracks` are serialised by the `spotify_api` pool
  (one slot), so the read-modify-write of the ledger never races. Cost: two writes of a few hundred bytes per
  run, no Spotify request.
- `run_allowance`: the day's remainder divided evenly over the rolling refresh's ticks left in the UTC day, so
  the last tick of a day spends what is left and the day's total is exactly the budget.
- `RotationPlan`: catalogue (artists x markets) and budget -> rotation length. Refreshing the stalest pairs
  first at `budget` pairs a day renews every pair once per `pairs / budget` days, so the stated bound is
  "every pair refreshed at least every ceil(pairs / budget) days" (without retries; a retry share r stretches
  the rotation by 1 / (1 - r)).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone

from toptracks_dagster.common import parse_iso
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage

LEDGER_KEY = "spotify_budget/ledger.json"
ROLLING_INTERVAL_S = 3600  # the rolling refresh ticks hourly: 24 runs per UTC day
DAY_S = 86400
KEEP_DAYS = 3  # ledger entries older than this are pruned


class BudgetLedgerUnreadable(RuntimeError):
    """The ledger exists but is not what this module writes: nothing is fetched until it is fixed."""


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class BudgetEntry:
    run_id: str
    started_at: str
    reserved: int
    spent: int | None = None  # None until the run settles
    ended_at: str | None = None

    def counted(self) -> int:
        return self.reserved if self.spent is None else self.spent

    def days(self) -> set[date]:
        """UTC days the entry's requests may fall on. Settled: from start to end. Unsettled (running, or died):
        its start day and the next one, so a run that crosses midnight is counted against both days."""
        start = parse_iso(self.started_at)
        end = parse_iso(self.ended_at) if self.ended_at else start + timedelta(days=1)
        days, day = set(), start.date()
        while day <= end.date():
            days.add(day)
            day += timedelta(days=1)
        return days


class BudgetLedger:
    def __init__(self, entries: list[BudgetEntry] | None = None):
        self.entries = entries or []

    @classmethod
    def load(cls, storage: RawStorage) -> "BudgetLedger":
        try:
            with storage.open_for_read(LEDGER_KEY) as stream:
                document = json.load(stream)
            return cls([BudgetEntry(**entry) for entry in document["entries"]])
        except RawObjectMissing:
            return cls()
        except (ValueError, KeyError, TypeError) as error:
            raise BudgetLedgerUnreadable(
                f"request budget ledger {storage.uri(LEDGER_KEY)} is unreadable ({error}); nothing is fetched while "
                "the budget cannot be counted. Delete it only if no request was sent today."
            ) from None

    def save(self, storage: RawStorage, now: datetime) -> None:
        horizon = (now - timedelta(days=KEEP_DAYS)).date()
        self.entries = [e for e in self.entries if max(e.days()) >= horizon]
        with storage.open_for_write(LEDGER_KEY) as stream:
            json.dump({"entries": [asdict(e) for e in self.entries]}, stream)

    def spent_on(self, day: date) -> int:
        return sum(e.counted() for e in self.entries if day in e.days())

    def reserve(self, run_id: str, amount: int, now: datetime) -> None:
        self.entries.append(BudgetEntry(run_id=run_id, started_at=iso(now), reserved=amount))

    def settle(self, run_id: str, spent: int, now: datetime) -> None:
        for entry in self.entries:
            if entry.run_id == run_id and entry.spent is None:
                entry.spent, entry.ended_at = spent, iso(now)
                return
        self.entries.append(
            BudgetEntry(run_id=run_id, started_at=iso(now), reserved=spent, spent=spent, ended_at=iso(now))
        )


def ticks_left_today(now: datetime, interval_s: int) -> int:
    """Ticks of a schedule every `interval_s` seconds (aligned to midnight UTC) from `now` to the end of the day,
    this one included."""
    midnight = datetime.combine(
        now.astimezone(timezone.utc).date() + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc
    )
    return max(1, math.ceil((midnight - now).total_seconds() / interval_s))


def run_allowance(budget: int, spent_today: int, now: datetime, interval_s: int) -> int:
    """Requests one rolling run may send: what is left today, shared evenly by the ticks left today."""
    return max(0, budget - spent_today) // ticks_left_today(now, interval_s)


RETRY_HEADROOM = 0.1  # share of a run's allowance kept for retries (not the last run of the day)


def run_pairs(allowance: int, now: datetime, interval_s: int) -> int:
    """Pairs a rolling run plans for `allowance` requests: allowance / (1 + RETRY_HEADROOM), so retries up to
    that share never make the cap cut a run short (a cut drops the run's highest artist ids, and a cut at every
    run would keep cutting the same ones). The last run of the day plans the whole allowance: what the cap
    leaves of it is the stalest at the next day's first run, which has the headroom again. Unused headroom
    stays in the day's remainder, so a day without retries still refreshes `budget` pairs."""
    if ticks_left_today(now, interval_s) == 1:
        return allowance
    return math.floor(allowance / (1 + RETRY_HEADROOM))


@dataclass(frozen=True)
class RotationPlan:
    """What a budget keeps for a catalogue, stated before anything is fetched."""

    artists: int
    markets: int
    budget: int  # requests per UTC day
    runs_per_day: int
    target_days: float

    @property
    def pairs(self) -> int:
        return self.artists * self.markets

    @property
    def rotation_days(self) -> float:
        return self.pairs / self.budget

    @property
    def bound_days(self) -> int:
        """Every pair is refreshed at least every this many days (no retries)."""
        return max(1, math.ceil(self.rotation_days - 1e-9))

    @property
    def requests_per_run(self) -> int:
        """The even share of a run (each run gets what is left today over the ticks left, so the last one may
        get a few more)."""
        return self.budget // self.runs_per_day

    @property
    def keeps_target(self) -> bool:
        return self.bound_days <= self.target_days

    @property
    def max_artists_for_target(self) -> int:
        """The largest catalogue (artists, at this many markets) the budget keeps within the target."""
        return self.budget * max(0, math.floor(self.target_days)) // max(1, self.markets)

    def expected_ages_days(self) -> dict[str, float]:
        """Once the first rotation is done, list ages are spread evenly over [0, rotation]."""
        r = self.rotation_days
        return {"median": round(r / 2, 2), "p95": round(0.95 * r, 2), "oldest": round(r, 2)}

    def metadata(self) -> dict:
        return {
            "budget_requests_per_day": self.budget,
            "catalogue_pairs": self.pairs,
            "rotation_days": round(self.rotation_days, 3),
            "freshness_bound_days": self.bound_days,
            "freshness_target_days": self.target_days,
            "budget_keeps_target": self.keeps_target,
        }

    def lines(self) -> list[str]:
        ages = self.expected_ages_days()
        first = math.ceil(self.rotation_days - 1e-9)
        lines = [
            f"catalogue: {self.artists:,} artists x {self.markets} markets = {self.pairs:,} (artist, market) pairs",
            f"budget: {self.budget:,} requests per UTC day, {self.runs_per_day} rolling runs a day "
            f"= about {self.requests_per_run:,} requests per run",
            f"rotation: {self.rotation_days:.2f} days: every pair refreshed at least every {self.bound_days} day(s) "
            "(stalest first, new artists first)",
            f"first rotation: about {first} day(s) until every pair has a list",
            f"expected list age after the first rotation: median {ages['median']} d, p95 {ages['p95']} d, "
            f"oldest {ages['oldest']} d",
            "retries and 404s count against the budget: a retry share r stretches the rotation by 1/(1-r)",
        ]
        if self.keeps_target:
            lines.append(
                f"OK: the bound of {self.bound_days} day(s) keeps the target of {self.target_days:g} day(s) "
                f"(TOPTRACKS_FRESHNESS_TARGET_DAYS); the budget keeps up to "
                f"{self.max_artists_for_target:,} artists at {self.markets} markets"
            )
        else:
            needed = math.ceil(self.pairs / max(1, math.floor(self.target_days)))
            lines.append(
                f"PAST WHAT THE BUDGET CAN KEEP: the catalogue needs {self.bound_days} days per rotation, above the "
                f"target of {self.target_days:g} day(s). Keeping the target needs {needed:,} requests per day, or at "
                f"most {self.max_artists_for_target:,} artists at this budget."
            )
        return lines
