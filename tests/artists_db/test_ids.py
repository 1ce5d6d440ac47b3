"""Screening of raw `artists.id` values: trimmed, de-duplicated, validated before any URL is built."""

import pytest

from toptracks_dagster.artists_db.resources import id_set_fingerprint, screen_artist_ids
from toptracks_dagster.config import ConfigError, parse_countries

GOOD = "0OdUWJ0sBjDrqHygGUXeCF"
OTHER = "1vCWHaC5f2uS3yhpwWbIA6"


def test_trims_dedupes_and_keeps_order():
    screened = screen_artist_ids([f"  {GOOD}\t", OTHER, GOOD, b"1vCWHaC5f2uS3yhpwWbIA6"])
    assert screened.valid == [GOOD, OTHER]
    assert screened.duplicates == 2
    assert screened.invalid == [] and screened.invalid_rows == 0
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
        GOOD + "\u00a0",  # not ASCII whitespace: the SQL fingerprint would not trim it either
        None,
        12345,
        GOOD[:11] + " " + GOOD[12:],
    ],
)
def test_rejects_anything_not_base62_22(bad):
    screened = screen_artist_ids([bad, GOOD])
    assert screened.valid == [GOOD]
    assert screened.invalid == [repr(bad)] and screened.invalid_rows == 1


def test_invalid_values_are_listed_once_and_counted_always():
    screened = screen_artist_ids(["bad id", "bad id", "other bad"])
    assert screened.invalid == ["'bad id'", "'other bad'"]
    assert screened.invalid_rows == 3


def test_invalid_sample_is_bounded():
    screened = screen_artist_ids(f"bad {n}" for n in range(5000))
    assert screened.invalid_rows == 5000 and len(screened.invalid) == 100


def test_fingerprint_follows_the_set_not_order_or_repeats():
    assert id_set_fingerprint([GOOD, OTHER]) == id_set_fingerprint([OTHER, GOOD, GOOD])
    assert id_set_fingerprint([GOOD]) != id_set_fingerprint([OTHER])
    assert id_set_fingerprint([]).startswith("0-")
    assert screen_artist_ids([f" {GOOD}", "bad", OTHER]).fingerprint == id_set_fingerprint([GOOD, OTHER])


def test_countries_are_parsed_strictly():
    assert parse_countries("us, CA ,US") == ["US", "CA"]
    with pytest.raises(ConfigError, match="USA"):
        parse_countries("US,USA")
    with pytest.raises(ConfigError):
        parse_countries(" , ")
