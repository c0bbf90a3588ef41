"""What one night's report says, as data: the contract between the nightly flow (or
`cegraph.storage.night_summary.summarize`, which rebuilds it from the warehouse) and the
report writer.

The nightly flow fills a `NightSummary` (or a dict of the same shape) and calls
`cegraph.report.write_report(summary, out_dir)`; the same JSON is written beside the HTML.

Fields, by section of the report:

- identity: `night_id` (the mode computation in `nights`), `workflow`, `model`, `dataset`,
  `refine_id` (the refinement whose edits are reported, `edits.night_id`), `generated_at`;
- `active_before` / `active_after`: the active version before and after the night;
- `decision`: the night's own word (`night_runs.decision`): `promoted` | `proposed` |
  `gated_out` | `undecided` | `stale` | `no_edit` | `no_failures` | `refused`, with
  `decision_reason` in words;
- `mass_before` / `mass_after`: Expected Failure Mass of the active version before, and of
  the version the night ends with (or its best candidate), each with its 95% interval;
- `modes`: this night's failure modes (+ the noise row, `mode_id = 'noise'`);
- `trend`: the mass of every mode in every earlier night of the same workflow (one point
  per (night, mode)), so a mode's rise or fall is a line;
- `points`: the 2-D map of the Failure Signature Space (a projection of the signature
  vectors, `projection` names it), one point per failure, coloured by mode;
- `edits`: every candidate edit in words (operation and target), its final status, diff,
  verification counts and gate verdict; its `target_mode_id` is the mode table's id;
- `cost`: LLM calls, tokens, dollars and wall seconds the night spent, and its budget.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from cegraph.fss.mass import estimate

#: One vocabulary with the night, the CLI and SQL (`night_runs.decision`).
Decision = Literal["promoted", "proposed", "gated_out", "undecided", "stale", "no_edit",
                   "no_failures", "refused"]


class Mass(BaseModel):
    """Expected Failure Mass with its 95% Wilson interval."""

    failures: int
    runs: int
    mass: float
    lo: float
    hi: float

    @classmethod
    def of(cls, failures: int, runs: int) -> Mass:
        e = estimate(failures, runs)
        return cls(failures=e.failures, runs=e.runs, mass=e.mass, lo=e.lo, hi=e.hi)


class Mode(BaseModel):
    mode_id: str  # 'noise' for the failures in no dense mode
    label: str
    size: int
    mass: float
    lo: float
    hi: float
    status: str = ""  # new | growing | shrinking | stable | resolved
    locus: str = ""


class TrendPoint(BaseModel):
    night_id: str
    computed_at: dt.datetime
    mode_id: str
    label: str
    mass: float
    lo: float
    hi: float


class Point(BaseModel):
    """One failure in the 2-D map of the signature space."""

    failure_id: str
    mode_id: str
    x: float
    y: float
    message: str = ""


class Verification(BaseModel):
    counterexamples: int = 0
    regression: int = 0
    others: int = 0
    fixed: int = 0
    broken: int = 0
    p_value: float | None = None
    accepted: bool | None = None
    reason: str = ""
    mass_before: float | None = None
    mass_after: float | None = None
    calls_made: int = 0
    calls_replayed: int = 0


class GateCheck(BaseModel):
    expectation: str
    success: bool
    observed: str = ""


class Gate(BaseModel):
    passed: bool
    checks: list[GateCheck] = Field(default_factory=list)

    @property
    def failing(self) -> list[str]:
        return [c.expectation for c in self.checks if not c.success]


class Edit(BaseModel):
    edit_id: str
    operation: str
    edit: str = ""  # the edit in words: operation and what it acts on (`describe`)
    target_mode_id: str = ""
    status: str  # its final `edits.status`: invalid | accepted | rejected | undecided |
    # gated_out | verified (proposed: never judged)
    source: str = ""  # prior | rule | llm | random | human
    rationale: str = ""
    reject_reason: str = ""
    candidate_version_id: str = ""
    diff: list[str] = Field(default_factory=list)
    verification: Verification | None = None
    gate: Gate | None = None


def describe(operation: str, payload: dict[str, Any]) -> str:
    """An edit in a few words: `replace_operator solve -> Programmer`, `edit_prompt solve
    instruction`, `insert_node after solve: Review`."""
    if "anchor" in payload:
        where = f"{payload.get('position', 'after')} {payload['anchor']}"
    else:
        where = str(payload.get("node") or "")
    what = (f"-> {payload['operator']}" if operation == "replace_operator" and
            payload.get("operator") else f": {payload['operator']}" if payload.get("operator")
            else str(payload.get("param") or ""))
    return " ".join(x for x in (operation, where, what) if x).replace(" :", ":")


class Cost(BaseModel):
    llm_calls: int = 0
    calls_replayed: int = 0
    tokens: int = 0
    dollars: float = 0.0
    wall_s: float = 0.0
    budget_calls: int | None = None
    budget_tokens: int | None = None
    budget_dollars: float | None = None


class NightSummary(BaseModel):
    night_id: str
    workflow: str
    model: str = ""
    dataset: str = ""
    refine_id: str | None = None
    generated_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    active_before: str = ""
    active_after: str = ""
    decision: Decision = "no_edit"
    decision_reason: str = ""
    mass_before: Mass
    mass_after: Mass | None = None
    modes: list[Mode] = Field(default_factory=list)
    trend: list[TrendPoint] = Field(default_factory=list)
    projection: str = ""  # how `points` were made, e.g. "PCA of 384-d signatures (41% var.)"
    points: list[Point] = Field(default_factory=list)
    edits: list[Edit] = Field(default_factory=list)
    cost: Cost = Field(default_factory=Cost)

    @property
    def verification_totals(self) -> dict[str, int]:
        """fixed / broken / re-run inputs over every verified candidate."""
        vs = [e.verification for e in self.edits if e.verification is not None]
        return {"candidates": len(self.edits), "verified": len(vs),
                "fixed": sum(v.fixed for v in vs), "broken": sum(v.broken for v in vs),
                "reruns": sum(v.counterexamples + v.regression + v.others for v in vs)}
