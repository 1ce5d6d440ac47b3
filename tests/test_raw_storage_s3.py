"""S3 raw storage against moto's S3 server on 127.0.0.1: objects round-trip with an s3:// URI, and budget
reservations racing from two processes are kept exact by conditional writes."""

from __future__ import annotations

import threading

import boto3
import pytest
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from tests.test_budget_ledger import race, storage_for
from toptracks_dagster.raw_storage.resources import RawObjectMissing
from toptracks_dagster.spotify.budget import spent_on, utc_now


@pytest.fixture
def s3_endpoint():
    """One request at a time (threaded=False): moto checks If-Match and writes in two steps, which real S3 does
    atomically, so a threaded moto would let racing conditional writes both pass."""
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    ).create_bucket(Bucket="budget")
    yield endpoint
    server.shutdown()
    thread.join(10)


def test_s3_objects_round_trip_and_are_published_only_when_asked(s3_endpoint):
    storage = storage_for(s3_endpoint)
    assert storage.uri("raw/p.jsonl") == "s3://budget/raw/p.jsonl"
    assert storage.read_small("raw/p.jsonl") is None
    with storage.open_for_write("raw/p.jsonl") as stream:
        stream.write("one")
    with storage.write_aside("raw/p.jsonl") as (stream, pending):
        stream.write("two")
    assert storage.read_small("raw/p.jsonl") == "one"
    pending.publish()
    assert storage.read_small("raw/p.jsonl") == "two" and not pending.path.exists()
    storage.update("raw/p.jsonl", lambda text: text + "+")
    storage.update("raw/new.json", lambda text: "created" if text is None else "twice")
    assert (storage.read_small("raw/p.jsonl"), storage.read_small("raw/new.json")) == ("two+", "created")
    storage.delete("raw/p.jsonl")
    with pytest.raises(RawObjectMissing, match="s3://budget/raw/p.jsonl"), storage.open_for_read("raw/p.jsonl"):
        pass


def test_two_processes_reserving_on_s3_at_once_never_get_more_than_the_budget(s3_endpoint, monkeypatch):
    monkeypatch.setenv("TOPTRACKS_REQUESTS_PER_DAY", "100")
    granted = race(s3_endpoint)
    assert len(granted) == 80 and sum(granted) == 100
    assert spent_on(storage_for(s3_endpoint), utc_now().date()) == 100
