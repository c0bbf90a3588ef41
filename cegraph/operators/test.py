"""Runs a candidate solution against the task's public tests (never the grading tests)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from cegraph.benchmarks import extract_code
from cegraph.operators.base import NodeContext, Operator, OperatorError, operator
from cegraph.sandbox import SandboxLimits, run_tests


def run_public_tests(code: str, entry_point: str, asserts: list[str],
                     limits: SandboxLimits) -> tuple[bool, str]:
    """Run the public asserts the way grading runs the hidden ones: in the judge's process,
    calling the solution's function through the sandbox's data channel."""
    suite = f"candidate = {entry_point}\n" + "\n".join(asserts) + "\n"
    verdict = run_tests(code, [suite], entry=entry_point, limits=limits).suites[0]
    if verdict.passed:
        return True, f"all {len(asserts)} public tests passed"
    # the feedback names the function the model writes: shown `candidate(...)`, the 0.5B
    # pasted the assert into its revision, where `candidate` is undefined
    error = (f"AssertionError: {verdict.assertion}" if verdict.failure_class == "test_failure"
             else verdict.message)
    return False, re.sub(r"\bcandidate\(", f"{entry_point}(", error)


@operator
class Test(Operator):
    name = "Test"
    description = ("Runs the solution's code against the task's public tests; returns passed "
                   "and, on failure, the failing assert or the exception as feedback.")
    inputs = {"solution": "code"}
    outputs = {"passed": "bool", "feedback": "text"}
    params: dict[str, Any] = {}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        entry = ctx.task.entry_point
        if ctx.task.kind != "code" or not entry:
            raise OperatorError("Test needs a code task with an entry point")
        if not ctx.task.public_tests:
            return {"passed": True, "feedback": "no public tests"}
        passed, feedback = await asyncio.to_thread(
            run_public_tests, extract_code(inputs["solution"]), entry,
            list(ctx.task.public_tests), ctx.sandbox)
        return {"passed": passed, "feedback": feedback}
