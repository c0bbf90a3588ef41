"""The demo's recorded production day (`cegraph/data/demo`): it must replay whole with the
default model, or `make demo` would silently pay the day live (minutes of model time)."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest

from cegraph.llm import LLM, Completion

# the recorded day (README, `1/4 production`): questions right, and answers cut off at the
# token cap (the other failures are wrong answers)
RIGHT, CUT = 27, 56


class Recorded:
    """The recording as a call store that fails the test on any call it does not hold."""

    def __init__(self, calls: list[Completion]) -> None:
        self.records = {c.key: c for c in calls}

    def get(self, key: str) -> Completion | None:
        if key not in self.records:
            pytest.fail(f"the demo's first day makes a call its recording lacks ({key[:12]})")
        return self.records[key]

    def put(self, record: Completion) -> None:  # pragma: no cover - nothing new is made
        raise AssertionError("a replayed day stores nothing")


def test_the_demos_first_day_replays_whole_from_its_recording(monkeypatch):
    from cegraph.cli import demo
    from cegraph.evaluator_spec import EvaluatorSpec, grader
    from cegraph.executor import Executor
    from cegraph.graph import Workflow
    from cegraph.local_model import DEFAULT_MODEL

    with gzip.open(demo.demo_file(demo.RECORDED), "rt") as f:
        calls = [Completion(**json.loads(line)) for line in f]
    # the default model need not be fetched: every call is answered by the recording
    monkeypatch.setattr("cegraph.llm.check_model", lambda *a, **k: None)
    llm = LLM(DEFAULT_MODEL, store=Recorded(calls))
    wf = Workflow.load(demo.demo_file(demo.WORKFLOW))
    today, next_day = demo._days(demo.DAY, 6, 0, None)
    traces = asyncio.run(Executor(llm).run_many(wf, today, evaluate=grader(
        EvaluatorSpec(kind="numeric"))))
    assert len(traces) == demo.DAY == len(calls) and llm.meter.calls == 0
    assert all(c.cached for t in traces for s in t.spans for c in s.calls)
    passed = sum(1 for t in traces if t.outcome and t.outcome.passed)
    truncated = sum(1 for t in traces if t.outcome and t.outcome.failure_class == "truncated")
    assert (passed, truncated) == (RIGHT, CUT)
    assert not {t.id for t in today} & {t.id for t in next_day}
