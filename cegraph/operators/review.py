"""Critique a solution, and rewrite one given a critique or a test failure."""

from __future__ import annotations

from typing import Any

from cegraph.operators import prompts
from cegraph.operators.base import NodeContext, Operator, operator
from cegraph.operators.prompts import task_prompt


@operator
class Review(Operator):
    name = "Review"
    description = ("Critiques a solution; approved is true when the critic finds no error, "
                   "critique says what is wrong.")
    inputs = {"input": "text", "solution": "text"}
    outputs = {"approved": "bool", "critique": "text"}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        done = await ctx.ask(
            f"Problem:\n{inputs['input']}\n\nProposed solution:\n{inputs['solution']}\n\n"
            f"{prompts.REVIEW}")
        approved = done.text.strip().upper().startswith("CORRECT")
        return {"approved": approved, "critique": done.text}


@operator
class Revise(Operator):
    name = "Revise"
    description = "Rewrites a solution given feedback (a critique or a failing test)."
    inputs = {"input": "text", "solution": "text", "feedback": "text"}
    outputs = {"solution": "text"}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        kind = ctx.task.kind
        done = await ctx.ask(
            f"Problem:\n{task_prompt(kind, inputs['input'], entry_point=ctx.task.entry_point)}"
            f"\n\nPrevious solution:\n{inputs['solution']}\n\nFeedback:\n{inputs['feedback']}"
            f"\n\n{prompts.REVISE} {prompts.ANSWER_FORMAT[kind]}")
        return {"solution": done.text}
