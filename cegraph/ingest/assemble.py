"""One trace's source spans -> one cegraph run: the run span, its steps (nodes) with their
LLM calls, the output and the outcome.

- The run is the span with `gen_ai.operation.name = <mapping.run_operation>`, else the
  trace's root (a span whose parent is not in the trace).
- Steps are the run span's children; deeper spans belong to the step above them (an LLM
  call inside a step is one of the step's calls, with its tokens). A run with no children is
  one step, itself.
- A step's node id is the mapping's `node_attribute`, else the last dotted part of its name;
  its operator the mapping's `operator_attribute`, else its span kind.
- The workflow: `gen_ai.workflow.name` of the run span, else of the trace's `invoke_workflow`
  span (or that span's name, `invoke_workflow <name>`), else `service.name`, else its name.
- The outcome: a grade of the run (a `gen_ai.evaluation.result` event or an OpenInference
  `annotations.*` / `evaluations.*` attribute set on the run span, else a trace-scoped
  `trace.annotations.*` / `trace.evaluations.*` one on any span; the last, or the mapping's
  `evaluation_name`), else the mapping's `outcome_attribute`. A grade's
  label, when it is a cegraph failure class (`truncated`, ...), is the failure's class; a step
  with error status or an `exception` event makes it an `exception` failure at that step;
  an error status on the run span alone, a failure with that message; neither: unevaluated.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cegraph.evaluators import FAILURE_CLASSES
from cegraph.ingest.conventions import read
from cegraph.ingest.mapping import Mapping, Mappings
from cegraph.ingest.span import LogRecord, Reading, SourceSpan, as_json
from cegraph.ingest.unmapped import unmapped_keys
from cegraph.llm import Completion
from cegraph.trace import INFRASTRUCTURE, Outcome, Span, Trace

EVALUATOR_VERSION = "ingest-1"  # the verdict is the log's own: bump if reading it changes


@dataclass
class Run:
    """An assembled run: the trace, its model, and every source span as read."""

    trace: Trace
    model: str
    spans: list[tuple[SourceSpan, Reading, str]]  # (span, reading, node id)
    unmapped: Counter[str] = field(default_factory=Counter)
    logs: list[LogRecord] = field(default_factory=list)
    record: str = ""  # a JSONL run: the record as read
    invalid: list[tuple[SourceSpan, str]] = field(default_factory=list)  # unreadable fields

    def raw(self) -> bytes:
        """The run as read (a JSONL record, or its spans and log records as JSON)."""
        return self.record.encode() if self.record else as_json(
            [s for s, _, _ in self.spans] + list(self.logs))


def is_run_span(span: SourceSpan, mapping: Mapping) -> bool:
    return span.attributes.get("gen_ai.operation.name") == mapping.run_operation


WORKFLOW_SPAN = "invoke_workflow"


def _workflow_name(span: SourceSpan) -> str:
    """The GenAI workflow name a span carries: `gen_ai.workflow.name`, else an
    `invoke_workflow` span's name (`invoke_workflow <gen_ai.workflow.name>`)."""
    attrs = span.attributes
    name = attrs.get("gen_ai.workflow.name")
    if not name and attrs.get("gen_ai.operation.name") == WORKFLOW_SPAN:
        name = span.name.removeprefix(WORKFLOW_SPAN).strip()
    return str(name or "")


def workflow_of(span: SourceSpan, spans: Sequence[SourceSpan] = ()) -> str:
    """The workflow a run belongs to: its span's workflow name, else that of the trace's
    `invoke_workflow` span (a run whose root is, say, an HTTP server span), else the service."""
    named = _workflow_name(span) or next(
        (n for s in spans if s.attributes.get("gen_ai.operation.name") == WORKFLOW_SPAN
         for n in [_workflow_name(s)] if n), "")
    return named or str(span.resource.get("service.name") or span.name or "production")


def run_span(spans: Sequence[SourceSpan], mappings: Mappings) -> SourceSpan | None:
    ids = {s.span_id for s in spans}
    marked = [s for s in spans if is_run_span(s, mappings.of_span(s))]
    if marked:
        return marked[0]
    roots = [s for s in spans if s.parent_id is None or s.parent_id not in ids]
    return min(roots, key=lambda s: s.start_ns) if roots else None


