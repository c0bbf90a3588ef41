"""The workflow registry: register, versions, promote/rollback, export, lineage, the gate's
veto, and the `cegraph register/promote/rollback/export/workflows` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cegraph.evaluator_spec import EvaluatorSpec
from cegraph.graph import Workflow
from cegraph.refine.cost import CostPerRun
from cegraph.refine.gate import GateEvidence, check
from cegraph.seeds import seed
from cegraph.storage import Warehouse
from cegraph.storage.registry import Gate, Registry, RegistryError, Stale

NUMERIC = EvaluatorSpec(kind="numeric")


def variant(wf: Workflow, max_tokens: int) -> Workflow:
    """`wf` with its first node's token limit changed: another version of the same graph."""
    first = wf.nodes[0].model_copy(update={"params": {**wf.nodes[0].params,
                                                      "max_tokens": max_tokens}})
    return wf.model_copy(update={"nodes": [first, *wf.nodes[1:]]})


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(Warehouse(tmp_path / "home"))


def chain(reg: Registry) -> tuple[str, str, str]:
    """math registered (seed), then v1 and v2 (child of v1) stored, not promoted."""
    s = reg.register(seed("math"), name="math", evaluator=NUMERIC)
    v1 = reg.add_version("math", variant(seed("math"), 300), parent=s, created_by="edit-1")
    v2 = reg.add_version("math", variant(seed("math"), 200), parent=v1, created_by="edit-2")
    return s, v1, v2


def test_register_makes_the_seed_active_and_is_idempotent(reg: Registry) -> None:
    s = reg.register(seed("math"), name="prod-math", evaluator=NUMERIC, source="math.yaml")
    assert reg.register(seed("math"), name="prod-math", evaluator=NUMERIC) == s
    version, wf = reg.active("prod-math")
    assert version == s and wf.name == "prod-math" and wf.version_id == s
    [r] = reg.registered()
    assert (r.name, r.seed_version_id, r.active_version_id, r.source) == (
        "prod-math", s, s, "math.yaml")
    assert reg.evaluator("prod-math") == NUMERIC
    with pytest.raises(RegistryError, match="registered already"):
        reg.register(variant(seed("math"), 100), name="prod-math", evaluator=NUMERIC)


def test_promote_rollback_and_export_follow(reg: Registry, tmp_path: Path) -> None:
    s, v1, v2 = chain(reg)
    exported = json.loads(reg.export("math"))
    assert Workflow.from_dict(exported).version_id == s
    _gate(reg, v1, passed=True, edit_id="e1", verification_id="ver1")
    _gate(reg, v2, passed=True, edit_id="e2", verification_id="ver2")
    reg.promote(v1, reason="night 1", run_id="night-1", expected_active=s)
    reg.promote(v2, reason="night 2", run_id="night-2", expected_active=v1)
    assert reg.active("math")[0] == v2
    assert reg.promote(v2, reason="again") == v2  # already active: nothing written
    # rollback restores the previous active version, and the export follows
    assert reg.rollback("math", reason="bad night") == v1
    assert reg.active("math")[0] == v1
    out = tmp_path / "active.json"
    out.write_text(reg.export("math"))
    assert Workflow.load(out).version_id == v1
    # a second rollback walks back one more promotion (not forth to v2)
    assert reg.rollback("math", reason="worse") == s
    with pytest.raises(RegistryError, match="no earlier active version"):
        reg.rollback("math", reason="nothing left")
    assert reg.rollback("math", to=v2[:8], reason="forward again") == v2
    rows = reg.wh.rows("SELECT action, version_id, previous_version_id, run_id FROM "
                       "deployments ORDER BY seq")
    assert [r[0] for r in rows] == ["register", "promote", "promote", "rollback", "rollback",
                                    "rollback"]
    assert rows[1][1:] == (v1, s, "night-1")


def test_a_graph_stored_before_under_another_name(reg: Registry) -> None:
    # `cegraph eval` stored the seed as "math-solver"; it is registered as "prod"
    reg.wh.record_version(seed("math"), created_by="seed")
    s = reg.register(seed("math"), name="prod", evaluator=NUMERIC)
    child = variant(seed("math"), 64)
    reg.wh.record_version(child, created_by="edit-9", parent=s)  # the loop's own write
    assert reg.promote(child.version_id, reason="by hand", force=True) == child.version_id
    version, wf = reg.active("prod")
    assert version == child.version_id and wf.name == "prod"
    assert json.loads(reg.export("prod"))["name"] == "prod"


def test_rollback_only_to_a_version_that_was_active(reg: Registry) -> None:
    _, _, v2 = chain(reg)
    with pytest.raises(RegistryError, match="never active"):
        reg.rollback("math", to=v2, reason="x")


def test_lineage_is_the_chain_back_to_the_seed(reg: Registry) -> None:
    s, v1, v2 = chain(reg)
    lineage = reg.lineage(v2)
    assert [r["version_id"] for r in lineage] == [v2, v1, s]
    assert [r["created_by"] for r in lineage] == ["edit-2", "edit-1", "seed"]
    assert [r["depth"] for r in lineage] == [0, 1, 2]


def test_unknown_workflow_or_version_is_a_one_line_error(reg: Registry) -> None:
    chain(reg)
    for call in (lambda: reg.active("nope"), lambda: reg.export("nope"),
                 lambda: reg.rollback("nope", reason="x"),
                 lambda: reg.promote("deadbeef00", reason="x"),
                 lambda: reg.lineage("deadbeef00"),
                 lambda: reg.add_version("nope", seed("math"), parent="x", created_by="u")):
        with pytest.raises(RegistryError) as err:
            call()
        assert "\n" not in str(err.value)


