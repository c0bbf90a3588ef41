"""The edit vocabulary: typed graph edits, each applying to a workflow and yielding a new
valid workflow or a clear rejection.

Every edit is a pydantic model tagged by `op`, so an LLM's JSON is validated against the
same schema the loop applies (`EDIT_SCHEMA`). `apply` never returns an invalid graph: the
result is re-validated and any reason it cannot run becomes an `EditRejected` naming the
edit. Edits compose (`apply_edits`); each application yields the new version id and the
node-level diff (`Applied`).

The anti-overfit check (`overfit`) rejects an edit whose text contains a long word n-gram
of a counterexample's input or reference, so the loop cannot paste answers into prompts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from cegraph.graph import WORKFLOW_INPUT, Node, Workflow, WorkflowError
from cegraph.operators import REGISTRY

NodeId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
OperatorName = Literal[tuple(sorted(REGISTRY))]  # type: ignore[valid-type]


class EditRejected(ValueError):
    """An edit that cannot apply to this workflow; the message says why."""


class _Edit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def apply(self, wf: Workflow) -> Workflow:
        """The edited workflow, validated; raises `EditRejected` naming the reason."""
        try:
            nodes, output = self._edit(wf)
            return Workflow.from_dict({"name": wf.name, "description": wf.description,
                                       "nodes": [n.model_dump(exclude_defaults=True)
                                                 for n in nodes], "output": output})
        except WorkflowError as exc:
            raise EditRejected(f"{self.op}: the edited graph is invalid: {exc}") from None

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        raise NotImplementedError

    def texts(self) -> list[str]:
        """The free text this edit would put into the workflow (checked for overfitting)."""
        return []

    def _node(self, wf: Workflow, nid: str) -> Node:
        if nid not in wf.by_id:
            raise EditRejected(f"{self.op}: no node {nid!r}; nodes: {', '.join(wf.by_id)}")
        return wf.by_id[nid]

    @staticmethod
    def _fresh_id(wf: Workflow, base: str) -> str:
        taken = set(wf.by_id)
        if base not in taken:
            return base
        return next(f"{base}{i}" for i in range(2, 1000) if f"{base}{i}" not in taken)


# --- helpers over references ------------------------------------------------------------
def _text_output(op: str) -> str:
    """The first text/code output port of an operator (what its consumers read)."""
    port = next((p for p, t in REGISTRY[op].outputs.items() if t in ("text", "code")), None)
    if port is None:
        raise EditRejected(f"{op} has no text output to pass on")
    return port


def _redirect(nodes: list[Node], output: str, wf: Workflow, old: tuple[str, str], new: str,
              *, skip: set[str]) -> tuple[list[Node], str]:
    """Point every reference to `old` (node, port), except from nodes in `skip`, at `new`."""
    def fix(ref: str) -> str:
        return new if ref != WORKFLOW_INPUT and wf.resolve(ref) == old else ref

    out = []
    for n in nodes:
        if n.id in skip:
            out.append(n)
            continue
        inputs = {p: (fix(v) if isinstance(v, str) else [fix(r) for r in v])
                  for p, v in n.inputs.items()}
        out.append(n.model_copy(update={"inputs": inputs}))
    node, _, port = output.partition(".")
    if node in wf.by_id and wf.resolve(output) == old:
        output = new
    return out, output


def _wire(op: str, main: str) -> dict[str, str]:
    """Inputs of a new `op` node: `input` from the workflow input, its one other required
    port from `main`; an operator needing more is not insertable this way."""
    cls = REGISTRY[op]
    required = [p for p in cls.inputs if p not in cls.optional_inputs]
    others = [p for p in required if p != "input"]
    if len(others) > 1:
        raise EditRejected(f"{op} needs inputs {', '.join(others)}; insert it with "
                           "add_test_revise/add_review_revise or rewire")
    if not others:
        return {"input": main}
    return {"input": WORKFLOW_INPUT, others[0]: main} if "input" in cls.inputs else \
        {others[0]: main}


# --- the vocabulary -----------------------------------------------------------------------
class InsertNode(_Edit):
    """Insert a library operator after (or before) a node, rewiring its consumers."""

    op: Literal["insert_node"] = "insert_node"
    operator: OperatorName
    anchor: NodeId
    position: Literal["after", "before"] = "after"
    node_id: NodeId | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    def texts(self) -> list[str]:
        return [v for v in self.params.values() if isinstance(v, str)]

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        anchor = self._node(wf, self.anchor)
        nid = self.node_id or self._fresh_id(wf, self.operator.lower())
        if nid in wf.by_id:
            raise EditRejected(f"insert_node: node {nid!r} exists already")
        nodes = list(wf.nodes)
        if self.position == "after":
            port = _text_output(anchor.op)
            new = Node(id=nid, op=self.operator, params=self.params,
                       inputs=_wire(self.operator, f"{anchor.id}.{port}"))
            nodes, output = _redirect(nodes, wf.output, wf, (anchor.id, port),
                                      f"{nid}.{_text_output(self.operator)}", skip={nid})
            at = [n.id for n in nodes].index(anchor.id) + 1
        else:
            feed = next(iter(anchor.inputs), None)
            if feed is None or not isinstance(anchor.inputs[feed], str):
                raise EditRejected(f"insert_node: {anchor.id!r} has no single input to insert "
                                   "before")
            new = Node(id=nid, op=self.operator, params=self.params,
                       inputs=_wire(self.operator, anchor.inputs[feed]))
            rewired = anchor.model_copy(update={"inputs": {
                **anchor.inputs, feed: f"{nid}.{_text_output(self.operator)}"}})
            nodes = [rewired if n.id == anchor.id else n for n in nodes]
            output = wf.output
            at = [n.id for n in nodes].index(anchor.id)
        nodes.insert(at, new)
        return nodes, output


class ReplaceOperator(_Edit):
    """Run another operator at a node: same-named ports kept, `input` wired when missing,
    params the new operator lacks dropped; consumers of a vanished port read its first text
    output."""

    op: Literal["replace_operator"] = "replace_operator"
    node: NodeId
    operator: OperatorName
    params: dict[str, Any] = Field(default_factory=dict)

    def texts(self) -> list[str]:
        return [v for v in self.params.values() if isinstance(v, str)]

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        old = self._node(wf, self.node)
        if old.op == self.operator:
            raise EditRejected(f"replace_operator: {self.node!r} already runs {self.operator}")
        cls = REGISTRY[self.operator]
        inputs = {p: v for p, v in old.inputs.items() if p in cls.inputs}
        if "input" in cls.inputs and "input" not in inputs:
            inputs["input"] = WORKFLOW_INPUT
        keep = {k: v for k, v in old.params.items() if k in cls.params}
        new = old.model_copy(update={"op": self.operator, "inputs": inputs,
                                     "params": {**keep, **self.params}})
        nodes = [new if n.id == old.id else n for n in wf.nodes]
        output = wf.output
        for port in REGISTRY[old.op].outputs:
            if port not in cls.outputs:
                nodes, output = _redirect(nodes, output, wf, (old.id, port),
                                          f"{old.id}.{_text_output(self.operator)}", skip=set())
        return nodes, output


class WrapEnsemble(_Edit):
    """Self-consistency over a reasoning node: n samples, majority answer."""

    op: Literal["wrap_ensemble"] = "wrap_ensemble"
    node: NodeId
    n: int = Field(5, ge=2, le=16)

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        old = self._node(wf, self.node)
        if old.op == "SelfConsistency":
            if old.params.get("n") == self.n:
                raise EditRejected(f"wrap_ensemble: {self.node!r} already samples n={self.n}")
            return SetParam(node=self.node, param="n", value=self.n)._edit(wf)
        if old.op not in ("ChainOfThought", "Generate"):
            raise EditRejected(f"wrap_ensemble: {self.node!r} runs {old.op}; an ensemble wraps "
                               "a ChainOfThought or Generate node")
        return ReplaceOperator(node=self.node, operator="SelfConsistency",
                               params={"n": self.n})._edit(wf)


class _CheckRevise(_Edit):
    """Check a node's output, and on a failed check revise it, for up to `rounds` rounds;
    consumers read the last revision that ran, else the original (a fallback chain)."""

    node: NodeId
    rounds: int = Field(1, ge=1, le=3)
    checker: ClassVar[str]
    flag: ClassVar[str]
    feedback: ClassVar[str]

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        target = self._node(wf, self.node)
        port = _text_output(target.op)
        original = f"{target.id}.{port}"
        current = original
        added: list[Node] = []
        taken = set(wf.by_id)
        for r in range(1, self.rounds + 1):
            check_id, fix_id = (self._fresh_id_among(taken, f"{self.checker.lower()}{r}"),
                                self._fresh_id_among(taken, f"revise{r}"))
            check_inputs = ({"solution": current} if self.checker == "Test"
                            else {"input": WORKFLOW_INPUT, "solution": current})
            added.append(Node(id=check_id, op=self.checker, inputs=check_inputs))
            added.append(Node(id=fix_id, op="Revise", when=f"not {check_id}.{self.flag}",
                              inputs={"input": WORKFLOW_INPUT, "solution": current,
                                      "feedback": f"{check_id}.{self.feedback}"}))
            current = f"{fix_id}.solution"
        revisions = [n.id for n in added if n.op == "Revise"]
        chain = [f"{rid}.solution" for rid in reversed(revisions)] + [original]

        def fix(v: str | list[str]) -> str | list[str]:
            refs = [v] if isinstance(v, str) else v
            out: list[str] = []
            for ref in refs:
                hit = ref != WORKFLOW_INPUT and wf.resolve(ref) == (target.id, port)
                out.extend(chain if hit else [ref])
            return out if len(out) > 1 else out[0]

        nodes = [n if n.id == target.id else n.model_copy(
            update={"inputs": {p: fix(v) for p, v in n.inputs.items()}}) for n in wf.nodes]
        output = wf.output
        if wf.resolve(output) == (target.id, port):
            # the output is one reference: end in a node that reads the chain
            out_id = self._fresh_id_among(taken, "final")
            added.append(Node(id=out_id, op="Format", params={"llm": False},
                              inputs={"input": WORKFLOW_INPUT, "solution": chain}))
            output = f"{out_id}.answer"
        at = [n.id for n in nodes].index(target.id) + 1
        return nodes[:at] + added + nodes[at:], output

    @staticmethod
    def _fresh_id_among(taken: set[str], base: str) -> str:
        nid = base if base not in taken else next(
            f"{base}_{i}" for i in range(2, 1000) if f"{base}_{i}" not in taken)
        taken.add(nid)
        return nid


class AddTestRevise(_CheckRevise):
    """Run the task's public tests on a code node's output; revise on a failing test."""

    op: Literal["add_test_revise"] = "add_test_revise"
    checker = "Test"
    flag = "passed"
    feedback = "feedback"


class AddReviewRevise(_CheckRevise):
    """An LLM critic reviews a node's output; revise when it finds a mistake."""

    op: Literal["add_review_revise"] = "add_review_revise"
    checker = "Review"
    flag = "approved"
    feedback = "critique"


