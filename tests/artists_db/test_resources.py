"""The artists database on a real MariaDB (and SQLite): streamed reads, an exact fingerprint, named errors."""

from __future__ import annotations

import random
import secrets
import socket
import sqlite3
import string
import zlib

import pymysql
import pytest

from tests.conftest import free_port
from toptracks_dagster.artists_db.resources import (
    ArtistsDatabaseError,
    ArtistsDatabaseUnusable,
    MySQLArtistsDatabase,
    SQLiteArtistsDatabase,
)
from toptracks_dagster.config import PermanentError

BASE62 = string.digits + string.ascii_letters


def mysql_db(artists_table, **fields) -> MySQLArtistsDatabase:
    server = artists_table.server
    settings = {"host": server["host"], "port": server["port"], "user": server["user"], **fields}
    settings.setdefault("password", server["password"])
    return MySQLArtistsDatabase(database=artists_table.database, **settings)


def crc32_collision(seed: int = 7) -> tuple[str, str]:
    """Two distinct valid artist ids with the same CRC32 (a birthday search: ~80,000 tries)."""
    rng, seen = random.Random(seed), {}
    while True:
        candidate = "".join(rng.choices(BASE62, k=22))
        crc = zlib.crc32(candidate.encode())
        if crc in seen and seen[crc] != candidate:
            return seen[crc], candidate
        seen[crc] = candidate


def crc_aggregate(artists_table) -> tuple:
    """The checksum a CRC-based fingerprint would use: blind to an id swapped for a colliding one."""
    with artists_table.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*), BIT_XOR(CRC32(TRIM(id))), SUM(CRC32(TRIM(id))) FROM artists")
        return cursor.fetchone()


def test_sql_fingerprint_equals_the_python_screening_and_sees_a_crc32_collision(artists_table, some_artist_ids):
    first, twin = crc32_collision()
    cased = some_artist_ids[1].swapcase()  # the same letters in another case: another artist
    messy = [
        f"  {some_artist_ids[0]}\t",
        some_artist_ids[0],
        f"\n{some_artist_ids[1]} \r",
        cased,
        some_artist_ids[2] + "\u00a0",
        "../../v1/me",
        "",
        None,
        some_artist_ids[3].lower() + "!",
    ]
    db = mysql_db(artists_table)
    artists_table.set_ids([*messy, first])
    screened = db.read_ids()
    assert screened.valid == [some_artist_ids[0], some_artist_ids[1], cased, first]
    assert screened.duplicates == 1 and screened.invalid_rows == 5 and screened.rows == 10
    before = db.fingerprint()
    assert before == screened.fingerprint and before.startswith("4-")
    crc_before = crc_aggregate(artists_table)

    artists_table.set_ids([*messy, twin])
    assert crc_aggregate(artists_table) == crc_before  # a CRC checksum cannot tell the two sets apart
    after = db.fingerprint()
    assert after != before
    assert after == db.read_ids().fingerprint


def test_fingerprint_follows_the_id_set(artists_table, some_artist_ids):
    artists_table.set_ids(some_artist_ids[:3])
    db = mysql_db(artists_table)
    assert sorted(db.read_ids().valid) == sorted(some_artist_ids[:3])
    before = db.fingerprint()
    assert db.fingerprint() == before
    artists_table.add(some_artist_ids[3])
    assert db.fingerprint() != before
    artists_table.remove(some_artist_ids[3])
    assert db.fingerprint() == before


def test_describe_names_host_port_and_database_never_the_password(artists_table):
    password = secrets.token_urlsafe(16)
    db = mysql_db(artists_table, password=password)
    assert f"{db.host}:{db.port}/{artists_table.database}" in db.describe()
    assert password not in db.describe()


def test_missing_table_is_permanent_and_named(artists_table):
    with artists_table.connect() as connection, connection.cursor() as cursor:
        cursor.execute("DROP TABLE artists")
    db = mysql_db(artists_table)
    for read in (db.read_ids, db.fingerprint):
        with pytest.raises(ArtistsDatabaseUnusable) as raised:
            read()
        assert isinstance(raised.value, PermanentError)
        assert f"{db.host}:{db.port}/{artists_table.database}" in str(raised.value) and "1146" in str(raised.value)


def test_missing_id_column_is_permanent_and_named(artists_table):
    with artists_table.connect() as connection, connection.cursor() as cursor:
        cursor.execute("ALTER TABLE artists DROP COLUMN id")
    db = mysql_db(artists_table)
    with pytest.raises(ArtistsDatabaseUnusable, match=rf"{artists_table.database}.*Unknown column 'id'"):
        db.read_ids()


def test_wrong_password_is_permanent_and_never_shown(artists_table):
    password = secrets.token_urlsafe(16)
    db = mysql_db(artists_table, user="toptracks_nobody", password=password)
    with pytest.raises(ArtistsDatabaseUnusable) as raised:
        db.fingerprint()
    message = str(raised.value)
    assert "1045" in message and f"{db.host}:{db.port}/{artists_table.database}" in message
    assert password not in message


