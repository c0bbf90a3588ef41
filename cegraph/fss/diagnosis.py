"""An LLM's diagnosis of a failure: where (node, step) and how (a kind from a small
taxonomy) a run went wrong, with a one-sentence explanation that carries none of the task's
numbers, so it can join the signature's meaning and name the failure mode.

One call per *distinct* failure: failures whose prompts are identical (the same trace seen
again) share a call, and every call goes through the LLM layer, so the call store replays it
for free on a later night and the job's meter and budget count it. The answer is asked for
as JSON under a JSON schema (`response_format`, which constrains decoding where the provider
supports it, e.g. OpenAI's structured outputs; litellm drops it elsewhere) and validated by
pydantic; an answer that does not validate is recorded with the reason (`valid = false`),
and the failure falls back to its trace features. The embedded llama.cpp models answer
without a grammar: llama-cpp-python's grammar sampler scans the whole vocabulary per token
(151k for Qwen), measured 4x slower decoding here (2.0 vs 0.5 s/token, Qwen 0.5B), which
would make the diagnosis cost more than the run it explains.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cegraph.budget import BudgetExceeded
from cegraph.fss.failure import Failure
from cegraph.fss.features import RunDigest, steps, trace_features
from cegraph.llm import LLM, transient_errors

#: The taxonomy of how a run went wrong, with what each kind means (shown to the model and
#: used in mode labels).
KINDS: dict[str, str] = {
    "misread_question": "misread the question (used a wrong quantity or condition)",
    "wrong_operation": "applied the wrong operation or formula",
    "arithmetic_slip": "made an arithmetic mistake in a step",
    "unit_or_percent": "mixed up units or percentages",
    "incomplete_reasoning": "stopped early or answered an intermediate quantity",
    "extraction_format": "reached the right answer but reported or formatted it wrongly",
    "wrong_algorithm": "the code's approach does not solve the task",
    "edge_case_missed": "the code misses an edge case of the input",
    "hallucinated_fact": "used a fact or value that is not in the question",
    "other": "went wrong in another way",
}
Kind = Literal["misread_question", "wrong_operation", "arithmetic_slip", "unit_or_percent",
               "incomplete_reasoning", "extraction_format", "wrong_algorithm",
               "edge_case_missed", "hallucinated_fact", "other"]

#: Failure classes diagnosed by default: those whose message says little about how.
DIAGNOSED_CLASSES = ("wrong_answer", "no_answer", "test_failure")
#: Bumped whenever the prompt or the parsing changes what a diagnosis would say.
DIAGNOSIS_VERSION = "1"
MAX_TOKENS = 120
_NODE_CHARS = 1800
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
# JSON escapes kept as they are; any other backslash is literal text (models quote LaTeX
# such as \( or \times in explanations, which json.loads rejects or reads as a tab).
_BACKSLASH = re.compile(r'\\(["\\/]|u[0-9a-fA-F]{4})|\\')


class Diagnosis(BaseModel):
    """A validated answer: the node and step where the run went wrong, how, and why."""

    model_config = ConfigDict(extra="ignore")

    node: str = Field(min_length=1)
    step: int = Field(default=0, ge=0)  # 0: the step is not clear
    kind: Kind
    explanation: str = Field(min_length=3, max_length=300)

    @field_validator("explanation")
    @classmethod
    def _one_sentence_no_numbers(cls, text: str) -> str:
        first = re.split(r"(?<=[.!?])\s", " ".join(text.split()), maxsplit=1)[0]
        return _NUMBER.sub("N", first).strip()


def response_schema(nodes: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of an answer for a run with these nodes (OpenAI `json_schema` form)."""
    schema = {"type": "object", "additionalProperties": False,
              "required": ["node", "step", "kind", "explanation"],
              "properties": {"node": {"type": "string", "enum": list(nodes)},
                             "step": {"type": "integer"},
                             "kind": {"type": "string", "enum": list(KINDS)},
                             "explanation": {"type": "string", "maxLength": 200}}}
    return {"type": "json_schema",
            "json_schema": {"name": "diagnosis", "schema": schema, "strict": True}}


