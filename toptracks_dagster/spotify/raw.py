"""Raw top-tracks partitions: one JSON Lines object per market, streamed in and out.

Layout, one JSON object per line:
  {"record": "request", "market", "api_base_url", "started_at", "artists"}   what was asked, when
  {"record": "outcome", "artist_id", "market", "requested_at", "status", "tracks", "error", ...}  one per artist
  {"record": "end", "outcomes", "finished_at"}                                  proves the object is complete
404s are outcomes too, so the load can be replayed without calling Spotify again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage
from toptracks_dagster.spotify.client import TopTracksOutcome, utc_now_iso


class RawPartitionIncomplete(RuntimeError):
    """The raw object lacks its end record or its outcome count is off: it was truncated or is being written."""


def raw_top_tracks_key(market: str) -> str:
    return f"top_tracks/market={market}/top_tracks.jsonl"


@dataclass
class RawPartitionSummary:
    market: str
    outcomes: int = 0
    with_tracks: int = 0
    not_found: int = 0
    tracks: int = 0
    popularity_sum: int = 0
    started_at: str = ""
    finished_at: str = ""
    top_preview: list[dict] = field(default_factory=list)  # the most popular tracks seen, for the UI

    def add(self, outcome: TopTracksOutcome) -> None:
        self.outcomes += 1
        if outcome.status == 404:
            self.not_found += 1
            return
        tracks = outcome.tracks or []
        self.with_tracks += 1 if tracks else 0
        self.tracks += len(tracks)
        for track in tracks:
            popularity = track.get("popularity") if isinstance(track.get("popularity"), int) else 0
            self.popularity_sum += popularity
            self.top_preview.append(
                {"artist_id": outcome.artist_id, "track": str(track.get("name", "")), "popularity": popularity}
            )
        if len(self.top_preview) > 50:  # keep memory flat: only the best few survive
            self.top_preview = sorted(self.top_preview, key=lambda t: -t["popularity"])[:10]

    @property
    def mean_popularity(self) -> float:
        return round(self.popularity_sum / self.tracks, 2) if self.tracks else 0.0


def write_raw_partition(
    storage: RawStorage, market: str, api_base_url: str, artist_count: int, outcomes: Iterable[TopTracksOutcome]
) -> RawPartitionSummary:
    summary = RawPartitionSummary(market=market, started_at=utc_now_iso())
    with storage.open_for_write(raw_top_tracks_key(market)) as stream:
        _write_line(stream, {"record": "request", "market": market, "api_base_url": api_base_url,
                             "started_at": summary.started_at, "artists": artist_count})
        for outcome in outcomes:
            _write_line(stream, {"record": "outcome", **outcome.to_json()})
            summary.add(outcome)
        summary.finished_at = utc_now_iso()
        _write_line(stream, {"record": "end", "outcomes": summary.outcomes, "finished_at": summary.finished_at})
    summary.top_preview = sorted(summary.top_preview, key=lambda t: -t["popularity"])[:10]
    return summary


def _write_line(stream, record: dict) -> None:
    stream.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    stream.write("\n")


class RawPartition:
    """A complete raw partition: `request` and `end` records read up front, outcomes streamed on demand."""

    def __init__(self, storage: RawStorage, market: str):
        self.storage = storage
        self.market = market
        self.key = raw_top_tracks_key(market)
        self.request, self.end = self._verify()

    def _verify(self) -> tuple[dict, dict]:
        # One cheap pass (no JSON parsing but the first and last line) so that a truncated object is refused
        # before anything is written downstream.
        first = last = None
        lines = 0
        try:
            with self.storage.open_for_read(self.key) as stream:
                for line in stream:
                    if first is None:
                        first = line
                    last = line
                    lines += 1
        except RawObjectMissing:
            raise RawObjectMissing(
                f"raw top tracks for market {self.market} not found at {self.storage.uri(self.key)}: "
                "materialize `raw_top_tracks` for this partition first"
            ) from None
        try:
            request = json.loads(first) if first else {}
            end = json.loads(last) if last else {}
        except ValueError:
            request, end = {}, {}
        if request.get("record") != "request" or end.get("record") != "end" or end.get("outcomes") != lines - 2:
            raise RawPartitionIncomplete(
                f"raw top tracks for market {self.market} at {self.storage.uri(self.key)} are incomplete "
                f"({lines} lines, end record {end.get('record') == 'end'}): re-materialize `raw_top_tracks`"
            )
        return request, end

    def outcomes(self) -> Iterator[TopTracksOutcome]:
        with self.storage.open_for_read(self.key) as stream:
            for line in stream:
                record = json.loads(line)
                if record.pop("record") == "outcome":
                    yield TopTracksOutcome(**record)