def test_host_down_is_transient_named_and_never_shows_the_password():
    password = secrets.token_urlsafe(16)
    port = free_port()  # nothing listens there
    db = MySQLArtistsDatabase(host="127.0.0.1", port=port, user="etl", password=password, database="production")
    with pytest.raises(ArtistsDatabaseError) as raised:
        db.read_ids()
    assert not isinstance(raised.value, PermanentError)
    assert f"127.0.0.1:{port}/production" in str(raised.value) and password not in str(raised.value)


def test_a_server_that_never_answers_is_an_error_not_a_hang():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections complete, nothing is ever said: the handshake must time out
        port = silent.getsockname()[1]
        db = MySQLArtistsDatabase(
            host="127.0.0.1", port=port, user="etl", database="production", connect_timeout_s=1, read_timeout_s=1
        )
        with pytest.raises(ArtistsDatabaseError, match=rf"127\.0\.0\.1:{port}/production"):
            db.fingerprint()


def test_rows_stream_and_a_killed_connection_is_a_transient_named_error(artists_table):
    with artists_table.connect() as connection, connection.cursor() as cursor:
        cursor.execute("INSERT INTO artists (id) SELECT LPAD(seq, 22, '0') FROM seq_1_to_1000000")
    db = mysql_db(artists_table)
    rows = db.rows()
    assert next(rows) is not None  # the query is running and streaming: most rows are still on the server
    with artists_table.connect() as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
            (artists_table.database,),
        )
        (reader,) = cursor.fetchone()
        cursor.execute(f"KILL {int(reader)}")
    with pytest.raises(ArtistsDatabaseError) as raised:
        for _ in rows:
            pass
    assert not isinstance(raised.value, PermanentError)
    assert f"{db.host}:{db.port}/{artists_table.database}" in str(raised.value)


def test_sqlite_streams_screens_and_names_what_is_missing(tmp_path, some_artist_ids):
    path = tmp_path / "artists.sqlite"
    missing = SQLiteArtistsDatabase(path=str(path))
    with pytest.raises(ArtistsDatabaseUnusable, match=str(path)):
        missing.read_ids()
    assert not path.exists()  # opened read-only: a wrong path never creates an empty database
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE other (id TEXT)")
    with pytest.raises(ArtistsDatabaseUnusable, match="no such table"):
        missing.fingerprint()
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE artists (id TEXT)")
        connection.executemany("INSERT INTO artists VALUES (?)", [(f" {i}",) for i in some_artist_ids] + [("bad",)])
    screened = missing.read_ids()
    assert screened.valid == some_artist_ids and screened.invalid == ["'bad'"]
    assert missing.fingerprint() == screened.fingerprint


def test_the_attention_column_is_read_per_valid_id_and_a_missing_one_is_named(artists_table, tmp_path):
    a, b, c = (secrets.choice(BASE62) * 22 for _ in range(3))
    with artists_table.connect() as connection, connection.cursor() as cursor:
        cursor.execute("ALTER TABLE artists ADD COLUMN followers BIGINT, ADD COLUMN note VARCHAR(20)")
        cursor.executemany(
            "INSERT INTO artists (id, followers, note) VALUES (%s, %s, %s)",
            [(f" {a} ", 1200, "x"), (b, None, "y"), (c, -5, "z"), ("bad", 7, "w")],
        )
    assert mysql_db(artists_table, attention_column="followers").read_ids().attention == {a: 1200.0}
    assert mysql_db(artists_table, attention_column="note").read_ids().attention == {}  # not numbers: none
    with pytest.raises(ArtistsDatabaseUnusable, match="Unknown column 'fans'"):
        mysql_db(artists_table, attention_column="fans").read_ids()
    with pytest.raises(ArtistsDatabaseUnusable, match="not a plain identifier"):
        mysql_db(artists_table, attention_column="id FROM x --").read_ids()
    path = tmp_path / "artists.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE artists (id TEXT, priority REAL)")
        connection.executemany("INSERT INTO artists VALUES (?, ?)", [(a, 2.5), (b, "high"), (c.encode(), 4)])
    assert SQLiteArtistsDatabase(path=str(path), attention_column="priority").read_ids().attention == {a: 2.5, c: 4.0}
    with pytest.raises(ArtistsDatabaseUnusable, match="no such column"):
        SQLiteArtistsDatabase(path=str(path), attention_column="fans").read_ids()


def test_table_name_must_be_an_identifier(artists_table):
    with pytest.raises(ArtistsDatabaseUnusable, match="not a plain identifier"):
        mysql_db(artists_table, table="artists; DROP TABLE x").read_ids()


def test_pymysql_error_codes_this_module_relies_on():
    # The permanent/transient split reads error codes: pin the ones pymysql reports for a refused login.
    assert pymysql.constants.ER.ACCESS_DENIED_ERROR == 1045 and pymysql.constants.ER.NO_SUCH_TABLE == 1146
