"""Checks on `raw_top_tracks`, per market, evaluated inside the asset's step on the merged partition before it
is published: the numbers come from the merge itself (`MarketProfile`), so checking costs no extra read.

Severity: ERROR + blocking where publishing would do harm (outcomes missing or unreadable; nothing but 404s,
which would empty the market): the previous partition stays current and the load does not run. ERROR where data
is wrong but the load copes (malformed tracks); WARN where a person should look (more than 10 tracks,
duplicates, many 404s).
"""

from __future__ import annotations

from dagster import AssetCheckSeverity, MetadataValue

from toptracks_dagster.check_results import CheckOutcome, check_spec
from toptracks_dagster.partitions import country_partitions
from toptracks_dagster.spotify.raw import MAX_TRACKS, MarketProfile

COMPLETE = "raw_top_tracks_complete"
NOT_EMPTY = "raw_top_tracks_not_empty"
SHARE_404 = "raw_top_tracks_404_share"
AT_MOST_10 = "raw_top_tracks_at_most_10"
NO_DUPLICATES = "raw_top_tracks_no_duplicate_tracks"
FIELDS_VALID = "raw_top_tracks_fields_valid"
FRESHNESS_BOUND = "raw_top_tracks_freshness_bound"


def _spec(name: str, description: str, blocking: bool = False):
    return check_spec("raw_top_tracks", name, description, country_partitions, blocking)


RAW_CHECK_SPECS = [
    _spec(
        COMPLETE,
        (
            "ERROR, blocking: the merged partition is complete and readable (every line parses, sorted unique "
            "artists, end record) and every artist this run set out to fetch has exactly one outcome (tracks or "
            "404). Otherwise it is not published: the previous partition stays current."
        ),
        blocking=True,
    ),
    _spec(
        NOT_EMPTY,
        (
            "ERROR, blocking: at least one artist has top tracks. An empty or all-404 partition would make the load "
            "empty the market, so it is not published and the load does not run."
        ),
        blocking=True,
    ),
    _spec(SHARE_404, "WARN: the share of 404 artists stays at or below TOPTRACKS_CHECK_MAX_404_SHARE (10 %)."),
    _spec(AT_MOST_10, "WARN: no fetched artist has more than 10 top tracks (Spotify's documented maximum)."),
    _spec(NO_DUPLICATES, "WARN: no track appears twice in one fetched top list; the load keeps the first."),
    _spec(
        FIELDS_VALID,
        (
            "ERROR: every fetched track has the required TrackObject fields with the right types: id (base62, 22 "
            'characters), name, popularity (integer 0..100), type "track", uri, duration_ms, explicit, is_local, '
            "track_number, disc_number, artists, album, external_urls, preview_url (string or null)."
        ),
    ),
    _spec(
        FRESHNESS_BOUND,
        (
            "WARN: no stored list is older than the freshness bound: with TOPTRACKS_REQUESTS_PER_DAY, the rotation "
            "the budget keeps (ceil(artists x markets / budget) days); without it, TOPTRACKS_FRESHNESS_TARGET_DAYS. "
            "Lists the oldest pairs when broken. Artists with no list yet are counted, not failed: they are always "
            "refreshed first. Cost: none (ages come from the merge)."
        ),
    ),
]


def evaluate_raw_checks(
    profile: MarketProfile, base_metadata: dict, verify_error: str | None, max_404_share: float
) -> list[CheckOutcome]:
    market = profile.market
    return [
        _complete(profile, base_metadata, verify_error),
        _not_empty(profile, base_metadata),
        _share_404(profile, base_metadata, max_404_share),
        CheckOutcome(
            AT_MOST_10,
            profile.over_limit.count == 0,
            AssetCheckSeverity.WARN,
            None
            if not profile.over_limit.count
            else (
                f"{profile.over_limit.count} artist(s) have more than {MAX_TRACKS} top tracks in {market}: "
                "the API no longer matches its documentation; every track is loaded"
            ),
            {
                **base_metadata,
                "artists_over_limit": profile.over_limit.count,
                "longest_list": profile.longest_list,
                "over_limit_sample": MetadataValue.json(profile.over_limit.first),
            },
        ),
        CheckOutcome(
            NO_DUPLICATES,
            profile.duplicate_lists.count == 0,
            AssetCheckSeverity.WARN,
            None
            if not profile.duplicate_lists.count
            else (
                f"{profile.duplicate_lists.count} top list entries in {market} repeat a track; the load "
                "keeps the first occurrence and its rank"
            ),
            {
                **base_metadata,
                "duplicate_entries": profile.duplicate_entries,
                "duplicate_sample": MetadataValue.json(profile.duplicate_lists.first),
            },
        ),
        CheckOutcome(
            FIELDS_VALID,
            profile.invalid_tracks.count == 0,
            AssetCheckSeverity.ERROR,
            None
            if not profile.invalid_tracks.count
            else (
                f"{profile.invalid_tracks.count} of {profile.tracks_checked} fetched tracks in {market} lack "
                "required fields or have wrong types; the load skips tracks without an id and stores a "
                "missing popularity as 0 (flagged popularity_missing)"
            ),
            {
                **base_metadata,
                "tracks_checked": profile.tracks_checked,
                "invalid_tracks": profile.invalid_tracks.count,
                "problems_by_field": MetadataValue.json(profile.problems_by_field),
                "invalid_track_sample": MetadataValue.json(profile.invalid_tracks.first),
            },
        ),
    ]


