"""Self-consistency: sample several reasoning paths and keep the answer most agree on."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from cegraph.answers import extract_answer
from cegraph.operators.base import LLM_PARAMS, NodeContext, Operator, OperatorError, operator
from cegraph.operators.prompts import ANSWER_FORMAT, task_prompt


@operator
class SelfConsistency(Operator):
    name = "SelfConsistency"
    description = ("Samples n step-by-step solutions and returns the majority answer "
                   "(vote='majority') or the one an LLM judges most consistent (vote='llm').")
    inputs = {"input": "text"}
    outputs = {"solution": "text"}
    params = {**LLM_PARAMS, "temperature": 0.7, "n": 5, "vote": "majority"}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        kind = ctx.task.kind
        prompt = (f"{task_prompt(kind, inputs['input'], entry_point=ctx.task.entry_point)}\n\n"
                  f"Solve the problem. Think step by step. {ANSWER_FORMAT[kind]}")
        n = int(ctx.params["n"])
        samples = await asyncio.gather(*(ctx.ask(prompt, sample=i) for i in range(n)))
        texts = [s.text for s in samples]
        if ctx.params["vote"] == "llm":
            return {"solution": await _llm_vote(ctx, inputs["input"], texts)}
        answers = [extract_answer(kind, t) for t in texts]
        counted = Counter(a for a in answers if a is not None)
        if not counted:
            raise OperatorError(f"none of the {n} samples gave an answer")
        best, _ = counted.most_common(1)[0]
        return {"solution": texts[answers.index(best)]}


async def _llm_vote(ctx: NodeContext, question: str, texts: list[str]) -> str:
    listing = "\n\n".join(f"[{i}]\n{t}" for i, t in enumerate(texts))
    judged = await ctx.ask(
        f"Problem:\n{question}\n\nCandidate solutions:\n{listing}\n\nWhich candidate's final "
        "answer agrees with the most others and is best reasoned? Reply with its number only.",
        temperature=0.0)
    digits = "".join(ch for ch in judged.text if ch.isdigit())
    index = int(digits) if digits else 0
    return texts[index] if 0 <= index < len(texts) else texts[0]


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
