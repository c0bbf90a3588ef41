"""The OTLP/HTTP receiver behind `cegraph collect`: `POST /v1/traces` and `/v1/logs`, OTLP
JSON (`application/json`) or protobuf (`application/x-protobuf`, decoded with
`opentelemetry-proto`), gzip bodies too. It answers 200 (with OTLP's `partial_success` when
records were rejected) only once the sink has the request durably; what the sink does with it
is the sink's business (`cegraph collect` spools it, a drainer stores it).

Status codes as the OTLP/HTTP spec says, so an exporter retries exactly what it should:
400 malformed (bad Content-Length, invalid JSON or protobuf, empty body, not the path's
signal), 401 no or wrong bearer token, 404 unknown path, 411 no Content-Length, 413 body or
its decompression over the limit, 415 unsupported Content-Type or Content-Encoding,
503 + Retry-After when the sink lags or a connection slot is not free (retryable), 500 an
unforeseen error (the connection is always answered). Every connection has a read timeout and
their number is bounded; binding to anything but loopback requires a bearer token."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import socket
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import orjson

from cegraph.ingest import otlp

PATHS = {"/v1/traces": "traces", "/v1/logs": "logs"}
MAX_BODY = 64 * 1024 * 1024
TYPES = {"application/json": False, "application/x-protobuf": True}


class Sink(Protocol):
    def accept(self, signal: str, request: dict[str, Any]) -> tuple[int, str]:
        """Keep one decoded request durably; returns (records rejected, why)."""
        ...

    def retry_after(self) -> int:
        """Seconds a client should wait when the sink lags behind, else 0."""
        ...


class Refused(Exception):
    """An answer other than 200: the status code and its message."""

    def __init__(self, code: int, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress, stopping as soon as the output passes `limit` (a gzip bomb costs
    `limit` bytes, not its full size)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Refused(400, f"not gzip: {exc}") from None
    if len(out) > limit:
        raise Refused(413, f"body decompresses to over {limit} bytes")
    if not inflater.eof:
        raise Refused(400, "gzip body cut short")
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # full: answer, never queue unbounded
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                # closing with the request unread resets the connection, and a client still
                # sending its body sees a broken pipe instead of the 503: read a little first
                request.shutdown(socket.SHUT_WR)
                request.settimeout(0.1)
                for _ in range(16):
                    if not request.recv(65536):
                        break
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class Receiver:
    def __init__(self, sink: Sink, *, host: str = "127.0.0.1", port: int = 4318,
                 token: str | None = None, max_body: int = MAX_BODY,
                 read_timeout_s: float = 30.0, max_connections: int = 32) -> None:
        if not is_loopback(host) and not token:
            raise ValueError(f"binding to {host} (not loopback) needs a bearer token: --token "
                             "or CEGRAPH_COLLECT_TOKEN")
        self.sink = sink
        self.token = token
        self.max_body = max_body
        self.read_timeout_s = read_timeout_s
        self.server = _Server((host, port), self._handler(), max_connections)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- one request -----------------------------------------------------------------------
    def read_body(self, headers: Any, rfile: Any) -> bytes:
        if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(rfile)
        length_header = headers.get("Content-Length")
        if length_header is None:
            raise Refused(411, "Content-Length required")
        try:
            length = int(length_header)
        except ValueError:
            raise Refused(400, f"Content-Length {length_header!r} is not an integer") from None
        if length < 0:
            raise Refused(400, f"Content-Length {length} is negative")
        if length > self.max_body:
            raise Refused(413, f"body of {length} bytes is over {self.max_body}")
        body = rfile.read(length)
        if len(body) < length:
            raise Refused(400, f"body ended after {len(body)} of {length} bytes")
        return body

    def _read_chunked(self, rfile: Any) -> bytes:
        body = bytearray()
        while True:
            size_line = rfile.readline(64)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise Refused(400, "malformed chunked body") from None
            if size == 0:
                while rfile.readline(1024).strip():  # trailers
                    pass
                return bytes(body)
            if size < 0 or len(body) + size > self.max_body:
                raise Refused(413, f"chunked body over {self.max_body} bytes")
            body += rfile.read(size)
            rfile.readline(8)

    def decode(self, signal: str, content_type: str, encoding: str,
               body: bytes) -> dict[str, Any]:
        if encoding == "gzip":
            body = gunzip(body, self.max_body)
        elif encoding not in ("", "identity"):
            raise Refused(415, f"Content-Encoding {encoding!r}: gzip or none")
        if not body:
            raise Refused(400, "empty body")
        if TYPES[content_type]:
            try:
                request = otlp.from_protobuf(body, signal)
            except otlp.NotOtlp as exc:
                raise Refused(400, str(exc)) from None
        else:
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise Refused(400, f"invalid JSON: {exc}") from None
        if not isinstance(request, dict) or (request and otlp.kind(request) != signal):
            raise Refused(400, f"not an OTLP {signal} request")
        return request

    def handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, bytes, str, int]:
        """(status, body, content type, retry-after) for one POST."""
        signal = PATHS.get(handler.path.split("?")[0])
        if signal is None:
            raise Refused(404, "POST /v1/traces or /v1/logs")
        if self.token is not None:
            given = handler.headers.get("Authorization") or ""
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                raise Refused(401, "a bearer token is required (Authorization: Bearer ...)")
        wait = self.sink.retry_after()
        if wait:
            raise Refused(503, "the store lags behind; retry later", wait)
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in TYPES:
            raise Refused(415, f"Content-Type {content_type!r}: application/json or "
                               "application/x-protobuf")
        encoding = (handler.headers.get("Content-Encoding") or "").strip().lower()
        body = self.read_body(handler.headers, handler.rfile)
        request = self.decode(signal, content_type, encoding, body)
        rejected, why = self.sink.accept(signal, request) if request else (0, "")
        protobuf = TYPES[content_type]
        return (200, otlp.partial_success(signal, rejected, why, protobuf=protobuf),
                content_type, 0)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            timeout = receiver.read_timeout_s  # per connection: a stalled client is dropped

            def log_message(self, *args: object) -> None:  # quiet: the summary says it all
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                try:
                    code, body, content_type, wait = receiver.handle(self)
                except Refused as exc:
                    code, wait, content_type = exc.code, exc.retry_after, "application/json"
                    body = json.dumps({"code": exc.code, "message": exc.message}).encode()
                    self.close_connection = True  # a body may be left unread
                except (TimeoutError, ConnectionError):
                    self.close_connection = True
                    return
                except Exception as exc:  # noqa: BLE001 - every request gets an answer
                    code, wait, content_type = 500, 0, "application/json"
                    body = json.dumps({"code": 500, "message": f"{type(exc).__name__}: "
                                                               f"{exc}"}).encode()
                    self.close_connection = True
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    if wait:
                        self.send_header("Retry-After", str(wait))
                    if self.close_connection:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True

        return Handler
