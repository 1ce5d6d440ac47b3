"""The daily Spotify request budget (TOPTRACKS_REQUESTS_PER_DAY): what a UTC day has spent, what a run may send,
and the freshness bound it keeps. The ledger changes only through `RawStorage.update`, so runs and Dagster
instances sharing one storage never undo each other. A run reserves before its first request and settles to
what it sent (retries and 404s included); one that dies unsettled counts in full: too much, never too little.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Callable

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from toptracks_dagster import config
from toptracks_dagster.raw_storage.resources import RawStorage
from toptracks_dagster.spotify import freshness

LEDGER_KEY = "spotify_budget/ledger.json"
ROLLING_INTERVAL_S = 3600  # the rolling refresh ticks hourly
RUNS_PER_DAY = 86400 // ROLLING_INTERVAL_S
KEEP_DAYS = 3  # entries that ended longer ago are pruned
RETRY_HEADROOM = 0.1  # share of a rolling run's allowance kept for retries (not on the day's last tick)
Count = Annotated[int, Field(ge=0, strict=True)]


class BudgetLedgerUnreadable(config.PermanentError):
    """The ledger is not what this module writes: nothing is fetched while the budget cannot be counted."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class BudgetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    run_id: str
    started_at: AwareDatetime = Field(strict=False)  # strict=False: read from an ISO string
    reserved: Count
    spent: Count | None = None  # None until the run settles
    ended_at: AwareDatetime | None = Field(default=None, strict=False)

    @model_validator(mode="after")
    def _ends_after_start(self) -> BudgetEntry:
        if self.ended_at is not None and self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self

    def last_day(self) -> date:
        """Unsettled (running or died): counted on its start day and the next, as a run may cross midnight."""
        return (self.ended_at or self.started_at + timedelta(days=1)).astimezone(timezone.utc).date()

    def counted_on(self, day: date) -> int:
        counts = self.started_at.astimezone(timezone.utc).date() <= day <= self.last_day()
        return 0 if not counts else self.reserved if self.spent is None else self.spent


class _Ledger(BaseModel):
    entries: list[BudgetEntry]


def _entries(text: str | None, uri: str) -> list[BudgetEntry]:
    try:
        return _Ledger.model_validate_json(text).entries if text is not None else []
    except ValidationError as error:
        found = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']} (found {repr(e['input'])[:200]})"
            for e in error.errors()
        )
        raise BudgetLedgerUnreadable(
            f"request budget ledger {uri} is unreadable: {found}. Nothing is fetched while the budget cannot be "
            "counted; fix the entry (delete the file only if no request was sent today)"
        ) from error


def _change(storage: RawStorage, change: Callable[[list[BudgetEntry], datetime], None]) -> None:
    def rewrite(text: str | None) -> str:
        now = utc_now()
        entries = _entries(text, storage.uri(LEDGER_KEY))
        change(entries, now)
        horizon = now.date() - timedelta(days=KEEP_DAYS)
        return _Ledger(entries=[e for e in entries if e.last_day() >= horizon]).model_dump_json()

    storage.update(LEDGER_KEY, rewrite)


def spent_on(storage: RawStorage, day: date) -> int:
    """Requests counted against a UTC day: settled runs at what they sent, the others at what they reserved."""
    return sum(e.counted_on(day) for e in _entries(storage.read_small(LEDGER_KEY), storage.uri(LEDGER_KEY)))


def describe_spent(spent: int, per_day: int, day: date) -> str:
    return f"{spent} of {per_day} today (UTC {day})"


