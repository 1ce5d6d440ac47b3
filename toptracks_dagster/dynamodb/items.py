"""Items of the `top_tracks` table: how a track becomes an item, what decides a rewrite, how big it is."""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from toptracks_dagster.dynamodb.table import (
    ITEM_FORMAT,
    MAX_ITEM_BYTES,
    MAX_SORT_KEY_BYTES,
    PARTITION_KEY,
    PIPELINE_ATTRIBUTES,
    SORT_KEY,
    ItemTooLarge,
    sort_key,
)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def dynamo_compatible(value: Any) -> Any:
    """JSON values -> what DynamoDB accepts: floats as Decimal, NaN/Infinity as null, empty sets dropped."""
    if value is None or isinstance(value, (bool, str, int, Decimal)):
        return value
    if isinstance(value, float):
        # boto3 refuses floats (it will not guess the precision); str() gives the shortest exact repr.
        return Decimal(str(value)) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): dynamo_compatible(v) for k, v in value.items() if not _is_empty_set(v)}
    if isinstance(value, (list, tuple)):
        return [dynamo_compatible(v) for v in value if not _is_empty_set(v)]
    if isinstance(value, (set, frozenset)):
        return {dynamo_compatible(v) for v in value}
    return value


def _is_empty_set(value: Any) -> bool:
    return isinstance(value, (set, frozenset)) and not value