class EditPrompt(_Edit):
    """Rewrite one node's prompt, instruction or system message."""

    op: Literal["edit_prompt"] = "edit_prompt"
    node: NodeId
    param: Literal["instruction", "prompt", "system"] = "instruction"
    text: str = Field(min_length=3, max_length=2000)

    def texts(self) -> list[str]:
        return [self.text]

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        old = self._node(wf, self.node)
        if self.param not in REGISTRY[old.op].params:
            takes = [p for p in ("instruction", "prompt", "system")
                     if p in REGISTRY[old.op].params]
            raise EditRejected(f"edit_prompt: {old.op} at {self.node!r} has no {self.param!r}"
                               + (f"; it takes {', '.join(takes)}" if takes else
                                  "; it has no editable prompt"))
        if old.params.get(self.param, REGISTRY[old.op].params[self.param]) == self.text:
            raise EditRejected(f"edit_prompt: {self.node!r} has that {self.param} already")
        new = old.model_copy(update={"params": {**old.params, self.param: self.text}})
        return [new if n.id == old.id else n for n in wf.nodes], wf.output


class Rewire(_Edit):
    """Set where one input port reads from (a reference or a fallback chain), or, with
    `node: output`, which node's port is the workflow's output."""

    op: Literal["rewire"] = "rewire"
    node: str
    port: str = ""
    sources: list[str] = Field(min_length=1, max_length=4)

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        if self.node == "output":
            if len(self.sources) != 1:
                raise EditRejected("rewire: the output is one reference")
            return list(wf.nodes), self.sources[0]
        old = self._node(wf, self.node)
        if self.port not in REGISTRY[old.op].inputs:
            raise EditRejected(f"rewire: {old.op} has no input {self.port!r}; it reads "
                               f"{', '.join(REGISTRY[old.op].inputs)}")
        value: str | list[str] = self.sources[0] if len(self.sources) == 1 else self.sources
        if old.inputs.get(self.port) == value:
            raise EditRejected(f"rewire: {self.node}.{self.port} reads that already")
        new = old.model_copy(update={"inputs": {**old.inputs, self.port: value}})
        return [new if n.id == old.id else n for n in wf.nodes], wf.output