class RunBudget:
    """A run's share of TOPTRACKS_REQUESTS_PER_DAY, within its own `max_requests` (None or 0: none)."""

    def __init__(self, storage, entry: str, cap: int | None, plan: RotationPlan | None = None, spent=0, day=None):
        self.storage, self.entry, self.cap, self.plan, self.day = storage, entry, cap, plan, day
        self.spent_before = self.spent_after = spent
        self.bound_days: float = plan.bound_days if plan else config.freshness_target_days()

    @classmethod
    def open(cls, context, storage: RawStorage, max_requests: int | None, artists: int, markets: int) -> RunBudget:
        """Reserve for this run (and retry) before its first request."""
        budget = cls.reserve(storage, f"{context.run.run_id}/{context.retry_number}", max_requests, artists, markets)
        context.log.info(budget.describe_cap())
        return budget

    @classmethod
    def reserve(cls, storage: RawStorage, entry: str, max_requests: int | None, artists: int, markets: int):
        per_day, wanted = config.requests_per_day(), max_requests or None
        if per_day is None:
            return cls(storage, entry, wanted)
        plan = RotationPlan.configured(artists, markets, per_day)
        found = {}

        def add(entries: list[BudgetEntry], now: datetime) -> None:
            spent = sum(e.counted_on(now.date()) for e in entries)
            left = max(0, per_day - spent)
            # A step retry shares its run's max_requests with the attempts before it.
            run = entry.rsplit("/", 1)[0]
            earlier = sum(
                e.reserved if e.spent is None else e.spent for e in entries if e.run_id.rsplit("/", 1)[0] == run
            )
            cap = left if wanted is None else min(max(0, wanted - earlier), left)
            found.update(spent=spent, cap=cap, day=now.date())
            entries.append(BudgetEntry(run_id=entry, started_at=now, reserved=found["cap"]))

        _change(storage, add)
        return cls(storage, entry, found["cap"], plan, found["spent"], found["day"])

    def settle(self, used: int) -> None:
        """Record what the run sent (its reservation stays counted if this never happens)."""
        if self.plan is None:
            return

        def record(entries: list[BudgetEntry], now: datetime) -> None:
            mine = next((e for e in entries if e.run_id == self.entry and e.spent is None), None)
            if mine is None:  # the entry was removed by hand: what was sent still counts
                entries.append(mine := BudgetEntry(run_id=self.entry, started_at=now, reserved=used))
            mine.spent, mine.ended_at = used, now
            self.spent_after = sum(e.counted_on(self.day) for e in entries)

        _change(self.storage, record)

    def describe_cap(self) -> str:
        if self.plan is None:
            cap = "not capped" if self.cap is None else f"capped at {self.cap} requests by max_requests"
            return f"no request budget (TOPTRACKS_REQUESTS_PER_DAY unset): this run is {cap}"
        spent = describe_spent(self.spent_before, self.plan.budget, self.day)
        if self.cap == 0:
            return f"request budget spent: {spent}: this run sends no request"
        return f"request budget: {spent} spent; this run may send {self.cap} requests"

    def metadata(self, stopped: bool) -> dict:
        found = {"run_request_cap": -1 if self.cap is None else self.cap, "run_stopped_by_cap": stopped}
        found["freshness_bound_days"] = self.bound_days
        if self.plan is not None:
            found.update(self.plan.metadata(), budget_spent_today_before=self.spent_before)
            found.update(
                budget_spent_today_after=self.spent_after, budget_checked_at=utc_now().isoformat(timespec="seconds")
            )
        return found


def adaptive_bound_days(artists: int, markets: int) -> float:
    """The adaptive policy's hard bound for this catalogue: TOPTRACKS_MAX_LIST_AGE_DAYS, else
    TOPTRACKS_FRESHNESS_TARGET_DAYS, never shorter than the budget's uniform rotation."""
    per_day = config.requests_per_day()
    if per_day is None:
        return config.max_list_age_days() or config.freshness_target_days()
    target = config.freshness_target_days()
    return RotationPlan(
        artists, markets, per_day, RUNS_PER_DAY, target, "adaptive", config.max_list_age_days()
    ).bound_days


def run_capacity(per_day: int | None) -> float | None:
    """Pairs an hourly rolling run plans on average at `per_day` requests a day (None: no budget): what the planner
    counts on from the runs to come when it keeps the bound. A fraction for budgets under a pair per tick."""
    return None if per_day is None else per_day / RUNS_PER_DAY / (1 + RETRY_HEADROOM)


def ticks_left_today(now: datetime, interval_s: int) -> int:
    """Ticks every `interval_s` seconds (aligned to midnight UTC) from `now` to the day's end, this one included."""
    midnight = datetime.combine(now.astimezone(timezone.utc).date() + timedelta(days=1), datetime.min.time())
    return max(1, math.ceil((midnight.replace(tzinfo=timezone.utc) - now).total_seconds() / interval_s))


def run_allowance(budget: int, spent_today: int, now: datetime, interval_s: int) -> int:
    """Requests one rolling run may send: what is left today, shared evenly by the ticks left today, so the day's
    last tick spends what is left and the day's total is the budget."""
    return max(0, budget - spent_today) // ticks_left_today(now, interval_s)


def run_pairs(allowance: int, now: datetime, interval_s: int) -> int:
    """Pairs a rolling run plans: allowance / (1 + RETRY_HEADROOM), so retries never make the cap cut the run
    short (a cut drops the highest artist ids, every run the same ones). The day's last tick plans its whole
    allowance; unused headroom stays in the day's remainder."""
    return allowance if ticks_left_today(now, interval_s) == 1 else math.floor(allowance / (1 + RETRY_HEADROOM))


