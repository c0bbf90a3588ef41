"""The workflow graph: nodes running operators, wired into a DAG with one output.

A node's input is wired to a *source*: `input` (the task's text), `<node>` (that node's
first output) or `<node>.<port>`. A list of sources is a fallback chain: the first whose node
ran is used, which together with `when` expresses conditional flow:

    - {id: test, op: Test, inputs: {solution: gen.text}}
    - {id: fix, op: Revise, when: not test.passed,
       inputs: {input: input, solution: gen.text, feedback: test.feedback}}
    - {id: final, op: Format, inputs: {input: input, solution: [fix.solution, gen.text]}}

A workflow's version id hashes its *resolved* graph (operator defaults merged into params,
every reference written `node.port`, conditions resolved) together with the operator
library's fingerprint (its code and built-in prompts): two files that behave the same share
an id whatever their spelling, name or description, and editing a built-in prompt changes
it. Workflows load from and save to YAML or JSON, validate with errors that name the node,
and diff node by node.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cegraph.operators import REGISTRY, compatible, library_fingerprint

WORKFLOW_INPUT = "input"


class WorkflowError(ValueError):
    """A workflow that cannot run; the message names the node and what to fix."""


def _one_line(exc: Exception) -> str:
    """A parser's error without its multi-line excerpt: 'line 3, column 3: expected ...'."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    op: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str | list[str]] = Field(default_factory=dict)
    when: str | None = None  # "<node>.<bool port>" or "not <node>.<bool port>"

    @field_validator("id")
    @classmethod
    def _id_is_name(cls, v: str) -> str:
        if not v.replace("_", "").replace("-", "").isalnum() or v == WORKFLOW_INPUT:
            raise ValueError(f"node id {v!r} must be alphanumeric (with - or _), not 'input'")
        return v

    def sources(self, port: str) -> list[str]:
        value = self.inputs[port]
        return [value] if isinstance(value, str) else list(value)

    def upstream(self) -> set[str]:
        refs = [s for port in self.inputs for s in self.sources(port)]
        if self.when:
            refs.append(self.when.removeprefix("not ").strip())
        return {r.split(".")[0] for r in refs} - {WORKFLOW_INPUT}


@dataclass(frozen=True)
class Condition:
    """A resolved `when`: run the node iff `node.port` is true (false, with `negate`)."""

    node: str
    port: str
    negate: bool

    @property
    def text(self) -> str:
        return f"{'not ' if self.negate else ''}{self.node}.{self.port}"


