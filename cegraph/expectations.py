"""Great Expectations suites kept in the repo as JSON, validated against a pandas frame.

Both gates (ingest batches, `cegraph.ingest.gate`; verified edits, `cegraph.refine.gate`)
keep their suite beside their module and validate through here: one ephemeral GX context
per suite (built once per process), bounds given as suite parameters
(`{"$PARAMETER": "name"}` in the JSON, values at validation time), and each expectation's
result flattened to a row for `gate_results`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any


@dataclass
class SuiteResult:
    passed: bool
    suite: str
    results: list[dict[str, Any]]  # expectation, success, observed, details
    validation: dict[str, Any] = field(default_factory=dict)  # GX's result as JSON

    @property
    def failed(self) -> list[str]:
        return [r["expectation"] for r in self.results if not r["success"]]


def suite_spec(package: str, filename: str) -> dict[str, Any]:
    return json.loads(resources.files(package).joinpath(filename).read_text())


@cache
def _validator(package: str, filename: str) -> tuple[Any, Any]:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    spec = suite_spec(package, filename)
    batch = (context.data_sources.add_pandas(spec["name"]).add_dataframe_asset("rows")
             .add_batch_definition_whole_dataframe("batch"))
    suite = gx.ExpectationSuite(name=spec["name"], expectations=[
        gx.expectations.registry.get_expectation_impl(e["type"])(**e["kwargs"])
        for e in spec["expectations"]])
    return batch, context.suites.add(suite)


def validate(package: str, filename: str, frame: Any,
             parameters: Mapping[str, Any] | None = None) -> SuiteResult:
    """Validate `frame` against the suite `package/filename` with these parameter values."""
    batch, suite = _validator(package, filename)
    result = batch.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, expectation_parameters=dict(parameters or {}))
    validation = result.to_json_dict()
    results = []
    for r in validation["results"]:
        config = r["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        res = r.get("result") or {}
        observed = res.get("unexpected_count", res.get("observed_value"))
        results.append({"expectation": f"{config['type']}({json.dumps(kwargs)})",
                        "success": bool(r["success"]), "observed": str(observed),
                        "details": res})
    return SuiteResult(bool(result.success), suite.name, results, validation)
