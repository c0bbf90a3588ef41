"""The credentials a worker needs to call the night's model, forwarded from the flow's process.

A worker on another machine has none of the flow's environment: the API key the flow's
preflight checked (`OPENAI_API_KEY` for a server at `api_base`, the provider's key for a
hosted model string, any variable `[night] forward_env` names) travels with each chunk as
a `Credentials` value. It never reaches the warehouse or Prefect: it is not a flow
parameter, call keys and stored params leave `api_key` out, and its repr names the
variables, never their values. On the worker it is set in the environment, where litellm
and `ModelSpec.llm` read it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Credentials:
    """Environment variables (name -> value) a worker sets before calling a model."""

    values: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # chunks may be logged (a failed task's inputs): no values
        return f"Credentials({', '.join(sorted(self.values)) or 'none'})"

    def apply(self) -> None:
        """Set them in this process's environment; the flow's values win over a worker's
        own (they are what the night's preflight checked)."""
        os.environ.update(self.values)


def key_names(model: str, api_base: str | None) -> list[str]:
    """The variables that hold `model`'s key: `OPENAI_API_KEY` for an OpenAI-compatible
    server at `api_base`; else litellm's provider's `<PROVIDER>_API_KEY` (none for a
    provider litellm cannot name, e.g. one registered in this process)."""
    if api_base:
        return ["OPENAI_API_KEY"]
    from cegraph.llm import _litellm

    try:
        _, provider, _, _ = _litellm().get_llm_provider(model)
    except Exception:  # a custom provider: nothing litellm would read for it
        return []
    return [f"{provider.upper()}_API_KEY"]


def forwarded(models: Iterable[str], api_base: str | None = None,
              names: Iterable[str] = ()) -> Credentials:
    """What the workers need for `models`, plus `names`, as this process has them (a name
    it does not have is left to the worker's own environment)."""
    wanted = {n for m in models for n in key_names(m, api_base)} | set(names)
    return Credentials({n: os.environ[n] for n in sorted(wanted) if n in os.environ})
