import json

import pytest

from cegraph.graph import Workflow, WorkflowError
from cegraph.seeds import SEEDS, seed

BASE = {
    "name": "t",
    "nodes": [
        {"id": "solve", "op": "ChainOfThought", "inputs": {"input": "input"}},
        {"id": "fmt", "op": "Format", "inputs": {"input": "input", "solution": "solve.solution"}},
    ],
    "output": "fmt.answer",
}


def with_nodes(*nodes, output="fmt.answer"):
    return {"name": "t", "nodes": list(nodes), "output": output}


@pytest.mark.parametrize("data, message", [
    (with_nodes({"id": "fmt", "op": "Magic", "inputs": {}}),
     "node 'fmt': unknown operator 'Magic'"),
    (with_nodes({"id": "fmt", "op": "Format", "inputs": {"input": "input", "solution": "ghost"}}),
     "node 'fmt': input 'ghost' refers to no node"),
    (with_nodes({"id": "fmt", "op": "Format",
                 "inputs": {"input": "input", "solution": "solve.nothing"}},
                {"id": "solve", "op": "ChainOfThought", "inputs": {"input": "input"}}),
     "'solve' (ChainOfThought) has no output 'nothing'"),
    (with_nodes({"id": "a", "op": "ChainOfThought", "inputs": {"input": "fmt"}},
                {"id": "fmt", "op": "Format", "inputs": {"input": "input", "solution": "a"}}),
     "cycle among nodes a, fmt"),
    (with_nodes({"id": "solve", "op": "ChainOfThought", "inputs": {"input": "input"}},
                output="missing"), "output 'missing' names no node"),
    (with_nodes({"id": "t", "op": "Test", "inputs": {"solution": "input"}},
                {"id": "fmt", "op": "Format",
                 "inputs": {"input": "input", "solution": "t.passed"}}),
     "node 'fmt': input 'solution' wants text but 't.passed' gives bool"),
    (with_nodes({"id": "fmt", "op": "Format", "params": {"temprature": 0},
                 "inputs": {"input": "input", "solution": "input"}}),
     "node 'fmt': Format has no param(s) temprature"),
    (with_nodes({"id": "fmt", "op": "Format", "inputs": {"input": "input"}}),
     "node 'fmt': Format input(s) solution are not wired"),
    (with_nodes({"id": "fmt", "op": "Format", "when": "not fmt2.answer",
                 "inputs": {"input": "input", "solution": "input"}},
                {"id": "fmt2", "op": "Format", "inputs": {"input": "input", "solution": "input"}}),
     "when 'not fmt2.answer' must name a bool output"),
    (with_nodes({"id": "fmt", "op": "Format", "inputs": {"input": "input", "solution": "input"}},
                {"id": "fmt", "op": "Format", "inputs": {"input": "input", "solution": "input"}}),
     "node 'fmt' is defined twice"),
    ({"name": "t", "nodes": [], "output": "x", "colour": "red"}, "malformed workflow"),
])
def test_invalid_workflows_name_the_problem(data, message):
    with pytest.raises(WorkflowError) as err:
        Workflow.from_dict(data)
    assert message in str(err.value)


def test_copies_get_their_own_version_id():
    wf = Workflow.from_dict(BASE)
    before = wf.version_id
    edited = wf.model_copy(update={"nodes": [
        wf.nodes[0].model_copy(update={"params": {"max_tokens": 64}}), wf.nodes[1]]})
    assert edited.version_id != before and wf.version_id == before


def test_version_id_is_content_hash_and_ignores_name():
    a = Workflow.from_dict(BASE)
    b = Workflow.from_dict({**BASE, "name": "other", "description": "x"})
    c = Workflow.from_dict({**BASE, "nodes": [
        {**BASE["nodes"][0], "params": {"max_tokens": 256}}, BASE["nodes"][1]]})
    assert a.version_id == b.version_id
    assert a.version_id != c.version_id
    assert a.diff(c) == ["~ node solve: param max_tokens: None -> 256"]
    assert a.diff(b) == []


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_roundtrip(tmp_path, suffix):
    wf = Workflow.from_dict(BASE)
    path = tmp_path / f"wf{suffix}"
    wf.save(path)
    if suffix == ".json":
        assert json.loads(path.read_text())["output"] == "fmt.answer"
    assert Workflow.load(path).version_id == wf.version_id