class RotationPlan:
    """What a budget keeps for a catalogue: refreshing the stalest pairs first at `budget` pairs a day renews
    every pair once per pairs / budget days (a retry share r stretches that by 1 / (1 - r))."""

    def __init__(
        self,
        artists: int,
        markets: int,
        budget: int,
        runs_per_day: int,
        target_days: float,
        policy: str = "uniform",
        max_age_days: float | None = None,
    ):
        self.artists, self.markets, self.budget, self.runs_per_day, self.target_days = (
            artists, markets, budget, runs_per_day, target_days)  # fmt: skip
        self.pairs = artists * markets
        self.rotation_days = self.pairs / budget
        self.rotation_bound_days = max(1, math.ceil(self.rotation_days - 1e-9))
        self.policy = policy
        # Every pair is refreshed at least this often. Adaptive: TOPTRACKS_MAX_LIST_AGE_DAYS, by default the
        # team's accepted age; the budget above one refresh per pair per bound is what adaptive can move to lists
        # that change and that readers look at, so a bound at the rotation itself is the uniform rotation again.
        self.bound_days: float = self.rotation_bound_days
        if policy == "adaptive":
            self.bound_days = max(max_age_days or target_days, self.rotation_bound_days)
        self.keeps_target = self.bound_days <= target_days

    @classmethod
    def configured(cls, artists: int, markets: int, budget: int) -> RotationPlan:
        return cls(
            artists,
            markets,
            budget,
            RUNS_PER_DAY,
            config.freshness_target_days(),
            config.refresh_policy(),
            config.max_list_age_days(),
        )

    def metadata(self) -> dict:
        return {"budget_requests_per_day": self.budget, "catalogue_pairs": self.pairs,
                "rotation_days": round(self.rotation_days, 3), "freshness_bound_days": self.bound_days,
                "refresh_policy": self.policy,
                "freshness_target_days": self.target_days, "budget_keeps_target": self.keeps_target}  # fmt: skip

    def lines(self) -> list[str]:
        # Once the first rotation is done, list ages are spread evenly over [0, rotation].
        r, target = self.rotation_days, f"{self.target_days:g} day(s)"
        most = self.budget * max(0, math.floor(self.target_days)) // max(1, self.markets)
        lines = [
            f"catalogue: {self.artists:,} artists x {self.markets} markets = {self.pairs:,} (artist, market) pairs",
            f"budget: {self.budget:,} requests per UTC day, {self.runs_per_day} rolling runs a day "
            f"= about {self.budget // self.runs_per_day:,} requests per run",
            f"uniform rotation: {r:.2f} days: every pair refreshed every {self.rotation_bound_days} day(s) (stalest "
            f"first, new artists first); list age after the first rotation: median {r / 2:.2f} d, "
            f"p95 {0.95 * r:.2f} d, oldest {r:.2f} d",
            "retries and 404s count against the budget: a retry share r stretches the rotation by 1/(1-r)",
        ]
        if self.policy == "adaptive":
            need = self.rotation_days / self.bound_days  # the share of the budget one refresh per bound takes
            free = 0.0 if need > freshness.BOUND_MARGIN else 1 - need
            lines.append(
                f"policy adaptive (TOPTRACKS_REFRESH_POLICY): new artists first, then lists that change often and "
                f"that readers look at; hard bound D = {self.bound_days:g} day(s) (TOPTRACKS_MAX_LIST_AGE_DAYS): "
                f"every pair refreshed at least every {self.bound_days:g} day(s); at most {100 * free:.0f} % of the "
                f"budget goes where lists change (none while the bound takes over {100 * freshness.BOUND_MARGIN:.0f} "
                "%; a larger D frees more)"
            )
        else:
            lines.append("policy uniform (TOPTRACKS_REFRESH_POLICY): the stalest pairs first")
        if self.keeps_target:
            return lines + [
                f"OK: the bound of {self.bound_days} day(s) keeps the target of {target} "
                f"(TOPTRACKS_FRESHNESS_TARGET_DAYS); the budget keeps up to {most:,} artists at {self.markets} markets"
            ]
        needed = math.ceil(self.pairs / max(1, math.floor(self.target_days)))
        if self.rotation_bound_days <= self.target_days:  # the adaptive bound is past the target, not the budget
            return lines + [
                f"PAST THE TARGET: the hard bound of {self.bound_days:g} day(s) is above the target of {target}; set "
                f"TOPTRACKS_MAX_LIST_AGE_DAYS={self.target_days:g} to hold the target (a tighter bound leaves less of "
                "the budget to lists that change), or TOPTRACKS_REFRESH_POLICY=uniform"
            ]
        return lines + [
            f"PAST WHAT THE BUDGET CAN KEEP: the catalogue needs {self.rotation_bound_days} days per rotation, above "
            f"the target of {target}. Keeping the target needs {needed:,} requests per day, or at most {most:,} "
            "artists at this budget."
        ]
