"""Check, then escalate: a cheap independent second path beside a solution, and an ensemble
paid for only when the two disagree."""

from __future__ import annotations

import asyncio
from typing import Any

from cegraph.answers import equivalent, extract_answer
from cegraph.benchmarks import extract_code
from cegraph.operators import prompts
from cegraph.operators.base import LLM_PARAMS, NodeContext, Operator, operator
from cegraph.operators.self_consistency import majority
from cegraph.sandbox import run_python


@operator
class CrossCheck(Operator):
    name = "CrossCheck"
    description = ("Checks a solution by an independent second path (a program for math, "
                   "another sample otherwise); when the two answers agree it returns the "
                   "solution (one extra call), else the majority of n more samples.")
    inputs = {"input": "text", "solution": "text"}
    outputs = {"solution": "text", "agreed": "bool"}
    params = {**LLM_PARAMS, "temperature": 0.7, "n": 3}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        task, solution = ctx.task, inputs["solution"]
        check = await self._check(ctx, inputs["input"])
        mine = extract_answer(task.kind, solution)
        theirs = extract_answer(task.kind, check) if check else None
        if mine is not None and theirs is not None and equivalent(task, mine, theirs):
            return {"solution": solution, "agreed": True}
        # a disagreement, or a check that gave no answer: pay for the ensemble
        prompt = prompts.solve_prompt(task, inputs["input"])
        n = int(ctx.params["n"])
        samples = await asyncio.gather(*(ctx.ask(prompt, sample=i + 2) for i in range(n)))
        texts = [solution, *([check] if check else []), *(s.text for s in samples)]
        best = majority(task, texts)
        return {"solution": texts[best if best is not None else 0], "agreed": False}

    @staticmethod
    async def _check(ctx: NodeContext, question: str) -> str | None:
        """The second path's answer as a solution text (None when it gave none)."""
        if ctx.task.kind != "math":
            return (await ctx.ask(prompts.solve_prompt(ctx.task, question), sample=1)).text
        done = await ctx.ask(f"Problem:\n{question}\n\n{prompts.PROGRAM}", temperature=0.0)
        result = await asyncio.to_thread(run_python, extract_code(done.text),
                                         limits=ctx.sandbox)
        printed = result.stdout.strip() if result.ok else ""
        return f"\\boxed{{{printed.splitlines()[-1]}}}" if printed else None
