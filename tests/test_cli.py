"""The command line as a new user meets it: quick to start, one-line errors, one home."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cegraph.cli.main import app
from cegraph.config import ConfigError, Settings

HEAVY = ("litellm", "lancedb", "sklearn", "torch", "prefect", "sentence_transformers")


@pytest.mark.parametrize("module", ["cegraph.storage", "cegraph.cli.main"])
def test_starting_a_command_imports_nothing_heavy(module):
    # `cegraph sql` took 8 s when `import cegraph.storage` pulled litellm, lancedb and scikit-learn
    code = (f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_workflow_file_that_is_not_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: [\n  - id: a\n")
    out = CliRunner().invoke(app, ["workflow", "validate", str(bad)])
    assert out.exit_code == 2
    assert out.output.count("\n") == 1 and "not valid YAML (line 3, column 3" in out.output
    bad.write_text("name: x\nnodes:\n  - id: a\noutput: a\n")
    out = CliRunner().invoke(app, ["workflow", "validate", str(bad)])
    assert out.exit_code == 2 and "nodes.0.op: Field required" in out.output


def test_a_mistyped_setting_is_one_line_and_help_still_answers(tmp_path):
    (tmp_path / "cegraph.toml").write_text('modle = "qwen"\n')
    with pytest.raises(ConfigError, match="unknown setting 'modle'"):
        Settings.load(tmp_path)
    run = [sys.executable, "-m", "cegraph.cli.main"]
    bad = subprocess.run([*run, "sql", "select 1"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr + bad.stdout
    assert "cegraph.toml: unknown setting 'modle'" in bad.stdout
    helped = subprocess.run([*run, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert helped.returncode == 0 and "Usage" in helped.stdout


def test_a_cegraph_toml_may_use_a_tool_table(tmp_path, monkeypatch):
    monkeypatch.delenv("CEGRAPH_HOME", raising=False)
    (tmp_path / "cegraph.toml").write_text('[tool.cegraph]\nhome = "/srv/cg"\n')
    assert Settings.load(tmp_path).home == "/srv/cg"
    (tmp_path / "cegraph.toml").write_text("home = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(tmp_path)


def test_a_read_command_never_creates_a_home(tmp_path):
    home = tmp_path / "nowhere"
    out = CliRunner().invoke(app, ["workflows", "--home", str(home)])
    assert out.exit_code == 2 and "no catalog" in out.output
    assert not home.exists()


def test_bench_fss_prints_its_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["bench", "fss", "--failures", "60", "--span-rows", "40",
                                   "--queries", "3", "--json"])
    assert out.exit_code == 0, out.output
    figures = json.loads(out.output.strip().splitlines()[-1])
    assert figures["failures"] == 60 and figures["span_rows"] == 40
    assert figures["modes"] >= 1 and figures["knn_p50_ms"] > 0


def test_run_and_workflows_answer_in_json(tmp_path, scripted):
    scripted.reply = lambda messages: "\\boxed{7}"
    out = CliRunner().invoke(app, ["run", "math", "--dataset", "gsm8k", "--n", "2",
                                   "--model", "scripted/m", "--json"])
    assert out.exit_code == 0, out.output
    runs = json.loads(out.output.strip().splitlines()[-1])
    assert len(runs) == 2 and {r["output"] for r in runs} == {"7"}
    assert all(r["llm_calls"] >= 1 and r["outcome"] in ("pass", "wrong_answer") for r in runs)
    CliRunner().invoke(app, ["register", "math", "--home", str(tmp_path)])
    listed = CliRunner().invoke(app, ["workflows", "--home", str(tmp_path), "--json"])
    [row] = json.loads(listed.output.strip().splitlines()[-1])
    assert row["workflow"] == "math-solver" and row["active_version_id"] == row["seed_version_id"]


def test_datasets_workflow_show_and_bench_sandbox_answer():
    listed = CliRunner().invoke(app, ["datasets"])
    assert listed.exit_code == 0 and "gsm8k" in listed.output and "humaneval" in listed.output
    shown = CliRunner().invoke(app, ["workflow", "show", "math"])
    assert shown.exit_code == 0 and "ChainOfThought" in shown.output
    timed = CliRunner().invoke(app, ["bench", "sandbox", "--runs", "2", "--json"])
    assert timed.exit_code == 0, timed.output
    assert json.loads(timed.output.strip().splitlines()[-1])["grading_ms"] > 0