def _ns(ns: int) -> float:
    return ns / 1e9


def assemble(spans: Sequence[SourceSpan], logs: Sequence[LogRecord], mappings: Mappings,
             root: SourceSpan) -> Run:
    workflow = workflow_of(root, spans)
    mapping = mappings.of(workflow)
    by_span: dict[str, list[LogRecord]] = {}
    for record in logs:
        by_span.setdefault(record.span_id, []).append(record)
    readings = {s.span_id: read(s, by_span.get(s.span_id, ())) for s in spans}
    parent = {s.span_id: s.parent_id for s in spans}

    def step_of(span_id: str) -> str | None:
        """The run span's child above `span_id` (None for the run span itself)."""
        seen = set()
        while span_id not in seen:
            seen.add(span_id)
            up = parent.get(span_id)
            if up == root.span_id:
                return span_id
            if up is None or up not in parent:
                return None
            span_id = up
        return None

    steps = sorted((s for s in spans if s.parent_id == root.span_id), key=lambda s: s.start_ns)
    if not steps:
        steps = [root]
    node_of: dict[str, str] = {}
    used: dict[str, int] = {}
    for s in steps:
        base = str(s.attributes.get(mapping.node_attribute) if mapping.node_attribute
                   and s.attributes.get(mapping.node_attribute) is not None
                   else s.name.rsplit(".", 1)[-1] or s.name)
        used[base] = used.get(base, 0) + 1
        node_of[s.span_id] = base if used[base] == 1 else f"{base}#{used[base]}"
    members: dict[str, list[SourceSpan]] = {s.span_id: [] for s in steps}
    for s in spans:
        if s.span_id == root.span_id or s.span_id in members:
            continue
        step = step_of(s.span_id)
        if step in members:
            members[step].append(s)
    cegraph_spans = [_span(s, readings, members[s.span_id], node_of[s.span_id], depth,
                           mapping.operator_attribute) for depth, s in enumerate(steps)]
    rr = readings[root.span_id]
    attrs = root.attributes
    input_text = (str(attrs.get(mapping.input_attribute, "")) if mapping.input_attribute
                  else rr.input)
    # the run span's own output, even empty (an empty answer is not the last step's text)
    output = rr.output if rr.output or "gen_ai.output.messages" in attrs else next(
        (str(s.outputs.get("output", "")) for s in reversed(cegraph_spans)
         if s.outputs.get("output")), "")
    task_id = str((attrs.get(mapping.task_attribute) if mapping.task_attribute else None)
                  or attrs.get("gen_ai.conversation.id") or attrs.get("session.id")
                  or (hashlib.sha256(input_text.encode()).hexdigest()[:16] if input_text
                      else root.trace_id))
    version = str((attrs.get(mapping.version_attribute) if mapping.version_attribute else None)
                  or root.resource.get("service.version") or "production")
    trace = Trace(run_id=root.trace_id, workflow=workflow, version_id=version, task_id=task_id,
                  spans=cegraph_spans, output=output, started=_ns(root.start_ns),
                  ended=_ns(root.end_ns), outcome=None)
    if cegraph_spans and input_text:
        cegraph_spans[0].inputs.setdefault("input", input_text)
    trace_grades = [g for s in sorted(spans, key=lambda s: s.start_ns)
                    for g in readings[s.span_id].trace_evaluations]
    trace.outcome = _outcome(trace, root, rr, mapping, _grade(rr.evaluations, trace_grades,
                                                              mapping))
    model = next((readings[s.span_id].model for s in spans
                  if readings[s.span_id].kind == "llm" and readings[s.span_id].model), "")
    unmapped = unmapped_keys(((s, readings[s.span_id]) for s in spans), mapping.attributes())
    rows = [(s, readings[s.span_id],
             node_of.get(s.span_id) or node_of.get(step_of(s.span_id) or "", "")) for s in spans]
    invalid = [(s, why) for s in spans for why in readings[s.span_id].invalid]
    return Run(trace, model or "unknown", rows, unmapped, list(logs), invalid=invalid)


