"""Checks on `raw_top_tracks`, per country partition: the raw answers are complete, well formed, and worth
loading. They read the partition through `raw_storage`, as the DynamoDB load does.

Severity: ERROR + blocking where loading would do harm (outcomes missing: the load would delete those artists'
items; nothing but 404s: it would empty the market); ERROR where data is wrong but the load copes (malformed
tracks); WARN where a person should look (more than 10 tracks, duplicates, many 404s).
"""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

from collections import Counter
from typing import Callable

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from toptracks_dagster import config
from toptracks_dagster.artists_db.checks import SnapshotUnreadable, read_snapshot
from toptracks_dagster.artists_db.ids import SPOTIFY_ID_RE
from toptracks_dagster.partitioned_checks import partition_results
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.raw_storage.resources import RawObjectMissing, RawStorage
from toptracks_dagster.spotify.assets import raw_top_tracks
from toptracks_dagster.spotify.raw import RawPartition, RawPartitionIncomplete, raw_top_tracks_key

SAMPLE_SIZE = 10  # offending values shown in a result's metadata; the counts always cover all of them
MAX_TRACKS = 10  # Spotify's documented maximum for top-tracks
DEFAULT_MAX_404_SHARE = 0.10  # TOPTRACKS_CHECK_MAX_404_SHARE


# ------------------------------------------------------------------------------------------ reading
class _Unreadable(Exception):
    def __init__(self, message: str, metadata: dict):
        super().__init__(message)
        self.metadata = metadata


def _open(raw_storage: RawStorage, market: str) -> RawPartition:
    try:
        return RawPartition(raw_storage, market)
    except (RawObjectMissing, RawPartitionIncomplete) as error:
        raise _Unreadable(str(error), {
            "market": market,
            "raw_object": MetadataValue.path(raw_storage.uri(raw_top_tracks_key(market))),
            "error": str(error),
        }) from None


def _unreadable_result(error: _Unreadable, severity: AssetCheckSeverity) -> AssetCheckResult:
    return AssetCheckResult(passed=False, severity=severity, description=f"cannot be evaluated: {error}",
                            metadata=error.metadata)


def _base_metadata(raw_storage: RawStorage, raw: RawPartition) -> dict:
    return {
        "market": raw.market,
        "raw_object": MetadataValue.path(raw_storage.uri(raw.key)),
        "fetched_from": str(raw.request.get("started_at", "")),
        "fetched_until": str(raw.end.get("finished_at", "")),
    }


def _tracks(outcome) -> list:
    return outcome.tracks if outcome.status == 200 and isinstance(outcome.tracks, list) else []


