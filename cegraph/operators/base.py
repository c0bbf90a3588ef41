"""What every operator is: a name, a one-line description, typed ports, params, `run`.

Port types are `text`, `code` and `bool`. `text` and `code` connect to each other (code is
text; a code port extracts the fenced block); `bool` connects only to `bool`. The operator
library is the edit vocabulary's nouns: a proposer LLM is shown `Operator.describe()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cegraph.llm import Completion
from cegraph.sandbox import SandboxLimits
from cegraph.task import Task

PORT_TYPES = ("text", "code", "bool")

#: Params every LLM-calling operator accepts.
LLM_PARAMS: dict[str, Any] = {"model": None, "temperature": 0.0, "max_tokens": 512}


def compatible(source: str, target: str) -> bool:
    """Whether an output port of type `source` may feed an input port of type `target`."""
    return source == target or {source, target} <= {"text", "code"}


class OperatorError(RuntimeError):
    """A node's own failure (bad program, unusable answer), recorded in its span."""


@dataclass
class NodeContext:
    """What a running node may use: the task, its params, and a recording LLM call."""

    task: Task
    params: dict[str, Any]
    complete: Callable[..., Awaitable[Completion]]
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)

    async def ask(self, prompt: str, *, system: str | None = None, sample: int = 0,
                  temperature: float | None = None) -> Completion:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        return await self.complete(
            messages, temperature=self.params["temperature"] if temperature is None
            else temperature, max_tokens=self.params["max_tokens"], sample=sample,
            model=self.params.get("model"))


class Operator(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    inputs: ClassVar[dict[str, str]]
    optional_inputs: ClassVar[frozenset[str]] = frozenset()
    outputs: ClassVar[dict[str, str]]
    params: ClassVar[dict[str, Any]] = dict(LLM_PARAMS)
    #: Params that are `str.format` templates, with the placeholders each may use (checked
    #: when a graph is validated, so a stray brace is a validation error, not a run failure).
    templates: ClassVar[dict[str, frozenset[str]]] = {}

    @abstractmethod
    async def run(self, ctx: NodeContext, inputs: dict[str, Any]) -> dict[str, Any]:
        """Compute the outputs. Raise `OperatorError` (or anything) for a node failure; the
        executor records it in the span and the run goes on to a recorded failure."""

    @classmethod
    def describe(cls) -> str:
        ins = ", ".join(f"{k}{'?' if k in cls.optional_inputs else ''}: {t}"
                        for k, t in cls.inputs.items())
        outs = ", ".join(f"{k}: {t}" for k, t in cls.outputs.items())
        params = ", ".join(f"{k}={v!r}" for k, v in cls.params.items())
        return f"{cls.name}({ins}) -> ({outs}) [params: {params}]: {cls.description}"


REGISTRY: dict[str, type[Operator]] = {}


def operator(cls: type[Operator]) -> type[Operator]:
    """Class decorator adding an operator to the library."""
    REGISTRY[cls.name] = cls
    return cls
