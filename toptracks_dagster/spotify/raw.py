"""Raw top-tracks partitions: one JSON Lines object per market, outcomes sorted by artist id, streamed.

One JSON object per line:
  {"record": "request", "market", "version", "previous_version", "artists_fingerprint", "refresh", ...}
  {"record": "outcome", "artist_id", "market", "requested_at", "status", "tracks", "error", ...}  one per artist
  {"record": "end", "outcomes", "tracks", "touched", "finished_at"}                            proves completeness
404s are outcomes too, so the load can be replayed without calling Spotify. `touched` lists the artists whose
stored list this version changed (new, changed, removed), so a load can read just those; null means "all".
A merge keeps the other artists' lines as they are; the partition readers see is only ever replaced by a merged
version that was written aside, read back whole (SHA-256) and passed its blocking checks.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import fields
from typing import IO, Iterable, Iterator

from toptracks_dagster.common import is_valid_spotify_id, utc_now_iso
from toptracks_dagster.config import PermanentError
from toptracks_dagster.raw_storage.resources import (
    PendingObject,
    RawObjectMissing,
    RawStorage,
)
from toptracks_dagster.spotify.client import TopTracksOutcome
from toptracks_dagster.spotify.freshness import History, PairState, epoch, max_popularity, next_history
from toptracks_dagster.spotify.profile import MAX_TRACKS, MarketProfile, track_ids_of, tracks_of

__all__ = ["MAX_TRACKS", "MarketProfile", "PartitionMerge", "RawPartition", "RawPartitionIncomplete"]

FORMAT = 3
_OUTCOME_FIELDS = {f.name for f in fields(TopTracksOutcome)}
# How every outcome line this module writes begins: lets a reader that wants a few artists skip the others'
# lines without parsing them. A line that does not match is parsed.
_OUTCOME_PREFIX = re.compile(r'\{"record":"outcome","artist_id":"([^"\\]*)"')


class RawPartitionIncomplete(PermanentError):
    """The raw object is truncated, corrupt or not in the expected shape; the message names file, line, market."""


def loaded_version(instance, market: str) -> str | None:
    """The partition version that the latest load of `market` made the table equal (its materialization or, when
    nothing changed, its observation of top_tracks records `raw_version`); None when this instance never saw one."""
    from dagster import AssetKey, AssetRecordsFilter

    records_filter = AssetRecordsFilter(asset_key=AssetKey("top_tracks"), asset_partitions=[market])
    records = [
        *instance.fetch_materializations(records_filter, limit=1).records,
        *instance.fetch_observations(records_filter, limit=1).records,
    ]
    if not records:
        return None
    event = max(records, key=lambda r: r.storage_id).asset_event
    entry = event.metadata.get("raw_version") if event is not None else None
    return entry.value if entry is not None else None


def pair_state(record) -> PairState:
    """The planner's view of one stored outcome (a record as read, or a TopTracksOutcome). An unusable answer
    (a new artist's first try quarantined) counts from when it was asked, so it waits its turn instead of going
    first, as a new artist, on every run."""
    get = record.get if isinstance(record, dict) else lambda name, default=None: getattr(record, name, default)
    return PairState(
        artist_id=str(get("artist_id")),
        market=str(get("market")),
        fetched_at=epoch(str(get("requested_at", ""))),
        history=History.from_json(get("history")),
        popularity=max_popularity(get("tracks")) if get("status") == 200 else None,
    )


def raw_partition_key(market: str) -> str:
    return f"raw_top_tracks/market={market}/top_tracks.jsonl"


def outcome_from_record(record: dict) -> TopTracksOutcome:
    return TopTracksOutcome(**{k: v for k, v in record.items() if k in _OUTCOME_FIELDS})


# ------------------------------------------------------------------------------------------ reading
class RawPartition:
    """A verified raw partition: request and end records, outcomes sorted and unique, each artist's requested_at.

    Opening reads the whole object once, so a cut or reordered object is refused up front (naming file, line and
    market) instead of halfway through a load. A line whose tracks cannot be parsed costs only its artist: it is
    skipped by readers (the load keeps that artist's items) and fetched again by the next merge.
    """

    def __init__(
        self,
        market: str,
        uri: str,
        opener,
        request: dict,
        end: dict,
        requested_at: dict[str, str],
        states: list[PairState] | None = None,
    ):
        self.market = market
        self.uri = uri
        self._open = opener
        self.request = request
        self.end = end
        self.requested_at = requested_at
        self.states = states or []  # what the freshness planner knows of each stored pair, in artist order

    @classmethod
    def open(cls, storage: RawStorage, market: str) -> "RawPartition":
        """The market's current partition; RawObjectMissing when it has none yet."""
        key = raw_partition_key(market)
        try:
            return cls._verified(market, storage.uri(key), lambda: storage.open_for_read(key))
        except RawObjectMissing:
            raise RawObjectMissing(
                f"raw top tracks for market {market} not found at {storage.uri(key)}: "
                "materialize `raw_top_tracks` for this partition first"
            ) from None

    @classmethod
    def open_or_none(cls, storage: RawStorage, market: str) -> "RawPartition | None":
        try:
            return cls.open(storage, market)
        except RawObjectMissing:
            return None

    @classmethod
    def _verified(cls, market: str, uri: str, opener) -> "RawPartition":
        request: dict | None = None
        end: dict | None = None
        requested_at: dict[str, str] = {}
        states: list[PairState] = []
        previous_id = ""
        line_number = 0

        def refuse(problem: str) -> RawPartitionIncomplete:
            return RawPartitionIncomplete(
                f"raw top tracks for market {market} at {uri} are unusable: line {line_number}: {problem}; "
                "re-materialize `raw_top_tracks` for this market"
            )

        with opener() as stream:
            for line_number, line in enumerate(stream, start=1):
                if end is not None:
                    raise refuse("content after the end record")
                try:
                    record = json.loads(line)
                except ValueError as error:
                    raise refuse(f"not valid JSON ({error})") from None
                kind = record.get("record") if isinstance(record, dict) else None
                if line_number == 1:
                    if kind != "request":
                        raise refuse("the first line is not the request record")
                    request = record
                elif kind == "outcome":
                    artist_id = record.get("artist_id")
                    if not is_valid_spotify_id(artist_id):
                        raise refuse(f"artist id {str(artist_id)[:40]!r} is not a Spotify id")
                    if record.get("market") != market:
                        raise refuse(f"outcome for market {record.get('market')!r}, not {market}")
                    if artist_id <= previous_id:
                        raise refuse(f"artist {artist_id} is out of order or repeated")
                    if not isinstance(record.get("status"), int):
                        raise refuse(f"artist {artist_id} has no integer status")
                    previous_id = artist_id
                    requested_at[artist_id] = str(record.get("requested_at", ""))
                    states.append(pair_state(record))
                elif kind == "end":
                    end = record
                else:
                    raise refuse(f"unexpected record {kind!r}")
        if request is None:
            line_number = 0
            raise refuse("the object is empty")
        if end is None:
            raise refuse("no end record (the object was cut short)")
        if end.get("outcomes") != len(requested_at):
            raise refuse(f"the end record counts {end.get('outcomes')} outcomes, the object holds {len(requested_at)}")
        return cls(market, uri, opener, request, end, requested_at, states)

    def outcomes(self, only: set[str] | None = None) -> Iterator[TopTracksOutcome]:
        """The outcomes in artist order; `only`: just these artists' (the other lines are skipped unparsed)."""
        for outcome, _ in self.outcomes_with_lines(only):
            yield outcome

    def outcomes_with_lines(self, only: set[str] | None = None) -> Iterator[tuple[TopTracksOutcome, str]]:
        """Each outcome with its line as stored, so that a merge can keep it without encoding it again."""
        with self._open() as stream:
            for line in stream:
                if only is not None:
                    prefix = _OUTCOME_PREFIX.match(line)
                    if prefix is not None and prefix.group(1) not in only:
                        continue
                record = json.loads(line)
                if record.get("record") == "outcome":
                    yield outcome_from_record(record), line

    def artist_ids(self) -> list[str]:
        return list(self.requested_at)


# ------------------------------------------------------------------------------------------ writing
def _write_record(stream: IO[str], record: dict) -> None:
    stream.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    stream.write("\n")


class _HashingStream:
    """Writes through to a text stream and keeps the SHA-256 of the UTF-8 bytes written, so the object can be read
    back whole and compared without parsing what was just encoded."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._sha256 = hashlib.sha256()

    def write(self, text: str) -> int:
        self._sha256.update(text.encode("utf-8"))
        return self._stream.write(text)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


class PartitionMerge:
    """Merges one market's fetched outcomes into its previous partition, streaming, into `stream`.

    `artist_ids`: the artist list, sorted. `previous`: the previous partition's (outcome, stored line) pairs, sorted.
    `push` takes fetched outcomes in artist-id order; listed artists between two pushes keep their previous line,
    artists no longer listed are dropped. A fetched outcome that is unusable (not 200 or 404) does not replace a
    previous list: the artist is quarantined and keeps it. `touched_all`: the previous version may not have been
    loaded, so the load must read every artist (`touched` null).
    """

    def __init__(
        self,
        stream: IO[str] | None,
        market: str,
        artist_ids: list[str],
        previous: Iterable[tuple[TopTracksOutcome, str]],
        request: dict,
        planned: int,
        touched_all: bool = False,
        popularity_change: int = 5,
    ):
        self._stream = _HashingStream(stream) if stream is not None else None
        self._popularity_change = popularity_change
        self.states: list[PairState] = []
        self.market = market
        self._request_record: dict = {}
        self._end_record: dict = {}
        self._requested_at: dict[str, str] = {}
        self._ids = artist_ids
        self._next_id = 0
        self._previous = iter(previous)
        self._held, self._held_line = next(self._previous, (None, ""))
        self.touched: set[str] | None = None if touched_all else set()
        self.profile = MarketProfile(market=market, planned=planned)
        self._write(
            {
                "record": "request",
                "format": FORMAT,
                "market": market,
                "version": uuid.uuid4().hex,
                **request,
                "started_at": utc_now_iso(),
            }
        )

    def _touch(self, artist_id: str) -> None:
        if self.touched is not None:
            self.touched.add(artist_id)

    def _previous_for(self, artist_id: str) -> tuple[TopTracksOutcome | None, str]:
        """The previous outcome of `artist_id` and its stored line, if any; earlier artists' outcomes are dropped."""
        while self._held is not None and self._held.artist_id < artist_id:
            self._drop(self._held)
            self._held, self._held_line = next(self._previous, (None, ""))
        if self._held is not None and self._held.artist_id == artist_id:
            found, line = self._held, self._held_line
            self._held, self._held_line = next(self._previous, (None, ""))
            self.profile.previous_tracks += len(tracks_of(found))
            return found, line
        return None, ""

    def _write(self, record: dict) -> None:
        kind = record["record"]
        if kind == "outcome":
            self._requested_at[record["artist_id"]] = str(record.get("requested_at", ""))
            self.states.append(pair_state(record))
        elif kind == "request":
            self._request_record = record
        else:
            self._end_record = record
        if self._stream is not None:
            _write_record(self._stream, record)

    def _drop(self, outcome: TopTracksOutcome) -> None:
        self.profile.removed_artists += 1
        self.profile.previous_tracks += len(tracks_of(outcome))
        self.profile.tracks_dropped += len(tracks_of(outcome))
        self._touch(outcome.artist_id)

    def _keep(self, previous: TopTracksOutcome, line: str) -> None:
        self.profile.kept += 1
        self.profile._count(previous)
        self._requested_at[previous.artist_id] = str(previous.requested_at)
        self.states.append(pair_state(previous))
        if self._stream is not None:
            self._stream.write(line if line.endswith("\n") else line + "\n")

    def _keep_until(self, artist_id: str | None) -> None:
        while self._next_id < len(self._ids) and (artist_id is None or self._ids[self._next_id] < artist_id):
            kept_id = self._ids[self._next_id]
            self._next_id += 1
            previous, line = self._previous_for(kept_id)
            if previous is None:
                self.profile.pending_new.append(kept_id)
            else:
                self._keep(previous, line)

    def push(self, outcome: TopTracksOutcome) -> None:
        if outcome.market != self.market:
            raise ValueError(f"outcome of artist {outcome.artist_id} is for {outcome.market}, not {self.market}")
        self._keep_until(outcome.artist_id)
        if self._next_id >= len(self._ids) or self._ids[self._next_id] != outcome.artist_id:
            raise ValueError(f"artist {outcome.artist_id} is not next in the artist list (fetch order broken)")
        self._next_id += 1
        previous, line = self._previous_for(outcome.artist_id)
        self.profile._inspect_fetched(outcome)
        if outcome.status not in (200, 404):
            reason = (outcome.error or {}).get("message") or f"status {outcome.status}"
            self.profile.quarantined.add({"artist_id": outcome.artist_id, "reason": reason})
            if previous is not None:
                self._keep(previous, line)
                return
        if previous is None:
            self.profile.fetched_new += 1
        if previous is None or previous.status != outcome.status or previous.tracks != outcome.tracks:
            self._touch(outcome.artist_id)
        self.profile.tracks_dropped += len(track_ids_of(previous) - track_ids_of(outcome))
        self.profile._count(outcome)
        outcome.history = next_history(previous, outcome, self._popularity_change).to_json()
        self._write({"record": "outcome", **outcome.to_json()})

    def finish(self) -> MarketProfile:
        self._keep_until(None)
        while self._held is not None:  # previous outcomes after the last listed artist
            self._drop(self._held)
            self._held, self._held_line = next(self._previous, (None, ""))
        self._write(
            {
                "record": "end",
                "outcomes": self.profile.outcomes,
                "tracks": self.profile.tracks,
                "touched": None if self.touched is None else sorted(self.touched),
                "finished_at": utc_now_iso(),
            }
        )
        self.profile.finish()
        return self.profile

    def written(self, pending: PendingObject) -> RawPartition:
        """The partition as written aside, read back whole and compared with what this merge wrote (SHA-256);
        RawPartitionIncomplete if the stored object differs (truncated, lost or altered)."""
        stored = pending.sha256()
        if self._stream is None or stored != self._stream.hexdigest():
            raise RawPartitionIncomplete(
                f"raw top tracks for market {self.market} at {pending.uri} are unusable: the object read back "
                f"(sha256 {stored[:12]}) is not what was written; nothing was published"
            )
        return RawPartition(
            self.market,
            pending.uri,
            pending.open_for_read,
            self._request_record,
            self._end_record,
            self._requested_at,
            self.states,
        )