class RemoveNode(_Edit):
    """Remove a node; its consumers read what it read (its `solution`, else its `input`)."""

    op: Literal["remove_node"] = "remove_node"
    node: NodeId

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        old = self._node(wf, self.node)
        if len(wf.nodes) == 1:
            raise EditRejected("remove_node: a workflow needs at least one node")
        through = next((old.inputs[p] for p in ("solution", "input") if p in old.inputs), None)
        if not isinstance(through, str):
            raise EditRejected(f"remove_node: {self.node!r} has no single input to pass on")
        for n in wf.nodes:
            if n.when and n.when.removeprefix("not ").strip().split(".")[0] == old.id:
                raise EditRejected(f"remove_node: {n.id!r} runs on a condition of "
                                   f"{self.node!r}; remove or rewire it first")
        nodes = [n for n in wf.nodes if n.id != old.id]
        output = wf.output
        for port in REGISTRY[old.op].outputs:
            nodes, output = _redirect(nodes, output, wf, (old.id, port), through, skip=set())
        if output == WORKFLOW_INPUT:
            raise EditRejected(f"remove_node: {self.node!r} produces the output from the "
                               "workflow input alone")
        return nodes, output


class SetParam(_Edit):
    """Set one runtime parameter of a node."""

    op: Literal["set_param"] = "set_param"
    node: NodeId
    param: Literal["temperature", "n", "max_tokens", "model", "llm", "vote"]
    value: float | int | bool | str | None

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        old = self._node(wf, self.node)
        cls = REGISTRY[old.op]
        if self.param not in cls.params:
            raise EditRejected(f"set_param: {old.op} at {self.node!r} has no param "
                               f"{self.param!r}; it takes {', '.join(cls.params) or 'none'}")
        value = _checked(self.param, self.value)
        if old.params.get(self.param, cls.params[self.param]) == value:
            raise EditRejected(f"set_param: {self.node}.{self.param} is {value!r} already")
        new = old.model_copy(update={"params": {**old.params, self.param: value}})
        return [new if n.id == old.id else n for n in wf.nodes], wf.output


