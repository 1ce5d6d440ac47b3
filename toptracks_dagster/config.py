"""The config contract (BRIEF.md section 3): every environment variable the project reads, in one place.

Secrets (SPOTIFY_CLIENT_SECRET, MYSQL_PASSWORD, AWS keys) are never read here: resources take them through
`dagster.EnvVar`, so Dagster resolves them at run time and never shows them in the UI, logs or events.
"""

from __future__ import annotations

import os
import re

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


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def env(name: str, default: str | None = None) -> str | None:
    """An environment variable, with blank treated as unset."""
    value = os.environ.get(name, "").strip()
    return value or default


def env_bool(name: str, default: bool = False) -> bool:
    value = env(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def env_int(name: str, default: int) -> int:
    value = env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = env(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


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
    return parse_countries(env("TOPTRACKS_COUNTRIES", DEFAULT_COUNTRIES) or DEFAULT_COUNTRIES)


def table_name() -> str:
    name = env("TOPTRACKS_TABLE", DEFAULT_TABLE) or DEFAULT_TABLE
    if not re.fullmatch(r"[A-Za-z0-9_.-]{3,255}", name):
        raise ConfigError(f"TOPTRACKS_TABLE {name!r} is not a valid DynamoDB table name (3-255 of A-Z a-z 0-9 _ . -)")
    return name


def region() -> str:
    return env("AWS_REGION", DEFAULT_REGION) or DEFAULT_REGION


TABLE_TEMPLATE = "deploy/cloudformation/top_tracks.yaml"


def create_table() -> bool:
    """TOPTRACKS_CREATE_TABLE (default true): may a run create the table when it is missing?

    `false` is for production, where the table comes from deploy/cloudformation/top_tracks.yaml and the run
    role has no dynamodb:CreateTable: a missing table is then an error that names that template.
    """
    return env_bool("TOPTRACKS_CREATE_TABLE", True)
