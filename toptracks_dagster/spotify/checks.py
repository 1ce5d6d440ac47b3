"""Checks on `raw_top_tracks`, per market, on the merged partition before it is published; the numbers come
from the merge itself (`MarketProfile`), so checking costs no extra read. ERROR + blocking where publishing would
do harm (the previous partition stays current); WARN where a person should look.
"""

from __future__ import annotations

from dagster import AssetCheckSeverity, MetadataValue

from toptracks_dagster.check_results import CheckOutcome, check_spec
from toptracks_dagster.jobs import country_partitions
from toptracks_dagster.spotify.raw import MAX_TRACKS, MarketProfile

COMPLETE = "complete"
NOT_EMPTY = "not_empty"
SHARE_404 = "share_404"
AT_MOST_10 = "at_most_10"
NO_DUPLICATES = "no_duplicates"
FIELDS_VALID = "fields_valid"
FRESHNESS_BOUND = "freshness_bound"
QUARANTINE = "quarantine"
# A partition that fails one of these is not published: its market keeps the previous one. They are not blocking
# checks in Dagster's sense, which would stop every market's load: the other markets go on.
PUBLISH_CHECKS = (COMPLETE, NOT_EMPTY)


def _spec(name: str, description: str, blocking: bool = False):
    return check_spec("raw_top_tracks", name, description, country_partitions, blocking)


RAW_CHECK_SPECS = [
    _spec(COMPLETE, "The merged partition reads back whole and holds every artist it should."),
    _spec(NOT_EMPTY, "At least one artist has top tracks (an empty partition would empty the market)."),
    _spec(SHARE_404, "At most TOPTRACKS_CHECK_MAX_404_SHARE of the artists are unknown to Spotify."),
    _spec(AT_MOST_10, "No fetched artist has more than 10 top tracks, Spotify's documented maximum."),
    _spec(NO_DUPLICATES, "No track appears twice in one fetched list; the load keeps the first."),
    _spec(FIELDS_VALID, "Every fetched track has the fields the table's readers rely on, with the right types."),
    _spec(FRESHNESS_BOUND, "No stored list is older than the freshness bound."),
    _spec(QUARANTINE, "No fetched answer was unusable; such an artist keeps its previous list."),
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
            QUARANTINE,
            profile.quarantined.count == 0,
            AssetCheckSeverity.WARN,
            None
            if not profile.quarantined.count
            else f"{profile.quarantined.count} artist(s) in {market} gave an unusable answer and kept their list",
            {
                **base_metadata,
                "artists_quarantined": profile.quarantined.count,
                "quarantined": MetadataValue.json(profile.quarantined.first),
            },
        ),
        CheckOutcome(
            FIELDS_VALID,
            profile.invalid_tracks.count == 0,
            AssetCheckSeverity.WARN,
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
