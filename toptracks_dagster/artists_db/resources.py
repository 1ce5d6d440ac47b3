"""The artists database: `SELECT id FROM artists` on MySQL/RDS (pymysql), or an embedded SQLite for `local`.
Rows are streamed and screened as they arrive, so memory holds the id list and nothing per row."""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from abc import ABC, abstractmethod
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pymysql
import pymysql.cursors
from dagster import ConfigurableResource
from pydantic import Field

from toptracks_dagster.common import is_valid_spotify_id
from toptracks_dagster.config import PermanentError

# Trimmed the same way in Python and in SQL: ASCII whitespace only, so both sides agree on every value.
WHITESPACE = " \t\n\r\x0b\x0c"
_SQL_VALID_ID = f"^[{WHITESPACE}]*[0-9A-Za-z]{{22}}[{WHITESPACE}]*$"
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_INVALID_SAMPLE = 100  # distinct invalid values kept to show; every invalid row is counted
_BATCH = 5000  # rows per fetchmany
# MySQL errors no retry fixes: access denied (db, user, table, column), unknown database, table or column.
_PERMANENT_CODES = {1044, 1045, 1049, 1054, 1142, 1143, 1146}


class ArtistsDatabaseError(RuntimeError):
    """The artists database could not be read; the message names host:port/database and the cause."""


class ArtistsDatabaseUnusable(ArtistsDatabaseError, PermanentError):
    """Credentials, database, table or column are wrong: retrying cannot help."""


@dataclass
class ScreenedArtistIds:
    valid: list[str] = field(default_factory=list)  # trimmed, unique, in first-seen order
    invalid: list[str] = field(default_factory=list)  # repr() of the first distinct rejected values
    invalid_rows: int = 0
    duplicates: int = 0  # rows that repeated an id already seen (after trimming)
    rows: int = 0
    attention: dict[str, float] | None = None  # valid id -> the attention column's number, when one is named

    @property
    def fingerprint(self) -> str:
        return id_set_fingerprint(self.valid)


def _screened(value: object) -> str | None:
    """One raw `artists.id` value as a valid artist id (decoded, trimmed), or None."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    text = value.strip(WHITESPACE) if isinstance(value, str) else None
    return text if text is not None and is_valid_spotify_id(text) else None


def screen_artist_ids(values: Iterable[object]) -> ScreenedArtistIds:
    """Trim, de-duplicate and validate raw `artists.id` values (str, bytes or anything a driver returns)."""
    screened = ScreenedArtistIds()
    seen: set[str] = set()
    for value in values:
        screened.rows += 1
        text = _screened(value)
        if text is None:
            screened.invalid_rows += 1
            shown = repr(value)[:80]
            if len(screened.invalid) < _INVALID_SAMPLE and shown not in screened.invalid:
                screened.invalid.append(shown)
        elif text in seen:
            screened.duplicates += 1
        else:
            seen.add(text)
            screened.valid.append(text)
    return screened


def _format_fingerprint(count: int, total: int) -> str:
    return f"{count}-{total % 2**64:016x}"


def id_set_fingerprint(ids: Iterable[str]) -> str:
    """Count and sum mod 2^64 of the first 64 bits of each distinct id's SHA-256: unlike a CRC checksum, no id
    can be swapped for a crafted one without changing it."""
    distinct = set(ids)
    return _format_fingerprint(
        len(distinct), sum(int(hashlib.sha256(i.encode()).hexdigest()[:16], 16) for i in distinct)
    )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and 0 <= number <= 1e300 else None


class ArtistsDatabase(ConfigurableResource, ABC):
    """Reads artist ids. Subclasses differ in how they connect and stream rows."""

    table: str = Field(default="artists", description="Table holding one artist per row in column `id`.")
    attention_column: str | None = Field(
        default=None,
        description="A numeric column saying how much readers look at the artist (followers, a priority); the "
        "rolling refresh weighs pairs by it instead of by popularity",
    )

    @abstractmethod
    def describe(self) -> str:
        """Where the ids come from, for messages and metadata (no secrets)."""

    @abstractmethod
    def _select(self, sql: str) -> Iterator[tuple]:
        """Rows of one query, `{table}` spliced in, streamed."""

    def rows(self) -> Iterator[object]:
        """Every `id` value of the table, streamed."""
        return (row[0] for row in self._select("SELECT id FROM {table}"))

    def read_ids(self) -> ScreenedArtistIds:
        """The screened ids; with `attention_column`, each valid id's number in it too, from the same query."""
        column = self.attention_column
        if not column:
            return screen_artist_ids(self.rows())
        if not _IDENTIFIER_RE.match(column):
            raise ArtistsDatabaseUnusable(f"{self.describe()}: attention column {column!r} is not a plain identifier")
        attention: dict[str, float] = {}

        def ids() -> Iterator[object]:
            for value, weight in self._select(f"SELECT id, {column} FROM {{table}}"):
                number, artist_id = _number(weight), _screened(value)
                if number is not None and artist_id is not None:
                    attention[artist_id] = number
                yield value

        screened = screen_artist_ids(ids())
        screened.attention = attention
        return screened

    def fingerprint(self) -> str:
        """The screened id set's fingerprint; equal to `read_ids().fingerprint`."""
        return screen_artist_ids(self.rows()).fingerprint

    def _checked_table(self) -> str:
        # The table name is configuration, yet spliced into SQL: plain identifiers only.
        if not _IDENTIFIER_RE.match(self.table):
            raise ArtistsDatabaseUnusable(f"{self.describe()}: table name {self.table!r} is not a plain identifier")
        return self.table


