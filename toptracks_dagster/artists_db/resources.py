"""The artists database: `SELECT id FROM artists` on MySQL/RDS (pymysql), or an embedded SQLite for `local`."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import closing
from pathlib import Path

import pymysql
from dagster import ConfigurableResource, get_dagster_logger
from pydantic import Field

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ArtistsDatabaseError(RuntimeError):
    """The artists database is unreachable or misconfigured; the message names where, never a password."""


class ArtistsDatabase(ConfigurableResource, ABC):
    """Reads artist ids. Subclasses differ only in how they connect."""

    table: str = Field(default="artists", description="Table holding one artist per row in column `id`.")

    @abstractmethod
    def fetch_raw_ids(self) -> list[object]:
        """Every `id` value of the table, untouched (screening happens in the asset)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the ids come from, for messages and metadata (no secrets)."""

    def id_set_fingerprint(self) -> str:
        """A digest of the set of ids: equal digests mean nothing to do for the sensor."""
        digest = hashlib.sha256()
        for value in sorted(str(v).strip() for v in self.fetch_raw_ids()):
            digest.update(value.encode() + b"\n")
        return digest.hexdigest()

    def _checked_table(self) -> str:
        # The table name is configuration, not data, but it is still spliced into SQL: allow identifiers only.
        if not _IDENTIFIER_RE.match(self.table):
            raise ArtistsDatabaseError(f"artists table name {self.table!r} is not a plain SQL identifier")
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
    connect_attempts: int = 3

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

    def _connect(self) -> pymysql.connections.Connection:
        log = get_dagster_logger()
        last_error: Exception | None = None
        for attempt in range(1, self.connect_attempts + 1):
            try:
                return pymysql.connect(
                    host=self.host,
                    port=self.port,
                    user=self.user,
                    password=self._password() or "",
                    database=self.database,
                    connect_timeout=self.connect_timeout_s,
                    read_timeout=60,
                    charset="utf8mb4",
                    ssl_ca=self.ssl_ca,
                    ssl_verify_identity=bool(self.ssl_ca),
                )
            except pymysql.err.OperationalError as error:
                last_error = error
                code = error.args[0] if error.args else None
                if code in (1044, 1045, 1049):  # access denied / unknown database: retrying will not help
                    break
                if attempt < self.connect_attempts:
                    log.warning(
                        f"artists database: connection attempt {attempt} to {self.host}:{self.port} failed "
                        f"({error}); retrying"
                    )
                    time.sleep(0.5 * 2 ** (attempt - 1))
        raise ArtistsDatabaseError(f"cannot connect to {self.describe()}: {last_error}") from None

    def _query(self, sql: str) -> list[tuple]:
        with closing(self._connect()) as connection, connection.cursor() as cursor:
            try:
                cursor.execute(sql)
            except pymysql.err.ProgrammingError as error:
                if error.args and error.args[0] == 1146:
                    raise ArtistsDatabaseError(f"table `{self.table}` does not exist in {self.describe()}") from None
                raise ArtistsDatabaseError(f"query failed on {self.describe()}: {error}") from None
            return list(cursor.fetchall())

    def fetch_raw_ids(self) -> list[object]:
        return [row[0] for row in self._query(f"SELECT id FROM `{self._checked_table()}`")]

    def id_set_fingerprint(self) -> str:
        # One aggregate row instead of the whole table: the sensor runs this every tick.
        table = self._checked_table()
        ((count, xor_crc, sum_crc),) = self._query(
            f"SELECT COUNT(*), BIT_XOR(CRC32(TRIM(id))), COALESCE(SUM(CRC32(TRIM(id))), 0) FROM `{table}`"
        )
        return f"{count}:{xor_crc}:{sum_crc}"


class SQLiteArtistsDatabase(ArtistsDatabase):
    """The embedded default: a SQLite file seeded with demo artists, so `local` needs no server."""

    path: str

    def describe(self) -> str:
        return f"sqlite://{self.path} table `{self.table}`"

    def fetch_raw_ids(self) -> list[object]:
        if not Path(self.path).exists():
            raise ArtistsDatabaseError(
                f"embedded artists database {self.path} does not exist; "
                "run through `toptracks run` or `toptracks dev`, which seed it"
            )
        with closing(sqlite3.connect(self.path)) as connection:
            try:
                rows = connection.execute(f"SELECT id FROM {self._checked_table()}").fetchall()
            except sqlite3.OperationalError as error:
                raise ArtistsDatabaseError(f"{self.describe()}: {error}") from None
        return [row[0] for row in rows]