def _span(step: SourceSpan, readings: dict[str, Reading], inner: list[SourceSpan],
          node_id: str, depth: int, operator_attribute: str | None = None) -> Span:
    own = readings[step.span_id]
    completions, failed = [], None
    for s in sorted([step, *inner], key=lambda c: c.start_ns):
        r = readings[s.span_id]
        if failed is None and r.error:
            failed = r
        if r.kind == "llm":
            completions.append(Completion(
                f"{s.trace_id}:{s.span_id}", r.model, [{"role": "user", "content": r.input}],
                {}, 0, r.output, r.tokens_in, r.tokens_out, 0.0, _ns(s.end_ns - s.start_ns),
                r.finish_reason, _ns(s.end_ns)))
    given = own.input or (completions[0].messages[0]["content"] if completions else "")
    made = own.output or (completions[-1].text if completions else "")
    operator = (str(step.attributes[operator_attribute]) if operator_attribute
                and step.attributes.get(operator_attribute) is not None
                else "llm" if own.kind == "llm" else own.kind if own.kind != "step"
                else str(step.attributes.get("openinference.span.kind", "step")).lower())
    return Span(node_id=node_id, operator=operator, depth=depth,
                inputs={"input": given} if given else {},
                outputs={"output": made} if made else {},
                started=_ns(step.start_ns), ended=_ns(step.end_ns), calls=completions,
                error=failed.error if failed else None,
                error_type=failed.error_type if failed else None)


def _grade(own: list[dict], trace_grades: list[dict], mapping: Mapping) -> dict | None:
    """The grade that is the run's verdict: the run span's own, else a trace-scoped one; the
    last of them, or the last named `mapping.evaluation_name`; one without a readable label or
    score (its score reported invalid) is no verdict."""
    for grades in (own, trace_grades):
        graded = [g for g in grades if g.get("label") is not None or g.get("score") is not None]
        if mapping.evaluation_name:
            graded = [g for g in graded if g.get("name") == mapping.evaluation_name]
        if graded:
            return graded[-1]
    return None


def _outcome(trace: Trace, root: SourceSpan, rr: Reading, mapping: Mapping,
             ev: dict | None) -> Outcome | None:
    attrs = root.attributes
    reference = (str(attrs.get(mapping.reference_attribute, "")) if mapping.reference_attribute
                 else "")
    failed_step = trace.error_span
    if ev is not None:
        label = ev.get("label")
        score = ev.get("score")
        passed = (mapping.passed(label) if label is not None
                  else score is not None and score >= 0.5)
        explanation = str(ev.get("explanation") or "")
    elif mapping.outcome_attribute and attrs.get(mapping.outcome_attribute) is not None:
        passed = mapping.passed(attrs[mapping.outcome_attribute])
        score, explanation = None, ""
    elif failed_step is not None or rr.error:
        passed, score, explanation = False, 0.0, rr.error or ""
    else:
        return None
    expected, observed = mapping.reference(explanation)
    expected = reference or expected
    score = float(score) if score is not None else float(passed)
    common = {"grader": "log", "evaluator_version": EVALUATOR_VERSION, "expected": expected,
              "observed": observed or (trace.output or "")}
    if passed:
        return Outcome(True, score, **common)
    label = str(ev.get("label") or "") if ev is not None else ""
    if label in FAILURE_CLASSES or label == INFRASTRUCTURE:  # graded by cegraph's rules
        return Outcome(False, score, label, explanation or rr.error or "failed", **common)
    if failed_step is not None:
        return Outcome(False, score, "exception",
                       f"{failed_step.error_type}: {failed_step.error}", **common)
    if not (trace.output or "").strip():
        cls = "no_answer"
    elif rr.error and ev is None and not expected:
        cls = "exception"
    else:
        cls = "wrong_answer"
    message = explanation or rr.error or (f"expected {expected}, got {trace.output}"
                                          if expected else "failed")
    return Outcome(False, score, cls, message, **common)
