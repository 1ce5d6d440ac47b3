"""Checks on `artist_ids`, evaluated in the asset's step on the list it just read, before it is published.

A failed blocking check keeps the previous snapshot current, so the Spotify and DynamoDB steps never work from
an empty list or from a list that collapsed without consent.
"""

from __future__ import annotations

from collections import Counter

from dagster import AssetCheckSeverity, MetadataValue

from toptracks_dagster.artists_db.ids import ScreenedArtistIds
from toptracks_dagster.check_results import CheckOutcome, check_spec
from toptracks_dagster.common import is_valid_spotify_id
from toptracks_dagster.config import ALLOW_MASS_DELETE_TAG
from toptracks_dagster.partitions import country_partitions

SAMPLE_SIZE = 10  # offending values shown in a result's metadata; the counts always cover all of them
INVALID_SAMPLE_SIZE = 50  # invalid rows are fixed by hand in the source table: show more of them

NOT_EMPTY = "artist_ids_not_empty"
UNIQUE = "artist_ids_unique"
VALID = "artist_ids_valid"
COUNT_STABLE = "artist_ids_count_stable"


def _spec(name: str, description: str, blocking: bool = False):
    return check_spec("artist_ids", name, description, country_partitions, blocking=blocking)


ARTIST_IDS_CHECK_SPECS = [
    _spec(
        NOT_EMPTY,
        (
            "ERROR, blocking: at least one valid artist id. An empty list would make the load delete every item, so "
            "the list is not published and the Spotify and DynamoDB steps do not run."
        ),
        blocking=True,
    ),
    _spec(UNIQUE, "ERROR: no artist id appears twice in the list after trimming."),
    _spec(
        VALID,
        (
            "WARN: every row of the artists table holds a valid Spotify id (base62, 22 characters, after trimming); "
            "invalid rows were skipped and are listed so someone can fix them at the source. ERROR if an invalid id "
            "reached the list, since it would be put into a Spotify URL."
        ),
    ),
    _spec(
        COUNT_STABLE,
        (
            "ERROR, blocking: the number of valid artist ids did not drop by more than TOPTRACKS_MAX_DELETE_SHARE "
            f"(default 20 %) since the previous list, unless the run has the tag {ALLOW_MASS_DELETE_TAG}=true. A "
            "sudden drop usually means a truncated or wrong source table, and the loads would delete the vanished "
            "artists' items. WARN above TOPTRACKS_CHECK_MAX_ID_DROP when below the blocking share."
        ),
        blocking=True,
    ),
]


def evaluate_artist_ids_checks(
    screened: ScreenedArtistIds,
    source_metadata: dict,
    previous_count: int | None,
    max_drop_warn: float,
    max_drop_block: float,
    drop_allowed: bool,
) -> list[CheckOutcome]:
    ids = screened.valid
    counts = Counter(ids)
    repeated = [value for value, count in counts.items() if count > 1]
    leaked = [value for value in ids if not is_valid_spotify_id(value)]
    return [
        CheckOutcome(
            NOT_EMPTY,
            bool(ids),
            AssetCheckSeverity.ERROR,
            None
            if ids
            else (
                f"no valid artist id among {screened.rows} row(s) of the artists table; the "
                "list was not published and fetching and loading are blocked, so the "
                "DynamoDB table keeps its last good data"
            ),
            {
                "valid_ids": len(ids),
                "rows_read": screened.rows,
                "invalid_rows": len(screened.invalid),
                **source_metadata,
            },
        ),
        CheckOutcome(
            UNIQUE,
            not repeated,
            AssetCheckSeverity.ERROR,
            None if not repeated else f"{len(repeated)} artist id(s) appear more than once in the list",
            {
                "repeated_ids": len(repeated),
                "repeated_id_sample": MetadataValue.json(repeated[:SAMPLE_SIZE]),
                "duplicate_rows_collapsed_from_source": screened.duplicates,
                **source_metadata,
            },
        ),
        _valid(screened, leaked, source_metadata),
        _count_stable(len(ids), previous_count, source_metadata, max_drop_warn, max_drop_block, drop_allowed),
    ]


def _valid(screened: ScreenedArtistIds, leaked: list[str], source_metadata: dict) -> CheckOutcome:
    if leaked:
        severity = AssetCheckSeverity.ERROR
        description = f"{len(leaked)} invalid id(s) are in the list: they would reach a URL path"
    elif screened.invalid:
        severity = AssetCheckSeverity.WARN
        description = (
            f"{len(screened.invalid)} row(s) of the artists table hold no valid Spotify artist id and "
            f"were skipped; fix or delete them in {source_metadata.get('source', 'the source table')}"
        )
    else:
        severity, description = AssetCheckSeverity.WARN, None
    return CheckOutcome(
        VALID,
        not leaked and not screened.invalid,
        severity,
        description,
        {
            "rows_read": screened.rows,
            "invalid_rows": len(screened.invalid),
            # repr() of each raw value, as the screening recorded it: shows stray spaces, quotes and bytes.
            "invalid_row_values": MetadataValue.json(screened.invalid[:INVALID_SAMPLE_SIZE]),
            **source_metadata,
        },
    )


def _count_stable(
    current: int, previous: int | None, source_metadata: dict, warn_share: float, block_share: float, allowed: bool
) -> CheckOutcome:
    metadata = {
        "current_ids": current,
        "previous_ids": previous if previous is not None else -1,
        "warn_threshold_pct": round(100 * warn_share, 1),
        "block_threshold_pct": round(100 * block_share, 1),
        "drop_allowed_by_tag": allowed,
        **source_metadata,
    }
    if not previous:
        return CheckOutcome(COUNT_STABLE, True, AssetCheckSeverity.WARN, "no previous list to compare with", metadata)
    drop = (previous - current) / previous
    metadata["drop_pct"] = round(100 * drop, 1)
    if drop > block_share and not allowed:
        return CheckOutcome(
            COUNT_STABLE,
            False,
            AssetCheckSeverity.ERROR,
            (
                f"valid artist ids fell from {previous} to {current} ({100 * drop:.1f} %, more than "
                f"{100 * block_share:.0f} %): the list was not published and nothing was fetched or deleted. If the "
                f"drop is intended, re-run with the run tag {ALLOW_MASS_DELETE_TAG}=true"
            ),
            metadata,
        )
    passed = drop <= warn_share
    return CheckOutcome(
        COUNT_STABLE,
        passed,
        AssetCheckSeverity.WARN,
        None
        if passed
        else (
            f"valid artist ids fell from {previous} to {current} ({100 * drop:.1f} %, "
            f"more than {100 * warn_share:.0f} %)" + ("; allowed for this run by its tag" if drop > block_share else "")
        ),
        metadata,
    )