def test_order_depth_and_conditional_structure():
    wf = Workflow.from_dict(with_nodes(
        {"id": "gen", "op": "Generate", "inputs": {"input": "input"}},
        {"id": "test", "op": "Test", "inputs": {"solution": "gen.text"}},
        {"id": "fix", "op": "Revise", "when": "not test.passed",
         "inputs": {"input": "input", "solution": "gen.text", "feedback": "test.feedback"}},
        {"id": "fmt", "op": "Format",
         "inputs": {"input": "input", "solution": ["fix.solution", "gen.text"]}},
    ))
    assert wf.order == ["gen", "test", "fix", "fmt"]
    assert wf.depth == {"gen": 1, "test": 2, "fix": 3, "fmt": 4}
    other = Workflow.from_dict(with_nodes(
        {"id": "gen", "op": "Generate", "inputs": {"input": "input"}},
        {"id": "fmt", "op": "Format", "inputs": {"input": "input", "solution": "gen.text"}}))
    diff = other.diff(wf)
    assert any(line.startswith("+ node fix (Revise)") for line in diff)
    assert "~ node fmt: input solution: 'gen.text' -> ['fix.solution', 'gen.text']" in diff


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_seeds_are_valid(kind):
    assert seed(kind).nodes


def test_equivalent_graphs_share_a_version_id_and_prompts_are_in_it(monkeypatch):
    from cegraph.operators import REGISTRY, prompts

    implicit = Workflow.from_dict({**BASE, "nodes": [
        {"id": "solve", "op": "ChainOfThought", "inputs": {"input": "input"}},
        {"id": "fmt", "op": "Format", "inputs": {"input": "input", "solution": "solve"}}],
        "output": "fmt"})
    written_out = Workflow.from_dict({**BASE, "nodes": [
        {"id": "fmt", "op": "Format", "params": dict(REGISTRY["Format"].params),
         "inputs": {"input": "input", "solution": ["solve.solution"]}},
        {"id": "solve", "op": "ChainOfThought", "params": {"temperature": 0.0},
         "inputs": {"input": "input"}}]})
    base = Workflow.from_dict(BASE)
    assert implicit.version_id == written_out.version_id == base.version_id
    before = base.version_id
    monkeypatch.setitem(prompts.FORMAT_INSTRUCTION, "math", "Box the answer.")
    assert Workflow.from_dict(BASE).version_id != before
    monkeypatch.undo()
    assert Workflow.from_dict(BASE).version_id == before
    monkeypatch.setattr(prompts, "REVIEW", "Is it right?")  # a prompt of an unused operator
    assert Workflow.from_dict(BASE).version_id != before


def test_condition_without_port_reads_the_first_output():
    wf = Workflow.from_dict(with_nodes(
        {"id": "gen", "op": "Generate", "inputs": {"input": "input"}},
        {"id": "test", "op": "Test", "inputs": {"solution": "gen.text"}},
        {"id": "fix", "op": "Revise", "when": "not test",
         "inputs": {"input": "input", "solution": "gen.text", "feedback": "test.feedback"}},
        output="fix"))
    cond = wf.condition(wf.by_id["fix"])
    assert (cond.node, cond.port, cond.negate) == ("test", "passed", True)
    spelled = wf.model_copy(update={"nodes": [
        *wf.nodes[:2], wf.nodes[2].model_copy(update={"when": "not test.passed"})]})
    assert spelled.version_id == wf.version_id


@pytest.mark.parametrize("prompt, message", [
    ('Reply as JSON {"answer": 1}. {input}', "placeholder(s) {\"answer\"}"),
    ("Solve {input} {", "not a valid template"),
    ("Solve {} now", "placeholder(s) {}"),
])
def test_prompt_templates_are_checked_when_validated(prompt, message):
    with pytest.raises(WorkflowError) as err:
        Workflow.from_dict(with_nodes(
            {"id": "gen", "op": "Generate", "params": {"prompt": prompt},
             "inputs": {"input": "input"}}, output="gen"))
    assert "node 'gen': param 'prompt'" in str(err.value) and message in str(err.value)
    assert "{{" in str(err.value)
    Workflow.from_dict(with_nodes(  # a literal brace written doubled is fine
        {"id": "gen", "op": "Generate", "params": {"prompt": 'JSON {{"a": 1}} {input}'},
         "inputs": {"input": "input"}}, output="gen"))
