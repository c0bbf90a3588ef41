"""The deployments through a real Prefect server and a process worker: `prefect.yaml` is
deployed to a server on loopback, a worker of the `cegraph` process pool picks the runs up
and runs the flows in subprocesses against a project home."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cegraph.storage import Warehouse

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
FIXTURE = REPO / "tests" / "fixtures" / "otel" / "genai_spans.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "prefect server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("prefect server did not come up")


@pytest.mark.slow
def test_deployments_run_through_a_real_server_and_process_worker(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "home"
    (home / "inbox").mkdir(parents=True)
    (home / "inbox" / "spans.jsonl").write_bytes(FIXTURE.read_bytes())
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "CEGRAPH_HOME": str(home), "PYTHONPATH": str(REPO), "PWD": str(REPO),
           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=(logs / "server").open("w"),
                              stderr=subprocess.STDOUT)
    worker = None

    def prefect(*args: str, timeout: float = 90) -> str:
        done = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        wait_healthy(api, server)
        prefect("work-pool", "create", "cegraph", "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "cegraph"], env=env,
                                  cwd=REPO, stdout=(logs / "worker").open("w"),
                                  stderr=subprocess.STDOUT)
        for name in ("ingest-logs/ingest-logs", "nightly-refinement/nightly-refinement"):
            out = prefect("deployment", "run", name, "--watch", "--watch-timeout", "100",
                          timeout=110)
            assert "Completed" in out, out + (logs / "worker").read_text()[-3000:]
        with Warehouse(home, read_only=True) as wh:
            [(runs,)] = wh.rows("SELECT count(*) FROM runs WHERE source = 'production'")
            [(ingests,)] = wh.rows("SELECT count(*) FROM ingests")
        assert runs > 0 and ingests == 1
        listed = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{api}/deployments/filter", data=b"{}", method="POST",
            headers={"Content-Type": "application/json"}), timeout=10).read())
        nightly = next(d for d in listed if d["name"] == "nightly-refinement")
        assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    finally:
        for proc in (worker, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
