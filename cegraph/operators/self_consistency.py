"""Self-consistency: sample several reasoning paths and keep the answer most agree on."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from cegraph.answers import equivalent, extract_answer
from cegraph.operators import prompts
from cegraph.operators.base import LLM_PARAMS, NodeContext, Operator, OperatorError, operator
from cegraph.task import Task


@operator
class SelfConsistency(Operator):
    name = "SelfConsistency"
    description = ("Samples n step-by-step solutions and returns the majority answer "
                   "(vote='majority') or the one an LLM judges most consistent (vote='llm').")
    inputs = {"input": "text"}
    outputs = {"solution": "text"}
    params = {**LLM_PARAMS, "temperature": 0.7, "n": 5, "vote": "majority"}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        prompt = prompts.solve_prompt(ctx.task, inputs["input"])
        n = int(ctx.params["n"])
        samples = await asyncio.gather(*(ctx.ask(prompt, sample=i) for i in range(n)))
        texts = [s.text for s in samples]
        if ctx.params["vote"] == "llm":
            return {"solution": await _llm_vote(ctx, inputs["input"], texts)}
        best = majority(ctx.task, texts)
        if best is None:
            raise OperatorError(f"none of the {n} samples gave an answer")
        return {"solution": texts[best]}


def majority(task: Task, texts: list[str]) -> int | None:
    """Index of the first text giving the answer most texts agree on, votes counted on answers
    the grader would call equal (`18`, `18.0` and `\\$18` are one vote); None if none answers."""
    groups: list[list[int]] = []  # indices of texts whose answers are equivalent
    answers = [extract_answer(task.kind, t) for t in texts]
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        group = next((g for g in groups if equivalent(task, answers[g[0]] or "", answer)), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return max(groups, key=len)[0] if groups else None  # ties: the earliest answer


_CHOICE = re.compile(r"\[(\d+)\]|\b(\d+)\b")


def parse_choice(reply: str, count: int) -> int:
    """The candidate a judge's reply names: the first number in range (`[2]` or `2`), not the
    digits of the whole reply run together; 0 when it names none."""
    for bracketed, bare in _CHOICE.findall(reply):
        index = int(bracketed or bare)
        if 0 <= index < count:
            return index
    return 0


async def _llm_vote(ctx: NodeContext, question: str, texts: list[str]) -> str:
    listing = "\n\n".join(f"[{i}]\n{t}" for i, t in enumerate(texts))
    judged = await ctx.ask(
        f"Problem:\n{question}\n\nCandidate solutions:\n{listing}\n\n{prompts.VOTE}",
        temperature=0.0)
    return texts[parse_choice(judged.text, len(texts))]


@operator
class ScEnsemble(Operator):
    name = "ScEnsemble"
    description = ("Given up to three candidate solutions from other nodes, an LLM picks the "
                   "one most consistent with the others.")
    inputs = {"input": "text", "a": "text", "b": "text", "c": "text"}
    optional_inputs = frozenset({"c"})
    outputs = {"solution": "text"}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        texts = [inputs[k] for k in ("a", "b", "c") if inputs.get(k)]
        return {"solution": await _llm_vote(ctx, inputs["input"], texts)}
