"""How a workflow's traces map to cegraph's runs, configurable per workflow in TOML:

```toml
[default]                      # every workflow
max_attribute_chars = 16384

[workflow.math]                # gen_ai.workflow.name (else service.name, else root span)
run_operation = "invoke_workflow"   # the span that is the run (else the trace's root)
node_attribute = "app.step"         # a step's node id (default: span name's last dotted part)
operator_attribute = "app.operator" # a step's operator (default: cegraph.operator, else
                                    # its span kind)
input_attribute = "app.question"    # the task input (default: the run's input messages)
task_attribute = "app.task_id"      # the task id (default: conversation/session id, trace id)
version_attribute = "app.version"   # workflow version (default: service.version)
reference_attribute = "app.expected"  # the reference answer (default: cegraph.reference)
reference_pattern = 'expected (?P<expected>.+?), got (?P<observed>.*)'  # from explanations
outcome_attribute = "app.passed"    # a pass/fail attribute on the run span
evaluation_name = "correctness"     # of several grades, the one that is the verdict
                                    # (default: the last)
```
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class MappingError(ValueError):
    pass


@dataclass(frozen=True)
class Mapping:
    run_operation: str = "invoke_workflow"
    node_attribute: str | None = None
    # cegraph's own two attributes (what `cegraph answer` writes; README's example)
    operator_attribute: str | None = "cegraph.operator"
    input_attribute: str | None = None
    task_attribute: str | None = None
    version_attribute: str | None = None
    reference_attribute: str | None = "cegraph.reference"
    reference_pattern: str = r"expected (?P<expected>.+?), got (?P<observed>.*)"
    outcome_attribute: str | None = None
    evaluation_name: str | None = None
    pass_labels: tuple[str, ...] = ("pass", "passed", "correct", "true", "ok", "good", "1")
    max_attribute_chars: int = 16384

    def reference(self, explanation: str) -> tuple[str, str]:
        """(expected, observed) parsed from an evaluation explanation, else empty."""
        m = re.search(self.reference_pattern, explanation or "")
        if not m:
            return "", ""
        groups = m.groupdict()
        return groups.get("expected", "") or "", groups.get("observed", "") or ""

    def passed(self, label: Any) -> bool:
        return str(label).strip().lower() in self.pass_labels

    def attributes(self) -> set[str]:
        """The attribute keys this mapping reads."""
        return {v for v in (self.node_attribute, self.operator_attribute, self.input_attribute,
                            self.task_attribute, self.version_attribute, self.reference_attribute,
                            self.outcome_attribute) if v}


@dataclass(frozen=True)
class Mappings:
    default: Mapping = Mapping()
    workflows: dict[str, Mapping] = field(default_factory=dict)

    def of(self, workflow: str) -> Mapping:
        return self.workflows.get(workflow, self.default)

    def of_span(self, span: Any) -> Mapping:
        """The mapping of the workflow a span names (no need to name it when every workflow
        maps alike)."""
        if not self.workflows:
            return self.default
        from cegraph.ingest.assemble import workflow_of

        return self.of(workflow_of(span))

    @property
    def max_attribute_chars(self) -> int:
        return self.default.max_attribute_chars

    @classmethod
    def load(cls, path: str | Path | None) -> Mappings:
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise MappingError(f"cannot read mapping {path}: {exc}") from None
        default = _mapping(Mapping(), data.get("default", {}), f"{path} [default]")
        workflows = {name: _mapping(default, spec, f"{path} [workflow.{name}]")
                     for name, spec in data.get("workflow", {}).items()}
        return cls(default, workflows)


def _mapping(base: Mapping, spec: dict[str, Any], where: str) -> Mapping:
    known = {f.name for f in fields(Mapping)}
    unknown = set(spec) - known
    if unknown:
        raise MappingError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                           f"{', '.join(sorted(known))}")
    if "pass_labels" in spec:
        spec = {**spec, "pass_labels": tuple(str(x).lower() for x in spec["pass_labels"])}
    mapping = replace(base, **spec)
    try:
        re.compile(mapping.reference_pattern)
    except re.error as exc:
        raise MappingError(f"{where}: reference_pattern does not compile: {exc}") from None
    return mapping
