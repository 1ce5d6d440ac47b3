"""Local raw storage: objects are published whole or not at all, URIs carry a scheme, and a disk that refuses a
write is named by path and cause while the published object stays as it was."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess

import pytest

from tests.conftest import unavailable
from toptracks_dagster.config import PermanentError
from toptracks_dagster.raw_storage.resources import LocalRawStorage, RawObjectMissing, RawStorageError


def test_local_objects_are_published_whole_or_not_at_all(tmp_path):
    storage = LocalRawStorage(base_dir=str(tmp_path))
    assert storage.uri("a/b.json") == f"file://{tmp_path.resolve()}/a/b.json"
    with pytest.raises(RawObjectMissing), storage.open_for_read("a/b.json"):
        pass
    assert storage.read_small("a/b.json") is None
    with storage.open_for_write("a/b.json") as stream:
        stream.write("one")
    with pytest.raises(ZeroDivisionError), storage.open_for_write("a/b.json") as stream:
        stream.write("two")
        raise ZeroDivisionError
    with storage.write_aside("a/b.json") as (stream, pending):
        stream.write("three")
    assert storage.read_small("a/b.json") == "one"  # written aside: not published yet
    with pending.open_for_read() as stream:
        assert stream.read() == "three"
    assert pending.sha256() == hashlib.sha256(b"three").hexdigest()
    assert pending.uri == storage.uri("a/b.json")
    pending.publish()
    assert storage.read_small("a/b.json") == "three"
    with storage.write_aside("a/b.json") as (stream, pending):
        stream.write("four")
    pending.discard()
    assert storage.read_small("a/b.json") == "three"
    assert os.listdir(tmp_path / "a") == ["b.json"]  # no temp file is left behind
    storage.delete("a/b.json")
    storage.delete("a/b.json")
    assert storage.read_small("a/b.json") is None


def test_an_error_of_the_caller_inside_a_write_keeps_its_own_type(tmp_path):
    storage = LocalRawStorage(base_dir=str(tmp_path))
    with pytest.raises(ConnectionResetError), storage.open_for_write("x.json"):
        raise ConnectionResetError(errno.ECONNRESET, "reset by peer")
    assert storage.read_small("x.json") is None and os.listdir(tmp_path) == []


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 64 KiB tmpfs: a real full disk (needs root)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_and_a_read_only_one_are_named_and_the_published_object_stays(tiny_filesystem):
    storage = LocalRawStorage(base_dir=str(tiny_filesystem))
    with storage.open_for_write("raw/p.jsonl") as stream:
        stream.write("kept\n")
    with pytest.raises(RawStorageError) as raised, storage.open_for_write("raw/p.jsonl") as stream:
        for _ in range(64):
            stream.write("x" * 4096)
    assert isinstance(raised.value, PermanentError)
    assert str(tiny_filesystem / "raw/p.jsonl") in str(raised.value) and "(ENOSPC)" in str(raised.value)
    assert raised.value.__cause__.errno == errno.ENOSPC
    assert storage.read_small("raw/p.jsonl") == "kept\n"
    assert os.listdir(tiny_filesystem / "raw") == ["p.jsonl"]  # the partial temp file is gone

    subprocess.run(["mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
    with pytest.raises(RawStorageError, match=r"\(EROFS\)") as raised, storage.open_for_write("raw/p.jsonl"):
        pass
    assert str(tiny_filesystem / "raw/p.jsonl") in str(raised.value)
    with pytest.raises(RawStorageError, match=r"ledger\.json\.lock: .*\(EROFS\)"):
        storage.update("raw/ledger.json", lambda text: "{}")
    assert storage.read_small("raw/p.jsonl") == "kept\n"