# ------------------------------------------------------------------------------------------ checks
def _complete(raw_storage: RawStorage, market: str) -> AssetCheckResult:
    try:
        raw = _open(raw_storage, market)
        snapshot = read_snapshot(raw_storage)
    except _Unreadable as error:
        return _unreadable_result(error, AssetCheckSeverity.ERROR)
    except SnapshotUnreadable as error:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR,
                                description=f"cannot be evaluated: {error}", metadata={"error": str(error)})
    expected = [str(value) for value in snapshot["ids"]]
    wanted = set(expected)
    seen: Counter[str] = Counter()
    unexpected: list[str] = []
    bad_status: list[dict] = []
    bad_status_count = 0
    for outcome in raw.outcomes():
        seen[outcome.artist_id] += 1
        if outcome.artist_id not in wanted and seen[outcome.artist_id] == 1:
            unexpected.append(outcome.artist_id)
        # An outcome is tracks (200, a list) or a missing artist (404), recorded for this market.
        status_ok = (outcome.status == 200 and isinstance(outcome.tracks, list)) or outcome.status == 404
        if not status_ok or outcome.market != market:
            bad_status_count += 1
            if len(bad_status) < SAMPLE_SIZE:
                bad_status.append({"artist_id": outcome.artist_id, "status": outcome.status, "market": outcome.market})
    missing = [artist for artist in expected if artist not in seen]
    repeated = [artist for artist, count in seen.items() if count > 1]
    passed = not (missing or repeated or unexpected or bad_status_count)
    problems = []
    if missing:
        problems.append(f"{len(missing)} valid artist(s) have no outcome")
    if repeated:
        problems.append(f"{len(repeated)} artist(s) have more than one outcome")
    if unexpected:
        problems.append(f"{len(unexpected)} outcome(s) are for artists not in the artist id snapshot")
    if bad_status_count:
        problems.append(f"{bad_status_count} outcome(s) are neither tracks (200) nor 404 for {market}")
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=None if passed else (
            "; ".join(problems) + f". Re-materialize `raw_top_tracks` for {market}; the DynamoDB load is blocked "
            "because it would delete the items of artists without an outcome."
        ),
        metadata={
            **_base_metadata(raw_storage, raw),
            "snapshot_read_at": str(snapshot.get("read_at", "")),
            "expected_artists": len(expected),
            "outcomes": sum(seen.values()),
            "artists_without_outcome": len(missing),
            "artists_without_outcome_sample": MetadataValue.json(missing[:SAMPLE_SIZE]),
            "artists_with_several_outcomes": len(repeated),
            "artists_with_several_outcomes_sample": MetadataValue.json(repeated[:SAMPLE_SIZE]),
            "unexpected_artists": len(unexpected),
            "unexpected_artist_sample": MetadataValue.json(unexpected[:SAMPLE_SIZE]),
            "unexpected_status": bad_status_count,
            "unexpected_status_sample": MetadataValue.json(bad_status),
        },
    )


def _not_empty(raw_storage: RawStorage, market: str) -> AssetCheckResult:
    try:
        raw = _open(raw_storage, market)
    except _Unreadable as error:
        return _unreadable_result(error, AssetCheckSeverity.ERROR)
    outcomes = not_found = with_tracks = tracks = 0
    for outcome in raw.outcomes():
        outcomes += 1
        not_found += outcome.status == 404
        count = len(_tracks(outcome))
        with_tracks += count > 0
        tracks += count
    passed = with_tracks > 0
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        description=None if passed else (
            f"no artist has any top track in {market} ({outcomes} outcome(s), {not_found} of them 404): the "
            "DynamoDB load is blocked so the table keeps its last good data for this market"
        ),
        metadata={
            **_base_metadata(raw_storage, raw),
            "outcomes": outcomes,
            "artists_with_tracks": with_tracks,
            "artists_not_found_404": not_found,
            "artists_with_empty_list": outcomes - not_found - with_tracks,
            "tracks": tracks,
        },
    )


def _not_found_share(raw_storage: RawStorage, market: str) -> AssetCheckResult:
    try:
        raw = _open(raw_storage, market)
    except _Unreadable as error:
        return _unreadable_result(error, AssetCheckSeverity.WARN)
    threshold = config.env_float("TOPTRACKS_CHECK_MAX_404_SHARE", DEFAULT_MAX_404_SHARE)
    outcomes = 0
    not_found: list[str] = []
    for outcome in raw.outcomes():
        outcomes += 1
        if outcome.status == 404:
            not_found.append(outcome.artist_id)
    share = len(not_found) / outcomes if outcomes else 0.0
    passed = share <= threshold
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        description=None if passed else (
            f"{len(not_found)} of {outcomes} artists ({100 * share:.1f} %) are unknown to Spotify (404) in "
            f"{market}, above {100 * threshold:.0f} %: the artists table may hold stale or wrong ids"
        ),
        metadata={
            **_base_metadata(raw_storage, raw),
            "outcomes": outcomes,
            "artists_not_found_404": len(not_found),
            "share_404_pct": round(100 * share, 2),
            "threshold_pct": round(100 * threshold, 2),
            "not_found_sample": MetadataValue.json(not_found[:SAMPLE_SIZE]),
        },
    )


