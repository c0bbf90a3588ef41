"""Every table of the warehouse, its columns documented, and the migrations between versions.

This file is the single source of truth: the DDL, the Parquet schemas of the history tables,
the migrations (each column and table says in which schema version it appeared) and
`docs/schema.md` (`cegraph schema --markdown`) are all derived from `TABLES`.

History tables (`runs`, `spans`, `failures`) live in Parquet partitioned by date and are
read through views; all other tables live in the DuckDB catalog file. A batch of history
files is visible only once its row in `batches` (written last) commits it, and a run's
latest committed verdict supersedes older ones (see `storage/history.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 7


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    doc: str
    since: int = 1


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    history: bool = False  # Parquet under history/<name>/date=YYYY-MM-DD/
    key: tuple[str, ...] = ()
    since: int = 1
    key_since: int = 1  # schema version from which `key` is the table's primary key

    def columns_at(self, version: int) -> list[Column]:
        return [c for c in self.columns if c.since <= version]


C = Column
TABLES: tuple[Table, ...] = (
    Table("schema_version", "One row per applied migration.", (
        C("version", "INTEGER", "schema version reached"),
        C("applied_at", "TIMESTAMP", "when it was applied"),
    )),
    Table("runs", "One workflow execution on one input.", (
        C("run_id", "VARCHAR", "unique run id"),
        C("night_id", "VARCHAR", "the job (nightly run, demo, bench) that produced it"),
        C("workflow", "VARCHAR", "workflow name"),
        C("version_id", "VARCHAR", "content hash of the workflow graph"),
        C("task_id", "VARCHAR", "input / benchmark problem id"),
        C("dataset", "VARCHAR", "benchmark name or 'production'"),
        C("source", "VARCHAR", "benchmark | production | verification"),
        C("started_at", "TIMESTAMP", "run start (UTC)"),
        C("ended_at", "TIMESTAMP", "run end (UTC)"),
        C("passed", "BOOLEAN", "evaluation verdict"),
        C("outcome", "VARCHAR", "'pass', the failure class, or 'infrastructure' (a provider "
                                "outage, budget stop or sandbox setup failure: not counted, "
                                "retried by the next run)"),
        C("score", "DOUBLE", "evaluation score in [0, 1]"),
        C("message", "VARCHAR", "failure message ('' when passed)"),
        C("output", "VARCHAR", "the workflow's final output"),
        C("tokens", "BIGINT", "tokens paid for (cached calls excluded)"),
        C("cost", "DOUBLE", "USD paid (0 for local models)"),
        C("llm_calls", "INTEGER", "LLM calls paid for"),
        C("model", "VARCHAR", "the model: litellm string, with '@fingerprint' when known", 3),
        C("evaluator_version", "VARCHAR", "version of the grader that gave the verdict", 3),
        C("batch_id", "VARCHAR", "the write batch (joins batches.batch_id)", 3),
    ), history=True),
    Table("spans", "One node execution inside a run.", (
        C("run_id", "VARCHAR", "the run (joins runs.run_id)"),
        C("node_id", "VARCHAR", "node id in the workflow"),
        C("operator", "VARCHAR", "operator type of the node"),
        C("depth", "INTEGER", "longest path from the workflow input"),
        C("position", "INTEGER", "index in the run's execution order"),
        C("inputs", "VARCHAR", "JSON of the node's inputs"),
        C("outputs", "VARCHAR", "JSON of the node's outputs"),
        C("started_at", "TIMESTAMP", "node start (UTC)"),
        C("latency_s", "DOUBLE", "wall seconds in the node"),
        C("tokens_in", "BIGINT", "prompt tokens paid for"),
        C("tokens_out", "BIGINT", "completion tokens paid for"),
        C("cost", "DOUBLE", "USD paid"),
        C("call_keys", "VARCHAR[]", "keys of its LLM calls (joins llm_calls.key)"),
        C("error", "VARCHAR", "the node's failure, NULL when it succeeded"),
        C("error_type", "VARCHAR", "exception type of the failure"),
        C("skipped", "BOOLEAN", "condition false or an input's node did not run"),
        C("truncated", "BOOLEAN", "an LLM call stopped at its token limit"),
        C("infrastructure", "BOOLEAN", "the node's error was infrastructure, not the "
                                       "workflow's", 3),
        C("batch_id", "VARCHAR", "the write batch (joins batches.batch_id)", 3),
    ), history=True),
    Table("failures", "The counterexample pool: one row per failed run.", (
        C("failure_id", "VARCHAR", "unique failure id"),
        C("run_id", "VARCHAR", "the failed run (joins runs.run_id)"),
        C("workflow", "VARCHAR", "workflow name"),
        C("version_id", "VARCHAR", "workflow version that failed"),
        C("task_id", "VARCHAR", "input id"),
        C("locus_node", "VARCHAR", "node the failure is attributed to"),
        C("locus_operator", "VARCHAR", "operator of that node"),
        C("locus_depth", "INTEGER", "depth of that node"),
        C("failure_class", "VARCHAR", "wrong_answer | no_answer | truncated | test_failure | "
                                      "exception | timeout | early_exit | bad_return"),
        C("message", "VARCHAR", "failure message (expected vs got, assert, exception)"),
        C("expected", "VARCHAR", "reference answer or failing assert"),
        C("observed", "VARCHAR", "what the workflow produced"),
        C("created_at", "TIMESTAMP", "when the run ended"),
        C("model", "VARCHAR", "the model (as runs.model)", 3),
        C("dataset", "VARCHAR", "benchmark name or 'production'", 3),
        C("source", "VARCHAR", "benchmark | production | verification", 3),
        C("evaluator_version", "VARCHAR", "version of the grader that gave the verdict", 3),
        C("batch_id", "VARCHAR", "the write batch (joins batches.batch_id)", 3),
        # trace features (cegraph.fss.features), read from the trace without an LLM
        C("features", "VARCHAR", "the trace features as the phrase the signature recipe "
                                 "'message+features' adds ('' when none hold)", 4),
        C("feature_tags", "VARCHAR[]", "the features that hold (keys of "
                                       "cegraph.fss.features.PHRASES: extraction_slip, "
                                       "intermediate_answer, percent_factor, sign_error, "
                                       "cut_at_limit, wrong_values, ...)", 4),
        C("expected_at_node", "VARCHAR", "first reasoning node whose output shows the "
                                         "expected value (not one given in the question)", 4),
        C("expected_at_step", "INTEGER", "its step (1-based non-empty line)", 4),
        C("reported_at_node", "VARCHAR", "first reasoning node whose output shows the "
                                         "reported value", 4),
        C("reported_at_step", "INTEGER", "its step", 4),
        C("reasoning_steps", "INTEGER", "steps of the last reasoning node", 4),
        C("answer_ratio", "DOUBLE", "reported / expected value, both numbers", 4),
        C("code_outcome", "VARCHAR", "code: raises | wrong_values | timeout | exits | "
                                     "no_code", 4),
        C("exception_type", "VARCHAR", "exception type named by the message", 4),
        C("failing_input_class", "VARCHAR", "kind of input of the failing assert: empty | "
                                            "single | negative | zero | float | large | "
                                            "nested | text | typical", 4),
        # the step checker (cegraph.fss.steps): a math trace's stated arithmetic recomputed
        C("step_findings", "VARCHAR[]", "the step checker's findings, in priority order "
                                        "(keys of cegraph.fss.steps.FINDINGS: "
                                        "invented_output, arithmetic_error, "
                                        "answer_not_last_result, unsourced_number, ...)", 7),
        C("step_finding", "VARCHAR", "the first of them (see cegraph.fss.finding for the "
                                        "dominant finding the 'steps' recipes embed)", 7),
        C("steps_stated", "INTEGER", "arithmetic steps the reasoning states (`a * b = c`)",
          7),
        C("first_wrong_step", "VARCHAR", "first stated step that recomputes differently: "
                                         "'a + b = c (is d)'", 7),
        C("code_claimed", "DOUBLE", "the number the reasoning says its own code printed", 7),
        C("code_result", "DOUBLE", "the first number that code prints when run in the "
                                   "sandbox (NULL: no code, or it printed none)", 7),
    ), history=True),
    Table("source_spans", "Every span and log record an ingest read, as read, with the run "
          "and node it was mapped to (ingested runs only).", (
        C("run_id", "VARCHAR", "the run (joins runs.run_id)"),
        C("trace_id", "VARCHAR", "source trace id (hex), or the JSONL run id"),
        C("span_key", "VARCHAR", "source span id (hex), 'log:<span>:<time>:<event>' for a "
                                 "log record, 'run' for a JSONL run"),
        C("parent_span_id", "VARCHAR", "source parent span id"),
        C("name", "VARCHAR", "span name or log event name"),
        C("kind", "VARCHAR", "workflow | llm | tool | step | log | run"),
        C("node_id", "VARCHAR", "node the span was mapped to"),
        C("started_at", "TIMESTAMP", "span start (UTC)"),
        C("ended_at", "TIMESTAMP", "span end (UTC)"),
        C("status", "VARCHAR", "unset | ok | error"),
        C("attributes", "VARCHAR", "JSON of the attributes (the JSONL record for 'run')"),
        C("events", "VARCHAR", "JSON of the span events"),
        C("oversized", "VARCHAR[]", "'key:original_length' of values cut to the size limit"),
        C("batch_id", "VARCHAR", "the write batch (joins batches.batch_id)"),
        C("conversation_id", "VARCHAR", "gen_ai.conversation.id, else OpenInference's "
                                        "session.id (NULL when absent)", 7),
        C("input_tokens", "BIGINT", "gen_ai.usage.input_tokens / llm.token_count.prompt, "
                                    "cached ones included (0 when absent)", 7),
        C("output_tokens", "BIGINT", "gen_ai.usage.output_tokens / "
                                     "llm.token_count.completion, reasoning included", 7),
        C("cache_read_input_tokens", "BIGINT", "input tokens served from the provider's "
                                               "cache: gen_ai.usage.cache_read.input_tokens / "
                                               "llm.token_count.prompt_details.cache_read", 7),
        C("cache_creation_input_tokens", "BIGINT", "input tokens written to the provider's "
                                                   "cache: gen_ai.usage.cache_creation."
                                                   "input_tokens / llm.token_count."
                                                   "prompt_details.cache_write", 7),
        C("reasoning_output_tokens", "BIGINT", "output tokens spent reasoning: gen_ai.usage."
                                               "reasoning.output_tokens / llm.token_count."
                                               "completion_details.reasoning", 7),
    ), history=True, since=4),
    Table("batches", "Commit markers of history writes: a batch's Parquet files are visible "
          "only once its row exists (written after all of them).", (
        C("batch_id", "VARCHAR", "batch id (the batch_id column of its history rows)"),
        C("seq", "BIGINT", "commit order: a later batch supersedes a run's earlier verdict"),
        C("night_id", "VARCHAR", "the job that wrote it"),
        C("rows", "INTEGER", "history rows in the batch, all tables"),
        C("committed_at", "TIMESTAMP", "when it was committed"),
    ), key=("batch_id",), since=3),
    Table("signatures", "One failure signature per failure; its vector lives in LanceDB.", (
        C("failure_id", "VARCHAR", "the failure (joins failures.failure_id)"),
        C("run_id", "VARCHAR", "the failed run"),
        C("workflow", "VARCHAR", "workflow name"),
        C("version_id", "VARCHAR", "workflow version"),
        C("locus_node", "VARCHAR", "signature component: node"),
        C("locus_operator", "VARCHAR", "signature component: operator"),
        C("locus_depth", "INTEGER", "signature component: depth"),
        C("failure_class", "VARCHAR", "signature component: class"),
        C("text", "VARCHAR", "normalized, class-prefixed message that was embedded"),
        C("text_hash", "VARCHAR", "hash of text (joins embedding_cache.text_hash)"),
        C("embedding_model", "VARCHAR", "sentence-transformers model of the meaning part"),
        C("vector_id", "VARCHAR", "row key in the LanceDB table 'signatures'"),
        C("created_at", "TIMESTAMP", "when the signature was computed"),
        C("locus_weight", "DOUBLE", "weight w of the locus part (see cegraph.fss.signature)", 2),
        C("recipe", "VARCHAR", "signature recipe the text was built with: message | "
                               "message+features | message+features+diagnosis | steps | "
                               "steps+contrast | message+steps+contrast | "
                               "contrast+diagnosis (NULL: message)", 4),
    ), key=("failure_id",)),
    Table("diagnoses", "LLM diagnoses of failures (cegraph.fss.diagnosis): one call per distinct "
          "failure, valid or not.", (
        C("failure_id", "VARCHAR", "the failure"),
        C("run_id", "VARCHAR", "its run"),
        C("model", "VARCHAR", "diagnosing model (LLM.identity)"),
        C("prompt_hash", "VARCHAR", "the distinct failure: failures with the same prompt "
                                    "share one call"),
        C("valid", "BOOLEAN", "the answer validated (else the failure keeps its features)"),
        C("node", "VARCHAR", "node where it went wrong"),
        C("node_operator", "VARCHAR", "operator of that node"),
        C("node_depth", "INTEGER", "depth of that node"),
        C("step", "INTEGER", "step in that node's output (0: unclear)"),
        C("kind", "VARCHAR", "misread_question | wrong_operation | arithmetic_slip | "
                             "unit_or_percent | incomplete_reasoning | extraction_format | "
                             "wrong_algorithm | edge_case_missed | hallucinated_fact | other"),
        C("explanation", "VARCHAR", "one sentence, numbers masked"),
        C("raw", "VARCHAR", "the model's answer as received"),
        C("error", "VARCHAR", "why an invalid answer was rejected"),
        C("call_key", "VARCHAR", "the LLM call (joins llm_calls.key)"),
        C("fresh", "BOOLEAN", "a provider call was paid for (not replayed)"),
        C("latency_s", "DOUBLE", "seconds of the paid call (0 when replayed)"),
        C("created_at", "TIMESTAMP", "when diagnosed"),
    ), key=("failure_id", "model"), since=4),
    Table("embedding_cache", "Embeddings by normalized-text hash: a text is embedded once.", (
        C("model", "VARCHAR", "embedding model"),
        C("text_hash", "VARCHAR", "hash of the normalized text"),
        C("vector", "FLOAT[]", "unit embedding"),
    ), key=("model", "text_hash"), since=2),
    Table("nights", "One mode computation (a nightly job, a demo, a bench run).", (
        C("night_id", "VARCHAR", "job id"),
        C("workflow", "VARCHAR", "workflow name"),
        C("version_id", "VARCHAR", "workflow version analysed"),
        C("computed_at", "TIMESTAMP", "when the modes were computed"),
        C("runs", "INTEGER", "runs in the estimate"),
        C("failures", "INTEGER", "failures in the estimate"),
        C("modes", "INTEGER", "dense modes found"),
        C("noise", "INTEGER", "failures in no mode (still in the mass)"),
        C("mass", "DOUBLE", "Expected Failure Mass = failures / runs"),
        C("mass_lo", "DOUBLE", "95% Wilson interval, low"),
        C("mass_hi", "DOUBLE", "95% Wilson interval, high"),
        C("model", "VARCHAR", "the model (as runs.model)", 3),
        C("dataset", "VARCHAR", "benchmark name or 'production'", 3),
        C("source", "VARCHAR", "benchmark | production | verification", 3),
        C("recipe", "VARCHAR", "signature recipe of the night; nights are matched only to "
                               "nights of the same recipe (NULL: message)", 4),
    ), key=("night_id", "workflow")),
    Table("failure_modes", "Dense regions of the signature space, one row per mode per night.", (
        C("night_id", "VARCHAR", "the computation (joins nights.night_id)"),
        C("mode_id", "VARCHAR", "stable identity across nights, never reused for another "
                                "mode of the workflow"),
        C("workflow", "VARCHAR", "workflow name"),
        C("version_id", "VARCHAR", "workflow version"),
        C("rank", "INTEGER", "1 = largest mass"),
        C("label", "VARCHAR", "locus + message template"),
        C("status", "VARCHAR", "new | growing | shrinking | stable | resolved (growing/"
                               "shrinking only when the mass intervals do not overlap)"),
        C("previous_mode_id", "VARCHAR", "the mode it matched in the previous night"),
        C("size", "INTEGER", "failures in the mode"),
        C("mass", "DOUBLE", "size / runs"),
        C("mass_lo", "DOUBLE", "95% Wilson interval, low"),
        C("mass_hi", "DOUBLE", "95% Wilson interval, high"),
        C("density", "DOUBLE", "failures per unit mean squared radius"),
        C("centroid", "FLOAT[]", "mean signature vector"),
        C("representative_failure_ids", "VARCHAR[]", "failures nearest the centroid"),
        C("locus_node", "VARCHAR", "most common locus node"),
        C("locus_operator", "VARCHAR", "most common locus operator"),
        C("template", "VARCHAR", "most common normalized message"),
        C("computed_at", "TIMESTAMP", "when computed"),
    ), key=("night_id", "mode_id")),
    Table("failure_mode_members", "Which failure belongs to which mode in a night.", (
        C("night_id", "VARCHAR", "the computation"),
        C("mode_id", "VARCHAR", "the mode, or 'noise'"),
        C("failure_id", "VARCHAR", "the failure"),
    ), key=("night_id", "failure_id"), key_since=3),
    Table("workflows", "The workflow registry: one row per registered workflow (`cegraph "
          "register`); its active version is its latest `deployments` row.", (
        C("name", "VARCHAR", "workflow name (workflow_versions.workflow, runs.workflow)"),
        C("evaluator", "VARCHAR", "JSON of how re-runs of its logged inputs are graded "
                                  "(cegraph.evaluator_spec.EvaluatorSpec)"),
        C("seed_version_id", "VARCHAR", "the version it was registered with"),
        C("source", "VARCHAR", "the file it was registered from (NULL: given in code)"),
        C("registered_at", "TIMESTAMP", "when registered"),
    ), key=("name",), since=5),
    Table("workflow_versions", "Every workflow version ever seen.", (
        C("version_id", "VARCHAR", "content hash"),
        C("workflow", "VARCHAR", "workflow name"),
        C("parent_version_id", "VARCHAR", "version it was edited from"),
        C("spec", "VARCHAR", "the graph as JSON"),
        C("created_by", "VARCHAR", "'seed', 'user', 'human' (`cegraph register` of a new "
                                   "version), the edit id (every candidate a night tried), "
                                   "or who added it to the registry (`Registry.add_version`)"),
        C("created_at", "TIMESTAMP", "first seen"),
    ), key=("version_id",)),
    Table("edits", "Proposed graph edits (filled by the refinement loop).", (
        C("edit_id", "VARCHAR", "unique edit id"),
        C("night_id", "VARCHAR", "refinement job (NULL: a human's edit)"),
        C("workflow", "VARCHAR", "workflow name"),
        C("base_version_id", "VARCHAR", "version edited"),
        C("candidate_version_id", "VARCHAR", "version the edit produces"),
        C("target_mode_id", "VARCHAR", "failure mode aimed at (a night's: the mode table's "
                                       "failure_modes.mode_id it stands for)"),
        C("operation", "VARCHAR", "edit operation from the vocabulary"),
        C("payload", "VARCHAR", "the edit as JSON"),
        C("rationale", "VARCHAR", "why the proposer chose it"),
        C("status", "VARCHAR", "proposed (never judged) | invalid | accepted | rejected | "
                               "undecided (incomplete evidence) | verified (passed its "
                               "gate) | gated_out (failed its promotion gate, never "
                               "promoted)"),
        C("reject_reason", "VARCHAR", "why it was not applied (gated_out: the failing "
                                      "expectations)"),
        C("created_at", "TIMESTAMP", "when proposed"),
        C("round", "INTEGER", "refinement round that proposed it", 4),
        C("source", "VARCHAR", "prior | rule | llm | random | human: who proposed it", 4),
        C("diff", "VARCHAR", "node-level diff from the base version", 4),
        C("edit_key", "VARCHAR", "hash of the edit's operation, target and parameters: an "
                                 "edit rejected for an unchanged mode is not proposed again "
                                 "(cegraph.refine.memory)", 7),
        C("mode_state", "VARCHAR", "JSON: the target mode when proposed (centroid, failures, "
                                   "shown runs), to tell the same mode, unchanged, in a later "
                                   "night", 7),
    ), key=("edit_id",), key_since=3),
    Table("verifications", "Re-runs of a candidate on counterexamples and regressions.", (
        C("verification_id", "VARCHAR", "unique id"),
        C("edit_id", "VARCHAR", "the edit verified"),
        C("candidate_version_id", "VARCHAR", "candidate version"),
        C("counterexamples", "INTEGER", "failures of the target mode re-run (verification "
                                        "role)"),
        C("regression", "INTEGER", "previously passing runs re-run (verification role, "
                                   "same sample)"),
        C("fixed", "INTEGER", "failures that now pass"),
        C("broken", "INTEGER", "passes that now fail"),
        C("mass_before", "DOUBLE", "estimated mass of the base version"),
        C("mass_after", "DOUBLE", "estimated mass of the candidate"),
        C("p_value", "DOUBLE", "paired test of fixed vs broken"),
        C("accepted", "BOOLEAN", "acceptance rule verdict"),
        C("tokens", "BIGINT", "tokens paid"),
        C("cost", "DOUBLE", "USD paid"),
        C("created_at", "TIMESTAMP", "when verified"),
        C("others", "INTEGER", "counterexamples of other modes re-run", 4),
        C("reason", "VARCHAR", "the acceptance rule's verdict in words", 4),
        C("calls_made", "INTEGER", "LLM calls paid for", 4),
        C("calls_replayed", "INTEGER", "calls answered from the call store (unchanged "
                                       "nodes)", 4),
        C("calls_full", "INTEGER", "calls a full re-execution of the planned inputs would "
                                   "make", 4),
        C("stopped_early", "BOOLEAN", "stopped once it certainly could not win (see "
                                      "reason)", 4),
        C("decision", "VARCHAR", "accepted | rejected | undecided (incomplete evidence: a "
                                 "budget stop or an outage mid-verification)", 6),
        C("p_adjusted", "DOUBLE", "p_value adjusted for every candidate of the refinement "
                                  "(Holm within a round, alpha spent 2^-round across rounds); "
                                  "compared with alpha", 6),
        C("ci_low", "DOUBLE", "lower bound of the stratified paired estimate of the mass "
                              "drop (mass_before - mass_after); accepted only if > 0", 6),
        C("ci_high", "DOUBLE", "upper bound of that estimate", 6),
        C("cost_ratios", "VARCHAR", "JSON: candidate / base cost per run on the same units "
                                    "(calls, tokens, dollars, latency_s)", 6),
        C("planned", "INTEGER", "verification-role units planned (0: not verified)", 6),
    ), key=("verification_id",), key_since=3),
    Table("refinements", "One refinement run (`cegraph refine`): rerunning it resumes it.", (
        C("refine_id", "VARCHAR", "hash of seed, models, inputs, method, budget, settings "
                                  "(joins edits.night_id)"),
        C("workflow", "VARCHAR", "workflow name"),
        C("seed_version_id", "VARCHAR", "version refined"),
        C("version_id", "VARCHAR", "final (refined) version; NULL while running"),
        C("method", "VARCHAR", "cegraph | scalar | random"),
        C("spec", "VARCHAR", "JSON of the settings and budget"),
        C("status", "VARCHAR", "running | done | interrupted"),
        C("summary", "VARCHAR", "JSON of the result (masses, calls, accepted edits)"),
        C("started_at", "TIMESTAMP", "first start (a resumed run keeps it)"),
        C("ended_at", "TIMESTAMP", "last end"),
    ), key=("refine_id",), since=4),
    Table("gate_results", "Data-quality checks (Great Expectations) on verification results "
          "and on every ingest batch.", (
        C("gate_id", "VARCHAR", "unique id"),
        C("verification_id", "VARCHAR", "the verification checked (a gate's: "
                                        "`night_runs.night_id` || '-gate')"),
        C("edit_id", "VARCHAR", "the edit"),
        C("expectation", "VARCHAR", "the check"),
        C("success", "BOOLEAN", "passed"),
        C("observed", "VARCHAR", "observed value"),
        C("details", "VARCHAR", "JSON result"),
        C("created_at", "TIMESTAMP", "when checked"),
        C("batch_id", "VARCHAR", "the ingest batch checked (joins ingest_batches.batch_id)", 4),
        C("suite", "VARCHAR", "the expectation suite", 4),
    ), key=("gate_id",), key_since=3),
    Table("deployments", "Every change of a registered workflow's active version (its "
          "latest row by `seq` names the active one).", (
        C("deployment_id", "VARCHAR", "unique id"),
        C("workflow", "VARCHAR", "workflow name"),
        C("version_id", "VARCHAR", "version made active"),
        C("previous_version_id", "VARCHAR", "version replaced"),
        C("edit_id", "VARCHAR", "edit that produced it"),
        C("reason", "VARCHAR", "why"),
        C("deployed_at", "TIMESTAMP", "when"),
        C("action", "VARCHAR", "register | promote | rollback", 5),
        C("run_id", "VARCHAR", "the job that made it (a nightly run id; NULL: a human at the "
                               "CLI)", 5),
        C("forced", "BOOLEAN", "promoted with `--force` (its latest gate did not pass, or "
                               "it was never gated)", 5),
        C("seq", "BIGINT", "order of the changes (1, 2, ...)", 5),
    ), key=("deployment_id",), key_since=3),
    Table("night_runs", "One nightly refinement of one registered workflow (the "
          "`nightly-refinement` flow); a running row is the workflow's lock, a lease its holder "
          "renews: a second night of the same workflow refuses while the lease lives, and "
          "resumes the night once its holder died or its lease ended.", (
        C("night_id", "VARCHAR", "night id (runs.night_id of its verification re-runs)", 5),
        C("workflow", "VARCHAR", "registered workflow (workflows.name)", 5),
        C("status", "VARCHAR", "running | done | failed | refused (budget projection)", 5),
        C("step", "VARCHAR", "last completed step: gather | refine | verify | gate | decide",
          5),
        C("holder", "VARCHAR", "host:pid:token of the process running it", 5),
        C("active_version_id", "VARCHAR", "the active version when the night started", 5),
        C("budget", "VARCHAR", "JSON of the night's hard budget (calls, tokens, dollars)", 5),
        C("projection", "VARCHAR", "JSON of the spend projected from history before it "
                                   "started", 5),
        C("calls", "BIGINT", "LLM calls paid for", 5),
        C("tokens", "BIGINT", "tokens paid for", 5),
        C("cost", "DOUBLE", "USD paid", 5),
        C("decision", "VARCHAR", "promoted (gate passed, promoted by compare-and-swap) | "
                                 "proposed (gate passed, --propose-only) | gated_out (the "
                                 "gate rejected it on the holdout) | undecided (the holdout "
                                 "was too small, or the gate's budget ran out: nothing "
                                 "promoted) | stale (the active version changed since the "
                                 "night started: nothing promoted) | no_edit (refinement "
                                 "accepted no edit) | no_failures (nothing new to refine: no "
                                 "failing input logged or carried) | refused (the budget "
                                 "cannot pay the night's least spend)", 5),
        C("summary", "VARCHAR", "JSON summary of the night (what the report shows)", 5),
        C("started_at", "TIMESTAMP", "first start (a resumed night keeps it)", 5),
        C("ended_at", "TIMESTAMP", "end", 5),
        C("heartbeat_at", "TIMESTAMP", "the holder's last heartbeat (UTC)", 6),
        C("lease_expires_at", "TIMESTAMP", "the lock's lease ends here unless renewed: a "
                                           "running night whose lease ended is stale (its "
                                           "holder died, on any host) and the next night "
                                           "resumes it", 6),
        C("reason", "VARCHAR", "why the night decided so, one line", 6),
    ), key=("night_id",), since=5),
    Table("night_steps", "Each completed step of a night with its output, so a crashed night "
          "resumes after its last completed step.", (
        C("night_id", "VARCHAR", "the night (joins night_runs.night_id)", 5),
        C("step", "VARCHAR", "gather | refine | verify | gate | decide", 5),
        C("output", "VARCHAR", "JSON of the step's result", 5),
        C("completed_at", "TIMESTAMP", "when it completed", 5),
    ), key=("night_id", "step"), since=5),
    Table("input_roles", "The role of each input in one refinement or night, fixed (seeded) "
          "before any proposal: `shown` (a proposer may read it: failing examples, expected "
          "answers, traces), `verification` (judges candidates; never shown to a proposer of "
          "that scope), `holdout` (the gate's fresh evidence; refinement never touches it).", (
        C("scope_id", "VARCHAR", "the refinement (refinements.refine_id) or night "
                                 "(night_runs.night_id)", 6),
        C("task_id", "VARCHAR", "the input", 6),
        C("role", "VARCHAR", "shown | verification | holdout", 6),
        C("seed", "INTEGER", "the seed that drew the roles", 6),
        C("recorded_at", "TIMESTAMP", "when the roles were fixed", 6),
    ), key=("scope_id", "task_id"), since=6),
    Table("quarantine", "Records that could not be stored, with the reason.", (
        C("quarantine_id", "VARCHAR", "hash of (source, line_no, raw, reason)"),
        C("source", "VARCHAR", "file or stream it came from"),
        C("line_no", "INTEGER", "line in the source"),
        C("raw", "VARCHAR", "the record as received"),
        C("reason", "VARCHAR", "why it was rejected"),
        C("received_at", "TIMESTAMP", "when"),
        C("level", "VARCHAR", "'line' (the whole line) or 'span' (one span of a stored line)",
          4),
        C("detail", "VARCHAR", "what exactly was wrong (parser message, span id, key:length)",
          4),
        C("raw_bytes", "BIGINT", "length of the raw line; `raw` keeps at most 64 KiB", 4),
        C("raw_truncated", "BOOLEAN", "raw was cut to 64 KiB", 4),
        C("ingest_id", "VARCHAR", "the ingest that met it first (joins ingests.ingest_id)", 4),
    ), key=("quarantine_id",), key_since=3),
    Table("staged_spans", "Spans and log records of traces whose run span has not arrived "
          "yet, kept between ingests.", (
        C("trace_id", "VARCHAR", "source trace id"),
        C("span_key", "VARCHAR", "as source_spans.span_key"),
        C("kind", "VARCHAR", "span | log"),
        C("payload", "VARCHAR", "the decoded span or log record as JSON"),
        C("source", "VARCHAR", "file or stream it came from"),
        C("staged_at", "TIMESTAMP", "when staged"),
    ), key=("trace_id", "span_key"), since=4),
    Table("ingests", "One `cegraph ingest` / `ingest-logs` flow / receiver session.", (
        C("ingest_id", "VARCHAR", "ingest id"),
        C("inputs", "VARCHAR[]", "files (or 'otlp-http')"),
        C("started_at", "TIMESTAMP", "start"),
        C("finished_at", "TIMESTAMP", "end"),
        C("summary", "VARCHAR", "JSON accounting: lines_read, lines_stored, duplicates, "
                                "quarantined (reason -> lines), span_faults, runs_stored, "
                                "spans_stored, staged_incomplete"),
    ), key=("ingest_id",), since=4),
    Table("ingest_batches", "Each history batch an ingest wrote, with its gate verdict: a "
          "batch that failed the gate is stored but marked (`gate_passed = false`).", (
        C("batch_id", "VARCHAR", "the batch (joins batches.batch_id, gate_results.batch_id)"),
        C("ingest_id", "VARCHAR", "the ingest"),
        C("workflow", "VARCHAR", "workflow of its runs"),
        C("model", "VARCHAR", "model of its runs"),
        C("runs", "INTEGER", "runs in the batch"),
        C("spans", "INTEGER", "source spans in the batch"),
        C("gate_passed", "BOOLEAN", "every expectation of the suite held"),
        C("created_at", "TIMESTAMP", "when gated"),
    ), key=("batch_id",), since=4),
    Table("unmapped_attributes", "Source attribute keys an ingest saw but did not map.", (
        C("ingest_id", "VARCHAR", "the ingest"),
        C("workflow", "VARCHAR", "workflow of the spans"),
        C("attribute", "VARCHAR", "the attribute key"),
        C("count", "BIGINT", "spans carrying it"),
    ), key=("ingest_id", "workflow", "attribute"), since=4),
    Table("llm_calls", "The call store: every answered LLM call, for exact replay.", (
        C("key", "VARCHAR", "hash of (model, messages, params, sample)"),
        C("model", "VARCHAR", "litellm model string"),
        C("messages", "VARCHAR", "JSON messages"),
        C("params", "VARCHAR", "JSON params"),
        C("sample", "INTEGER", "sample index"),
        C("text", "VARCHAR", "the completion"),
        C("tokens_in", "BIGINT", "prompt tokens"),
        C("tokens_out", "BIGINT", "completion tokens"),
        C("cost", "DOUBLE", "USD"),
        C("latency_s", "DOUBLE", "seconds"),
        C("finish_reason", "VARCHAR", "stop | length | ..."),
        C("created_at", "TIMESTAMP", "when first answered"),
    ), key=("key",)),
)
TABLE = {t.name: t for t in TABLES}

_ARROW = {"VARCHAR": pa.string(), "DOUBLE": pa.float64(), "BIGINT": pa.int64(),
          "INTEGER": pa.int32(), "BOOLEAN": pa.bool_(), "TIMESTAMP": pa.timestamp("us"),
          "FLOAT[]": pa.list_(pa.float32()), "VARCHAR[]": pa.list_(pa.string())}


def arrow_schema(name: str) -> pa.Schema:
    return pa.schema([(c.name, _ARROW[c.type]) for c in TABLE[name].columns])


def _create(table: Table, version: int) -> str:
    cols = [f"{c.name} {c.type}" for c in table.columns_at(version)]
    if table.key and table.key_since <= version:
        cols.append(f"PRIMARY KEY ({', '.join(table.key)})")
    return f"CREATE TABLE IF NOT EXISTS {table.name} ({', '.join(cols)})"


def _add_key(table: Table, version: int) -> list[str]:
    """Key an existing table by rebuilding it (DuckDB cannot add a key over rows deleted in
    the same transaction): rows a retried task duplicated, or with no key, are dropped."""
    cols = ", ".join(c.name for c in table.columns_at(version))
    key = ", ".join(table.key)
    return [f"ALTER TABLE {table.name} RENAME TO {table.name}__unkeyed",
            _create(table, version),
            f"INSERT INTO {table.name} ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM "
            f"{table.name}__unkeyed WHERE " + " AND ".join(f"{k} IS NOT NULL" for k in table.key),
            f"DROP TABLE {table.name}__unkeyed"]


def migration(version: int) -> list[str]:
    """The statements that take a catalog from `version - 1` to `version`."""
    stmts: list[str] = []
    for table in TABLES:
        if table.history:
            continue
        if table.since == version:
            stmts.append(_create(table, version))
        elif table.since < version:
            stmts += [f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {c.name} {c.type}"
                      for c in table.columns if c.since == version]
            if table.key and table.key_since == version:
                stmts += _add_key(table, version)
    return stmts


def markdown() -> str:
    """The documented schema, as written to docs/schema.md."""
    out = ["# Warehouse schema", "",
           f"Schema version {SCHEMA_VERSION}. Generated from `storage/schema.py` "
           "(`cegraph schema --markdown`). History tables are Parquet under "
           "`<home>/history/<table>/date=YYYY-MM-DD/`, read through views of the same name "
           "(plus the partition column `date`), which show only committed batches (`batches`) "
           "and only each run's latest verdict; `runs_all`, `spans_all` and `failures_all` "
           "also show superseded rows (column `superseded`), the audit trail of re-grades. "
           "The others live in `<home>/catalog.duckdb`. "
           "Signature vectors live in LanceDB at `<home>/vectors` (table `signatures`).", ""]
    for t in TABLES:
        where = "Parquet history" if t.history else "catalog"
        out += [f"## `{t.name}` ({where})", "", t.doc, ""]
        if t.key:
            out += [f"Primary key: `({', '.join(t.key)})`"
                    + (f" (since v{t.key_since})." if t.key_since > 1 else "."), ""]
        out += ["| column | type | meaning |", "| --- | --- | --- |"]
        out += [f"| {c.name} | {c.type} | {c.doc}"
                + (f" (since v{c.since})" if c.since > 1 else "") + " |" for c in t.columns]
        out.append("")
    from cegraph.storage import views

    return "\n".join(out + views.markdown())