def _complete(profile: MarketProfile, base: dict, verify_error: str | None) -> CheckOutcome:
    problems = []
    if verify_error:
        problems.append(verify_error)
    if profile.fetched != profile.planned:
        problems.append(f"{profile.planned - profile.fetched} planned artist(s) have no outcome")
    if profile.unexpected_status.count:
        problems.append(f"{profile.unexpected_status.count} outcome(s) are neither tracks (200) nor 404")
    return CheckOutcome(
        COMPLETE,
        not problems,
        AssetCheckSeverity.ERROR,
        None
        if not problems
        else "; ".join(problems) + f". The partition of {profile.market} was not published; "
        "the previous one stays current and the load is blocked.",
        {
            **base,
            "planned_artists": profile.planned,
            "fetched_artists": profile.fetched,
            "outcomes": profile.outcomes,
            "kept_artists": profile.kept,
            "artists_without_list": len(profile.pending_new),
            "artists_without_list_sample": MetadataValue.json(profile.pending_new[:10]),
            "unexpected_status": profile.unexpected_status.count,
            "unexpected_status_sample": MetadataValue.json(profile.unexpected_status.first),
        },
    )


def _not_empty(profile: MarketProfile, base: dict) -> CheckOutcome:
    passed = profile.with_tracks > 0
    return CheckOutcome(
        NOT_EMPTY,
        passed,
        AssetCheckSeverity.ERROR,
        None
        if passed
        else (
            f"no artist has any top track in {profile.market} ({profile.outcomes} outcome(s), {profile.not_found} of "
            "them 404): the partition was not published and the load is blocked, so the table keeps its last good "
            "data for this market"
        ),
        {
            **base,
            "outcomes": profile.outcomes,
            "artists_with_tracks": profile.with_tracks,
            "artists_not_found_404": profile.not_found,
            "tracks": profile.tracks,
        },
    )


def _share_404(profile: MarketProfile, base: dict, threshold: float) -> CheckOutcome:
    share = profile.not_found / profile.outcomes if profile.outcomes else 0.0
    passed = share <= threshold
    return CheckOutcome(
        SHARE_404,
        passed,
        AssetCheckSeverity.WARN,
        None
        if passed
        else (
            f"{profile.not_found} of {profile.outcomes} artists ({100 * share:.1f} %) are unknown to Spotify (404) in "
            f"{profile.market}, above {100 * threshold:.0f} %: the artists table may hold stale or wrong ids"
        ),
        {
            **base,
            "outcomes": profile.outcomes,
            "artists_not_found_404": profile.not_found,
            "share_404_pct": round(100 * share, 2),
            "threshold_pct": round(100 * threshold, 2),
        },
    )


def evaluate_freshness_bound(profile: MarketProfile, base: dict, now: str, bound_days: float) -> CheckOutcome:
    older = profile.older_than(now, bound_days)
    ages = profile.ages_days(now)
    return CheckOutcome(
        FRESHNESS_BOUND,
        older == 0,
        AssetCheckSeverity.WARN,
        None
        if not older
        else (
            f"{older} stored list(s) in {profile.market} are older than the bound of {bound_days:g} day(s) "
            f"(oldest {ages['oldest']} d): the budget does not keep up with the catalogue, or refreshes did not run"
        ),
        {
            **base,
            "freshness_bound_days": bound_days,
            "pairs_older_than_bound": older,
            "list_age_oldest_days": ages["oldest"],
            "artists_without_list": len(profile.pending_new),
            "oldest_pairs": MetadataValue.json(profile.oldest(now)),
        },
    )
