"""`cegraph collect`: acknowledged means durable (spool fsynced before 200, stored after a
SIGKILL, never twice), OTLP/HTTP status codes, bounded bodies, decompression, connections
and read time, the token rule, and a receiver that shares its home. Loopback only."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from otlp_builders import request, span, trace

from cegraph.ingest.receiver import Receiver
from cegraph.storage import Warehouse
from cegraph.storage.spool import Spool
from cegraph.tasks.ingest import SpoolDrainer, SpoolSink, ingest_paths

OTEL = Path(__file__).parent / "fixtures" / "otel"
ROOT = Path(__file__).parent.parent


def post(url: str, body: bytes, content_type: str = "application/json",
         headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type,
                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def raw_post(address: str, head: list[str], body: bytes = b"") -> int:
    """A request written by hand (headers urllib would not send); returns the status."""
    host, port = address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(("\r\n".join(["POST /v1/traces HTTP/1.1", f"Host: {host}", *head]) +
                   "\r\n\r\n").encode() + body)
        return int(s.recv(4096).split(b" ")[1])


def rows(home: Path, sql: str) -> list[tuple]:
    with Warehouse(home, read_only=True) as wh:
        return wh.rows(sql)


@pytest.fixture
def receiver(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Receiver]:
    options = dict(getattr(request, "param", {}))
    spool = Spool(tmp_path)
    rec = Receiver(SpoolSink(spool, max_backlog=options.pop("max_backlog", 1 << 30)),
                   port=0, **options).start()
    rec.spool = spool  # type: ignore[attr-defined]
    yield rec
    rec.stop()
    spool.close()


def test_json_and_protobuf_are_spooled_then_stored(tmp_path: Path, receiver: Receiver) -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    openinference = (OTEL / "openinference_spans.jsonl").read_text().splitlines()[0]
    proto = trace_service_pb2.ExportTraceServiceRequest()
    json_format.Parse(openinference, proto)
    code, answer, _ = post(receiver.address + "/v1/traces", proto.SerializeToString(),
                           "application/x-protobuf")
    response = trace_service_pb2.ExportTraceServiceResponse()
    response.ParseFromString(answer)
    assert code == 200 and response.partial_success.rejected_spans == 0
    for line in (OTEL / "genai_spans.jsonl").read_text().splitlines():
        assert post(receiver.address + "/v1/traces", line.encode())[:2] == (200, b"{}")
    broken = request(span(9, 1, None, "run"), span(9, 2, 1, spanId=""))
    code, answer, _ = post(receiver.address + "/v1/traces", broken.encode())
    assert code == 200 and json.loads(answer)["partialSuccess"]["rejectedSpans"] == "1"
    assert rows_in_spool(tmp_path) == 7  # durable before the answer
    drainer = SpoolDrainer(tmp_path, receiver.spool, modes=False)
    summary = drainer.drain().summary
    assert summary["span_faults"] == {"missing_id": 1}
    stored = dict(rows(tmp_path, "SELECT workflow, count(*) FROM runs GROUP BY 1"))
    assert stored == {"qa-service": 1, "math": 3, "wf": 1}
    assert drainer.drain() is None and receiver.spool.backlog() == 0


def rows_in_spool(home: Path) -> int:
    return len((home / "spool" / "requests.jsonl").read_bytes().splitlines())


@pytest.mark.parametrize("receiver", [{"max_body": 4096}], indirect=True)
def test_status_codes(receiver: Receiver) -> None:
    url = receiver.address
    good = trace(1).encode()
    assert post(url + "/v1/metrics", good)[0] == 404
    assert post(url + "/v1/traces", good, "text/plain")[0] == 415
    assert post(url + "/v1/traces", good, headers={"Content-Encoding": "br"})[0] == 415
    assert post(url + "/v1/traces", b"{not json")[0] == 400
    assert post(url + "/v1/traces", b"")[0] == 400
    assert post(url + "/v1/traces", b"[1, 2]")[0] == 400
    assert post(url + "/v1/logs", good)[0] == 400  # traces on the logs path
    assert post(url + "/v1/traces", b'{"resourceSpans": 7}')[0] == 400
    assert post(url + "/v1/traces", b"\x00" * 5000)[0] == 413
    assert post(url + "/v1/traces", b"not gzip at all",
                headers={"Content-Encoding": "gzip"})[0] == 400
    assert post(url + "/v1/traces", gzip.compress(good),
                headers={"Content-Encoding": "GZIP"})[0] == 200  # case-insensitive
    ct = "Content-Type: application/json"
    assert raw_post(url, [ct, "Content-Length: -1"], good) == 400
    assert raw_post(url, [ct, "Content-Length: 12abc"], good) == 400
    assert raw_post(url, [ct], good) == 411
    chunked = f"{len(good):x}\r\n".encode() + good + b"\r\n0\r\n\r\n"
    assert raw_post(url, [ct, "Transfer-Encoding: chunked"], chunked) == 200


@pytest.mark.parametrize("receiver", [{"max_body": 1 << 20}], indirect=True)
def test_a_gzip_bomb_is_refused_after_the_limit(receiver: Receiver) -> None:
    bomb = gzip.compress(b'{"resourceSpans": [], "pad": "' + b" " * (200 << 20) + b'"}')
    assert len(bomb) < 1 << 20
    code, body, _ = post(receiver.address + "/v1/traces", bomb,
                         headers={"Content-Encoding": "gzip"})
    assert code == 413 and b"decompresses" in body


@pytest.mark.parametrize("receiver", [{"max_backlog": 10}], indirect=True)
def test_a_lagging_store_answers_503_with_retry_after(receiver: Receiver) -> None:
    assert post(receiver.address + "/v1/traces", trace(1).encode())[0] == 200
    code, _, headers = post(receiver.address + "/v1/traces", trace(2).encode())
    assert code == 503 and int(headers["Retry-After"]) > 0


@pytest.mark.parametrize("receiver", [{"read_timeout_s": 0.5, "max_connections": 2}],
                         indirect=True)
def test_stalled_connections_time_out_and_are_bounded(receiver: Receiver) -> None:
    host, port = receiver.address.removeprefix("http://").split(":")
    stalled = [socket.create_connection((host, int(port))) for _ in range(2)]
    for s in stalled:
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nContent-Length: 100\r\n")  # then nothing
    time.sleep(0.2)
    assert post(receiver.address + "/v1/traces", trace(1).encode())[0] == 503  # slots full
    time.sleep(1.0)  # the read timeout drops the stalled ones
    for s in stalled:
        s.settimeout(5)
        assert s.recv(100) == b""  # closed by the receiver
        s.close()
    assert post(receiver.address + "/v1/traces", trace(1).encode())[0] == 200


def test_a_token_is_required_off_loopback_and_checked(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    try:
        with pytest.raises(ValueError, match="token"):
            Receiver(SpoolSink(spool), host="0.0.0.0", port=0)  # refused before binding
        rec = Receiver(SpoolSink(spool), port=0, token="s3cret").start()
        try:
            body = trace(1).encode()
            assert post(rec.address + "/v1/traces", body)[0] == 401
            assert post(rec.address + "/v1/traces", body,
                        headers={"Authorization": "Bearer nope"})[0] == 401
            assert post(rec.address + "/v1/traces", body,
                        headers={"Authorization": "Bearer s3cret"})[0] == 200
        finally:
            rec.stop()
    finally:
        spool.close()


def test_a_failing_store_never_stops_the_receiver(tmp_path: Path, receiver: Receiver,
                                                  monkeypatch) -> None:
    from cegraph.tasks.ingest import Ingestor

    url = receiver.address + "/v1/traces"
    poison = request(span(1, 1, None, "run", startTimeUnixNano="9" * 40), span(1, 2, 1))
    code, answer, _ = post(url, poison.encode())
    assert code == 200 and json.loads(answer)["partialSuccess"]["rejectedSpans"] == "1"
    drainer = SpoolDrainer(tmp_path, receiver.spool, modes=False)
    real = Ingestor.finish
    monkeypatch.setattr(Ingestor, "finish", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        drainer.drain()  # the store step fails: nothing committed, the spool keeps it all
    monkeypatch.setattr(Ingestor, "finish", real)
    for n in range(2, 5):
        assert post(url, trace(n).encode())[0] == 200
    drainer.drain()
    assert rows(tmp_path, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [(3, 3)]
    assert rows(tmp_path, "SELECT reason FROM quarantine") == [("invalid_value",)]


def test_a_poison_request_is_quarantined_and_the_spool_goes_on(tmp_path: Path,
                                                                receiver: Receiver,
                                                                monkeypatch) -> None:
    """A request whose store step raises every time is retried, then quarantined whole;
    the requests before and after it are stored and the receiver keeps answering."""
    from cegraph.tasks.ingest import Ingestor

    real = Ingestor.feed

    def feed(self, source, line_no, raw, cut=None):  # the store step fails for this one
        if b"poison" in raw:
            raise RuntimeError("the store refused it")
        return real(self, source, line_no, raw, cut)

    monkeypatch.setattr(Ingestor, "feed", feed)
    url = receiver.address + "/v1/traces"
    poison = trace(1, name="wf.poison")
    for body in (trace(2), poison, trace(3), trace(4)):
        assert post(url, body.encode())[0] == 200
    drainer = SpoolDrainer(tmp_path, receiver.spool, modes=False, max_attempts=2)
    with pytest.raises(RuntimeError):
        drainer.drain()  # stored alone up to the poison, which failed once
    assert rows(tmp_path, "SELECT count(*) FROM runs") == [(1,)]
    assert post(url, trace(5).encode())[0] == 200  # the receiver still answers
    drainer.drain()  # the poison fails again: quarantined, the rest stored
    assert rows(tmp_path, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [(4, 4)]
    [(reason, raw, line_no)] = rows(tmp_path, "SELECT reason, raw, line_no FROM quarantine")
    assert reason == "unstorable_request" and json.loads(raw) == json.loads(poison)
    assert line_no == 2  # the spool's request number
    s = drainer.summary()
    assert s["quarantined"] == {"unstorable_request": 1}
    assert s["lines_read"] == s["lines_stored"] + s["duplicates"] + 1
    assert receiver.spool.backlog() == 0 and drainer.drain() is None


def test_the_receiver_shares_its_home(tmp_path: Path, receiver: Receiver) -> None:
    """Between stores nothing holds the catalog: SQL readers and an ingest work while the
    receiver listens, and the runs it stores get their failures mapped."""
    for n in range(1, 4):
        assert post(receiver.address + "/v1/traces", trace(n).encode())[0] == 200
    drainer = SpoolDrainer(tmp_path, receiver.spool)
    drainer.drain()
    assert rows(tmp_path, "SELECT count(*) FROM runs") == [(3,)]  # a reader, mid-service
    ingest_paths(str(tmp_path), [str(OTEL / "genai_spans.jsonl")])  # a writer, too
    drainer.map_modes()
    assert ("wf", "production") in {r for r in rows(
        tmp_path, "SELECT workflow, source FROM nights")}
    assert rows(tmp_path, "SELECT count(*) FROM failures WHERE workflow = 'wf'") == [(3,)]


def collect_process(home: Path, flush_s: float) -> tuple[subprocess.Popen, str, Path]:
    """`cegraph collect` in a subprocess on an ephemeral loopback port; its output goes to a
    file (a pipe nobody reads could fill and stall it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    log = home.parent / f"collect-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from cegraph.cli.main import main; main()", "collect", "--port",
             "0", "--home", str(home), "--flush-s", str(flush_s)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if "receiving OTLP/HTTP on http://127.0.0.1:" in line:
                return proc, line.split(" on ")[1].split()[0], log
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(log.read_text())


def test_sigkill_after_acknowledged_requests_loses_nothing_and_stores_nothing_twice(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc, url, _ = collect_process(home, flush_s=3600)  # never stores before the kill
    try:
        for n in range(1, 11):
            assert post(url + "/v1/traces", trace(n).encode())[0] == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for _ in range(2):  # restart: the spool is stored; again: nothing more
        proc, url, log = collect_process(home, flush_s=0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()
        assert "collect: " in log.read_text()
        assert rows(home, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [(10, 10)]
        assert rows(home, "SELECT count(*), count(DISTINCT (trace_id, span_key)) "
                          "FROM source_spans") == [(20, 20)]