def content_hash(market: str, rank: int, track: dict) -> str:
    """What decides whether an item must be rewritten: everything but when it was fetched."""
    canonical = json.dumps(
        {"format": ITEM_FORMAT, "country": market, "rank": rank, "track": track},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def list_digest(hashes_by_key: dict[str, str]) -> str:
    """One artist's list in one market as the loader writes it: keys and content hashes (empty for a 404)."""
    text = "\n".join(f"{key}={hashes_by_key[key]}" for key in sorted(hashes_by_key))
    return hashlib.sha256(f"{ITEM_FORMAT}\n{text}".encode()).hexdigest()[:32]


def valid_track_id(market: str, track_id: Any) -> bool:
    return (
        isinstance(track_id, str) and bool(track_id) and len(sort_key(market, track_id).encode()) <= MAX_SORT_KEY_BYTES
    )


def gsi_popularity(value: Any) -> int | None:
    """The track's popularity as the GSI's number key, or None when it has none usable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def build_item(artist_id: str, market: str, rank: int, track: dict, fetched_at: str) -> dict:
    item = {k: dynamo_compatible(v) for k, v in track.items() if k not in PIPELINE_ATTRIBUTES and not _is_empty_set(v)}
    popularity = gsi_popularity(track.get("popularity"))
    if popularity is None:
        # The GSI range key must be a number. A missing popularity becomes 0 (Spotify's own value for tracks
        # without plays) and is flagged, rather than leaving the item out of the GSI where the sweep of
        # removed artists could never find it.
        popularity = 0
        item["popularity_missing"] = True
    item.update(
        {
            PARTITION_KEY: artist_id,
            SORT_KEY: sort_key(market, track["id"]),
            "country": market,
            "rank": rank,
            "popularity": popularity,
            "fetched_at": fetched_at,
            "content_hash": content_hash(market, rank, track),
        }
    )
    return item


_LARGEST_NUMBER = 10**38  # DynamoDB numbers carry at most 38 significant digits


def attribute_value(value: Any) -> dict:
    """A JSON value (or what dynamo_compatible makes of one) as a DynamoDB attribute value, in one pass.

    Gives what boto3's TypeSerializer gives for dynamo_compatible(value); written out because TypeSerializer's
    generic type dispatch, run on every nested field of every track, was a large share of a load's CPU.
    """
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        if abs(value) >= _LARGEST_NUMBER:
            raise ValueError(f"number {value} has more than the 38 digits DynamoDB can store")
        return {"N": str(value)}
    if isinstance(value, dict):
        return {"M": {str(k): attribute_value(v) for k, v in value.items() if not _is_empty_set(v)}}
    if isinstance(value, (list, tuple)):
        return {"L": [attribute_value(v) for v in value if not _is_empty_set(v)]}
    if value is None:
        return {"NULL": True}
    if isinstance(value, float):
        return _serializer.serialize(dynamo_compatible(value))
    return _serializer.serialize(value)  # Decimal, sets, bytes: rare, boto3's rules


def item_attributes(artist_id: str, market: str, rank: int, track: dict, fetched_at: str, digest: str) -> dict:
    """serialize_item(build_item(...)) in one pass, with the content hash already computed.

    Raises ItemTooLarge above DynamoDB's item limit.
    """
    item = _attributes(artist_id, market, rank, track, fetched_at, digest)
    _encode_within_limit(item)
    return item


def item_json(artist_id: str, market: str, rank: int, track: dict, fetched_at: str, digest: str) -> str:
    """item_attributes as the JSON a load sends (BatchWriter.put_encoded): encoded once, for the size check
    and the request body both. Raises ItemTooLarge above DynamoDB's item limit."""
    return _encode_within_limit(_attributes(artist_id, market, rank, track, fetched_at, digest))


def _attributes(artist_id: str, market: str, rank: int, track: dict, fetched_at: str, digest: str) -> dict:
    item = {k: attribute_value(v) for k, v in track.items() if k not in PIPELINE_ATTRIBUTES and not _is_empty_set(v)}
    popularity = gsi_popularity(track.get("popularity"))
    if popularity is None:  # as build_item: 0, flagged, so that the item stays in the GSI
        popularity = 0
        item["popularity_missing"] = {"BOOL": True}
    item.update(
        {
            PARTITION_KEY: {"S": artist_id},
            SORT_KEY: {"S": sort_key(market, track["id"])},
            "country": {"S": market},
            "rank": {"N": str(rank)},
            "popularity": {"N": str(popularity)},
            "fetched_at": {"S": fetched_at},
            "content_hash": {"S": digest},
        }
    )
    return item


def serialize_item(item: dict) -> dict:
    serialized = {k: attribute_value(v) for k, v in item.items()}
    _encode_within_limit(serialized)
    return serialized


def _encode_within_limit(serialized: dict) -> str:
    """The item's compact JSON ("" for binary values, which JSON cannot carry); raises ItemTooLarge.

    The compact JSON of an item is never smaller than DynamoDB's count of its size (every value's JSON spells
    its bytes plus type and punctuation), and a character is at most 4 bytes: only an item whose JSON might be
    above the limit is measured exactly.
    """
    try:
        text = json.dumps(serialized, ensure_ascii=False, separators=(",", ":"))
    except TypeError:
        text = ""
    if text and (len(text) * 4 <= MAX_ITEM_BYTES or len(text.encode()) <= MAX_ITEM_BYTES):
        return text
    size = item_size(serialized)
    if size > MAX_ITEM_BYTES:
        largest = sorted(((len(k.encode()) + _value_size(v), k) for k, v in serialized.items()), reverse=True)[:3]
        artist_id, key = serialized[PARTITION_KEY]["S"], serialized[SORT_KEY]["S"]
        raise ItemTooLarge(
            f"item artist_id={artist_id} {SORT_KEY}={key} is {size:,} bytes, above DynamoDB's "
            f"item limit of {MAX_ITEM_BYTES:,} bytes (400 KB); largest attributes: "
            + ", ".join(f"{name} {nbytes:,} B" for nbytes, name in largest),
            artist_id=artist_id,
            key=key,
            size=size,
        )
    return text


def item_size(serialized: dict) -> int:
    """An item's size as DynamoDB counts it against the 400 KB limit (attribute names included).

    boto3 has no such function. The rules are AWS's ("Item sizes and formats"); the byte counts were checked
    against DynamoDB Local at the limit: strings and binaries by their bytes, numbers by base-100 digit pairs
    + 1 (+1 if negative), BOOL/NULL 1, lists and maps 3 + 1 per element (+ the names in maps), sets their elements.
    """
    return sum(len(name.encode()) + _value_size(value) for name, value in serialized.items())


def _value_size(attribute: dict) -> int:
    ((kind, value),) = attribute.items()
    if kind == "S":
        return len(value.encode())
    if kind == "N":
        return _number_size(value)
    if kind == "B":
        return len(getattr(value, "value", value))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in value)
    if kind == "NS":
        return sum(_number_size(n) for n in value)
    if kind == "BS":
        return sum(len(getattr(b, "value", b)) for b in value)
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in value)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in value.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def _number_size(text: str) -> int:
    number = Decimal(text)
    if number.is_zero():
        return 1
    sign, digits, exponent = number.normalize().as_tuple()
    highest, lowest = len(digits) - 1 + exponent, exponent  # powers of ten of the first and last digit
    return (highest // 2 - lowest // 2 + 1) + 1 + (1 if sign else 0)


def deserialize_item(item: dict) -> dict:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def _key(artist_id: str, country_track_id: str) -> dict:
    return {PARTITION_KEY: {"S": artist_id}, SORT_KEY: {"S": country_track_id}}


def plain(value: Any) -> Any:
    """DynamoDB values back to JSON values: Decimal -> int or float, sets -> sorted lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    return value
