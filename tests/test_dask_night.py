"""A night on a real Dask cluster: a scheduler and two workers, each its own process on
loopback, running the refinement's evaluations, its verifications and the gate's re-runs as
Prefect tasks (prefect-dask), reaching the model over HTTP (a scripted OpenAI-compatible
server, or smollm2-135m served by the engine's loopback listener); the night's flow process
is the only writer. It reaches what the in-process night reaches, a worker killed mid-chunk
costs nothing twice, the budget holds, the model's key reaches the workers and is stored
nowhere, and no call journal outlives the night."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cegraph.storage import Warehouse
from tests.test_nightly import production, world

distributed = pytest.importorskip("distributed")
ROOT = Path(__file__).parents[1]


class Model(ThreadingHTTPServer):
    """An OpenAI-compatible chat server answering with `world`; counts the calls it answered.
    `kill_on`: the answered-call count at which it kills, instead of answering, the process
    that sent the request (a worker lost mid-chunk). `token`: the bearer token it requires
    (a hosted model's key), answering 401 to any other; `refused` counts those."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answered = 0
        self.kill_on: int | None = None
        self.killed: list[int] = []
        self.token: str | None = None
        self.refused = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _sender(port: int) -> int:
    """The pid of the local process whose TCP connection uses `port`."""
    import psutil

    return next(c.pid for c in psutil.net_connections(kind="tcp")
                if c.laddr and c.laddr.port == port and c.pid and c.pid != os.getpid())


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model: Model = self.server  # type: ignore[assignment]
        if model.token and self.headers.get("Authorization") != f"Bearer {model.token}":
            with model.lock:
                model.refused += 1
            out = json.dumps({"error": {"message": "invalid api key", "type": "auth",
                                        "code": "invalid_api_key"}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        with model.lock:
            kill = model.kill_on is not None and model.answered == model.kill_on
            if kill:
                model.kill_on = None
            else:
                model.answered += 1
        if kill:
            time.sleep(1.0)  # the journal of the chunk's calls so far reaches the scheduler
            pid = _sender(self.client_address[1])
            model.killed.append(pid)
            os.kill(pid, signal.SIGKILL)
            return
        text = world(body["messages"])
        out = json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                          "model": body["model"], "choices": [{
                              "index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": text}}],
                          "usage": {"prompt_tokens": sum(len(m["content"].split())
                                                         for m in body["messages"]),
                                    "completion_tokens": len(text.split()),
                                    "total_tokens": 0}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    server = Model()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """`dask scheduler` and two `dask worker` processes (one thread each) on loopback."""
    address = f"tcp://127.0.0.1:{_port()}"
    dask = str(Path(sys.executable).parent / "dask")
    # the workers have none of the flow's keys, as on another machine
    env = {**{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"},
           "PYTHONPATH": str(ROOT), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    quiet = {"cwd": ROOT, "env": env, "stdout": subprocess.DEVNULL,
             "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port",
                               address.rsplit(":", 1)[1], "--no-dashboard"], **quiet)]
    procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--host",
                                "127.0.0.1", "--no-dashboard"], **quiet) for _ in range(2)]
    try:
        with distributed.Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=180)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def night(home: Path, model: Model, runner: str = "local", address: str | None = None,
          **kw: Any) -> dict[str, Any]:
    from cegraph.flows.nightly import night_flow

    params = {"home": str(home), "model": "openai/x", "api_base": model.url,
              "budget_calls": 400, "max_latency_ratio": 1e9, "runner": runner, "chunk": 2,
              **kw}
    [summary] = night_flow(runner, address=address)(**params)["nights"]
    return summary