class Demo(BaseModel):
    """A worked example: a shown input the current version solves, and what the node wrote
    for it then."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1, max_length=4000)
    output: str = Field(min_length=1, max_length=4000)


MAX_DEMOS = 6
MAX_RULES = 4


class AddDemonstrations(_Edit):
    """Open a node's prompt with `k` worked examples. The loop picks them (`demonstrations.py`):
    shown inputs nearest the mode's members that the current version solves, never an input
    of the verification or holdout role; a proposer names only the node and k."""

    op: Literal["add_demonstrations"] = "add_demonstrations"
    node: NodeId
    k: int = Field(2, ge=1, le=4)
    demos: tuple[Demo, ...] = Field(default=(), max_length=4)

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        old = self._node(wf, self.node)
        if "demos" not in REGISTRY[old.op].params:
            raise EditRejected(f"add_demonstrations: {old.op} at {self.node!r} takes no "
                               "demonstrations")
        if not self.demos:
            raise EditRejected("add_demonstrations: no demonstration chosen (no solved shown "
                               "input to show)")
        have = list(old.params.get("demos", []))
        ids = {d["task_id"] for d in have}
        added = [d.model_dump() for d in self.demos if d.task_id not in ids]
        if not added:
            raise EditRejected(f"add_demonstrations: {self.node!r} shows those already")
        if len(have) + len(added) > MAX_DEMOS:
            raise EditRejected(f"add_demonstrations: {self.node!r} would show more than "
                               f"{MAX_DEMOS} examples")
        new = old.model_copy(update={"params": {**old.params, "demos": have + added}})
        return [new if n.id == old.id else n for n in wf.nodes], wf.output


class AddRule(_Edit):
    """Add a short instruction for a failure mode to the node that fails (screened like any
    text: it may not paste a shown input or answer)."""

    op: Literal["add_rule"] = "add_rule"
    node: NodeId
    text: str = Field(min_length=8, max_length=300)

    def texts(self) -> list[str]:
        return [self.text]

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        old = self._node(wf, self.node)
        if "rules" not in REGISTRY[old.op].params:
            raise EditRejected(f"add_rule: {old.op} at {self.node!r} takes no rules")
        have = list(old.params.get("rules", []))
        text = " ".join(self.text.split())
        if text in have:
            raise EditRejected(f"add_rule: {self.node!r} has that rule already")
        if len(have) >= MAX_RULES:
            raise EditRejected(f"add_rule: {self.node!r} has {MAX_RULES} rules already")
        new = old.model_copy(update={"params": {**old.params, "rules": [*have, text]}})
        return [new if n.id == old.id else n for n in wf.nodes], wf.output


class CheckThenEscalate(_Edit):
    """Check a reasoning node by an independent second path (`CrossCheck`) and sample an
    ensemble of `n` only when the two disagree: the cost is one call per run plus `n` on
    disagreements, measured by verification. A Format step reading the check extracts by rule
    from then on: the answer the check returns is already the one it agreed on (or the
    majority's), so a Format call could only lose it, and its call pays for the check."""

    op: Literal["check_then_escalate"] = "check_then_escalate"
    node: NodeId
    n: int = Field(3, ge=2, le=8)

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        old = self._node(wf, self.node)
        if old.op not in ("ChainOfThought", "Generate", "Programmer"):
            raise EditRejected(f"check_then_escalate: {self.node!r} runs {old.op}; it checks a "
                               "ChainOfThought, Generate or Programmer node")
        if any(n.op == "CrossCheck" and self.node in n.upstream() for n in wf.nodes):
            raise EditRejected(f"check_then_escalate: {self.node!r} is checked already")
        nodes, output = InsertNode(operator="CrossCheck", anchor=self.node,
                                   params={"n": self.n})._edit(wf)
        check = next(n.id for n in nodes if n.op == "CrossCheck" and n.id not in wf.by_id)
        return [n.model_copy(update={"params": {**n.params, "llm": False}})
                if n.op == "Format" and check in n.upstream() else n for n in nodes], output


class RepairExtraction(_Edit):
    """Repair answer extraction where a mode is about format: a Format call whose reply gives
    no answer falls back to the solution's own (no extra call); a node without a Format
    step gets one that extracts by rule."""

    op: Literal["repair_extraction"] = "repair_extraction"
    node: NodeId

    def _edit(self, wf: Workflow) -> tuple[list[Node], str]:
        old = self._node(wf, self.node)
        if old.op == "Format":
            params = {**REGISTRY["Format"].params, **old.params}
            if not params["llm"]:
                raise EditRejected(f"repair_extraction: {self.node!r} extracts by rule already")
            if params["fallback"]:
                raise EditRejected(f"repair_extraction: {self.node!r} falls back already")
            new = old.model_copy(update={"params": {**old.params, "fallback": True}})
            return [new if n.id == old.id else n for n in wf.nodes], wf.output
        if any(n.op == "Format" and self.node in n.upstream() for n in wf.nodes):
            raise EditRejected(f"repair_extraction: {self.node!r} feeds a Format step; repair "
                               "that one")
        return InsertNode(operator="Format", anchor=self.node, params={"llm": False})._edit(wf)


_RANGES: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 2.0), "n": (int, 2, 16), "max_tokens": (int, 16, 8192)}


