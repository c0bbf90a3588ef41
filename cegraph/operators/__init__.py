"""The operator library: every node of a workflow runs one of these."""

from cegraph.operators import (  # noqa: F401  (importing registers each operator)
    format,
    generate,
    programmer,
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
           "library_description"]


def library_description() -> str:
    """The library as a proposer LLM sees it: one line per operator."""
    return "\n".join(op.describe() for op in REGISTRY.values())
