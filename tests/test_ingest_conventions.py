"""The current conventions: OpenInference annotations / evaluations grade runs like GenAI
evaluation events; the workflow of an `invoke_workflow` span; conversation ids and the
cache / reasoning token counts (GenAI and OpenInference names) in `source_spans`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import home_rows as rows
from conftest import ingest_lines
from otlp_builders import T0, attr, request, span


def value(v: Any) -> dict:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": v}


def oi_span(trace: int, sid: int, parent: int | None, name: str, kind: str,
            **attrs: Any) -> dict:
    """An OpenInference span; `attrs` with `__` for dots (`annotations__0__annotation__name`)."""
    s = {"traceId": f"{trace:032x}", "spanId": f"{sid:016x}", "name": name,
         "startTimeUnixNano": str(T0 + sid), "endTimeUnixNano": str(T0 + sid + 1000),
         "status": {},
         "attributes": [attr("openinference.span.kind", value(kind))]
         + [attr(k.replace("__", "."), value(v)) for k, v in attrs.items()]}
    if parent is not None:
        s["parentSpanId"] = f"{parent:016x}"
    return s


def grade(scope: str, form: str, i: int = 0, **fields: Any) -> dict[str, Any]:
    """Flattened feedback: scope '' or 'trace', form 'annotation' or 'evaluation'."""
    prefix = (f"{scope}__" if scope else "") + f"{form}s__{i}__{form}__"
    return {prefix + k: v for k, v in fields.items()}


def run_of(n: int, *, root: dict[str, Any] | None = None,
           evaluator: dict[str, Any] | None = None) -> str:
    spans = [oi_span(n, 1, None, "agent", "CHAIN", input__value=f"What is {n}+{n}?",
                     output__value=str(2 * n + 1), **(root or {})),
             oi_span(n, 2, 1, "agent.solve", "LLM", llm__model_name="m",
                     llm__token_count__prompt=10, llm__token_count__completion=2,
                     output__value=str(2 * n + 1))]
    if evaluator is not None:  # a carrier span in the trace, grading the whole trace
        spans.append(oi_span(n, 3, 1, "judge", "EVALUATOR", **evaluator))
    return request(*spans)


def ingest(tmp_path: Path, lines: list[str], mapping: str | None = None) -> dict:
    m = None
    if mapping is not None:
        (tmp_path / "map.toml").write_text(mapping)
        m = str(tmp_path / "map.toml")
    return ingest_lines(tmp_path, lines, mapping=m)


def test_openinference_grades_are_the_runs_outcome(tmp_path: Path) -> None:
    lines = [
        run_of(1, root=grade("", "annotation", name="correctness", label="incorrect",
                             explanation="expected 2, got 3", annotator_kind="HUMAN")),
        run_of(2, root=grade("", "evaluation", name="correctness", label="correct",
                             score=1.0)),
        run_of(3, evaluator=grade("trace", "evaluation", name="length", label="truncated",
                                  explanation="cut at the token limit")),
        run_of(4, root=grade("", "evaluation", name="correctness", score=0.2)),
        run_of(5),  # no grade: no verdict
    ]
    s = ingest(tmp_path, lines)
    assert s["runs_stored"] == 5 and s["span_faults"] == {}
    outcomes = rows(tmp_path, "SELECT run_id, outcome FROM runs ORDER BY run_id")
    assert [o for _, o in outcomes] == ["wrong_answer", "pass", "truncated", "wrong_answer",
                                        "unevaluated"]
    failures = rows(tmp_path, "SELECT failure_class, message, expected, observed FROM failures"
                              " ORDER BY run_id")
    assert failures[0] == ("wrong_answer", "expected 2, got 3", "2", "3")
    assert failures[1][:2] == ("truncated", "cut at the token limit")
    # the grades' attributes are read, not reported as unmapped
    unmapped = {r[0] for r in rows(tmp_path, "SELECT attribute FROM unmapped_attributes")}
    assert not {k for k in unmapped if "annotation" in k or "evaluation" in k}


def test_the_named_grade_is_the_verdict_and_a_bad_score_is_reported(tmp_path: Path) -> None:
    both = {**grade("", "annotation", 0, name="correctness", label="fail"),
            **grade("", "annotation", 1, name="tone", label="pass")}
    bad = grade("", "evaluation", name="correctness", score="high")
    s = ingest(tmp_path, [run_of(1, root=both), run_of(2, root=bad)],
               mapping='[default]\nevaluation_name = "correctness"\n')
    assert s["span_faults"] == {"invalid_value": 1}
    assert [r[0] for r in rows(tmp_path, "SELECT outcome FROM runs ORDER BY run_id")] == [
        "wrong_answer", "unevaluated"]


def test_workflow_of_an_invoke_workflow_span(tmp_path: Path) -> None:
    """A run under an HTTP server span: the `invoke_workflow` span is the run, its workflow
    the `gen_ai.workflow.name`, else the name after `invoke_workflow` in the span name."""
    http = {**span(1, 1, None, "GET /solve"), "attributes": [], "status": {}}
    wf = span(1, 2, 1, "invoke_workflow research", attributes=[
        attr("gen_ai.operation.name", {"stringValue": "invoke_workflow"})])
    step = span(1, 3, 2, "research.plan")
    named = span(2, 2, None, "invoke_workflow", attributes=[
        attr("gen_ai.operation.name", {"stringValue": "invoke_workflow"}),
        attr("gen_ai.workflow.name", {"stringValue": "support"})])
    ingest(tmp_path, [request(http, wf, step), request(named, span(2, 3, 2, "support.answer"))])
    assert rows(tmp_path, "SELECT workflow FROM runs ORDER BY run_id") == [("research",),
                                                                           ("support",)]
    assert rows(tmp_path, "SELECT DISTINCT node_id FROM spans ORDER BY 1") == [
        ("answer",), ("plan",)]


def test_conversation_and_token_details_fill_their_columns(tmp_path: Path) -> None:
    genai = span(1, 2, 1, "wf.solve", attributes=[
        attr("gen_ai.operation.name", {"stringValue": "chat"}),
        attr("gen_ai.conversation.id", {"stringValue": "conv-1"}),
        attr("gen_ai.usage.input_tokens", {"intValue": "100"}),
        attr("gen_ai.usage.output_tokens", {"intValue": "40"}),
        attr("gen_ai.usage.cache_read.input_tokens", {"intValue": "60"}),
        attr("gen_ai.usage.cache_creation.input_tokens", {"intValue": "25"}),
        attr("gen_ai.usage.reasoning.output_tokens", {"intValue": "30"})])
    oi = oi_span(2, 2, 1, "agent.solve", "LLM", session__id="sess-2",
                 llm__token_count__prompt=80, llm__token_count__completion=15,
                 llm__token_count__prompt_details__cache_read=40,
                 llm__token_count__prompt_details__cache_write=20,
                 llm__token_count__completion_details__reasoning=5)
    ingest(tmp_path, [request(span(1, 1, None, "run"), genai),
                      request(oi_span(2, 1, None, "agent", "CHAIN"), oi)])
    got = rows(tmp_path, "SELECT conversation_id, input_tokens, output_tokens, "
                         "cache_read_input_tokens, cache_creation_input_tokens, "
                         "reasoning_output_tokens FROM source_spans WHERE span_key = "
                         "'0000000000000002' ORDER BY trace_id")
    assert got == [("conv-1", 100, 40, 60, 25, 30), ("sess-2", 80, 15, 40, 20, 5)]
    unmapped = {r[0] for r in rows(tmp_path, "SELECT attribute FROM unmapped_attributes")}
    assert not {k for k in unmapped if "cache" in k or "reasoning" in k}
    assert json.loads(rows(tmp_path, "SELECT attributes FROM source_spans WHERE span_key = "
                                     "'0000000000000002' ORDER BY trace_id")[0][0])[
        "gen_ai.usage.cache_read.input_tokens"] == 60
