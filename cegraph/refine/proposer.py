"""Proposing edits aimed at one failure target: an LLM proposer and a deterministic operator
prior.

The LLM is shown the target (a failure mode's label and locus, or for the `scalar` ablation
only the aggregate score), a few counterexamples with what the locus node produced, the
graph and the operator library, and asked for K candidate edits as JSON in the edit schema
(`response_format` constrains decoding where the provider can). Every candidate is parsed
by pydantic on its own: one that does not parse or validate is recorded as `Invalid` with
the reason and never applied. The operator prior maps (failure class, the mode's kind of
error, locus operator) to a ranked list of edits known to help, the cheap edits aimed at a
mode first, so the loop progresses with a weak proposer model. The rule proposer asks the
LLM for one short rule against the mode (`add_rule`). Every candidate records its source
(`prior`, `rule`, `llm`, `random`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from string import Template
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, Field, ValidationError

from cegraph.graph import Workflow
from cegraph.llm import LLM, BudgetExceeded
from cegraph.operators import REGISTRY, library_description
from cegraph.refine.edits import (
    EDIT_OPS,
    AddDemonstrations,
    AddReviewRevise,
    AddRule,
    AddTestRevise,
    Applied,
    CheckThenEscalate,
    Edit,
    EditPrompt,
    EditRejected,
    InsertNode,
    RemoveNode,
    RepairExtraction,
    ReplaceOperator,
    SetParam,
    WrapEnsemble,
    apply_edits,
    overfit,
    parse_edit,
    require_tag,
)
from cegraph.task import Kind


@dataclass(frozen=True)
class Counterexample:
    """A failed run as the proposer sees it."""

    task_id: str
    input: str
    expected: str
    observed: str
    message: str
    locus_node: str
    locus_output: str = ""


@dataclass(frozen=True)
class Target:
    """What a round aims at: a failure mode (or, for `scalar`, all failures at once)."""

    target_id: str  # the mode id, or 'aggregate'
    label: str
    locus_node: str
    locus_operator: str
    failure_class: str
    task_ids: tuple[str, ...]  # its counterexamples on the dev set
    mass: float
    examples: tuple[Counterexample, ...] = ()
    kind: str = ""  # the kind of error its members' diagnoses name (cegraph.fss.diagnosis)
    centroid: tuple[float, ...] = ()  # a mode's, in signature space (its identity by night)
    runs: int = 0  # shown runs its mass is counted over


@dataclass(frozen=True)
class Candidate:
    edit: Edit
    source: str  # prior | rule | llm | random
    rationale: str = ""


@dataclass(frozen=True)
class Invalid:
    """A proposal that was dropped, with why (recorded, never applied)."""

    source: str
    raw: str
    reason: str


@dataclass
class Proposals:
    candidates: list[Candidate] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)


class Proposer(Protocol):
    """Proposes candidate edits for a target. Contract: returns at most `k` candidates, each
    a parsed `Edit`; anything it could not parse goes to `Proposals.invalid` with a reason;
    it makes no LLM call beyond what `projected_calls` announced."""

    projected_calls: int

    async def propose(self, wf: Workflow, target: Target, kind: Kind, k: int) -> Proposals: ...


# --- the LLM proposer ---------------------------------------------------------------------
class ProposedEdit(BaseModel):
    rationale: str = Field(max_length=400)
    edit: dict[str, Any]


class ProposalReply(BaseModel):
    candidates: list[ProposedEdit] = Field(max_length=12)


class _SchemaReply(BaseModel):
    """The reply schema as decoding is constrained to (edits typed)."""

    candidates: list[_SchemaEdit] = Field(max_length=12)


class _SchemaEdit(BaseModel):
    rationale: str
    edit: Edit


_SchemaReply.model_rebuild()


#: Bounds a grammar cannot afford: llama.cpp expands each repetition into rules and refuses
#: (or crashes on) schemas with long bounded strings and arrays; pydantic still checks them.
_GRAMMAR_HEAVY = frozenset({"maxItems", "minItems", "maxLength", "minLength", "pattern"})


def _lighten(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _lighten(v) for k, v in schema.items() if k not in _GRAMMAR_HEAVY}
    if isinstance(schema, list):
        return [_lighten(v) for v in schema]
    return schema


def reply_format() -> dict[str, Any]:
    """`response_format` asking for a reply in the proposal schema (bounds left to pydantic)."""
    return {"type": "json_object",
            "schema": require_tag(_lighten(_SchemaReply.model_json_schema()))}


#: One form per edit op. `$solve` and `$format` name nodes of the workflow at hand: a small
#: proposer copies a form's node names, and a name the workflow lacks makes the edit invalid.
_EXAMPLES = {
    "insert_node": '{"op": "insert_node", "operator": "Format", "anchor": "$solve"}',
    "replace_operator": '{"op": "replace_operator", "node": "$solve", "operator": "Programmer"}',
    "wrap_ensemble": '{"op": "wrap_ensemble", "node": "$solve", "n": 5}',
    "add_test_revise": '{"op": "add_test_revise", "node": "$solve", "rounds": 1}',
    "add_review_revise": '{"op": "add_review_revise", "node": "$solve", "rounds": 1}',
    "edit_prompt": '{"op": "edit_prompt", "node": "$solve", "param": "instruction", '
                   '"text": "..."}',
    "rewire": '{"op": "rewire", "node": "$format", "port": "solution", "sources": ["$solve"]}',
    "remove_node": '{"op": "remove_node", "node": "$format"}',
    "set_param": '{"op": "set_param", "node": "$solve", "param": "max_tokens", "value": 1024}',
    "add_demonstrations": '{"op": "add_demonstrations", "node": "$solve", "k": 2} (worked '
                          'examples of solved inputs, picked for you)',
    "add_rule": '{"op": "add_rule", "node": "$solve", "text": "When ..., ..."} (one short '
                'general rule against the failure, no numbers from the examples)',
    "check_then_escalate": '{"op": "check_then_escalate", "node": "$solve", "n": 3} (a cheap '
                           'second path; an ensemble only when they disagree)',
    "repair_extraction": '{"op": "repair_extraction", "node": "$format"} (answers lost by '
                         'formatting)',
}


def edit_forms(wf: Workflow, target: Target) -> str:
    """The edit forms, naming the target's node (else the workflow's first node that is not
    a Format) and a Format node (else the output node)."""
    work = [n.id for n in wf.nodes if n.op != "Format"] or [wf.nodes[0].id]
    solve = target.locus_node if target.locus_node in work else work[0]
    fmt = _downstream_format(wf, solve) \
        or next((n.id for n in wf.nodes if n.op == "Format"), wf.output.split(".")[0])
    return "\n".join(f"- {Template(_EXAMPLES[op]).substitute(solve=solve, format=fmt)}"
                     for op in EDIT_OPS)


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def proposal_prompt(wf: Workflow, target: Target, k: int, *, accuracy: float | None = None
                    ) -> str:
    graph = yaml.safe_dump(wf.model_dump(exclude_defaults=True), sort_keys=False)
    if target.target_id == "aggregate":  # the scalar ablation: no modes, no locus
        aim = (f"The workflow passes {accuracy:.0%} of its inputs. Here are some of its "
               "failures.") if accuracy is not None else "Here are some of its failures."
    else:
        aim = (f"Target failure mode ({len(target.task_ids)} failures, mass "
               f"{target.mass:.3f}): {target.label}\nFailure class: {target.failure_class}; "
               f"it arises at node '{target.locus_node}' ({target.locus_operator}).")
    shown = "\n\n".join(
        f"Example {i + 1}:\nInput: {_clip(c.input, 500)}\nExpected: {_clip(c.expected, 120)}\n"
        f"Got: {_clip(c.observed, 120)}\nMessage: {_clip(c.message, 200)}"
        + (f"\nOutput of node '{c.locus_node}': {_clip(c.locus_output, 400)}"
           if c.locus_output else "")
        for i, c in enumerate(target.examples))
    return (f"You improve an LLM workflow by editing its graph.\n\nOperators:\n"
            f"{library_description()}\n\nWorkflow:\n{graph}\n{aim}\n\n{shown}\n\n"
            f"Propose up to {k} different edits that would fix such failures in general "
            "(never copy an input or an answer into a prompt). Edit forms:\n"
            f"{edit_forms(wf, target)}\n\nReply with JSON only: "
            '{"candidates": [{"rationale": "...", "edit": {...}}]}')


def _json_object(text: str) -> Any:
    """The first JSON value in a reply (bare, or inside a ```json block, or embedded)."""
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.DOTALL)
    body = fenced.group(1) if fenced else text
    start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no JSON object in the reply")
    value, _ = json.JSONDecoder().raw_decode(body[start:])
    return value


def _complete_items(text: str) -> list[Any]:
    """The complete items of a reply's candidate array cut off mid-way (a reply that ran
    into its token limit): each item decoded on its own up to the first incomplete one."""
    start = text.find("[", max(0, text.find('"candidates"')))
    items: list[Any] = []
    if start < 0:
        return items
    decoder, at = json.JSONDecoder(), start + 1
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        try:
            item, at = decoder.raw_decode(text, at)
        except ValueError:
            return items
        items.append(item)


def parse_proposals(text: str, *, source: str = "llm", k: int = 12) -> Proposals:
    """Candidates from an LLM reply; whatever does not parse or validate is `Invalid`. A reply
    cut off mid-way keeps its complete candidates and records the cut as `Invalid`."""
    out = Proposals()
    try:
        data = _json_object(text)
        if isinstance(data, list):
            data = {"candidates": data}
        reply = ProposalReply.model_validate(data)
    except (ValueError, ValidationError) as exc:
        # a reply cut off mid-way is not JSON (pydantic's errors are ValueErrors too)
        cut = not isinstance(exc, ValidationError)
        items = _complete_items(text) if cut else []
        try:
            reply = ProposalReply.model_validate({"candidates": items})
        except ValidationError:
            items = []
        kept = f" (kept its {len(items)} complete candidates)" if items else ""
        out.invalid.append(Invalid(source, _clip(text, 2000), f"reply is not the proposal "
                                   f"JSON: {_first_line(exc)}{kept}"))
        if not items:
            return out
    for item in reply.candidates[:k]:
        try:
            out.candidates.append(Candidate(parse_edit(item.edit), source, item.rationale))
        except ValidationError as exc:
            out.invalid.append(Invalid(source, json.dumps(item.edit)[:2000],
                                       f"not a valid edit: {_first_line(exc)}"))
    return out


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


@dataclass
class LLMProposer:
    """Asks `llm` for up to k edits in one call (JSON-schema constrained where supported)."""

    llm: LLM
    max_tokens: int = 1024
    temperature: float = 0.7
    constrained: bool = True
    accuracy: float | None = None  # shown to the scalar ablation
    projected_calls: int = 1
    round: int = 0  # a sample index per round: a new round asks anew, a resumed one replays

    async def propose(self, wf: Workflow, target: Target, kind: Kind, k: int) -> Proposals:
        prompt = proposal_prompt(wf, target, k, accuracy=self.accuracy)
        messages = [{"role": "user", "content": prompt}]
        try:
            done = await self.llm.complete(
                messages, temperature=self.temperature, max_tokens=self.max_tokens,
                sample=self.round, response_format=reply_format() if self.constrained else None)
        except BudgetExceeded:
            raise
        except Exception as exc:  # a provider that rejects the schema, or an outage
            return Proposals(invalid=[Invalid("llm", "", f"proposer call failed: "
                                                         f"{_first_line(exc)}")])
        return parse_proposals(done.text, source="llm", k=k)


# --- the operator prior ---------------------------------------------------------------------
CONCISE = ("Solve the problem. Think step by step, briefly: a few short steps, no "
           "repetition.")


def _param(wf: Workflow, node: str, name: str) -> Any:
    n = wf.by_id[node]
    return n.params.get(name, REGISTRY[n.op].params.get(name))


def _downstream_format(wf: Workflow, node: str) -> str | None:
    """A Format node reading (directly) from `node`, if any."""
    for n in wf.nodes:
        if n.op == "Format" and node in n.upstream():
            return n.id
    return None


def prior_edits(wf: Workflow, target: Target, kind: Kind) -> list[tuple[Edit, str]]:
    """Ranked edits known to help against this failure class at this operator (unchecked)."""
    node, op, cls = target.locus_node, target.locus_operator, target.failure_class
    if node not in wf.by_id:
        return []
    edits: list[tuple[Edit, str]] = []
    params = REGISTRY[wf.by_id[node].op].params
    # edits aimed at the mode's kind of error, cheap at run time, come first
    fmt = node if op == "Format" else _downstream_format(wf, node)
    if (cls == "no_answer" or target.kind == "extraction_format") and fmt is not None \
            and _param(wf, fmt, "llm") and not _param(wf, fmt, "fallback"):
        edits.append((RepairExtraction(node=fmt),
                      "answers lost in formatting: fall back to the solution's own answer"))
    reasoning = op in ("ChainOfThought", "Generate", "Programmer")
    if reasoning and kind == "math" and cls == "wrong_answer" and target.kind in (
            "", "arithmetic_slip", "other"):
        edits.append((CheckThenEscalate(node=node, n=3),
                      "unstable answers: check by a program, sample more only on a "
                      "disagreement"))
    if reasoning and cls in ("wrong_answer", "test_failure") and target.kind not in (
            "arithmetic_slip", "extraction_format"):
        edits.append((AddDemonstrations(node=node, k=2),
                      "show solved inputs like the failing ones"))
    if cls == "truncated":
        if "max_tokens" in params:
            cur = int(_param(wf, node, "max_tokens") or 512)
            edits.append((SetParam(node=node, param="max_tokens", value=min(2 * cur, 2048)),
                          "answers cut off at the token limit: allow longer answers"))
        if "instruction" in params and op == "ChainOfThought":
            edits.append((EditPrompt(node=node, param="instruction", text=CONCISE),
                          "answers cut off at the token limit: ask for concise reasoning"))
    if cls == "no_answer":
        if op == "Format" and _param(wf, node, "llm"):
            edits.append((SetParam(node=node, param="llm", value=False),
                          "the Format call loses the answer: extract it by rule"))
        elif op != "Format" and not _downstream_format(wf, node):
            edits.append((InsertNode(operator="Format", anchor=node),
                          "no answer in the expected format: add a Format step"))
        if op == "Format" and "max_tokens" in params:
            edits.append((SetParam(node=node, param="max_tokens", value=512),
                          "format answers cut short"))
    if cls == "wrong_answer" and op == "Format" and _param(wf, node, "llm"):
        edits.append((SetParam(node=node, param="llm", value=False),
                      "the Format call changes the answer: extract it by rule"))
    if kind == "math" and cls in ("wrong_answer", "truncated", "no_answer"):
        if op in ("ChainOfThought", "Generate") and target.kind == "arithmetic_slip":
            edits.append((CheckThenEscalate(node=node, n=3),
                          "arithmetic slips: check by a program, sample more only on a "
                          "disagreement"))
        if op in ("ChainOfThought", "Generate"):
            edits.append((ReplaceOperator(node=node, operator="Programmer"),
                          "arithmetic slips: compute with a program"))
            edits.append((WrapEnsemble(node=node, n=5),
                          "unstable reasoning: majority over 5 samples"))
        if op == "SelfConsistency" and int(_param(wf, node, "n") or 5) < 9:
            edits.append((WrapEnsemble(node=node, n=min(16, int(_param(wf, node, "n")) + 4)),
                          "more samples for a steadier majority"))
    if kind == "math" and op == "Programmer" and cls in ("exception", "wrong_answer"):
        edits.append((ReplaceOperator(node=node, operator="ChainOfThought"),
                      "programs fail here: reason in text instead"))
    if kind == "code" and cls in ("test_failure", "exception", "wrong_answer", "timeout"):
        producer = node if op != "Format" else next(iter(wf.by_id[node].upstream()), node)
        edits.append((AddTestRevise(node=producer, rounds=1),
                      "failing asserts: run the public tests and revise on failure"))
        edits.append((AddTestRevise(node=producer, rounds=2),
                      "failing asserts: test and revise twice"))
    if cls != "truncated" and op in ("ChainOfThought", "Generate", "Programmer",
                                      "SelfConsistency"):
        edits.append((AddReviewRevise(node=node, rounds=1),
                      "a critic checks the solution and a revision fixes what it finds"))
    if op == "Format" and cls == "wrong_answer" and len(wf.nodes) > 1:
        edits.append((RemoveNode(node=node), "the Format step changes answers: drop it"))
    return edits


@dataclass
class PriorProposer:
    """The deterministic operator prior (makes no LLM call)."""

    projected_calls: int = 0

    async def propose(self, wf: Workflow, target: Target, kind: Kind, k: int) -> Proposals:
        return Proposals([Candidate(e, "prior", why)
                          for e, why in prior_edits(wf, target, kind)[:k]])


# --- a rule for the mode ------------------------------------------------------------------
class RuleReply(BaseModel):
    rule: str = Field(min_length=8, max_length=300)


def rule_prompt(target: Target, kind: Kind) -> str:
    from cegraph.fss.diagnosis import KINDS

    how = KINDS.get(target.kind, "") if target.kind else ""
    shown = "\n\n".join(f"Input: {_clip(c.input, 300)}\nExpected: {_clip(c.expected, 80)}\n"
                         f"Got: {_clip(c.observed, 80)}" for c in target.examples[:3])
    return (f"A {kind} solver fails in one recurring way.\nFailure mode: {target.label}\n"
            f"Failure class: {target.failure_class}"
            + (f"\nDiagnosis: the solver {how}" if how else "")
            + f"\n\nSome failures:\n{shown}\n\nWrite ONE short general rule (at most 30 "
            "words) that the solver should follow to avoid this kind of mistake on any input. "
            "Do not mention the numbers, names or answers of these examples.\n"
            'Reply with JSON only: {"rule": "..."}')


def rule_format() -> dict[str, Any]:
    return {"type": "json_object", "schema": _lighten(RuleReply.model_json_schema())}


@dataclass
class RuleProposer:
    """One `add_rule` edit per mode, the rule written by `llm` from the mode's label, kind and
    diagnosis; a reply that does not parse into `RuleReply` is `Invalid`, and the rule text
    passes the anti-overfit screen like any proposed text."""

    llm: LLM
    max_tokens: int = 128
    temperature: float = 0.7
    projected_calls: int = 1
    round: int = 0

    async def propose(self, wf: Workflow, target: Target, kind: Kind, k: int) -> Proposals:
        node = target.locus_node
        if target.target_id == "aggregate" or node not in wf.by_id \
                or "rules" not in REGISTRY[wf.by_id[node].op].params:
            return Proposals()
        try:
            done = await self.llm.complete(
                [{"role": "user", "content": rule_prompt(target, kind)}],
                temperature=self.temperature, max_tokens=self.max_tokens, sample=self.round,
                response_format=rule_format())
        except BudgetExceeded:
            raise
        except Exception as exc:  # a provider that rejects the schema, or an outage
            return Proposals(invalid=[Invalid("rule", "", f"rule call failed: "
                                                          f"{_first_line(exc)}")])
        try:
            reply = RuleReply.model_validate(_json_object(done.text))
            edit = AddRule(node=node, text=reply.rule)
        except (ValueError, ValidationError) as exc:
            return Proposals(invalid=[Invalid("rule", _clip(done.text, 2000),
                                              f"not a rule: {_first_line(exc)}")])
        return Proposals([Candidate(edit, "rule", f"a rule for: {target.label}")])


def screen(wf: Workflow, proposals: Proposals, examples: Sequence[str], *,
           seen: Collection[str] = ()) -> tuple[list[tuple[Candidate, Applied]], Proposals]:
    """Apply each candidate: one that is rejected, copies a counterexample, or yields a
    version already tried (`seen`) or proposed this round is dropped with its reason.
    Returns the applicable candidates and `proposals` with the drops added to `invalid`."""
    ok: list[tuple[Candidate, Applied]] = []
    versions = set(seen)
    for cand in proposals.candidates:
        raw = cand.edit.model_dump_json()
        why = overfit(cand.edit, examples)
        if why is None:
            try:
                applied = apply_edits(wf, [cand.edit])
            except EditRejected as exc:
                why = str(exc)
            else:
                if applied.version_id in versions:
                    why = f"yields version {applied.version_id}, already tried"
                else:
                    versions.add(applied.version_id)
                    ok.append((cand, applied))
                    continue
        proposals.invalid.append(Invalid(cand.source, raw, why))
    return ok, proposals
