"""Extracts the final answer from a solution in the format the task is graded in."""

from __future__ import annotations

from typing import Any

from cegraph.answers import extract_answer
from cegraph.operators import prompts
from cegraph.operators.base import LLM_PARAMS, NodeContext, Operator, operator


@operator
class Format(Operator):
    name = "Format"
    description = ("Turns a solution into the task's answer format (boxed number, code block, "
                   "short answer); llm=false extracts by rule without a call; fallback=true "
                   "extracts from the solution itself when the call's reply gives no answer.")
    inputs = {"input": "text", "solution": "text"}
    outputs = {"answer": "text"}
    params = {**LLM_PARAMS, "max_tokens": 256, "llm": True, "fallback": False}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        kind = ctx.task.kind
        text = inputs["solution"]
        answer = None
        if ctx.params["llm"]:
            done = await ctx.ask(
                f"Problem:\n{inputs['input']}\n\nSolution:\n{text}\n\n"
                f"{prompts.FORMAT_INSTRUCTION[kind]} {prompts.ANSWER_FORMAT[kind]}")
            answer = extract_answer(kind, done.text)
            # the repair of answer extraction: a reply without an answer loses none the
            # solution gave (no extra call)
            if answer is None and ctx.params["fallback"]:
                answer = extract_answer(kind, text)
        else:
            answer = extract_answer(kind, text)
        # No answer is not a node error: the evaluator records it as a format failure.
        answer = answer or ""
        return {"answer": f"```python\n{answer}\n```" if kind == "code" and answer else answer}
