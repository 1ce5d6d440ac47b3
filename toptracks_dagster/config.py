"""The config contract: every environment variable the project reads, in one place, validated where it is read.

Secrets (SPOTIFY_CLIENT_SECRET, MYSQL_PASSWORD, AWS keys) are never read here: resources take them through
`dagster.EnvVar`, so Dagster resolves them at run time and never shows them in the UI, logs or events.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager

LOCAL = "local"
PROD = "prod"

DEFAULT_COUNTRIES = "US,CA"
DEFAULT_REGION = "ap-northeast-2"
DEFAULT_TABLE = "top_tracks"
DEFAULT_RAW_DIR = "./data/raw"
DEFAULT_SPOTIFY_API_BASE_URL = "https://api.spotify.com/v1"
DEFAULT_SPOTIFY_TOKEN_URL = "https://accounts.spotify.com/api/token"

# Fallback addresses of the embedded stack for the `local` deployment when its variables are unset
# (`toptracks run` / `toptracks dev` start the stack on free ports and export the real ones).
LOCAL_SPOTIFY_PORT = 8787
LOCAL_DYNAMODB_PORT = 8788
DEFAULT_LOCAL_ARTISTS_DB = "./data/local/artists.sqlite"

_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$")


class PermanentError(RuntimeError):
    """An error no retry can fix (bad input, credentials, access, a full disk): the run stops at once.

    Every such error of the project is one of these; `permanent_errors()` turns it into the one Dagster failure
    that is not retried. Anything else a step raises is transient and left to the step's RetryPolicy.
    """


class ConfigError(PermanentError, ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@contextmanager
def permanent_errors():
    """Inside an asset: a PermanentError becomes `Failure(allow_retries=False)` with the error's message."""
    from dagster import Failure

    try:
        yield
    except PermanentError as error:
        raise Failure(description=str(error), allow_retries=False) from None


def env(name: str, default: str | None = None) -> str | None:
    """An environment variable, with blank treated as unset."""
    value = os.environ.get(name, "").strip()
    return value or default


def is_set(name: str) -> bool:
    """Whether the variable exists at all (an empty value included: an empty password is a password)."""
    return name in os.environ