def _at_most_ten(raw_storage: RawStorage, market: str) -> AssetCheckResult:
    try:
        raw = _open(raw_storage, market)
    except _Unreadable as error:
        return _unreadable_result(error, AssetCheckSeverity.WARN)
    too_long: list[dict] = []
    count = longest = 0
    for outcome in raw.outcomes():
        length = len(_tracks(outcome))
        longest = max(longest, length)
        if length > MAX_TRACKS:
            count += 1
            if len(too_long) < SAMPLE_SIZE:
                too_long.append({"artist_id": outcome.artist_id, "tracks": length})
    return AssetCheckResult(
        passed=count == 0,
        severity=AssetCheckSeverity.WARN,
        description=None if count == 0 else (
            f"{count} artist(s) have more than {MAX_TRACKS} top tracks in {market}: the API no longer matches its "
            "documentation; every track is loaded"
        ),
        metadata={
            **_base_metadata(raw_storage, raw),
            "artists_over_limit": count,
            "longest_list": longest,
            "over_limit_sample": MetadataValue.json(too_long),
        },
    )


def _no_duplicate_tracks(raw_storage: RawStorage, market: str) -> AssetCheckResult:
    try:
        raw = _open(raw_storage, market)
    except _Unreadable as error:
        return _unreadable_result(error, AssetCheckSeverity.WARN)
    lists = duplicates = 0
    sample: list[dict] = []
    for outcome in raw.outcomes():
        ranks: dict[str, list[int]] = {}
        for rank, track in enumerate(_tracks(outcome), start=1):
            track_id = track.get("id") if isinstance(track, dict) else None
            if isinstance(track_id, str) and track_id:
                ranks.setdefault(track_id, []).append(rank)
        repeated = {track_id: r for track_id, r in ranks.items() if len(r) > 1}
        if repeated:
            lists += 1
            duplicates += sum(len(r) - 1 for r in repeated.values())
            for track_id, r in repeated.items():
                if len(sample) < SAMPLE_SIZE:
                    sample.append({"artist_id": outcome.artist_id, "track_id": track_id, "ranks": r})
    return AssetCheckResult(
        passed=lists == 0,
        severity=AssetCheckSeverity.WARN,
        description=None if lists == 0 else (
            f"{lists} top list(s) in {market} name the same track more than once; the load keeps the first "
            "occurrence and its rank"
        ),
        metadata={
            **_base_metadata(raw_storage, raw),
            "lists_with_duplicates": lists,
            "duplicate_entries": duplicates,
            "duplicate_sample": MetadataValue.json(sample),
        },
    )


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
    require("artists", lambda v: isinstance(v, list) and bool(v) and all(
        isinstance(a, dict) and isinstance(a.get("id"), str) and isinstance(a.get("name"), str) for a in v
    ), "a non-empty list of artists with id and name")
    # Album names may be "" in real data; the album must still be an object with an id.
    require("album", lambda v: isinstance(v, dict) and isinstance(v.get("id"), str) and isinstance(v.get("name"), str),
            "an album object with id and name")
    require("external_urls", lambda v: isinstance(v, dict), "an object")
    require("preview_url", lambda v: v is None or isinstance(v, str), "a string or null")
    return problems


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fields_valid(raw_storage: RawStorage, market: str) -> AssetCheckResult:
    try:
        raw = _open(raw_storage, market)
    except _Unreadable as error:
        return _unreadable_result(error, AssetCheckSeverity.ERROR)
    checked = invalid = 0
    by_field: Counter[str] = Counter()
    sample: list[dict] = []
    for outcome in raw.outcomes():
        for rank, track in enumerate(_tracks(outcome), start=1):
            checked += 1
            problems = track_problems(track)
            if not problems:
                continue
            invalid += 1
            by_field.update(name for name, _ in problems)
            if len(sample) < SAMPLE_SIZE:
                track_id = track.get("id") if isinstance(track, dict) else None
                sample.append({"artist_id": outcome.artist_id, "rank": rank, "track_id": _shown(track_id),
                               "problems": [f"{name}: {problem}" for name, problem in problems]})
    return AssetCheckResult(
        passed=invalid == 0,
        severity=AssetCheckSeverity.ERROR,
        description=None if invalid == 0 else (
            f"{invalid} of {checked} tracks in {market} lack required fields or have wrong types; the load skips "
            "tracks without an id and stores a missing popularity as 0 (flagged popularity_missing)"
        ),
        metadata={
            **_base_metadata(raw_storage, raw),
            "tracks_checked": checked,
            "invalid_tracks": invalid,
            "problems_by_field": MetadataValue.json(dict(by_field.most_common())),
            "invalid_track_sample": MetadataValue.json(sample),
        },
    )