class Workflow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    nodes: list[Node]
    output: str  # "<node>" or "<node>.<port>"

    # --- loading and saving --------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Workflow:
        path = Path(path)
        try:
            data = (json.loads(path.read_text()) if path.suffix == ".json"
                    else yaml.safe_load(path.read_text()))
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise WorkflowError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}"
                                f" ({_one_line(exc)}); fix the file") from exc
        if not isinstance(data, dict):
            raise WorkflowError(f"{path}: a workflow is a mapping with name, nodes and output")
        try:
            return cls.from_dict(data)
        except WorkflowError as exc:
            raise WorkflowError(f"{path}: {exc}") from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workflow:
        try:
            wf = cls.model_validate(data)
        except ValidationError as exc:  # one line per field, not pydantic's block
            where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'workflow'}: {e['msg']}"
                              for e in exc.errors())
            raise WorkflowError(f"malformed workflow: {where}") from exc
        wf.validate_graph()
        return wf

    def save(self, path: str | Path) -> None:
        path = Path(path)
        data = self.model_dump(exclude_defaults=True)
        path.write_text(json.dumps(data, indent=2) if path.suffix == ".json"
                        else yaml.safe_dump(data, sort_keys=False))

    # --- identity ---------------------------------------------------------------------
    def resolved(self) -> dict[str, Any]:
        """The graph as it runs: defaults merged, references `node.port`, conditions resolved,
        nodes by id (the spelling of a file does not show)."""
        def ref(text: str) -> str:
            return ".".join(self.resolve(text))

        nodes = [{"id": n.id, "op": n.op, "params": {**REGISTRY[n.op].params, **n.params},
                  "inputs": {port: [ref(r) for r in n.sources(port)] for port in n.inputs},
                  "when": (c.text if (c := self.condition(n)) else None)}
                 for n in sorted(self.nodes, key=lambda n: n.id)]
        return {"nodes": nodes, "output": ".".join(self.output_ref())}

    @property
    def version_id(self) -> str:
        canonical = {"graph": self.resolved(), "library": library_fingerprint()}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str)
                              .encode()).hexdigest()[:12]

    # --- structure --------------------------------------------------------------------
    @property
    def by_id(self) -> dict[str, Node]:
        return {n.id: n for n in self.nodes}

    @property
    def order(self) -> list[str]:
        """Node ids in a topological order (stable: file order among ready nodes)."""
        remaining = {n.id: n.upstream() & set(self.by_id) for n in self.nodes}
        order: list[str] = []
        while remaining:
            ready = [i for i, deps in remaining.items() if not deps - set(order)]
            if not ready:
                cycle = ", ".join(sorted(remaining))
                raise WorkflowError(f"cycle among nodes {cycle}: a workflow must be acyclic")
            order.extend(ready)
            for i in ready:
                del remaining[i]
        return order

    @property
    def depth(self) -> dict[str, int]:
        """Longest path from the workflow input to each node (input-fed nodes are depth 1)."""
        depth: dict[str, int] = {}
        for nid in self.order:
            ups = self.by_id[nid].upstream()
            depth[nid] = 1 + max((depth[u] for u in ups), default=0)
        return depth

    def output_ref(self) -> tuple[str, str]:
        node, _, port = self.output.partition(".")
        return node, port or next(iter(REGISTRY[self.by_id[node].op].outputs))

    def condition(self, node: Node) -> Condition | None:
        """`node`'s `when`, its port resolved like any reference (`not test` reads the first
        output of `test`): the one reading of a condition, for validator and executor alike."""
        if not node.when:
            return None
        text = node.when.strip()
        negate = text.startswith("not ")
        ref = text.removeprefix("not ").strip()
        self._port_type(node.id, ref)  # a dangling reference is named before it is resolved
        return Condition(*self.resolve(ref), negate)

    def resolve(self, ref: str) -> tuple[str, str]:
        """A source reference -> (node id, port); the port defaults to the first output."""
        node, _, port = ref.partition(".")
        if node == WORKFLOW_INPUT:
            return WORKFLOW_INPUT, "text"
        return node, port or next(iter(REGISTRY[self.by_id[node].op].outputs))

    def _port_type(self, node_id: str, ref: str) -> str:
        """Type of the output that `ref` names, raising a node-naming error if it is dangling."""
        src, _, port = ref.partition(".")
        if src == WORKFLOW_INPUT:
            if port:
                raise WorkflowError(f"node {node_id!r}: the workflow input has no port {port!r}")
            return "text"
        if src not in self.by_id:
            raise WorkflowError(f"node {node_id!r}: input {ref!r} refers to no node "
                                f"(nodes: {', '.join(self.by_id)})")
        outputs = REGISTRY[self.by_id[src].op].outputs
        port = port or next(iter(outputs))
        if port not in outputs:
            raise WorkflowError(f"node {node_id!r}: {src!r} ({self.by_id[src].op}) has no output "
                                f"{port!r}; it has {', '.join(outputs)}")
        return outputs[port]

    def validate_graph(self) -> None:
        """Raise `WorkflowError` naming the node for any reason this workflow cannot run."""
        if not self.nodes:
            raise WorkflowError("a workflow needs at least one node")
        seen: set[str] = set()
        for node in self.nodes:
            if node.id in seen:
                raise WorkflowError(f"node {node.id!r} is defined twice")
            seen.add(node.id)
        for node in self.nodes:
            op = REGISTRY.get(node.op)
            if op is None:
                raise WorkflowError(f"node {node.id!r}: unknown operator {node.op!r}; "
                                    f"the library has {', '.join(sorted(REGISTRY))}")
            unknown = set(node.params) - set(op.params)
            if unknown:
                raise WorkflowError(f"node {node.id!r}: {op.name} has no param(s) "
                                    f"{', '.join(sorted(unknown))}; it takes "
                                    f"{', '.join(op.params) or 'none'}")
            for port in node.inputs:
                if port not in op.inputs:
                    raise WorkflowError(f"node {node.id!r}: {op.name} has no input {port!r}; "
                                        f"it reads {', '.join(op.inputs)}")
                for ref in node.sources(port):
                    found = self._port_type(node.id, ref)
                    if not compatible(found, op.inputs[port]):
                        raise WorkflowError(
                            f"node {node.id!r}: input {port!r} wants {op.inputs[port]} but "
                            f"{ref!r} gives {found}")
            missing = set(op.inputs) - set(node.inputs) - op.optional_inputs
            if missing:
                raise WorkflowError(f"node {node.id!r}: {op.name} input(s) "
                                    f"{', '.join(sorted(missing))} are not wired")
            cond = self.condition(node)
            if cond is not None and self._port_type(node.id, f"{cond.node}.{cond.port}") != "bool":
                raise WorkflowError(f"node {node.id!r}: when {node.when!r} must name a bool "
                                    "output")
            for param, allowed in op.templates.items():
                self._check_template(node, param, allowed)
        _ = self.order  # raises on a cycle
        out_node = self.output.partition(".")[0]
        if out_node not in self.by_id:
            raise WorkflowError(f"output {self.output!r} names no node; set `output:` to one of "
                                f"{', '.join(self.by_id)}")
        self._port_type("output", self.output)

    def _check_template(self, node: Node, param: str, allowed: frozenset[str]) -> None:
        template = node.params.get(param, REGISTRY[node.op].params[param])
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise WorkflowError(f"node {node.id!r}: param {param!r} is not a valid template "
                                f"({exc}); write a literal brace as {{{{ or }}}}") from None
        unknown = sorted({f.split(".")[0].split("[")[0] for f in fields} - allowed)
        if unknown:
            names = ", ".join("{" + f + "}" for f in unknown)
            raise WorkflowError(
                f"node {node.id!r}: param {param!r} has placeholder(s) {names}; it may use "
                f"{', '.join('{' + a + '}' for a in sorted(allowed))}, and a literal brace is "
                "written {{ or }}")

    # --- diff -------------------------------------------------------------------------
    def diff(self, other: Workflow) -> list[str]:
        """Readable node-level changes from `self` to `other` (empty when the same version)."""
        lines: list[str] = []
        for nid in other.by_id.keys() - self.by_id.keys():
            n = other.by_id[nid]
            lines.append(f"+ node {nid} ({n.op}) inputs={dict(n.inputs)}"
                         + (f" when={n.when!r}" if n.when else ""))
        for nid in self.by_id.keys() - other.by_id.keys():
            lines.append(f"- node {nid} ({self.by_id[nid].op})")
        for nid in [i for i in self.order if i in other.by_id]:
            a, b = self.by_id[nid], other.by_id[nid]
            if a.op != b.op:
                lines.append(f"~ node {nid}: op {a.op} -> {b.op}")
            for key in sorted(a.params.keys() | b.params.keys()):
                if a.params.get(key) != b.params.get(key):
                    lines.append(f"~ node {nid}: param {key}: {a.params.get(key)!r} -> "
                                 f"{b.params.get(key)!r}")
            for port in sorted(a.inputs.keys() | b.inputs.keys()):
                if a.inputs.get(port) != b.inputs.get(port):
                    lines.append(f"~ node {nid}: input {port}: {a.inputs.get(port)!r} -> "
                                 f"{b.inputs.get(port)!r}")
            if a.when != b.when:
                lines.append(f"~ node {nid}: when {a.when!r} -> {b.when!r}")
        if self.output != other.output:
            lines.append(f"~ output: {self.output} -> {other.output}")
        return lines
