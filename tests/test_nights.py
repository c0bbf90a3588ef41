"""Night locks are leases: a live lease refuses a second night, a lease held by a dead
worker on another host expires (the next night resumes it), the holder's heartbeat renews
it, `cegraph nights --clear-stale` ends one by hand, and a night waits (bounded) for a job
holding the catalog."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cegraph.storage import Warehouse
from cegraph.storage.nights import NightBusy, NightStore, open_catalog
from cegraph.storage.warehouse import CatalogLocked, _now


def _other_host_night(wh: Warehouse, *, lease_left_s: float) -> None:
    """A running night whose holder is a worker on another machine."""
    now = _now()
    wh.insert("night_runs", [{
        "night_id": "night-elsewhere", "workflow": "math", "status": "running",
        "step": "project", "holder": "worker-7.example:4242:deadbeef0000",
        "active_version_id": "v0", "budget": '{"calls": 300}', "calls": 0, "tokens": 0,
        "cost": 0.0, "started_at": now - dt.timedelta(hours=1),
        "heartbeat_at": now - dt.timedelta(seconds=600 - lease_left_s),
        "lease_expires_at": now + dt.timedelta(seconds=lease_left_s)}])


def test_a_lease_held_by_a_dead_worker_on_another_host_expires(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "home") as wh:
        store = NightStore(wh)
        _other_host_night(wh, lease_left_s=-1)  # its worker stopped renewing 10 min ago
        [lock] = store.locks()
        assert lock.stale
        night = store.acquire("math", budget={"calls": 1}, active_version_id="v9")
        # taken over and resumed: same night, its budget and start version kept
        assert (night.night_id, night.resumed, night.budget, night.active_version_id) == (
            "night-elsewhere", True, {"calls": 300}, "v0")
        [(holder, expires)] = wh.rows("SELECT holder, lease_expires_at FROM night_runs")
        assert holder == night.holder and expires > _now()
        store.release(night)


def test_a_live_lease_on_another_host_refuses_and_can_be_cleared(tmp_path: Path) -> None:
    from cegraph.cli.main import app

    home = tmp_path / "home"
    with Warehouse(home) as wh:
        _other_host_night(wh, lease_left_s=300)
        with pytest.raises(NightBusy, match="--clear-stale math"):
            NightStore(wh).acquire("math", budget={}, active_version_id="v0")
    shown = CliRunner().invoke(app, ["nights", "--home", str(home)])
    assert shown.exit_code == 0 and "worker-7.example" in shown.output
    assert "held" in shown.output
    cleared = CliRunner().invoke(app, ["nights", "--clear-stale", "math", "--home", str(home)])
    assert cleared.exit_code == 0 and "night-elsewhere" in cleared.output
    assert "stale" in cleared.output
    with Warehouse(home) as wh:
        night = NightStore(wh).acquire("math", budget={}, active_version_id="v0")
        assert night.night_id == "night-elsewhere" and night.resumed
    nothing = CliRunner().invoke(app, ["nights", "--clear-stale", "qa", "--home", str(home)])
    assert nothing.exit_code == 2 and "no running night" in nothing.output


def test_the_holders_heartbeat_renews_its_lease(tmp_path: Path) -> None:
    with Warehouse(tmp_path / "home") as wh:
        store = NightStore(wh)
        night = store.acquire("math", budget={}, active_version_id="v0", lease_s=0.6)
        [(first,)] = wh.rows("SELECT lease_expires_at FROM night_runs")
        with store.holding(night, lease_s=0.6):
            time.sleep(0.9)
        [(renewed,)] = wh.rows("SELECT lease_expires_at FROM night_runs")
        assert renewed > first
        store.release(night)


def test_a_night_waits_bounded_for_a_job_holding_the_catalog(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Warehouse(home).close()
    hold = ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', "
            "flush=True); time.sleep(float(sys.argv[2]))")
    catalog = str(home / "catalog.duckdb")
    job = subprocess.Popen([sys.executable, "-c", hold, catalog, "30"], stdout=subprocess.PIPE,
                           text=True)
    try:
        assert job.stdout.readline().strip() == "held"
        with pytest.raises(CatalogLocked, match="waited 0.5 s"):
            open_catalog(home, wait_s=0.5, poll_s=0.1)
    finally:
        job.kill()
        job.wait()
    job = subprocess.Popen([sys.executable, "-c", hold, catalog, "1.5"],
                           stdout=subprocess.PIPE, text=True)
    said: list[str] = []
    assert job.stdout.readline().strip() == "held"
    with open_catalog(home, wait_s=60, poll_s=0.2, on_wait=said.append) as wh:
        assert wh.rows("SELECT 1") == [(1,)]
    job.wait()
    assert len(said) == 1 and "waiting up to 60 s" in said[0]
