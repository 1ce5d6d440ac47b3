"""Screening of raw `artists.id` values: trimmed, de-duplicated, validated before any URL is built."""

import pytest

from toptracks_dagster.artists_db.ids import screen_artist_ids
from toptracks_dagster.config import ConfigError, parse_countries

GOOD = "0OdUWJ0sBjDrqHygGUXeCF"
OTHER = "1vCWHaC5f2uS3yhpwWbIA6"


def test_trims_dedupes_and_keeps_order():
    screened = screen_artist_ids([f"  {GOOD}\t", OTHER, GOOD, b"1vCWHaC5f2uS3yhpwWbIA6"])
    assert screened.valid == [GOOD, OTHER]
    assert screened.duplicates == 2
    assert screened.invalid == []
    assert screened.rows == 4


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "short",
        GOOD + "x",
        "../../v1/me/player",
        GOOD[:21] + "/",
        GOOD[:21] + "é",
        None,
        12345,
        GOOD[:11] + " " + GOOD[12:],
    ],
)
def test_rejects_anything_not_base62_22(bad):
    screened = screen_artist_ids([bad, GOOD])
    assert screened.valid == [GOOD]
    assert screened.invalid == [repr(bad)]


def test_invalid_values_are_listed_once():
    screened = screen_artist_ids(["bad id", "bad id", "other bad"])
    assert screened.invalid == ["'bad id'", "'other bad'"]


def test_countries_are_parsed_strictly():
    assert parse_countries("us, CA ,US") == ["US", "CA"]
    with pytest.raises(ConfigError, match="USA"):
        parse_countries("US,USA")
    with pytest.raises(ConfigError):
        parse_countries(" , ")