def _checked(param: str, value: Any) -> Any:
    if param in _RANGES:
        kind, lo, hi = _RANGES[param]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EditRejected(f"set_param: {param} must be a number")
        if not lo <= value <= hi or (kind is int and value != int(value)):
            raise EditRejected(f"set_param: {param} must be {kind.__name__} in [{lo}, {hi}]")
        return kind(value)
    if param == "llm" and not isinstance(value, bool):
        raise EditRejected("set_param: llm must be true or false")
    if param == "vote" and value not in ("majority", "llm"):
        raise EditRejected("set_param: vote must be 'majority' or 'llm'")
    if param == "model" and not (value is None or isinstance(value, str)):
        raise EditRejected("set_param: model must be a model name or null")
    return value


Edit = Annotated[InsertNode | ReplaceOperator | WrapEnsemble | AddTestRevise | AddReviewRevise
                 | EditPrompt | Rewire | RemoveNode | SetParam | AddDemonstrations | AddRule
                 | CheckThenEscalate | RepairExtraction, Field(discriminator="op")]
EDIT = TypeAdapter(Edit)
EDIT_OPS: tuple[str, ...] = ("insert_node", "replace_operator", "wrap_ensemble",
                             "add_test_revise", "add_review_revise", "edit_prompt", "rewire",
                             "remove_node", "set_param", "add_demonstrations", "add_rule",
                             "check_then_escalate", "repair_extraction")


