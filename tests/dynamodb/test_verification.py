"""The per-load verification: new artists read back by key (content hash), the others item by item."""

from __future__ import annotations

from tests.dynamodb.support import load, outcomes
from toptracks_dagster.dynamodb.checks import verify_artists
from toptracks_dagster.raw_storage.resources import LocalRawStorage
from toptracks_dagster.spotify.raw import PartitionMerge, RawPartition, raw_partition_key


def _raw_partition(tmp_path, market: str, ids: list[str], outs) -> RawPartition:
    path = tmp_path / raw_partition_key(market)
    path.parent.mkdir(parents=True)
    with open(path, "w") as stream:
        merge = PartitionMerge(stream, market, ids, [], {}, planned=len(ids))
        for outcome in outs:
            merge.push(outcome)
        merge.finish()
    return RawPartition.open(LocalRawStorage(base_dir=str(tmp_path)), market)


def _set(ddb, table: str, key: tuple[str, str], attribute: str, value: str) -> None:
    ddb.update_item(
        TableName=table,
        Key={"artist_id": {"S": key[0]}, "country_track_id": {"S": key[1]}},
        UpdateExpression="SET #a = :v",
        ExpressionAttributeNames={"#a": attribute},
        ExpressionAttributeValues={":v": {"S": value}},
    )


def test_new_artists_are_read_by_key_and_compared_by_content_hash(ddb, table, catalog, artist_ids, tmp_path):
    ids = sorted(a for a in artist_ids if catalog.top_tracks(a, "US"))[:6]
    outs = outcomes(catalog, ids, "US")
    load(ddb, table, "US", outs)
    raw = _raw_partition(tmp_path, "US", ids, outs)
    items = sum(len(o.tracks) for o in outs)

    clean = verify_artists(ddb, table, raw, set(ids), had_no_items=set(ids))
    assert clean.artists == 6 and clean.items_read == items
    assert clean.read_requests == (items + 99) // 100  # BatchGetItem by key, not one Query per artist
    assert not (clean.missing.count or clean.changed.count or clean.extra.count or clean.mismatched.count)

    first, second = outs[0], outs[1]
    hashed_key = (first.artist_id, f"US#{first.tracks[0]['id']}")
    renamed_key = (second.artist_id, f"US#{second.tracks[0]['id']}")
    _set(ddb, table, hashed_key, "content_hash", "0" * 32)  # as if another version of the track were stored
    _set(ddb, table, renamed_key, "name", "edited")  # content changed, hash left as the load wrote it

    by_key = verify_artists(ddb, table, raw, set(ids), had_no_items=set(ids))
    assert [(s["artist_id"], s["country_track_id"]) for s in by_key.mismatched.first] == [hashed_key]

    # Artists in `read_in_full` (the rotating sample of new artists) are compared attribute by attribute.
    in_full = verify_artists(ddb, table, raw, set(ids), had_no_items=set(ids), read_in_full={second.artist_id})
    found = {(s["artist_id"], s["country_track_id"]): s["differing_attributes"] for s in in_full.mismatched.first}
    assert found == {hashed_key: ["content_hash"], renamed_key: ["name"]}