def prompt(d: RunDigest) -> str:
    """The diagnosis request: the input, each node's output as numbered steps, expected vs.
    observed, the trace features, and the taxonomy."""
    shown = []
    for n in d.nodes:
        body = n.text[:_NODE_CHARS]
        lines = "\n".join(f"  {k}. {s}" for k, s in enumerate(steps(body), start=1))
        shown.append(f"Node `{n.node_id}` ({n.operator}):\n{lines or '  (no output)'}"
                     + (f"\n  [raised {n.error}]" if n.error else "")
                     + ("\n  [cut off at the token limit]" if n.truncated else ""))
    facts = trace_features(d).text
    kinds = "\n".join(f"- {k}: {v}" for k, v in KINDS.items())
    what = "Expected (failing test)" if d.kind == "code" else "Expected answer"
    return (f"A run of an LLM workflow failed. Find where and how it went wrong.\n\n"
            f"Input:\n{d.question[:_NODE_CHARS]}\n\n" + "\n".join(shown) + "\n\n"
            f"{what}: {d.expected[:300]}\nGot: {d.observed[:300]}\n"
            f"Grader: [{d.failure_class}] {d.message[:300]}\n"
            + (f"Observed facts: {facts}\n" if facts else "")
            + f"\nKinds of mistake:\n{kinds}\n\n"
            "Reply with JSON only: {\"node\": the node where it first went wrong, \"step\": "
            "the step number there (0 if unclear), \"kind\": one of the kinds, "
            "\"explanation\": one short sentence on what went wrong, without any numbers}")


def contrastive_prompt(d: RunDigest, right: str) -> str:
    """The contrastive diagnosis request: a correct solution beside the wrong run, asking for
    the first step where they differ and how (an easier task than diagnosing alone)."""
    wrong = "\n".join(
        f"Node `{n.node_id}` ({n.operator}):\n" + "\n".join(
            f"  {k}. {s}" for k, s in enumerate(steps(n.text[:_NODE_CHARS]), start=1))
        for n in d.nodes)
    kinds = "\n".join(f"- {k}: {v}" for k, v in KINDS.items())
    return (f"Question:\n{d.question[:_NODE_CHARS]}\n\nA correct solution:\n"
            f"{right[:_NODE_CHARS]}\n\nA wrong run (answered {d.observed[:100]}, expected "
            f"{d.expected[:100]}):\n{wrong}\n\nFind the first step of the wrong run where it "
            f"differs from the correct solution, and say how.\nKinds of mistake:\n{kinds}\n\n"
            "Reply with JSON only: {\"node\": the node of that step, \"step\": its number, "
            "\"kind\": one of the kinds, \"explanation\": one short sentence on how it "
            "differs, without any numbers}")


#: Suffix of the model name under which contrastive diagnoses are kept (one per failure and
#: diagnosing model, beside the plain ones).
CONTRASTIVE = "+contrast"


def parse_diagnosis(text: str, nodes: Sequence[str]) -> tuple[Diagnosis | None, str | None]:
    """The diagnosis in an answer, or None and why it was rejected."""
    found = re.search(r"\{.*\}", text, re.DOTALL)
    if not found:
        return None, "no JSON object in the answer"
    try:
        diagnosis = Diagnosis.model_validate(
            json.loads(_BACKSLASH.sub(lambda m: m.group(0) if m.group(1) else "\\\\",
                                      found.group(0))))
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg}"
    except ValidationError as exc:
        err = exc.errors()[0]
        return None, f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    if diagnosis.node not in nodes:
        return None, f"node {diagnosis.node!r} is not a node of the run"
    return diagnosis, None


@dataclass(frozen=True)
class DiagnosisRecord:
    """A diagnosis as stored (`diagnoses` table): valid or not, with what it cost."""

    failure_id: str
    run_id: str
    model: str  # `LLM.identity` of the diagnosing model
    prompt_hash: str  # the distinct failure: equal prompts share one call
    valid: bool
    node: str | None
    node_operator: str | None
    node_depth: int | None
    step: int | None
    kind: str | None
    explanation: str | None
    raw: str
    error: str | None
    call_key: str
    fresh: bool  # a provider call was paid for (not replayed from the call store)
    latency_s: float


def prompt_hash(text: str) -> str:
    return hashlib.sha256(f"{DIAGNOSIS_VERSION}\x1f{text}".encode()).hexdigest()[:24]


