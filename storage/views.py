"""Audit views: the questions users ask of the edit history, each one SELECT away.

They are temporary views created on every open (like the history views), so read-only and
snapshot sessions (`cegraph sql`) have them too, and a new cegraph changes them without a
migration. Each is documented in docs/schema.md (`cegraph schema --markdown`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    name: str
    doc: str
    sql: str


VIEWS: tuple[View, ...] = (
    View("edits_deployed", "Every change of an active version, newest first, with the edit "
         "behind it and why: `FROM edits_deployed WHERE deployed_at > now() - INTERVAL 7 DAY`.",
         "SELECT d.deployed_at, d.workflow, d.action, d.version_id, d.previous_version_id, "
         "d.reason, d.run_id, d.forced, d.edit_id, e.operation, e.rationale, e.diff, "
         "v.fixed, v.broken, v.p_value, v.reason AS verdict FROM deployments d "
         "LEFT JOIN edits e ON e.edit_id = d.edit_id LEFT JOIN verifications v ON "
         "v.edit_id = d.edit_id ORDER BY d.seq DESC NULLS LAST, d.deployed_at DESC"),
    View("edit_fixes", "Per verified edit and failure mode of its base version: how many of "
         "the mode's counterexamples the candidate now passes (`fixed`) and still fails.",
         "SELECT e.edit_id, e.workflow, e.operation, e.status, fm.mode_id, "
         "any_value(fm.label) AS label, count(DISTINCT f.task_id) FILTER (WHERE c.passed) "
         "AS fixed, count(DISTINCT f.task_id) FILTER (WHERE NOT c.passed) AS still_failing "
         "FROM edits e JOIN failures f ON f.workflow = e.workflow AND f.version_id = "
         "e.base_version_id JOIN failure_mode_members mm ON mm.failure_id = f.failure_id "
         "JOIN failure_modes fm ON fm.night_id = mm.night_id AND fm.mode_id = mm.mode_id "
         "JOIN runs c ON c.version_id = e.candidate_version_id AND c.task_id = f.task_id "
         "AND c.model = f.model WHERE c.outcome <> 'infrastructure' GROUP BY ALL"),
    View("edit_breaks", "Per verified edit: the inputs its base version passed and its "
         "candidate fails, with the candidate's failure (what the edit broke).",
         "SELECT DISTINCT e.edit_id, e.workflow, e.operation, e.status, c.task_id, c.run_id, "
         "c.outcome, c.message FROM edits e JOIN runs b ON b.version_id = e.base_version_id "
         "AND b.passed JOIN runs c ON c.version_id = e.candidate_version_id AND c.task_id = "
         "b.task_id AND c.model = b.model WHERE NOT c.passed AND c.outcome <> "
         "'infrastructure'"),
    View("night_costs", "The spend of each nightly refinement against its budget.",
         "SELECT night_id, workflow, status, decision, started_at, ended_at, calls, tokens, "
         "cost, budget->>'$.calls' AS budget_calls, budget->>'$.tokens' AS budget_tokens, "
         "budget->>'$.dollars' AS budget_dollars, projection->>'$.calls' AS projected_calls "
         "FROM night_runs ORDER BY started_at DESC"),
    View("active_lineage", "Each registered workflow's active version back to its seed "
         "(depth 0 = active), with the edit that made each version.",
         "WITH RECURSIVE active AS (SELECT workflow, arg_max(version_id, seq) AS version_id "
         "FROM deployments WHERE seq IS NOT NULL GROUP BY workflow), chain(workflow, "
         "version_id, parent_version_id, created_by, created_at, depth) AS (SELECT "
         "a.workflow, v.version_id, v.parent_version_id, v.created_by, v.created_at, 0 FROM "
         "active a JOIN workflow_versions v USING (version_id) UNION ALL SELECT c.workflow, "
         "v.version_id, v.parent_version_id, v.created_by, v.created_at, c.depth + 1 FROM "
         "chain c JOIN workflow_versions v ON v.version_id = c.parent_version_id WHERE "
         "c.depth < 1000) SELECT c.*, e.operation, e.rationale FROM chain c LEFT JOIN edits "
         "e ON e.edit_id = c.created_by ORDER BY c.workflow, c.depth"),
    View("mode_failures", "Failures with their mode (per night) and their trace: the spans "
         "of the run in order (node, operator, outputs, error): `FROM mode_failures WHERE "
         "mode_id = 'M'`.",
         "SELECT mm.mode_id, fm.label, fm.status AS mode_status, mm.night_id, f.failure_id, "
         "f.run_id, f.workflow, f.version_id, f.task_id, f.failure_class, f.message, "
         "f.expected, f.observed, (SELECT list({'node': s.node_id, 'operator': s.operator, "
         "'outputs': s.outputs, 'error': s.error} ORDER BY s.position) FROM spans s WHERE "
         "s.run_id = f.run_id) AS trace FROM failure_mode_members mm JOIN failures f USING "
         "(failure_id) LEFT JOIN failure_modes fm ON fm.night_id = mm.night_id AND "
         "fm.mode_id = mm.mode_id"),
)

SINCE = 5  # the schema version whose tables they read


def statements() -> list[str]:
    return [f"CREATE OR REPLACE TEMP VIEW {v.name} AS {v.sql}" for v in VIEWS]


def markdown() -> list[str]:
    out = ["## Audit views", "", "Temporary views over the tables above, created on every "
           "open (so `cegraph sql` has them, read-only too).", ""]
    for v in VIEWS:
        out += [f"### `{v.name}`", "", v.doc, ""]
    return out
