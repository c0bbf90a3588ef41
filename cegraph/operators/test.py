"""Runs a candidate solution against the task's public tests (never the grading tests)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from cegraph.benchmarks import extract_code
from cegraph.operators.base import NodeContext, Operator, OperatorError, operator
from cegraph.sandbox import SandboxLimits, run_python


def assert_program(code: str, entry_point: str, asserts: list[str]) -> str:
    """A program that runs each assert in turn and reports the first that fails."""
    checks = "\n".join(
        f"try:\n    {a}\nexcept AssertionError:\n    raise AssertionError({a!r}) from None"
        for a in asserts)
    return f"{code}\n\ncandidate = {entry_point}\n{checks}\n"


def run_public_tests(code: str, entry_point: str, asserts: list[str],
                     limits: SandboxLimits) -> tuple[bool, str]:
    # as in grading: not __main__, and only the completion marker counts as passing
    result = run_python(assert_program(code, entry_point, asserts), limits=limits,
                        as_main=False)
    if result.ok and result.completed:
        return True, f"all {len(asserts)} public tests passed"
    # the feedback names the function the model writes: shown `candidate(...)`, the 0.5B
    # pasted the assert into its revision, where `candidate` is undefined
    error = re.sub(r"\bcandidate\(", f"{entry_point}(", result.error or "")
    return False, error or "the program exited before its tests finished"


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