async def diagnose(items: Sequence[tuple[str, RunDigest]], llm: LLM, *,
                   max_tokens: int = MAX_TOKENS,
                   right: Mapping[str, str] | None = None) -> list[DiagnosisRecord]:
    """Diagnose failures given as (failure_id, digest): one call per distinct prompt, the
    calls concurrent under the LLM's own limit. A call the budget refuses or the provider
    cannot answer yields no record (the failure keeps its features; the next job retries).
    With `right` (a correct solution by failure id), each failure is diagnosed against its
    right path (`contrastive_prompt`) and kept under the model name + `CONTRASTIVE`."""
    groups: dict[str, list[tuple[str, RunDigest]]] = {}
    texts: dict[str, str] = {}
    model = llm.identity + (CONTRASTIVE if right is not None else "")
    for failure_id, d in items:
        text = (contrastive_prompt(d, right[failure_id]) if right and failure_id in right
                else prompt(d))
        h = prompt_hash(text)
        texts[h] = text
        groups.setdefault(h, []).append((failure_id, d))

    async def one(h: str) -> list[DiagnosisRecord]:
        members = groups[h]
        nodes = [n.node_id for n in members[0][1].nodes]
        try:
            done = await llm.complete([{"role": "user", "content": texts[h]}],
                                      max_tokens=max_tokens,
                                      response_format=response_schema(nodes))
        except (BudgetExceeded, *transient_errors()):
            return []
        parsed, error = parse_diagnosis(done.text, nodes)
        by_id = {n.node_id: n for n in members[0][1].nodes}
        node = by_id.get(parsed.node) if parsed else None
        fresh = not done.cached
        return [DiagnosisRecord(
            failure_id, d.run_id, model, h, parsed is not None,
            parsed.node if parsed else None, node.operator if node else None,
            node.depth if node else None, parsed.step if parsed else None,
            parsed.kind if parsed else None, parsed.explanation if parsed else None,
            done.text, error, done.key, fresh and i == 0, done.latency_s if fresh else 0.0)
            for i, (failure_id, d) in enumerate(members)]

    done = await asyncio.gather(*(one(h) for h in groups))
    return [r for group in done for r in group]


class DiagnosisStore(Protocol):
    """Where diagnoses are kept (`cegraph.storage.Warehouse`), so a failure is diagnosed once."""

    def diagnoses(self, failure_ids: Sequence[str], model: str
                  ) -> dict[str, DiagnosisRecord]: ...

    def record_diagnoses(self, records: Sequence[DiagnosisRecord]) -> None: ...


@dataclass
class DiagnosisPass:
    """The diagnoses of a pool (stored ones and new ones) and what the new ones cost."""

    records: dict[str, DiagnosisRecord]  # by failure id
    diagnosed: int  # failures diagnosed in this pass (not found stored)
    calls: int  # provider calls paid for
    seconds: float  # their latency, summed


def diagnose_pool(failures: Sequence[Failure], llm: LLM, store: DiagnosisStore,
                  digests: Callable[[Sequence[Failure]], Mapping[str, RunDigest]], *,
                  classes: Sequence[str] = DIAGNOSED_CLASSES,
                  right: Mapping[str, str] | None = None) -> DiagnosisPass:
    """Diagnose the failures of `classes` that `store` has no diagnosis of by this model
    (a second pass over the same failures makes no call), keep the new ones, and return
    all of them. `digests` reads the failures' traces. With `right` (correct solutions by
    failure id) the diagnoses are contrastive (see `diagnose`)."""
    wanted = [f for f in failures if f.failure_class in classes]
    model = llm.identity + (CONTRASTIVE if right is not None else "")
    known = store.diagnoses([f.failure_id for f in wanted], model)
    todo = [f for f in wanted if f.failure_id not in known]
    found = digests(todo) if todo else {}
    items = [(f.failure_id, found[f.failure_id]) for f in todo if f.failure_id in found]
    new = asyncio.run(diagnose(items, llm, right=right)) if items else []
    store.record_diagnoses(new)
    return DiagnosisPass({**known, **{r.failure_id: r for r in new}}, len(items),
                         sum(r.fresh for r in new), sum(r.latency_s for r in new))


def kind_label(failure_ids: Sequence[str], representatives: Sequence[str],
               diagnoses: Mapping[str, DiagnosisRecord]) -> str | None:
    """A mode's label from its members' diagnoses: the most common kind, the explanation of
    the member nearest the centroid with that kind, and how many members share the kind."""
    valid = [diagnoses[i] for i in failure_ids if i in diagnoses and diagnoses[i].valid]
    if not valid:
        return None
    kind, count = Counter(d.kind for d in valid).most_common(1)[0]
    order = [*representatives, *failure_ids]
    example = next(diagnoses[i] for i in order if i in diagnoses and diagnoses[i].valid
                   and diagnoses[i].kind == kind)
    return (f"{KINDS[kind or 'other']}: {example.explanation} "
            f"({count}/{len(failure_ids)} failures)")
