"""The night report: its summary rebuilt from the warehouse, the signature-space map, and the
self-contained HTML rendered by a real headless browser without console errors."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cegraph.cli.main import app
from cegraph.flows.evaluation import evaluate_workflow
from cegraph.report import NightSummary, write_report
from cegraph.report.projection import project
from tests.test_refine import world

CHROMIUM = os.environ.get("CEGRAPH_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")


def render_in_browser(path: Path) -> tuple[list[str], int]:
    """Open `path` in headless Chromium: (console errors and page errors, plots drawn)."""
    if CHROMIUM is None:
        pytest.skip("no chromium: `make test` installs it with apt-get when run as root; "
                    "install the Debian package chromium, or set CEGRAPH_CHROMIUM")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto(path.resolve().as_uri(), wait_until="load")
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg')"
                               ".length >= 4", timeout=20_000)
        drawn = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
        browser.close()
    return errors, drawn


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?",
                                        "answer": f"#### {i + 1}"}) + "\n" for i in range(30)))
    return path


def test_report_of_a_stored_night_from_the_warehouse_renders_in_a_browser(
        scripted, tmp_path, data_file):
    scripted.reply = world
    home = tmp_path / "h"
    common = ["--dataset", "gsm8k", "--data", str(data_file), "--model", "scripted/x",
              "--home", str(home)]
    for n in (24, 30):  # two nights of the seed: the trend has two points per mode
        evaluate_workflow(dataset="gsm8k", n=n, model="scripted/x", home=str(home),
                          data_dir=str(data_file))
    out = CliRunner().invoke(app, ["refine", *common, "--dev", "30", "--budget-calls", "400",
                                   "--json"])
    assert out.exit_code == 0, out.output
    refine_id = json.loads(out.output.strip().splitlines()[-1])["refine_id"]

    out = CliRunner().invoke(app, ["report", "--home", str(home), "--refinement", refine_id,
                                   "--out", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    html_path = Path(re.search(r"report (\S+\.html)", out.output.replace("\n", "")).group(1))
    summary = NightSummary.model_validate_json(html_path.with_suffix(".json").read_text())

    # modes and their trend across both nights, the mass with its interval
    assert summary.mass_before.runs == 30 and summary.mass_before.failures == 20
    assert summary.mass_before.lo < summary.mass_before.mass < summary.mass_before.hi
    assert summary.modes and {p.night_id for p in summary.trend} >= {summary.night_id}
    assert len({p.night_id for p in summary.trend}) == 2
    # every failure of the night is on the map, from its stored vector, by mode
    assert len(summary.points) == 20 and summary.projection  # all "expected N, got 0": one point
    assert {p.mode_id for p in summary.points} <= {m.mode_id for m in summary.modes}
    # the refinement's edits, with diff and verification; the accepted one decides
    accepted = [e for e in summary.edits if e.status == "accepted"]
    assert accepted and accepted[0].operation == "replace_operator"
    assert accepted[0].diff and accepted[0].verification.fixed > 0
    assert summary.decision == "proposed"  # accepted, no deployment recorded
    assert summary.mass_after is not None and summary.mass_after.mass < summary.mass_before.mass
    assert summary.cost.llm_calls > 0 and summary.cost.budget_calls == 400
    # one mode id everywhere: an edit's target is a mode of the mode table, and an edit row
    # says the edit (operation and target) and its final status, not the refinement's id
    assert {e.target_mode_id for e in summary.edits} <= {m.mode_id for m in summary.modes}
    assert accepted[0].edit == "replace_operator solve -> Programmer"

    page = html_path.read_text()
    assert not re.search(r"<script[^>]+src=", page), "the report must not load scripts"
    assert "replace_operator" in page and html.escape(accepted[0].diff[0]) in page
    edits = page.split("<h2>Candidate edits</h2>")[1].split("<h2>")[0]
    assert refine_id[:12] not in edits
    assert "<td>replace_operator solve -&gt; Programmer</td>" in edits
    assert re.search(r"<td>accepted</td>|<td>accepted: ", edits)
    errors, drawn = render_in_browser(html_path)
    assert errors == [] and drawn == 4


def test_write_report_takes_a_dict_and_validates_it(tmp_path):
    summary = {"night_id": "n/1", "workflow": "math",
               "mass_before": {"failures": 3, "runs": 10, "mass": 0.3, "lo": 0.1, "hi": 0.6},
               "edits": [{"edit_id": "e1", "operation": "set_param", "status": "gated_out",
                          "diff": ["~ solve.temperature: 0 -> 0.2"],
                          "gate": {"passed": False, "checks": [
                              {"expectation": "no_null_outputs", "success": False}]}}],
               "decision": "gated_out", "decision_reason": "the gate failed"}
    path = write_report(summary, tmp_path)
    assert path.name == "report-n_1.html" and path.with_suffix(".json").exists()
    assert "no_null_outputs" in path.read_text() and "&lt;" not in summary["edits"][0]["diff"][0]
    errors, drawn = render_in_browser(path)
    assert errors == [] and drawn == 4
    with pytest.raises(ValidationError):
        write_report({**summary, "decision": "shipped"}, tmp_path)


def test_report_without_a_night_is_one_line(tmp_path):
    from cegraph.storage import Warehouse

    Warehouse(tmp_path / "h").close()
    out = CliRunner().invoke(app, ["report", "--home", str(tmp_path / "h")])
    assert out.exit_code == 2 and "no night stored yet" in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_projection_separates_planted_clusters():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.05, (20, 16)) + np.eye(16)[0]
    b = rng.normal(0, 0.05, (20, 16)) + np.eye(16)[1]
    proj = project(np.vstack([a, b]))
    x = proj.xy[:, 0]
    assert (np.sign(x[:20]) != np.sign(x[20:])).all() and "PCA" in proj.method
    assert project(np.zeros((2, 16))).xy.shape == (2, 2)
    assert "coincide" in project(np.ones((5, 16))).method


def test_projection_of_points_on_a_line_has_no_rounding_noise_axis():
    # three signatures, two of them equal: the second axis has no spread at all
    v = np.vstack([np.eye(16)[0], np.eye(16)[0], np.eye(16)[1]])
    proj = project(v)
    assert (proj.xy[:, 1] == 0).all() and np.ptp(proj.xy[:, 0]) > 0.5
    assert "line" in proj.method


def test_mode_trend_puts_one_night_on_a_category_axis():
    from types import SimpleNamespace

    from cegraph.report.figures import mode_trend
    from cegraph.report.summary import TrendPoint

    point = TrendPoint(night_id="n1", computed_at="2026-12-01T02:00:00", mode_id="m1",
                       label="wrong answer", mass=0.3, lo=0.2, hi=0.4)
    fig = mode_trend(SimpleNamespace(trend=[point]))  # the figure reads only the trend
    assert fig.layout.xaxis.type == "category"
    assert list(fig.data[0].x) == ["2026-12-01 02:00"]
