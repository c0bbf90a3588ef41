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
