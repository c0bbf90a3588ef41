"""Trace features: facts read from a failed run's trace and its reference, without an LLM,
that tell wrong answers apart by *how* they went wrong.

A message like `expected 18, got 16` normalizes to the same text for every wrong answer, so
on its own it maps all of them to one point of the signature space. The features add what
the trace shows: whether the expected value was reached somewhere and another one reported
(an extraction slip), whether the reported number is an intermediate quantity of the
reasoning or one given in the question, whether it is off by a power of ten, a percent
factor, a sign or one, whether the reasoning was cut off at the token limit, whether the
answer is a number at all; for code, whether it raises, returns wrong values or times out,
and which kind of input the failing assert feeds it.

Each feature is a tag with a fixed phrase (`PHRASES`, no digits, so normalization keeps it
whole); `TraceFeatures.text` joins the phrases of the tags that hold, and the typed fields
are stored in their own columns of `failures` (see `storage/schema.py`). Features are
computed from a `RunDigest`, which is built from a live `Trace` or from stored spans, so
the warehouse and the benchmark read the same facts.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

from cegraph.answers import GRADER_KIND, extract_answer, numbers, to_number
from cegraph.task import DATASET_KIND
from cegraph.trace import Trace

#: Every feature tag and the phrase it adds to the signature text, in the order they appear.
PHRASES: dict[str, str] = {
    "cut_at_limit": "the reasoning was cut off at the token limit",
    "not_a_number": "the answer is not a number",
    "extraction_slip": "the reasoning reached the expected value but another number was "
                       "reported",
    "expected_then_continued": "the expected value appeared at an intermediate step, then "
                               "the reasoning went on",
    "intermediate_answer": "reported an intermediate result instead of the reasoning's "
                           "final one",
    "number_from_question": "reported a number given in the question",
    "unsupported_answer": "reported a number that appears nowhere in the reasoning",
    "percent_factor": "off by a factor of a hundred (percent)",
    "power_of_ten": "off by a power of ten (units or decimal point)",
    "sign_error": "the negative of the expected value (sign error)",
    "off_by_one": "off by one (counting or boundary)",
    "double_or_half": "off by a factor of two (double or half)",
    "rounding": "close to the expected value (rounding or precision)",
    "one_step_short": "one operation with a given number away from the expected value "
                      "(stopped a step early or answered another question)",
    "wrong_final_result": "the reasoning's own final result is wrong",
    "no_code": "no code in the answer",
    "wrong_name": "the tested function is not defined (another name)",
    "syntax_error": "the code does not parse",
    "raises": "the code raises an exception",
    "wrong_values": "the code returns wrong values",
    "exits": "the program exits before its tests finish",
    "timeout": "the code does not finish in time",
}

#: Phrases for the kind of input the failing assert feeds the code (`failing_input_class`).
INPUT_CLASSES: dict[str, str] = {
    "empty": "fails on an empty input", "single": "fails on a single-element input",
    "negative": "fails on negative numbers", "zero": "fails on zero",
    "float": "fails on fractional numbers", "large": "fails on large numbers",
    "nested": "fails on nested containers", "text": "fails on a text input",
    "typical": "fails on an ordinary input",
}


@dataclass(frozen=True)
class NodeOutput:
    """One node that ran, as the features and the diagnosis read it."""

    node_id: str
    operator: str
    depth: int
    text: str  # its outputs as text (one port: the value; several: `port: value` lines)
    truncated: bool = False
    error: str | None = None


@dataclass(frozen=True)
class RunDigest:
    """What a failed run shows: the question, each node's output, expected vs observed."""

    run_id: str
    task_id: str
    kind: str  # math | code | qa
    question: str
    nodes: tuple[NodeOutput, ...]
    output: str
    failure_class: str
    message: str
    expected: str
    observed: str


def outputs_text(outputs: dict[str, Any]) -> str:
    values = {k: v if isinstance(v, str) else json.dumps(v, default=str)
              for k, v in outputs.items()}
    if len(values) == 1:
        return next(iter(values.values()))
    return "\n".join(f"{k}: {v}" for k, v in values.items())


def question_of(inputs: list[dict[str, Any]]) -> str:
    """The workflow input: the `input` port of the first node that has one."""
    return next((str(i["input"]) for i in inputs if isinstance(i, dict) and "input" in i), "")


def digest_from_trace(trace: Trace) -> RunDigest:
    o = trace.outcome
    kind = GRADER_KIND.get(o.grader if o else "", "qa")
    nodes = tuple(NodeOutput(s.node_id, s.operator, s.depth, outputs_text(s.outputs),
                             s.truncated, f"{s.error_type}: {s.error}" if s.error else None)
                  for s in trace.spans if not s.skipped)
    return RunDigest(trace.run_id, trace.task_id, kind,
                     question_of([s.inputs for s in trace.spans]), nodes, trace.output or "",
                     (o.failure_class or "") if o else "", o.message if o else "",
                     o.expected if o else "", o.observed if o else "")


