"""Human edits are first-class: a new version of a registered workflow from a file, its diff,
its gate on fresh logged inputs (the night's own machinery), and its promotion; a night's
candidates are stored versions a human can inspect, re-gate and promote."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cegraph.cli.main import app
from cegraph.evaluators import evaluate
from cegraph.executor import Executor
from cegraph.graph import Workflow
from cegraph.llm import LLM
from cegraph.refine.edits import parse_edit
from cegraph.seeds import seed
from cegraph.storage import Warehouse
from cegraph.storage.registry import Registry
from cegraph.task import Task
from tests.test_nightly import MODEL, production, run_night, world

NAME = seed("math").name


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def programmer() -> Workflow:
    """The seed math workflow with its solver replaced by a Programmer (right on every
    input in `world`)."""
    return parse_edit({"op": "replace_operator", "node": "solve",
                       "operator": "Programmer"}).apply(seed("math"))


def broken() -> Workflow:
    """The seed math workflow with an instruction `breaking` answers 0 to."""
    return parse_edit({"op": "edit_prompt", "node": "solve", "param": "instruction",
                       "text": "BROKEN: solve it."}).apply(seed("math"))


def breaking(messages: list[dict[str, str]]) -> str:
    if "BROKEN" in messages[-1]["content"]:
        return "\\boxed{0}"
    return world(messages)


def cli(home: Path, *args: str) -> Any:
    return CliRunner().invoke(app, [*args, "--home", str(home)])


def test_a_human_version_is_registered_diffed_gated_and_promoted(harness, scripted,
                                                                 tmp_path):
    home = tmp_path / "home"
    seed_id = production(home, scripted, modes=True)
    mine, bad = tmp_path / "v2.yaml", tmp_path / "v3.yaml"
    programmer().save(mine)
    broken().save(bad)
    # the same name with another graph: a new version of it, not an error
    r = cli(home, "register", str(mine))
    assert r.exit_code == 0, r.output
    v2 = programmer().version_id
    assert f"{NAME} is registered already: stored {mine} as version {v2}" in \
        r.output.replace("\n", "")
    r = cli(home, "register", str(bad), "--version-of", NAME, "--reason", "try a prompt")
    assert r.exit_code == 0, r.output
    v3 = broken().version_id
    with Warehouse(home, read_only=True) as wh:
        assert Registry(wh).active(NAME)[0] == seed_id  # stored, not active
        rows = wh.rows("SELECT version_id, parent_version_id, created_by FROM "
                       "workflow_versions WHERE version_id IN (?, ?) ORDER BY version_id",
                       [v2, v3])
        assert sorted(rows) == sorted([(v2, seed_id, "human"), (v3, seed_id, "human")])
        [(status, source, diff)] = wh.rows("SELECT status, source, diff FROM edits WHERE "
                                           "candidate_version_id = ?", [v2])
        assert (status, source) == ("proposed", "human") and "Programmer" in diff
    r = cli(home, "workflow", "diff", NAME, v2)  # a registered name: its active version
    assert r.exit_code == 0 and f"{seed_id} -> {v2}" in r.output and "Programmer" in r.output
    r = cli(home, "workflow", "show", v2)
    assert r.exit_code == 0 and "not active" in r.output and "never gated" in r.output
    # not gated: no promotion without --force
    r = cli(home, "promote", v2)
    assert r.exit_code == 2 and "never gated" in r.output and "cegraph gate" in r.output
    # the broken one fails its gate on fresh inputs and does not promote without --force
    scripted.reply = breaking
    r = cli(home, "gate", v3, "--model", MODEL, "--budget-calls", "400")
    assert r.exit_code == 1, r.output
    assert "gate failed for" in r.output and "decision gated_out" in r.output, r.output
    assert "break_rate" in r.output
    r = cli(home, "promote", v3)
    assert r.exit_code == 2 and "did not pass its gate" in r.output
    # the Programmer passes: its evidence is new calls on all 40 logged inputs
    scripted.calls.clear()
    # (a scripted model's latency per run is the machine's load, not the version's cost)
    r = cli(home, "gate", v2, "--model", MODEL, "--budget-calls", "400", "--json",
            "--max-latency-ratio", "1000")
    assert r.exit_code == 0, r.output
    gated = json.loads(r.output.strip().splitlines()[-1])
    assert (gated["verdict"], gated["decision"], gated["holdout"]) == ("passed", "proposed", 40)
    assert sum("Python program" in m[-1]["content"] for m in scripted.calls) == 40
    with Warehouse(home, read_only=True) as wh:  # recorded like a night's gate
        rows = wh.rows("SELECT decision, active_version_id, calls FROM night_runs "
                       "WHERE night_id = ?", [gated["gate_id"]])
        assert rows == [("proposed", seed_id, gated["cost"]["calls"])]
        assert wh.rows("SELECT count(*), bool_and(success) FROM gate_results WHERE "
                       "verification_id = ?", [gated["gate_id"] + "-gate"]) == [(11, True)]
        assert wh.rows("SELECT count(*) FROM input_roles WHERE scope_id = ?",
                       [gated["gate_id"]]) == [(40,)]
        assert wh.rows("SELECT status FROM edits WHERE candidate_version_id = ?", [v2]) == \
            [("verified",)]
    r = cli(home, "workflow", "show", v2)
    assert "gate passed" in r.output and "verified" in r.output
    r = cli(home, "promote", v2, "--reason", "reviewed")
    assert r.exit_code == 0 and f"{NAME}: {v2} is active" in r.output
    with Warehouse(home, read_only=True) as wh:
        [(edit, forced)] = wh.rows("SELECT edit_id, forced FROM deployments WHERE action = "
                                   "'promote'")
        assert edit == f"human-{v2}" and forced is False
    # roll back, and the broken one only with --force
    assert cli(home, "rollback", NAME).exit_code == 0
    r = cli(home, "promote", v3, "--force", "--reason", "a human overrides")
    assert r.exit_code == 0


def test_promote_refuses_when_the_active_version_changed_since_the_gate(harness, scripted,
                                                                         tmp_path):
    home = tmp_path / "home"
    seed_id = production(home, scripted, modes=True)
    with Warehouse(home) as wh:
        reg = Registry(wh)
        v2, _, _ = reg.add_human_version(NAME, programmer())
        v3, _, _ = reg.add_human_version(NAME, broken())
    r = cli(home, "gate", v2, "--model", MODEL, "--budget-calls", "400",
            "--max-latency-ratio", "1000")  # scripted latency is load noise
    assert r.exit_code == 0, r.output
    assert cli(home, "promote", v3, "--force").exit_code == 0  # a hotfix since the gate
    r = cli(home, "promote", v2)
    assert r.exit_code == 2 and f"the active version is {v3}, not {seed_id}" in r.output
    assert f"cegraph gate {v2}" in r.output
    with Warehouse(home, read_only=True) as wh:
        assert Registry(wh).active(NAME)[0] == v3


def two_candidates(messages: list[dict[str, str]]) -> str:
    """`world`, with a second candidate that changes no answer (rejected)."""
    if "candidates" in messages[-1]["content"]:
        return json.dumps({"candidates": [
            {"rationale": "compute it", "edit": {"op": "replace_operator", "node": "solve",
                                                 "operator": "Programmer"}},
            {"rationale": "be careful", "edit": {"op": "edit_prompt", "node": "solve",
                                                 "param": "instruction",
                                                 "text": "Solve it carefully."}}]})
    return world(messages)


def test_a_nights_candidates_are_stored_versions_a_human_gates_and_promotes(
        harness, scripted, tmp_path):
    home = tmp_path / "home"
    production(home, scripted)
    scripted.reply = two_candidates
    [night] = run_night(home, holdout_share=0.05)["nights"]  # too few to decide
    assert night["decision"] == "undecided", json.dumps(night, default=str)[:3000]
    candidate = night["candidate_version_id"]
    with Warehouse(home, read_only=True) as wh:
        edits = wh.rows("SELECT candidate_version_id, status FROM edits WHERE "
                        "candidate_version_id IS NOT NULL")
        stored = {v for (v,) in wh.rows("SELECT version_id FROM workflow_versions")}
        assert {s for _, s in edits} >= {"accepted", "rejected"}
        assert {v for v, _ in edits} <= stored  # every candidate, rejected ones too
        rejected = next(v for v, s in edits if s == "rejected")
    r = cli(home, "promote", rejected)
    assert r.exit_code == 2 and "never gated" in r.output  # not "unknown version"
    r = cli(home, "workflow", "show", candidate)
    assert r.exit_code == 0 and "(edit " in r.output and "gate failed" in r.output
    # more traffic logged: fresh inputs the night's refinement never ran
    more = [Task(f"q{i}", "production", f"What is {i} + 1?", str(i + 1),
                 metadata={"kind": "math"}) for i in range(40, 80)]
    scripted.reply = world
    with Warehouse(home) as wh:
        llm = LLM(MODEL)
        traces = asyncio.run(Executor(llm).run_many(seed("math"), more, evaluate=evaluate,
                                                    run_id=lambda t: f"prod2-{t.id}"))
        wh.record_traces(traces, night_id="ingest-2", source="production",
                         dataset="production", model=llm.identity)
    r = cli(home, "gate", candidate, "--model", MODEL, "--budget-calls", "400", "--json",
            "--max-latency-ratio", "1000")  # scripted latency is load noise
    assert r.exit_code == 0, r.output
    gated = json.loads(r.output.strip().splitlines()[-1])
    held = gated["holdout"]
    assert held == 42 and re.search(r"on 42 fresh inputs", r.output)  # 40 new + night's 2
    r = cli(home, "promote", candidate)
    assert r.exit_code == 0 and f"{candidate} is active" in r.output


def test_registering_the_active_graph_again_or_an_unknown_name_is_one_line(tmp_path):
    home = tmp_path / "home"
    f, g = tmp_path / "m.yaml", tmp_path / "p.yaml"
    seed("math").save(f)
    programmer().save(g)
    assert cli(home, "register", str(f)).exit_code == 0
    assert cli(home, "register", str(f)).exit_code == 0  # the seed again: idempotent
    first = cli(home, "register", str(g))
    again = cli(home, "register", str(g))  # stored already: the same version, no new edit
    assert first.exit_code == again.exit_code == 0 and first.output == again.output
    with Warehouse(home, read_only=True) as wh:
        assert wh.rows("SELECT count(*) FROM edits") == [(1,)]
    for args, says in ((("register", str(f), "--version-of", NAME), "nothing to add"),
                       (("register", str(g), "--version-of", "nope"), "not registered"),
                       (("gate", "feedfacecafe"), "unknown version")):
        r = cli(home, *args)
        assert r.exit_code == 2 and r.output.startswith("error:"), (args, r.output)
        assert r.output.count("\n") == 1 and says in r.output, r.output
