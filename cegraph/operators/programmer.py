"""Program of thought: the LLM writes Python that prints the answer; the sandbox runs it."""

from __future__ import annotations

import asyncio
from typing import Any

from cegraph.benchmarks import extract_code
from cegraph.operators import prompts
from cegraph.operators.base import LLM_PARAMS, NodeContext, Operator, OperatorError, operator
from cegraph.sandbox import run_python


@operator
class Programmer(Operator):
    name = "Programmer"
    description = ("Writes a Python program that computes and prints the answer, runs it in "
                   "the sandbox, and returns what it printed.")
    inputs = {"input": "text"}
    outputs = {"solution": "text", "code": "code"}
    params = {**LLM_PARAMS, "instruction": prompts.PROGRAM, "demos": [], "rules": []}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        done = await ctx.ask(f"{prompts.demonstrations(ctx.params['demos'])}Problem:\n"
                             f"{inputs['input']}\n\n{ctx.params['instruction']}"
                             f"{prompts.rules(ctx.params['rules'])}")
        code = extract_code(done.text)
        # the answer is what the program printed, read by the host: nothing it writes or
        # claims elsewhere counts
        result = await asyncio.to_thread(run_python, code, limits=ctx.sandbox)
        if not result.ok:
            raise OperatorError(f"program failed: {result.error}")
        printed = result.stdout.strip()
        if not printed:
            raise OperatorError("program printed nothing")
        return {"solution": printed.splitlines()[-1], "code": code}
