"""What the raw checks and the metadata know of a merged partition, gathered while it is written."""

from __future__ import annotations

import heapq
from array import array
from dataclasses import dataclass, field
from typing import Callable

from toptracks_dagster.check_results import SAMPLE_SIZE, Sample
from toptracks_dagster.common import SPOTIFY_ID_RE, parse_iso
from toptracks_dagster.spotify.client import TopTracksOutcome

MAX_TRACKS = 10  # Spotify's documented maximum for top-tracks


@dataclass
class MarketProfile:
    """Everything the raw checks and the metadata need, gathered while the merge is written (no second read).

    Whole-partition numbers cover every outcome of the merged partition; quality numbers (fields, list
    length, duplicates, statuses) cover the outcomes fetched in this run: the kept ones passed when fetched.
    """

    market: str
    planned: int = 0  # artists this run set out to fetch (after the fetch: the ones it fetched)
    unfetched: int = 0  # planned artists a request cap left unfetched (they keep their previous outcome)
    outcomes: int = 0
    with_tracks: int = 0
    not_found: int = 0
    tracks: int = 0
    popularity_sum: int = 0
    fetched: int = 0
    fetched_new: int = 0  # fetched artists the previous partition did not have
    kept: int = 0
    removed_artists: int = 0  # in the previous partition, gone from the artist list
    pending_new: list[str] = field(default_factory=list)  # new artists this (partial) run did not fetch
    previous_tracks: int = 0
    tracks_dropped: int = 0  # tracks of the previous partition that the merged one no longer has
    fetched_not_found: int = 0
    unexpected_status: Sample = field(default_factory=Sample)
    quarantined: Sample = field(default_factory=Sample)  # fetched but unusable: kept their previous list
    over_limit: Sample = field(default_factory=Sample)
    longest_list: int = 0
    duplicate_lists: Sample = field(default_factory=Sample)
    duplicate_entries: int = 0
    tracks_checked: int = 0
    invalid_tracks: Sample = field(default_factory=Sample)
    problems_by_field: dict = field(default_factory=dict)
    # When each stored list was fetched, epoch seconds: 8 bytes per artist (the timestamps' strings were ~80).
    fetched_epochs: array = field(default_factory=lambda: array("d"))
    oldest_heap: list = field(default_factory=list)  # the SAMPLE_SIZE oldest lists: (-epoch s, artist_id, requested_at)
    top_preview: list[dict] = field(default_factory=list)

    @property
    def mean_popularity(self) -> float:
        return round(self.popularity_sum / self.tracks, 2) if self.tracks else 0.0

    def ages_days(self, now_iso: str) -> dict[str, float]:
        """Oldest, median and 95th-percentile age (days) of the stored lists."""
        now = parse_iso(now_iso).timestamp()
        ages = sorted(((now - t) / 86400 for t in self.fetched_epochs), reverse=True)
        if not ages:
            return {"oldest": 0.0, "median": 0.0, "p95": 0.0}
        return {
            "oldest": round(ages[0], 3),
            "median": round(ages[len(ages) // 2], 3),
            "p95": round(ages[int(len(ages) * 0.05)], 3),
        }

    def older_than(self, now_iso: str, days: float) -> int:
        """Stored lists older than `days` (the freshness bound)."""
        cutoff = parse_iso(now_iso).timestamp() - days * 86400
        return sum(1 for t in self.fetched_epochs if t < cutoff)

    def oldest(self, now_iso: str) -> list[dict]:
        """The oldest stored lists, oldest first, with their age in days."""
        now = parse_iso(now_iso).timestamp()
        return [
            {"artist_id": a, "market": self.market, "requested_at": t, "age_days": round((now + e) / 86400, 3)}
            for e, a, t in sorted(self.oldest_heap, reverse=True)
        ]

    # The numbers of a whole partition that its index keeps (partition_index.py), so that an unchanged
    # partition's checks and metadata need no parse of it.
    SUMMARY_FIELDS = ("outcomes", "with_tracks", "not_found", "tracks", "popularity_sum", "top_preview")

    def _note_fetched_at(self, artist_id: str, requested_at: str) -> None:
        if not requested_at:
            return
        fetched = parse_iso(requested_at).timestamp()
        self.fetched_epochs.append(fetched)
        entry = (-fetched, artist_id, requested_at)
        if len(self.oldest_heap) < SAMPLE_SIZE:
            heapq.heappush(self.oldest_heap, entry)
        elif entry > self.oldest_heap[0]:
            heapq.heapreplace(self.oldest_heap, entry)

    def _count(self, outcome: TopTracksOutcome) -> None:
        self.outcomes += 1
        self._note_fetched_at(outcome.artist_id, outcome.requested_at)
        if outcome.status == 404:
            self.not_found += 1
            return
        tracks = tracks_of(outcome)
        self.with_tracks += 1 if tracks else 0
        self.tracks += len(tracks)
        for track in tracks:
            popularity = track.get("popularity") if isinstance(track, dict) else None
            popularity = popularity if isinstance(popularity, int) and not isinstance(popularity, bool) else 0
            self.popularity_sum += popularity
            self.top_preview.append(
                {
                    "artist_id": outcome.artist_id,
                    "track": str(track.get("name", "")) if isinstance(track, dict) else "",
                    "popularity": popularity,
                }
            )
        if len(self.top_preview) > 50:  # keep memory flat: only the best few survive
            self.top_preview = sorted(self.top_preview, key=lambda t: -t["popularity"])[:10]

    def _inspect_fetched(self, outcome: TopTracksOutcome) -> None:
        self.fetched += 1
        if outcome.status == 404:
            self.fetched_not_found += 1
        elif outcome.status != 200 or not isinstance(outcome.tracks, list):
            self.unexpected_status.add({"artist_id": outcome.artist_id, "status": outcome.status})
        tracks = tracks_of(outcome)
        self.longest_list = max(self.longest_list, len(tracks))
        if len(tracks) > MAX_TRACKS:
            self.over_limit.add({"artist_id": outcome.artist_id, "tracks": len(tracks)})
        ranks: dict[str, list[int]] = {}
        for rank, track in enumerate(tracks, start=1):
            self.tracks_checked += 1
            problems = track_problems(track)
            if problems:
                for name, _ in problems:
                    self.problems_by_field[name] = self.problems_by_field.get(name, 0) + 1
                track_id = track.get("id") if isinstance(track, dict) else None
                self.invalid_tracks.add(
                    {
                        "artist_id": outcome.artist_id,
                        "rank": rank,
                        "track_id": str(track_id)[:40],
                        "problems": [f"{name}: {problem}" for name, problem in problems],
                    }
                )
            track_id = track.get("id") if isinstance(track, dict) else None
            if isinstance(track_id, str) and track_id:
                ranks.setdefault(track_id, []).append(rank)
        repeated = {track_id: r for track_id, r in ranks.items() if len(r) > 1}
        if repeated:
            self.duplicate_entries += sum(len(r) - 1 for r in repeated.values())
            for track_id, r in repeated.items():
                self.duplicate_lists.add({"artist_id": outcome.artist_id, "track_id": track_id, "ranks": r})

    def finish(self) -> None:
        self.top_preview = sorted(self.top_preview, key=lambda t: -t["popularity"])[:10]


def tracks_of(outcome: TopTracksOutcome) -> list:
    return outcome.tracks if outcome.status == 200 and isinstance(outcome.tracks, list) else []


def track_ids_of(outcome: TopTracksOutcome | None) -> set[str]:
    if outcome is None:
        return set()
    return {t.get("id") for t in tracks_of(outcome) if isinstance(t, dict) and isinstance(t.get("id"), str)}


def track_problems(track: object) -> list[tuple[str, str]]:
    """(field, problem) for every required field of a TrackObject that is missing or of the wrong type."""
    if not isinstance(track, dict):
        return [("track", f"is {type(track).__name__}, not an object")]
    problems: list[tuple[str, str]] = []

    def require(name: str, ok: Callable[[object], bool], wanted: str) -> None:
        if name not in track:
            problems.append((name, "missing"))
        elif not ok(track[name]):
            problems.append((name, f"{_shown(track[name])} is not {wanted}"))

    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    require("id", lambda v: isinstance(v, str) and bool(SPOTIFY_ID_RE.match(v)), "a base62 id of 22 characters")
    require("name", lambda v: isinstance(v, str), "a string")
    require("popularity", lambda v: is_int(v) and 0 <= v <= 100, "an integer in 0..100")
    require("type", lambda v: v == "track", '"track"')
    require("uri", lambda v: isinstance(v, str) and v.startswith("spotify:track:"), "a spotify:track: URI")
    require("duration_ms", lambda v: is_int(v) and v >= 0, "a non-negative integer")
    require("explicit", lambda v: isinstance(v, bool), "a boolean")
    require("is_local", lambda v: isinstance(v, bool), "a boolean")
    require("track_number", is_int, "an integer")
    require("disc_number", is_int, "an integer")
    require(
        "artists",
        lambda v: (
            isinstance(v, list)
            and bool(v)
            and all(isinstance(a, dict) and isinstance(a.get("id"), str) and isinstance(a.get("name"), str) for a in v)
        ),
        "a non-empty list of artists with id and name",
    )
    # Album names may be "" in real data; the album must still be an object with an id.
    require(
        "album",
        lambda v: isinstance(v, dict) and isinstance(v.get("id"), str) and isinstance(v.get("name"), str),
        "an album object with id and name",
    )
    require("external_urls", lambda v: isinstance(v, dict), "an object")
    require("preview_url", lambda v: v is None or isinstance(v, str), "a string or null")
    return problems


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