def env_bool(name: str, default: bool = False) -> bool:
    value = env(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    value = env(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {number}")
    return number


def env_float(name: str, default: float, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite number (NaN and infinities are refused: they would silently switch a limit off)."""
    value = env(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {number:g}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name} must be at most {maximum:g}, got {number:g}")
    return number


def deployment() -> str:
    value = (env("DAGSTER_DEPLOYMENT", LOCAL) or LOCAL).lower()
    if value not in (LOCAL, PROD):
        raise ConfigError(f"DAGSTER_DEPLOYMENT must be 'local' or 'prod', got {value!r}")
    return value


def parse_countries(text: str) -> list[str]:
    """'us, CA,US' -> ['US', 'CA']: ISO 3166-1 alpha-2 market codes, upper-cased, de-duplicated, in order."""
    countries: list[str] = []
    for part in text.split(","):
        code = part.strip().upper()
        if not code:
            continue
        if not _COUNTRY_RE.match(code):
            raise ConfigError(f"TOPTRACKS_COUNTRIES: {part.strip()!r} is not a two-letter market code")
        if code not in countries:
            countries.append(code)
    if not countries:
        raise ConfigError("TOPTRACKS_COUNTRIES names no market")
    return countries


def countries() -> list[str]:
    if "TOPTRACKS_COUNTRIES" in os.environ and not env("TOPTRACKS_COUNTRIES"):
        raise ConfigError("TOPTRACKS_COUNTRIES is set but empty: name at least one market (e.g. US,CA) or unset it")
    return parse_countries(env("TOPTRACKS_COUNTRIES", DEFAULT_COUNTRIES) or DEFAULT_COUNTRIES)


def table_name() -> str:
    name = env("TOPTRACKS_TABLE", DEFAULT_TABLE) or DEFAULT_TABLE
    if not re.fullmatch(r"[A-Za-z0-9_.-]{3,255}", name):
        raise ConfigError(f"TOPTRACKS_TABLE {name!r} is not a valid DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)")
    return name


def region() -> str:
    value = env("AWS_REGION", DEFAULT_REGION) or DEFAULT_REGION
    if not _REGION_RE.match(value):
        raise ConfigError(f"AWS_REGION {value!r} is not an AWS region name (e.g. ap-northeast-2, us-east-1)")
    return value


# ------------------------------------------------------------------------------------------ knobs
def spotify_concurrency(default: int) -> int:
    return env_int("SPOTIFY_CONCURRENCY", default, minimum=1)


def spotify_requests_per_second(default: float) -> float:
    return env_float("SPOTIFY_REQUESTS_PER_SECOND", default, minimum=0.0)


def spotify_max_retry_after_s() -> float:
    return env_float("SPOTIFY_MAX_RETRY_AFTER_S", 300.0, minimum=0.0)


def dynamodb_write_concurrency(default: int = 8) -> int:
    return env_int("DYNAMODB_WRITE_CONCURRENCY", default, minimum=1)


def sensor_interval_s() -> int:
    return env_int("TOPTRACKS_SENSOR_INTERVAL_S", 60, minimum=1)


def max_delete_share() -> float:
    """Share of a market's items (or of the artist list) a refresh may delete without explicit consent."""
    return env_float("TOPTRACKS_MAX_DELETE_SHARE", 0.2, minimum=0.0, maximum=1.0)


def check_max_id_drop() -> float:
    return env_float("TOPTRACKS_CHECK_MAX_ID_DROP", 0.2, minimum=0.0, maximum=1.0)


def check_max_404_share() -> float:
    return env_float("TOPTRACKS_CHECK_MAX_404_SHARE", 0.1, minimum=0.0, maximum=1.0)


def check_sample_size() -> int:
    """Artists outside a run's changes whose items the run's table check reads back (a rotating sample)."""
    return env_int("TOPTRACKS_CHECK_SAMPLE_SIZE", 20, minimum=0)


def requests_per_day() -> int | None:
    """TOPTRACKS_REQUESTS_PER_DAY: Spotify Web API requests allowed per UTC day, retries and 404s included
    (token requests go to the accounts host and are not counted). Unset = no budget (runs are not capped)."""
    value = env("TOPTRACKS_REQUESTS_PER_DAY")
    if value is None:
        return None
    return env_int("TOPTRACKS_REQUESTS_PER_DAY", 0, minimum=1)


def freshness_target_days() -> float:
    """TOPTRACKS_FRESHNESS_TARGET_DAYS: the oldest stored list the team accepts. `toptracks plan` says whether the
    budget keeps it; `top_tracks`' FreshnessPolicy fails when no load happened for this long."""
    return env_float("TOPTRACKS_FRESHNESS_TARGET_DAYS", 7.0, minimum=1 / 24)


def refresh_policy() -> str:
    """TOPTRACKS_REFRESH_POLICY: how the rolling refresh spends the budget: `adaptive` (the default: pairs whose
    lists change often and that readers look at first) or `uniform` (the stalest pairs first)."""
    value = (env("TOPTRACKS_REFRESH_POLICY", "adaptive") or "adaptive").strip().lower()
    if value not in ("adaptive", "uniform"):
        raise ConfigError(f"TOPTRACKS_REFRESH_POLICY must be adaptive or uniform, not {value!r}")
    return value


def max_list_age_days() -> float | None:
    """TOPTRACKS_MAX_LIST_AGE_DAYS: the hard bound of the adaptive policy, every pair refreshed at least this often;
    unset: TOPTRACKS_FRESHNESS_TARGET_DAYS. Never shorter than the budget's uniform rotation (spotify/budget.py)."""
    if env("TOPTRACKS_MAX_LIST_AGE_DAYS") is None:
        return None
    return env_float("TOPTRACKS_MAX_LIST_AGE_DAYS", 0.0, minimum=1 / 24)


def popularity_change() -> int:
    """TOPTRACKS_POPULARITY_CHANGE: a refetched list counts as changed for the change-rate estimate when its ranked
    track ids differ or a track's popularity moved by more than this many points (default 5)."""
    return env_int("TOPTRACKS_POPULARITY_CHANGE", 5, minimum=0)


def attention_column() -> str | None:
    """TOPTRACKS_ATTENTION_COLUMN: a numeric column of the artists table (followers, a priority) that says how much
    readers look at each artist; the adaptive policy then weighs pairs by it instead of by popularity. Checked
    where it is spliced into SQL (artists_db/resources.py), like the table name."""
    return env("TOPTRACKS_ATTENTION_COLUMN")


# The run tag that consents to a mass deletion for one run (see max_delete_share).
ALLOW_MASS_DELETE_TAG = "toptracks/allow_mass_delete"


def mass_delete_allowed(tags: dict) -> bool:
    return str(tags.get(ALLOW_MASS_DELETE_TAG, "")).strip().lower() in {"1", "true", "yes"}


TABLE_TEMPLATE = "deploy/cloudformation/top_tracks.yaml"


def create_table() -> bool:
    """TOPTRACKS_CREATE_TABLE (default true): may a run create the table when it is missing?

    `false` is for production, where the table comes from deploy/cloudformation/top_tracks.yaml and the run
    role has no dynamodb:CreateTable: a missing table is then an error that names that template.
    """
    return env_bool("TOPTRACKS_CREATE_TABLE", True)
