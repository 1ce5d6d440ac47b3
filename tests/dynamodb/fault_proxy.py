"""A fault-injecting HTTP proxy in front of DynamoDB Local.

DynamoDB Local ignores throughput: it never throttles and never hands back UnprocessedItems. This proxy sits
between boto3 and DynamoDB Local and, per its `FaultPlan`:
- hands back a share of each BatchWriteItem's write requests as UnprocessedItems (forwarding only the rest
  and merging the held-back ones into the real response);
- answers a share of write calls with HTTP 400 ProvisionedThroughputExceededException;
- drops the connection for a share of calls (any operation), half of them before forwarding (nothing
  applied) and half after (applied, but the answer is lost: tests idempotency).

Of the distinct requests (or write requests' keys) seen, exactly the plan's share is hit, the first one
included, and each is hit at most `max_hits` times, so a transient plan always injects its faults and always
lets a load finish. `max_hits=None` makes a fault permanent.

botocore checks DynamoDB responses against their `x-amz-crc32` header, so a rewritten body gets a new one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import socket
import struct
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_JSON = "application/x-amz-json-1.0"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te", "upgrade"}


@dataclass
class FaultPlan:
    unprocessed_share: float = 0.0  # share of write requests handed back as UnprocessedItems
    throttle_share: float = 0.0  # share of write calls answered ProvisionedThroughputExceededException
    drop_share: float = 0.0  # share of calls (drop_operations) whose connection is dropped
    drop_operations: frozenset[str] = frozenset({"BatchWriteItem", "TransactWriteItems", "Query", "GetItem"})
    max_hits: int | None = 1  # per distinct request / item; None = forever (a permanent fault)


@dataclass
class ProxyStats:
    calls: Counter = field(default_factory=Counter)  # operation -> calls received
    forwarded: Counter = field(default_factory=Counter)  # operation -> calls that reached DynamoDB Local
    unprocessed_items: int = 0
    throttled: int = 0
    dropped_before: int = 0
    dropped_after: int = 0


class FaultProxy:
    def __init__(self, upstream: str, plan: FaultPlan | None = None):
        target = urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname, target.port
        self.plan = plan or FaultPlan()
        self.stats = ProxyStats()
        self._hits: Counter = Counter()
        self._seen: Counter = Counter()  # fault kind -> distinct requests / items seen
        self._picked: dict[tuple[str, str], bool] = {}
        self._drops = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- decisions (thread-safe) --------------------------------------------------------------------------
    def _hit(self, kind: str, share: float, identity: str) -> bool:
        """Whether this request / item gets fault `kind`, at most max_hits times each. Of the distinct requests
        seen, exactly ceil(n × share) are picked, the first one included: a hash would make it a draw, and
        transaction bodies carry botocore's random idempotency token, so a short test could see no fault."""
        if share <= 0:
            return False
        with self._lock:
            if (kind, identity) not in self._picked:
                seen = self._seen[kind] = self._seen[kind] + 1
                self._picked[(kind, identity)] = math.ceil(seen * share) > math.ceil((seen - 1) * share)
            if not self._picked[(kind, identity)]:
                return False
            if self.plan.max_hits is not None and self._hits[(kind, identity)] >= self.plan.max_hits:
                return False
            self._hits[(kind, identity)] += 1
            return True

    def _next_drop_is_after(self) -> bool:
        with self._lock:
            self._drops += 1
            return self._drops % 2 == 0

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    # -- forwarding ---------------------------------------------------------------------------------------
    def forward(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes):
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            sent = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
            sent.append(("Content-Length", str(len(body))))
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in sent:
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


def _handler_for(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects
        # Headers and body leave in one segment: otherwise Nagle + delayed ACK add ~40 ms to every answer.
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def log_message(self, format, *args):  # noqa: A002 - quiet
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            target = self.headers.get("X-Amz-Target", "")
            operation = target.rsplit(".", 1)[-1]
            with proxy._lock:
                proxy.stats.calls[operation] += 1
            identity = hashlib.sha256(target.encode() + body).hexdigest()
            plan = proxy.plan
            drop = operation in plan.drop_operations and proxy._hit("drop", plan.drop_share, identity)
            # Alternate before/after instead of drawing it: batch contents (so hashes) depend on thread timing,
            # and a draw could leave one kind out of a short test.
            drop_after = drop and proxy._next_drop_is_after()
            if drop and not drop_after:
                proxy._count(dropped_before=1)
                return self._drop()
            if operation in ("BatchWriteItem", "TransactWriteItems") and proxy._hit(
                "throttle", plan.throttle_share, identity
            ):
                proxy._count(throttled=1)
                return self._answer(
                    400,
                    {
                        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                        "message": "The level of configured provisioned throughput for the table was exceeded. "
                        "Consider increasing your provisioning level with the UpdateTable API.",
                    },
                )
            held: dict[str, list] = {}
            if operation == "BatchWriteItem" and plan.unprocessed_share > 0:
                body, held = self._hold_back(body)
            if held and not json.loads(body)["RequestItems"]:
                status, headers, answer = 200, [], json.dumps({"UnprocessedItems": {}}).encode()
            else:
                status, headers, answer = proxy.forward("POST", self.path, list(self.headers.items()), body)
                with proxy._lock:
                    proxy.stats.forwarded[operation] += 1
            if drop_after:
                proxy._count(dropped_after=1)
                return self._drop()
            if held and status == 200:
                document = json.loads(answer)
                unprocessed = document.setdefault("UnprocessedItems", {})
                for table, requests in held.items():
                    unprocessed.setdefault(table, []).extend(requests)
                return self._answer(200, document, headers)
            self._send(status, headers, answer)

        def _hold_back(self, body: bytes) -> tuple[bytes, dict[str, list]]:
            document = json.loads(body)
            held: dict[str, list] = {}
            for table, requests in list(document["RequestItems"].items()):
                keep = []
                for request in requests:
                    # The item's key (and kind) identifies it across resends.
                    inner = request.get("PutRequest", {}).get("Item") or request.get("DeleteRequest", {}).get("Key")
                    identity = json.dumps(
                        [table, sorted(request), inner.get("artist_id"), inner.get("country_track_id")]
                    )
                    if proxy._hit("unprocessed", proxy.plan.unprocessed_share, identity):
                        held.setdefault(table, []).append(request)
                    else:
                        keep.append(request)
                if keep:
                    document["RequestItems"][table] = keep
                else:
                    del document["RequestItems"][table]
            proxy._count(unprocessed_items=sum(len(v) for v in held.values()))
            return json.dumps(document).encode(), held

        def _answer(self, status: int, document: dict, headers=None) -> None:
            self._send(status, headers or [], json.dumps(document).encode())

        def _send(self, status: int, headers, body: bytes) -> None:
            self.send_response(status)
            names = set()
            for name, value in headers:
                if name.lower() in _HOP_BY_HOP or name.lower() in ("x-amz-crc32", "date", "server"):
                    continue
                names.add(name.lower())
                self.send_header(name, value)
            if "content-type" not in names:
                self.send_header("Content-Type", _JSON)
            if "x-amzn-requestid" not in names:
                self.send_header("x-amzn-RequestId", hashlib.sha1(body).hexdigest())
            self.send_header("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _drop(self) -> None:
            # RST instead of FIN: the client sees a reset connection with no answer.
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass

    return Handler