AUDIT = {
    "runs": "SELECT run_id, version_id, task_id, source, passed, outcome, output FROM runs "
            "WHERE source <> 'production' ORDER BY run_id",
    "edits": "SELECT edit_id, operation, status, candidate_version_id, reject_reason FROM "
             "edits ORDER BY edit_id",
    "verifications": "SELECT verification_id, fixed, broken, decision, p_value, calls_made, "
                     "calls_replayed FROM verifications ORDER BY verification_id",
    # observed latencies are the machine's: whether each check passed is compared
    "gate": "SELECT expectation, success FROM gate_results WHERE suite = "
            "'cegraph_edit_gate' ORDER BY expectation",
    "night": "SELECT workflow, status, decision, calls, tokens FROM night_runs",
    "versions": "SELECT version_id, parent_version_id FROM workflow_versions ORDER BY 1",
    "deployments": "SELECT workflow, version_id, action FROM deployments ORDER BY 1, 2, 3",
}


def audit(home: Path) -> dict[str, list]:
    with Warehouse(home, read_only=True) as wh:
        return {name: wh.rows(sql) for name, sql in AUDIT.items()}


def journals(address: str) -> list[str]:
    """The chunks' call journals the scheduler keeps (`cegraph.tasks.batch`): one topic a chunk."""
    with distributed.Client(address, timeout=60) as client:
        return client.run_on_scheduler(lambda dask_scheduler: sorted(
            t for t in dask_scheduler._broker._topics if t.startswith("cegraph-calls-")))


def recorded_by_prefect() -> str:
    """Everything the Prefect API holds of the flow and task runs, their logs included."""
    from prefect.client.orchestration import get_client

    logs: list[Any] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs() + client.read_task_runs()
        while page := client.read_logs(limit=200, offset=len(logs)):
            logs += page
    return json.dumps([r.model_dump(mode="json") for r in runs + logs])


