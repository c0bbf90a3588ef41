"""Single-call answering operators: a custom prompt, and step-by-step reasoning."""

from __future__ import annotations

from typing import Any

from cegraph.operators import prompts
from cegraph.operators.base import LLM_PARAMS, NodeContext, Operator, operator
from cegraph.operators.prompts import task_prompt


@operator
class Generate(Operator):
    name = "Generate"
    description = "One LLM call with a custom prompt template over {input} and {context}."
    inputs = {"input": "text", "context": "text"}
    optional_inputs = frozenset({"context"})
    outputs = {"text": "text"}
    params = {**LLM_PARAMS, "prompt": "{input}\n\n{format}", "system": None, "demos": [],
              "rules": []}
    templates = {"prompt": frozenset({"input", "context", "format"})}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        prompt = ctx.params["prompt"].format(
            input=task_prompt(ctx.task.kind, inputs["input"], entry_point=ctx.task.entry_point),
            context=inputs.get("context") or "", format=prompts.ANSWER_FORMAT[ctx.task.kind])
        done = await ctx.ask(f"{prompts.demonstrations(ctx.params['demos'])}{prompt}"
                             f"{prompts.rules(ctx.params['rules'])}", system=ctx.params["system"])
        return {"text": done.text}


@operator
class ChainOfThought(Operator):
    name = "ChainOfThought"
    description = "Reasons step by step, then gives the answer in the task's format."
    inputs = {"input": "text"}
    outputs = {"solution": "text"}
    # demos (worked examples) and rules: data of the version an edit adds (refine/edits.py)
    params = {**LLM_PARAMS, "instruction": prompts.SOLVE, "demos": [], "rules": []}

    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        kind = ctx.task.kind
        # `Problem:` first, as Format, Review and Revise open: the calls of one run share
        # that prefix, so the engine evaluates it once (kept prefixes)
        prompt = (f"{prompts.demonstrations(ctx.params['demos'])}Problem:\n"
                  f"{task_prompt(kind, inputs['input'], entry_point=ctx.task.entry_point)}\n\n"
                  f"{ctx.params['instruction']}{prompts.rules(ctx.params['rules'])} "
                  f"{prompts.ANSWER_FORMAT[kind]}")
        return {"solution": (await ctx.ask(prompt)).text}
