"""The operator library: every node of a workflow runs one of these."""

import hashlib
import inspect
import json
import sys
from functools import cache

from cegraph.operators import (  # noqa: F401  (importing registers each operator)
    cross_check,
    format,
    generate,
    programmer,
    prompts,
    review,
    self_consistency,
    test,
)
from cegraph.operators.base import (
    PORT_TYPES,
    REGISTRY,
    NodeContext,
    Operator,
    OperatorError,
    compatible,
)

__all__ = ["PORT_TYPES", "REGISTRY", "NodeContext", "Operator", "OperatorError", "compatible",
           "library_description", "library_fingerprint"]


def library_description() -> str:
    """The library as a proposer LLM sees it: one line per operator."""
    return "\n".join(op.describe() for op in REGISTRY.values())


@cache
def _code_fingerprint() -> str:
    """The source of every operator's module and of the answer extraction they use."""
    modules = sorted({op.__module__ for op in REGISTRY.values()} | {"cegraph.answers"})
    return hashlib.sha256("".join(inspect.getsource(sys.modules[m])
                                  for m in modules).encode()).hexdigest()


def library_fingerprint() -> str:
    """What the library does, hashed: its operators (interface, defaults, code) and the
    current text of every built-in prompt, so editing a prompt changes workflow version ids."""
    texts = {k: v for k, v in sorted(vars(prompts).items()) if k.isupper()}
    return hashlib.sha256(json.dumps([library_description(), _code_fingerprint(), texts],
                                     sort_keys=True, default=str).encode()).hexdigest()