def test_a_night_on_a_dask_cluster_reaches_the_in_process_night(harness, scripted, model,
                                                                 cluster, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    production(here, scripted)
    production(there, scripted)
    model.answered = 0
    local = night(here, model)
    paid_here = model.answered
    assert local["decision"] == "promoted", json.dumps(local, indent=1, default=str)[:3000]
    model.answered = 0
    fanned = night(there, model, "dask", cluster)
    assert fanned["decision"] == local["decision"]
    assert fanned["candidate_version_id"] == local["candidate_version_id"]
    assert fanned["cost"] == local["cost"] and model.answered == paid_here
    assert audit(there) == audit(here)
    # the workers opened no database: every row above was written by this process
    with Warehouse(there, read_only=True) as wh:
        assert wh.rows("SELECT count(DISTINCT night_id) FROM runs WHERE source = "
                       "'verification'")[0][0] >= 1


def test_a_worker_killed_mid_chunk_reruns_it_and_nothing_is_paid_twice(harness, scripted,
                                                                        model, cluster,
                                                                        tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    production(here, scripted)
    production(there, scripted)
    model.answered = 0
    local = night(here, model)
    model.answered, model.kill_on = 0, 5  # in the seed's evaluation, mid-chunk
    fanned = night(there, model, "dask", cluster)
    assert model.killed, "no worker was killed"
    assert fanned["decision"] == local["decision"] == "promoted"
    assert fanned["candidate_version_id"] == local["candidate_version_id"]
    # the calls the lost attempt made were replayed by its rerun and charged once
    assert fanned["cost"]["calls"] == local["cost"]["calls"] == model.answered
    # the retried chunk's journal, and every other chunk's, ended with the night
    assert journals(cluster) == []


def test_the_budget_holds_across_workers(harness, scripted, model, cluster, tmp_path):
    home = tmp_path / "home"
    production(home, scripted)
    model.answered = 0
    # enough to start (116 projected) but not to finish: the shares in flight bind
    tight = night(home, model, "dask", cluster, budget_calls=125)
    assert tight["decision"] != "refused", tight.get("reason")
    ran_out = (tight["refine"]["stop_reason"].startswith("budget")
               or (tight.get("verification") or {}).get("budget_ran_out"))
    assert ran_out, json.dumps(tight, indent=1, default=str)[:3000]
    assert tight["cost"]["calls"] <= 125 and model.answered <= 125


def test_the_models_key_reaches_the_workers_and_is_stored_nowhere(harness, scripted, model,
                                                                  cluster, tmp_path,
                                                                  monkeypatch):
    secret = f"sk-night-{os.getpid()}-{time.time_ns()}"
    home = tmp_path / "home"
    production(home, scripted)
    # the flow's process has the key; the workers (started without it) get it with the chunks
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    model.token, model.answered, model.refused = secret, 0, 0
    try:
        fanned = night(home, model, "dask", cluster)
    finally:
        model.token = None
    assert model.refused == 0 and model.answered == fanned["cost"]["calls"] > 0
    assert fanned["decision"] == "promoted"
    for path in home.rglob("*"):  # not in the warehouse, its snapshots or the reports
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    assert secret not in recorded_by_prefect()


SERVED = "smollm2-135m"  # the cheapest local model, served by the engine on loopback


def log_production(home: Path, scripted: Any, workflow: Any, batch: str) -> None:
    """A day of production runs of `workflow` (logged by the scripted model: what the night
    then calls is the served one)."""
    from cegraph.evaluators import evaluate
    from cegraph.executor import Executor
    from cegraph.llm import LLM
    from tests.test_nightly import TASKS, world

    scripted.reply = world
    with Warehouse(home) as wh:
        llm = LLM("scripted/x")
        traces = asyncio.run(Executor(llm).run_many(workflow, TASKS[:12], evaluate=evaluate,
                                                    run_id=lambda t: f"prod{batch}-{t.id}"))
        wh.record_traces(traces, night_id=f"ingest-{batch}", source="production",
                         dataset="production", model=llm.identity)


def stored_calls(home: Path) -> dict[str, str]:
    with Warehouse(home, read_only=True) as wh:
        return dict(wh.rows("SELECT key, model FROM llm_calls"))


@pytest.mark.slow  # 48-169 s on the loaded 2-core machine: two nights of the real model
def test_a_night_on_the_cluster_calls_the_model_the_engine_serves_on_loopback(
        harness, scripted, cluster, tmp_path):
    from cegraph.evaluator_spec import EvaluatorSpec
    from cegraph.flows.nightly import night_flow
    from cegraph.graph import Workflow
    from cegraph.local_model import fetch
    from cegraph.seeds import seed
    from cegraph.storage.registry import Registry

    fetch(SERVED)
    short = seed("math").model_dump(exclude_defaults=True)
    for node in short["nodes"]:  # the plumbing is under test, not the answers: short calls
        node["params"] = {"max_tokens": 24}
    workflow = Workflow.from_dict(short)
    home = tmp_path / "home"
    with Warehouse(home) as wh:
        Registry(wh).register(workflow, evaluator=EvaluatorSpec(kind="numeric"))
    log_production(home, scripted, workflow, "1")

    def run() -> dict[str, Any]:
        # no api_base: the flow's process serves the local model to the workers on loopback.
        # No rounds: whether the 135M's answers leave a failure to aim at varies between
        # machines, and a round on one night only would hide the replay the test compares.
        [summary] = night_flow("dask", address=cluster)(
            home=str(home), model=SERVED, runner="dask", chunk=2, budget_calls=300,
            max_latency_ratio=1e9, propose_only=True, max_inputs=12, max_rounds=0)["nights"]
        assert summary["decision"] not in ("refused", "busy"), summary.get("reason")
        return summary

    first = run()
    after_first = stored_calls(home)
    # the workers' runs called the served model (`openai/<name>`, keyed by its weights); each
    # paid call is stored once
    served_by = set(after_first.values())
    assert f"openai/{SERVED}" in served_by, served_by
    assert first["cost"]["calls"] == len(after_first) > 0
    # the same inputs logged again: the workers replay what the first night paid for (the
    # flow passes those calls in) and the night is charged only for the calls it made
    log_production(home, scripted, workflow, "2")
    second = run()
    after_second = stored_calls(home)
    assert second["cost"]["calls"] == len(after_second) - len(after_first)
    assert second["cost"]["calls"] < first["cost"]["calls"]
    assert journals(cluster) == []