def _gate(reg: Registry, version: str, *, passed: bool, edit_id: str = "e1",
          verification_id: str = "ver1") -> None:
    reg.wh.insert("edits", [{"edit_id": edit_id, "workflow": "math", "status": "verified",
                             "candidate_version_id": version}])
    evidence = GateEvidence(["8", "9"], regression=10, broken=0 if passed else 5, target=4,
                            candidate_target_passed=3, active_target_passed=0,
                            candidate_cost=CostPerRun(1, 10, 0.0, 1.0),
                            active_cost=CostPerRun(1, 10, 0.0, 1.0),
                            active_modes=["m1"], sampled_modes=["m1"])
    reg.record_gate(check(evidence), verification_id=verification_id, edit_id=edit_id)


def test_a_failed_gate_blocks_promotion_unless_forced(reg: Registry) -> None:
    s, v1, _ = chain(reg)
    _gate(reg, v1, passed=False)
    [(status, why)] = reg.wh.rows("SELECT status, reject_reason FROM edits")
    assert status == "gated_out" and "break_rate" in why
    with pytest.raises(RegistryError, match="did not pass its gate"):
        reg.promote(v1, reason="nightly", edit_id="e1")
    assert reg.active("math")[0] == s
    assert reg.promote(v1, reason="a human decided", force=True) == v1
    [(forced,)] = reg.wh.rows("SELECT forced FROM deployments WHERE action = 'promote'")
    assert forced is True


def test_a_passed_gate_allows_promotion(reg: Registry) -> None:
    _, v1, _ = chain(reg)
    _gate(reg, v1, passed=True)
    assert reg.promote(v1, reason="nightly", edit_id="e1") == v1
    [(status,)] = reg.wh.rows("SELECT status FROM edits")
    assert status == "verified"
    rows = reg.wh.rows("SELECT suite, verification_id, edit_id, success FROM gate_results")
    assert len(rows) == 11 and all(r[:3] == ("cegraph_edit_gate", "ver1", "e1") and r[3]
                                  for r in rows)


def test_a_version_never_gated_promotes_only_with_force(reg: Registry) -> None:
    s, v1, v2 = chain(reg)
    _gate(reg, v2, passed=True)  # the night gated its final version, not v1 on the way
    with pytest.raises(RegistryError, match="never gated"):
        reg.promote(v1, reason="nightly")
    assert reg.active("math")[0] == s
    assert reg.promote(v1, reason="a human decided", force=True) == v1
    [(forced,)] = reg.wh.rows("SELECT forced FROM deployments WHERE action = 'promote'")
    assert forced is True


def test_promotion_is_compare_and_swap_on_the_active_version(reg: Registry) -> None:
    s, v1, v2 = chain(reg)
    _gate(reg, v2, passed=True)
    reg.promote(v1, reason="a human's hotfix", force=True)  # while the night was down
    with pytest.raises(Stale, match=f"active version is {v1}, not {s}") as err:
        reg.promote(v2, reason="nightly", run_id="night-1", expected_active=s)
    assert "\n" not in str(err.value)
    assert reg.active("math")[0] == v1  # the hotfix stays
    assert reg.promote(v2, reason="nightly", expected_active=v1) == v2


def test_the_latest_gate_decides(reg: Registry) -> None:
    _, v1, _ = chain(reg)
    _gate(reg, v1, passed=False)
    _gate(reg, v1, passed=True, edit_id="e2", verification_id="ver2")
    assert reg.latest_gate(v1) == Gate(True, [], None)
    assert reg.promote(v1, reason="re-verified") == v1


def test_cli_register_promote_rollback_export(tmp_path: Path) -> None:
    from cegraph.cli.main import app
    from cegraph.cli.refining import resolve_workflow

    home = tmp_path / "home"
    wf_file = tmp_path / "mine.yaml"
    variant(seed("math"), 100).save(wf_file)
    runner = CliRunner()

    def run(*args: str) -> object:
        return runner.invoke(app, [*args, "--home", str(home)])

    r = run("register", str(wf_file), "--name", "prod")
    assert r.exit_code == 0, r.output
    seed_id = variant(seed("math"), 100).version_id
    assert f"seed version {seed_id}" in r.output
    r = run("workflows")
    assert "prod" in r.output and seed_id in r.output and "numeric" in r.output
    with Warehouse(home) as wh:
        reg = Registry(wh)
        v1 = reg.add_version("prod", variant(seed("math"), 50), parent=seed_id,
                             created_by="user")
        # a registered name resolves to its active version; seed names still name seeds
        assert resolve_workflow("prod", wh).version_id == seed_id
        assert resolve_workflow("math", wh).version_id == seed("math").version_id
    r = run("promote", v1[:8], "--reason", "looks better")
    assert r.exit_code == 2 and "never gated" in r.output  # a human must say --force
    r = run("promote", v1[:8], "--reason", "looks better", "--force")
    assert r.exit_code == 0 and f"prod: {v1} is active" in r.output
    out = tmp_path / "served.json"
    assert run("export", "prod", "--out", str(out)).exit_code == 0
    assert Workflow.load(out).version_id == v1
    assert run("rollback", "prod").exit_code == 0
    assert Workflow.from_dict(json.loads(run("export", "prod").output)).version_id == seed_id
    # errors: one line, exit 2
    for args in (("export", "nope"), ("promote", "feedfacecafe"), ("rollback", "prod"),
                 ("register", str(wf_file), "--evaluator", "judge"),
                 ("register", str(wf_file), "--evaluator", "bogus")):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("error:") and r.output.count("\n") == 1, r.output