def require_tag(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (a JSON schema holding the edits in `$defs`) with each edit's `op` required,
    first: pydantic leaves a tag that has a default out of `required`, and a decoding grammar
    then lets the model omit it (measured: the 0.5B wrote 21 edits without an `op`)."""
    for variant in schema.get("$defs", {}).values():
        if "op" in variant.get("properties", {}):
            variant["required"] = ["op", *(r for r in variant.get("required", []) if r != "op")]
    return schema


def parse_edit(data: Any) -> Edit:
    """An edit from JSON data; raises pydantic's ValidationError when it does not fit."""
    return EDIT.validate_python(data)


@dataclass(frozen=True)
class Applied:
    """A workflow after some edits: its version id and the node-level diff from the base."""

    edits: tuple[Edit, ...]
    base: Workflow
    workflow: Workflow

    @property
    def version_id(self) -> str:
        return self.workflow.version_id

    @property
    def diff(self) -> list[str]:
        return self.base.diff(self.workflow)


def apply_edits(wf: Workflow, edits: Sequence[Edit]) -> Applied:
    """Apply edits in order (each to the previous result); an edit that changes nothing
    is rejected, so every accepted edit is a new version."""
    current = wf
    for edit in edits:
        nxt = edit.apply(current)
        if nxt.version_id == current.version_id:
            raise EditRejected(f"{edit.op}: changes nothing in the running graph")
        current = nxt
    return Applied(tuple(edits), wf, current)


# --- anti-overfit ---------------------------------------------------------------------------
_WORD = re.compile(r"\w+")
OVERFIT_NGRAM = 6


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def overfit(edit: Edit, examples: Sequence[str], *, n: int = OVERFIT_NGRAM) -> str | None:
    """Why `edit` copies a counterexample (a shared run of `n` words with one of `examples`,
    the inputs and references the proposer saw), or None when it does not."""
    grams = set().union(*(_ngrams(t, n) for t in edit.texts())) if edit.texts() else set()
    if not grams:
        return None
    for example in examples:
        shared = grams & _ngrams(example, n)
        if shared:
            return (f"{edit.op} copies a counterexample ({' '.join(sorted(shared)[0])!r}...); "
                    "edits must generalize, not paste inputs or answers")
    return None
