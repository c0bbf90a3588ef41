"""The Great Expectations gate on every ingest batch: one row per run (the columns below),
checked against the suite kept in the repo (`cegraph/ingest/ingest_suite.json`): required
fields present, token counts non-negative, timestamps plausible, outcome labels in the
allowed set, non-empty output rate and share of evaluated runs above their `mostly`."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from cegraph.trace import Trace

SUITE = "ingest_suite.json"


@dataclass
class GateResult:
    passed: bool
    suite: str
    results: list[dict[str, Any]]  # expectation, success, observed, details

    @property
    def failed(self) -> list[str]:
        return [r["expectation"] for r in self.results if not r["success"]]


def suite_spec() -> dict[str, Any]:
    return json.loads(resources.files("cegraph.ingest").joinpath(SUITE).read_text())


def frame(traces: Sequence[Trace], outcomes: Sequence[str]) -> Any:
    """The runs as the gate sees them."""
    import pandas as pd

    now = time.time()
    rows = []
    for t, outcome in zip(traces, outcomes, strict=True):
        tokens = [n for s in t.spans for c in s.calls for n in (c.tokens_in, c.tokens_out)]
        rows.append({
            "run_id": t.run_id or None, "workflow": t.workflow or None,
            "started_at": t.started if t.started else None,
            "min_tokens": min(tokens, default=0),
            "started_year": dt.datetime.fromtimestamp(t.started, dt.UTC).year
            if 0 < t.started < 4e9 else 0,
            "seconds_ahead": t.started - now, "duration_s": t.ended - t.started,
            "outcome": outcome, "output": (t.output or None) if (t.output or "").strip()
            else None, "evaluated": True if t.outcome is not None else None})
    return pd.DataFrame(rows)


@cache
def _validator() -> tuple[Any, Any]:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch = (context.data_sources.add_pandas("ingest").add_dataframe_asset("runs")
             .add_batch_definition_whole_dataframe("batch"))
    spec = suite_spec()
    suite = gx.ExpectationSuite(name=spec["name"], expectations=[
        gx.expectations.registry.get_expectation_impl(e["type"])(**e["kwargs"])
        for e in spec["expectations"]])
    return batch, context.suites.add(suite)


def check(traces: Sequence[Trace], outcomes: Sequence[str]) -> GateResult:
    """Validate one batch of runs; `outcomes` as stored (`runs.outcome`)."""
    batch, suite = _validator()
    result = batch.get_batch(batch_parameters={"dataframe": frame(traces, outcomes)}) \
        .validate(suite)
    results = []
    for r in result.to_json_dict()["results"]:
        config = r["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        res = r.get("result") or {}
        observed = res.get("unexpected_count", res.get("observed_value"))
        results.append({"expectation": f"{config['type']}({json.dumps(kwargs)})",
                        "success": bool(r["success"]), "observed": str(observed),
                        "details": res})
    return GateResult(bool(result.success), suite.name, results)
