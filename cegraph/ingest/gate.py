"""The Great Expectations gate on every ingest batch: one row per run (the columns below),
checked against the suite kept in the repo (`cegraph/ingest/ingest_suite.json`): required
fields present, token counts non-negative, timestamps plausible, outcome labels in the
allowed set, non-empty output rate and share of evaluated runs above their `mostly`."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from cegraph import expectations
from cegraph.expectations import SuiteResult
from cegraph.trace import Trace

SUITE = "ingest_suite.json"


GateResult = SuiteResult


def suite_spec() -> dict[str, Any]:
    return expectations.suite_spec("cegraph.ingest", SUITE)


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


def check(traces: Sequence[Trace], outcomes: Sequence[str]) -> GateResult:
    """Validate one batch of runs; `outcomes` as stored (`runs.outcome`)."""
    return expectations.validate("cegraph.ingest", SUITE, frame(traces, outcomes))
