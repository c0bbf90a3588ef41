"""The README is a manual: what it shows must keep working. Its commands are each run by some
test, its SQL runs verbatim, its workflow validates and its instrumentation example, run as
written, ingests into the runs it promises."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cegraph.cli.main import app

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
GROUPS = {"bench", "model", "workflow"}  # commands whose subcommand is the real command


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def readme_commands() -> list[list[str]]:
    """Every `cegraph ...` command line of the README's bash blocks, as argv (quotes may
    span lines; comments dropped)."""
    found, pending = [], ""
    for block in blocks("bash"):
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                argv = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            pending = ""
            if argv and Path(argv[0]).name == "cegraph":
                found.append(argv[1:])
    return found


def command_names() -> set[tuple[str, ...]]:
    """The documented commands: those of the bash blocks and of the command table."""
    names = {tuple(a[:2]) if a[0] in GROUPS else (a[0],) for a in readme_commands()}
    for row in re.findall(r"^\| `([^`]+)`", README.replace("\\|", "|"), re.M):
        for cmd in row.split("`, `"):
            head, *sub = cmd.split()
            for s in (sub[0].split("|") if sub and head in GROUPS else [None]):
                names.add((head, s) if s else (head,))
    return names


def test_every_documented_command_is_run_by_a_test():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py")
                        if p.name != Path(__file__).name)
    untested = sorted(" ".join(n) for n in command_names()
                      if not re.search(r'[\[(,]\s*"' + r'",\s*"'.join(n) + '"', sources))
    assert not untested, f"README documents commands no test runs: {untested}"


def test_the_readme_sql_runs_verbatim(tmp_path):
    from cegraph.storage import Warehouse

    Warehouse(tmp_path).close()
    queries = [a for a in readme_commands() if a[0] == "sql"]
    assert len(queries) >= 5
    for argv in queries:
        out = CliRunner().invoke(app, [*argv, "--home", str(tmp_path)])
        assert out.exit_code == 0, (argv, out.output)


def test_the_readme_workflow_validates(tmp_path):
    [yaml] = blocks("yaml")
    (tmp_path / "my_flow.yaml").write_text(yaml)
    out = CliRunner().invoke(app, ["workflow", "validate", str(tmp_path / "my_flow.yaml")])
    assert out.exit_code == 0 and out.output.startswith("ok: math-solver")


def test_the_instrumentation_example_ingests_as_documented(tmp_path, monkeypatch):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from cegraph.serving.otlp_file import OtlpJsonFileExporter
    from cegraph.storage import Warehouse

    [example] = [b for b in blocks("python") if "invoke_workflow" in b]
    log = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(log)))
    monkeypatch.setattr(trace, "get_tracer", lambda name, *a, **k: provider.get_tracer(name))
    for task_id, answer in (("q1", "18"), ("q2", "16")):
        exec(example, {"task_id": task_id, "expected": "18", "question": "?",
                       "solve": lambda q, a=answer: a})
    provider.shutdown()
    out = CliRunner().invoke(app, ["ingest", str(log), "--home", str(tmp_path / "h"),
                                   "--json"])
    assert out.exit_code == 0, out.output
    with Warehouse(tmp_path / "h", read_only=True) as wh:
        assert wh.rows("SELECT workflow, task_id, passed FROM runs ORDER BY task_id") == [
            ("math-solver", "q1", True), ("math-solver", "q2", False)]
        assert wh.rows("SELECT node_id, operator FROM spans") == [("solve", "ChainOfThought")] * 2
        assert wh.rows("SELECT task_id, expected, observed FROM failures") == [
            ("q2", "18", "16")]


@pytest.mark.parametrize("snippet", [b for b in blocks("python") if "run_workflow" in b])
def test_the_notebook_example_runs(snippet, scripted):
    scripted.reply = lambda messages: "\\boxed{3}"
    scope: dict = {}
    exec(snippet.replace('"qwen2.5-coder-1.5b"', '"scripted/m"'), scope)
    assert len(scope["traces"]) == 5 and all(t.outcome is not None for t in scope["traces"])
    assert json.dumps([t.task_id for t in scope["traces"]])