class MySQLArtistsDatabase(ArtistsDatabase):
    """MySQL / Amazon RDS over pymysql, with a password or an RDS IAM auth token."""

    host: str
    port: int = 3306
    user: str
    password: str | None = Field(default=None, description="Use EnvVar('MYSQL_PASSWORD'); unused with IAM auth.")
    database: str = "production"
    iam_auth: bool = Field(default=False, description="Authenticate with an RDS IAM token (dagster-aws RDSResource).")
    region_name: str | None = Field(default=None, description="AWS region for the IAM token.")
    ssl_ca: str | None = Field(default=None, description="CA bundle for TLS (required by RDS IAM auth).")
    connect_timeout_s: int = 10
    read_timeout_s: int = Field(default=60, description="Longest wait for one answer packet of the server.")

    def describe(self) -> str:
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database} table `{self.table}`"

    def _password(self) -> str | None:
        if not self.iam_auth:
            return self.password
        # Imported here: only IAM users need boto3's RDS client, and it is slow to import.
        from dagster_aws.rds import RDSResource

        with RDSResource(region_name=self.region_name).get_rds_client() as rds:
            return rds.generate_db_auth_token(
                DBHostname=self.host, Port=self.port, DBUsername=self.user, Region=self.region_name
            )

    def _error(self, error: Exception) -> ArtistsDatabaseError:
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        kind = ArtistsDatabaseUnusable if code in _PERMANENT_CODES else ArtistsDatabaseError
        return kind(f"artists database {self.host}:{self.port}/{self.database} (table `{self.table}`): {error}")

    def _execute(self, sql: str, args=None) -> Iterator[tuple]:
        """Rows of one query over an unbuffered cursor, with every database error named by host and database."""
        table = self._checked_table()
        try:
            connection = pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self._password() or "",
                database=self.database,
                connect_timeout=self.connect_timeout_s,
                read_timeout=self.read_timeout_s,
                write_timeout=self.read_timeout_s,
                charset="utf8mb4",
                ssl_ca=self.ssl_ca,
                ssl_verify_identity=bool(self.ssl_ca),
                cursorclass=pymysql.cursors.SSCursor,
            )
        except pymysql.err.MySQLError as error:
            raise self._error(error) from None
        cursor = connection.cursor()  # no `with`: closing an SSCursor reads all rows left, even on a dead socket
        try:
            cursor.execute(sql.format(table=table), args)
            while batch := cursor.fetchmany(_BATCH):
                yield from batch
        except pymysql.err.MySQLError as error:
            if cursor._result is not None:  # pymysql would drain the dead connection again when collecting it
                cursor._result.unbuffered_active = False
            raise self._error(error) from None
        finally:
            if connection.open:
                connection.close()

    def _select(self, sql: str) -> Iterator[tuple]:
        return self._execute(sql)

    def fingerprint(self) -> str:
        # One aggregate row instead of the table: the sensor runs this every tick. Same screening as Python's.
        ((count, total),) = self._execute(
            "SELECT COUNT(*), COALESCE(SUM(CAST(CONV(LEFT(SHA2(i, 256), 16), 16, 10) AS UNSIGNED)), 0) FROM "
            "(SELECT DISTINCT CAST(REGEXP_SUBSTR(id, '[0-9A-Za-z]{{22}}') AS BINARY) AS i "
            "FROM `{table}` WHERE id REGEXP BINARY %s) AS screened",
            (_SQL_VALID_ID,),
        )
        return _format_fingerprint(int(count), int(total))


class SQLiteArtistsDatabase(ArtistsDatabase):
    """The embedded default: a SQLite file seeded with demo artists, so `local` needs no server. With
    `local_stack` and no path, the local stack's file, found (or the stack started) when it is first read."""

    path: str = ""
    local_stack: bool = False
    busy_timeout_s: float = 10.0

    def _path(self) -> str:
        if self.path or not self.local_stack:
            return self.path
        from toptracks_dagster.dev.stack import ensure_local_stack

        return ensure_local_stack()["TOPTRACKS_LOCAL_ARTISTS_DB"]

    def describe(self) -> str:
        return f"sqlite://{self.path or 'the local stack'} table `{self.table}`"

    def _select(self, sql: str) -> Iterator[tuple]:
        table = self._checked_table()
        path = self._path()
        if not Path(path).exists():
            raise ArtistsDatabaseUnusable(f"sqlite://{path} does not exist: `toptracks run` and `dev` seed it")
        try:
            uri = f"{Path(path).resolve().as_uri()}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s)) as connection:
                cursor = connection.execute(sql.format(table=table))
                while batch := cursor.fetchmany(_BATCH):
                    yield from batch
        except sqlite3.Error as error:
            permanent = str(error).startswith(("no such table", "no such column"))
            kind = ArtistsDatabaseUnusable if permanent else ArtistsDatabaseError
            raise kind(f"{self.describe()}: {error}") from None
