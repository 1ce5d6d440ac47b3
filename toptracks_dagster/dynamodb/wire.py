"""Two shortcuts past botocore's per-value work on items, for the load's writes and the checks' reads.

botocore turns parameters into a JSON body, and a JSON body into a response, by walking the operation's shape
value by value: for items of nested track JSON that took more CPU than DynamoDB Local spent storing or finding
them (measured). Items here are DynamoDB JSON already, so json.dumps / json.loads (C) do the same work; botocore
still signs, sends, retries, checks the CRC32 and raises errors as usual. Both are botocore event hooks
(`before-call`, `before-parse`), registered per client.
"""

from __future__ import annotations

import json
import threading
from urllib.parse import urlsplit

# ------------------------------------------------------------------------------------------ consumed capacity
_AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn")


def consumed_capacity_mode(client) -> str:
    """ReturnConsumedCapacity for the requests of `client`: "TOTAL" on AWS, which reports what each request
    consumed at no cost; "NONE" on any other endpoint (DynamoDB Local, moto), which bills nothing and spends CPU
    computing it: measured on DynamoDB Local, 9,222 items written with TOTAL took 1-2 s more of its CPU (+10-20 %).
    """
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or ""  # a stand-in has none
    host = urlsplit(endpoint).hostname or ""
    return "TOTAL" if host.endswith(_AWS_HOST_SUFFIXES) else "NONE"


# ------------------------------------------------------------------------------------------ writes
# A BatchWriteItem body is built by json.dumps from items already in DynamoDB JSON (items.item_json); it rides
# in a thread-local from the call to the 'before-call' hook of that same call.
_PREBUILT_BODY = threading.local()


def _swap_in_prebuilt_body(params: dict, **_) -> None:
    body = getattr(_PREBUILT_BODY, "body", None)
    if body is not None:
        params["body"] = body
        _PREBUILT_BODY.body = None


def batch_write_item(client, request_items: dict) -> dict:
    """BatchWriteItem with its body encoded by json.dumps (items as DynamoDB attribute values); the response is
    botocore's, UnprocessedItems included."""
    body = {"RequestItems": request_items, "ReturnConsumedCapacity": consumed_capacity_mode(client)}
    return send_batch_write_body(
        client, list(request_items), json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    )


def batch_body(table: str, request_texts: list[str], capacity_mode: str) -> str:
    """The BatchWriteItem body for requests already encoded as JSON, joined as text."""
    requests = ",".join(request_texts)
    return f'{{"RequestItems":{{{json.dumps(table)}:[{requests}]}},"ReturnConsumedCapacity":"{capacity_mode}"}}'


def send_batch_write_body(client, tables: list[str], body: str) -> dict:
    """Were the hook ever skipped, the call would send the placeholder, an item without keys, which DynamoDB
    refuses (ValidationException): nothing is written silently wrong."""
    client.meta.events.register(
        "before-call.dynamodb.BatchWriteItem", _swap_in_prebuilt_body, unique_id="toptracks-prebuilt-body"
    )
    _PREBUILT_BODY.body = body.encode()
    try:
        placeholder = {table: [{"PutRequest": {"Item": {}}}] for table in tables}
        return client.batch_write_item(RequestItems=placeholder)
    finally:
        _PREBUILT_BODY.body = None


def encoded(request: dict) -> str:
    return json.dumps(request, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ reads
# Where each read operation carries its items: parsed by json.loads, the rest of the answer by botocore.
_ITEMS_KEYS = {"Query": ("Items",), "Scan": ("Items",), "GetItem": ("Item",), "BatchGetItem": ("Responses",)}


def _parse_items_with_json(response_dict: dict, customized_response_dict: dict, operation_model, **_) -> None:
    keys = _ITEMS_KEYS.get(operation_model.name)
    body = response_dict.get("body") or b""
    # Only successful answers without binary values: botocore decodes "B"/"BS" from base64, json.loads would not
    # (a "B" key cannot appear inside a JSON string unescaped). Anything else is left to botocore.
    if not keys or response_dict.get("status_code") != 200 or b'"B":' in body or b'"BS":' in body:
        return
    try:
        document = json.loads(body)
    except ValueError:
        return
    for key in keys:
        if key in document:
            customized_response_dict[key] = document.pop(key)
    response_dict["body"] = json.dumps(document).encode()


def parse_items_with_json(client) -> None:
    """Let `client` parse the items of Query, Scan, GetItem and BatchGetItem answers with json.loads: the same
    dicts botocore builds (attribute values with N as strings), without its walk over every value."""
    for operation in _ITEMS_KEYS:
        client.meta.events.register(
            f"before-parse.dynamodb.{operation}", _parse_items_with_json, unique_id=f"toptracks-json-{operation}"
        )