def kind_of_dataset(dataset: str | None, failure_class: str) -> str:
    if dataset in DATASET_KIND:
        return DATASET_KIND[dataset]
    return "code" if failure_class == "test_failure" else "math"


# --- reading the reasoning ------------------------------------------------------------------

def steps(text: str) -> list[str]:
    """A node's output as numbered steps: its non-empty lines that say something (a line of
    only LaTeX delimiters or a code fence is not a step)."""
    return [ln.strip() for ln in text.splitlines() if re.search(r"[A-Za-z0-9]", ln)
            and ln.strip() not in ("```", "```python")]


def values(text: str) -> list[float]:
    out = []
    for n in numbers(text):
        v = to_number(n)
        if v is not None:
            out.append(v)
    return out


def same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _has(found: list[float], v: float) -> bool:
    return any(same(x, v) for x in found)


@dataclass(frozen=True)
class TraceFeatures:
    """The features of one failure; the typed fields are the `failures` columns of the same
    names (since schema v4)."""

    tags: tuple[str, ...] = ()
    expected_at_node: str | None = None  # first node whose reasoning shows the expected value
    expected_at_step: int | None = None  # its step (1-based, see `steps`)
    reported_at_node: str | None = None  # first node whose reasoning computes the reported one
    reported_at_step: int | None = None
    reasoning_steps: int | None = None  # steps of the reasoning node
    answer_ratio: float | None = None  # observed / expected, both numbers
    code_outcome: str | None = None  # raises | wrong_values | timeout | exits | no_code
    exception_type: str | None = None
    failing_input_class: str | None = None  # a key of INPUT_CLASSES
    extra: tuple[str, ...] = field(default=())  # phrases beyond the tags (input class)

    @property
    def text(self) -> str:
        return "; ".join([PHRASES[t] for t in self.tags] + list(self.extra))

    def row(self) -> dict[str, Any]:
        """The `failures` columns."""
        return {"features": self.text, "feature_tags": list(self.tags),
                "expected_at_node": self.expected_at_node,
                "expected_at_step": self.expected_at_step,
                "reported_at_node": self.reported_at_node,
                "reported_at_step": self.reported_at_step,
                "reasoning_steps": self.reasoning_steps, "answer_ratio": self.answer_ratio,
                "code_outcome": self.code_outcome, "exception_type": self.exception_type,
                "failing_input_class": self.failing_input_class}


def trace_features(d: RunDigest) -> TraceFeatures:
    """The features of a failed run (empty for a run that raised before answering)."""
    if d.kind == "code":
        return _code_features(d)
    if d.kind == "math":
        return _math_features(d)
    cut = ("cut_at_limit",) if any(n.truncated for n in d.nodes) else ()
    return TraceFeatures(tags=cut)


def _ordered(tags: set[str]) -> tuple[str, ...]:
    return tuple(t for t in PHRASES if t in tags)


def _math_features(d: RunDigest) -> TraceFeatures:
    tags: set[str] = set()
    if any(n.truncated for n in d.nodes):
        tags.add("cut_at_limit")
    if d.failure_class in ("exception", "timeout"):
        return TraceFeatures(tags=_ordered(tags))
    expected = to_number(d.expected) if d.expected else None
    observed = to_number(numbers(d.observed)[0]) if numbers(d.observed) else None
    if observed is None and d.observed.strip():  # an answer, but no number in it
        tags.add("not_a_number")
    # the reasoning: every node but the one that only formatted the answer
    reasoning = [n for n in d.nodes if n.text.strip()]
    if len(reasoning) > 1:
        reasoning = reasoning[:-1]
    given = values(d.question)
    found: dict[str, Any] = {}
    ratio = None
    if expected is not None and reasoning:
        for n in reasoning:
            for k, step in enumerate(steps(n.text), start=1):
                if _has(values(step), expected) and not _has(given, expected):
                    found.setdefault("expected", (n.node_id, k))
                if observed is not None and _has(values(step), observed):
                    found.setdefault("reported", (n.node_id, k))
        last = reasoning[-1]
        last_steps = steps(last.text)
        own = extract_answer("math", last.text)
        own_value = to_number(numbers(own)[0]) if own and numbers(own) else None
        if observed is not None and not same(observed, expected):
            tags |= _numeric(observed, expected, given)
            ratio = observed / expected if expected else None
            if "expected" in found:
                node, k = found["expected"]
                final = (own_value is not None and same(own_value, expected)) or (
                    node == last.node_id and k == len(last_steps))
                tags.add("extraction_slip" if final else "expected_then_continued")
            if _has(given, observed):
                tags.add("number_from_question")
            elif "reported" not in found:
                tags.add("unsupported_answer")
            elif own_value is not None and not same(own_value, observed):
                tags.add("intermediate_answer")
            elif "expected" not in found:
                tags.add("wrong_final_result")
        steps_n = len(last_steps)
    else:
        steps_n = None
    exp_at = found.get("expected", (None, None))
    rep_at = found.get("reported", (None, None))
    return TraceFeatures(tags=_ordered(tags), expected_at_node=exp_at[0],
                         expected_at_step=exp_at[1], reported_at_node=rep_at[0],
                         reported_at_step=rep_at[1], reasoning_steps=steps_n,
                         answer_ratio=ratio)


