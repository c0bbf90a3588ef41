"""The OTLP/HTTP receiver behind `cegraph collect`: `POST /v1/traces` and `/v1/logs`, OTLP
JSON (`application/json`) or protobuf (`application/x-protobuf`, decoded with
`opentelemetry-proto`), gzip bodies too; answers OTLP's Export*ServiceResponse, with
`partial_success` (how many spans or log records were rejected, and why) when some were.
Binds to loopback unless told otherwise. What happens to a request is the sink's business."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from cegraph.ingest import otlp

PATHS = {"/v1/traces": "traces", "/v1/logs": "logs"}
MAX_BODY = 64 * 1024 * 1024


class Sink(Protocol):
    def accept(self, signal: str, raw: bytes) -> tuple[int, str]:
        """Take one request as OTLP JSON bytes; returns (records rejected, why)."""
        ...

    def flush(self) -> None:
        """Settle and store what was accepted (called every `flush_s` and at shutdown)."""
        ...


class Receiver:
    def __init__(self, sink: Sink, *, host: str = "127.0.0.1", port: int = 4318,
                 flush_s: float = 2.0) -> None:
        self.sink = sink
        self.flush_s = flush_s
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            with self.lock:
                self.sink.flush()

    def start(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._flusher.start()
        return self

    def serve_forever(self) -> None:
        self._flusher.start()
        try:
            self.server.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            self.sink.flush()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet: the summary says it all
                pass

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                signal = PATHS.get(self.path.split("?")[0])
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                protobuf = content_type == "application/x-protobuf"
                if signal is None:
                    self._reply(404, b'{"message": "POST /v1/traces or /v1/logs"}',
                                "application/json")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._reply(413, b'{"message": "body too large"}', "application/json")
                    return
                body = self.rfile.read(length)
                try:
                    if (self.headers.get("Content-Encoding") or "") == "gzip":
                        body = gzip.decompress(body)
                    raw = (json.dumps(otlp.from_protobuf(body, signal)).encode() if protobuf
                           else body)
                except (otlp.NotOtlp, OSError, EOFError) as exc:
                    self._reply(400, json.dumps({"message": str(exc)}).encode(),
                                "application/json")
                    return
                with receiver.lock:
                    rejected, why = receiver.sink.accept(signal, raw)
                self._reply(200, otlp.partial_success(signal, rejected, why, protobuf=protobuf),
                            "application/x-protobuf" if protobuf else "application/json")

        return Handler
