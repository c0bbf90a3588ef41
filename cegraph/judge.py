"""An LLM judge: grades a run's output against a rubric where the logs carry no reference.

The judge is asked for JSON (`Verdict`) through the LLM layer, so each verdict and its
explanation is a stored call (the call store replays it, the job's meter and budget count
it). A reply that does not validate is recorded on the judge (`Judge.records`, with the
reason) and the run is `ungradeable`: graded `infrastructure` (the grader failed, not the
workflow), which verification and the failure mass leave out, with a message starting
`ungradeable:` so the night counts it (`cegraph.evaluator_spec.ungradeable`).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cegraph.llm import LLM
from cegraph.task import Task
from cegraph.trace import INFRASTRUCTURE, Outcome

#: Bumped whenever the prompt or the parsing changes what a verdict would say.
JUDGE_VERSION = "1"
UNGRADEABLE = "ungradeable"
MAX_TOKENS = 200
_CHARS = 4000


class Verdict(BaseModel):
    """A validated judge reply."""

    model_config = ConfigDict(extra="ignore")

    passed: bool
    score: float = Field(ge=0.0, le=1.0)
    explanation: str = Field(min_length=3, max_length=400)


RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "verdict", "strict": True, "schema": {
        "type": "object", "additionalProperties": False,
        "required": ["passed", "score", "explanation"],
        "properties": {"passed": {"type": "boolean"},
                       "score": {"type": "number", "minimum": 0, "maximum": 1},
                       "explanation": {"type": "string", "maxLength": 300}}}}}


def prompt(rubric: str, question: str, answer: str) -> str:
    return (f"You grade the answer of an LLM workflow against a rubric.\n\nRubric:\n{rubric}"
            f"\n\nInput:\n{question[:_CHARS]}\n\nAnswer:\n{answer[:_CHARS]}\n\n"
            'Reply with JSON only: {"passed": true or false, "score": a number from 0 to 1, '
            '"explanation": one short sentence on why}')


def parse_verdict(text: str) -> tuple[Verdict | None, str | None]:
    """The verdict in a reply, or None and why it was rejected."""
    found = re.search(r"\{.*\}", text, re.DOTALL)
    if not found:
        return None, "no JSON object in the reply"
    try:
        return Verdict.model_validate(json.loads(found.group(0))), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg}"
    except ValidationError as exc:
        err = exc.errors()[0]
        return None, f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"


@dataclass(frozen=True)
class JudgeRecord:
    """One judged run, valid or not."""

    task_id: str
    valid: bool
    passed: bool | None
    score: float | None
    explanation: str | None
    raw: str
    error: str | None
    call_key: str


class Judge:
    """Grades outputs by `rubric` with `llm` (an `OutputGrader` for
    `cegraph.evaluators.evaluate`, which calls it from worker threads)."""

    def __init__(self, rubric: str, llm: LLM, *, max_tokens: int = MAX_TOKENS) -> None:
        if not rubric.strip():
            raise ValueError("the judge needs a rubric: give --rubric TEXT")
        self.rubric = rubric
        self.llm = llm
        self.max_tokens = max_tokens
        self.records: list[JudgeRecord] = []
        self._lock = threading.Lock()

    def __call__(self, task: Task, output: str) -> Outcome:
        if not output.strip():
            return Outcome(False, 0.0, "no_answer", "no answer to judge", "", "",
                           grader="judge")
        done = asyncio.run(self.llm.complete(
            [{"role": "user", "content": prompt(self.rubric, task.input, output)}],
            max_tokens=self.max_tokens, response_format=RESPONSE_FORMAT))
        verdict, error = parse_verdict(done.text)
        with self._lock:
            self.records.append(JudgeRecord(
                task.id, verdict is not None, verdict.passed if verdict else None,
                verdict.score if verdict else None, verdict.explanation if verdict else None,
                done.text, error, done.key))
        if verdict is None:
            return Outcome(False, 0.0, INFRASTRUCTURE,
                           f"{UNGRADEABLE}: judge verdict rejected ({error})", "", output[:200])
        if verdict.passed:
            return Outcome(True, verdict.score, None, "", "", output[:200])
        return Outcome(False, verdict.score, "wrong_answer",
                       f"judge: {verdict.explanation}", "", output[:200])