def _numeric(observed: float, expected: float, given: list[float]) -> set[str]:
    """How a wrong number relates to the expected one."""
    if expected == 0:
        return {"off_by_one"} if same(abs(observed), 1.0) else set()
    ratio = observed / expected
    for power in (1, 2, 3, 4):
        if same(abs(ratio), 10.0 ** power) or same(abs(ratio), 10.0 ** -power):
            return {"percent_factor" if power == 2 else "power_of_ten"}
    if same(ratio, -1.0):
        return {"sign_error"}
    if same(abs(observed - expected), 1.0):
        return {"off_by_one"}
    if same(ratio, 2.0) or same(ratio, 0.5):
        return {"double_or_half"}
    if abs(observed - expected) / abs(expected) < 0.02:
        return {"rounding"}
    for q in given:  # 0 + q or 1 * q would only say the expected value is in the question
        if q in (0.0, 1.0) or observed in (0.0, 1.0) or same(q, expected):
            continue
        if any(same(expected, v) for v in (observed + q, observed - q, observed * q,
                                            observed / q)):
            return {"one_step_short"}
    return set()


_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning))\b")
_UNDEFINED = re.compile(r"name '(\w+)' is not defined")


def _code_features(d: RunDigest) -> TraceFeatures:
    tags: set[str] = set()
    if any(n.truncated for n in d.nodes):
        tags.add("cut_at_limit")
    m = _EXCEPTION.match(d.message)
    exc = m.group(1) if m else None
    outcome = None
    if d.failure_class in ("no_answer",):
        outcome = "no_code"
    elif d.failure_class == "timeout":
        outcome = "timeout"
    elif d.failure_class == "test_failure":
        outcome = "wrong_values"
    elif d.failure_class in ("exception", "truncated"):
        outcome = "exits" if d.message.startswith("the program exited") else "raises"
    if outcome:
        tags.add(outcome)
    called = _called(d.expected)
    if exc == "NameError" and (u := _UNDEFINED.search(d.message)) and u.group(1) == called:
        tags.add("wrong_name")
    if exc in ("SyntaxError", "IndentationError"):
        tags.add("syntax_error")
    cls = input_class(d.expected) if d.expected.startswith("assert") else None
    extra = (INPUT_CLASSES[cls],) if cls and outcome in ("wrong_values", "raises") else ()
    return TraceFeatures(tags=_ordered(tags), code_outcome=outcome, exception_type=exc,
                         failing_input_class=cls, extra=extra)


def _call(statement: str) -> ast.Call | None:
    try:
        tree = ast.parse(statement.strip())
    except SyntaxError:
        return None
    return next((n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name)), None)


def _called(statement: str) -> str | None:
    call = _call(statement) if statement else None
    return call.func.id if call is not None and isinstance(call.func, ast.Name) else None


def input_class(statement: str) -> str | None:
    """The kind of input a failing assert gives the function under test: the first that
    applies of empty, single, negative, zero, float, large, nested, text, else typical."""
    call = _call(statement)
    if call is None:
        return None
    args = []
    for a in call.args:
        try:
            args.append(ast.literal_eval(a))
        except (ValueError, SyntaxError, TypeError):
            continue
    flat: list[Any] = []

    def walk(v: Any, depth: int) -> int:
        deepest = depth
        if isinstance(v, (list, tuple, set, dict)):
            for x in (v.items() if isinstance(v, dict) else v):
                deepest = max(deepest, walk(x, depth + 1))
        else:
            flat.append(v)
        return deepest

    depth = max((walk(a, 0) for a in args), default=0)
    sized = [a for a in args if isinstance(a, (list, tuple, set, dict, str))]
    nums = [v for v in flat if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if any(len(a) == 0 for a in sized):
        return "empty"
    if any(isinstance(a, (list, tuple, set)) and len(a) == 1 for a in sized):
        return "single"
    if any(v < 0 for v in nums):
        return "negative"
    if any(v == 0 for v in nums) and len(nums) <= 2:
        return "zero"
    if any(isinstance(v, float) for v in nums):
        return "float"
    if any(abs(v) >= 10**6 for v in nums):
        return "large"
    if depth >= 3 or any(isinstance(a, (list, tuple)) and any(isinstance(x, (list, tuple))
                                                             for x in a) for a in args):
        return "nested"
    if any(isinstance(v, str) for v in flat):
        return "text"
    return "typical"