_PARTITIONED = dict(asset=raw_top_tracks, partitions_def=country_partitions)


@asset_check(
    **_PARTITIONED,
    blocking=True,
    description=(
        "ERROR, blocking: the partition is complete (end record, outcome count) and every valid artist of the "
        "artist id snapshot has exactly one outcome (tracks or 404) for this market, and no other artist has "
        "one. Otherwise the load would delete the items of the artists without an outcome."
    ),
)
def raw_top_tracks_complete(context: AssetCheckExecutionContext, raw_storage: RawStorage):
    yield from partition_results(context, lambda market: _complete(raw_storage, market))


@asset_check(
    **_PARTITIONED,
    blocking=True,
    description=(
        "ERROR, blocking: at least one artist has top tracks. Raw data that is empty or all 404 would make the "
        "load empty the market in DynamoDB, so the load does not run after a failure."
    ),
)
def raw_top_tracks_not_empty(context: AssetCheckExecutionContext, raw_storage: RawStorage):
    yield from partition_results(context, lambda market: _not_empty(raw_storage, market))


@asset_check(
    **_PARTITIONED,
    description="WARN: the share of artists answered 404 stays at or below TOPTRACKS_CHECK_MAX_404_SHARE (default 10 %).",
)
def raw_top_tracks_404_share(context: AssetCheckExecutionContext, raw_storage: RawStorage):
    yield from partition_results(context, lambda market: _not_found_share(raw_storage, market))


@asset_check(**_PARTITIONED, description="WARN: no artist has more than 10 top tracks (Spotify's documented maximum).")
def raw_top_tracks_at_most_10(context: AssetCheckExecutionContext, raw_storage: RawStorage):
    yield from partition_results(context, lambda market: _at_most_ten(raw_storage, market))


@asset_check(
    **_PARTITIONED,
    description="WARN: no track appears twice in one (artist, market) top list; the load keeps the first.",
)
def raw_top_tracks_no_duplicate_tracks(context: AssetCheckExecutionContext, raw_storage: RawStorage):
    yield from partition_results(context, lambda market: _no_duplicate_tracks(raw_storage, market))


@asset_check(
    **_PARTITIONED,
    description=(
        "ERROR: every track has the required TrackObject fields with the right types: id (base62, 22 "
        "characters), name, popularity (integer 0..100), type \"track\", uri, duration_ms, explicit, is_local, "
        "track_number, disc_number, artists, album, external_urls, preview_url (string or null)."
    ),
)
def raw_top_tracks_fields_valid(context: AssetCheckExecutionContext, raw_storage: RawStorage):
    yield from partition_results(context, lambda market: _fields_valid(raw_storage, market))


raw_top_tracks_checks = [
    raw_top_tracks_complete,
    raw_top_tracks_not_empty,
    raw_top_tracks_404_share,
    raw_top_tracks_at_most_10,
    raw_top_tracks_no_duplicate_tracks,
    raw_top_tracks_fields_valid,
]
