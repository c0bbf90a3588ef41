"""Write a night's report: one self-contained HTML file (Plotly's JavaScript inlined, so it
opens offline from anywhere) and the same summary as JSON beside it."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.io as pio

from cegraph.report.figures import FIGURES
from cegraph.report.summary import Edit, NightSummary

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}pre{background:#f8f8f8;padding:.5em;
margin:0;white-space:pre-wrap}.ok{color:#1e8449}.bad{color:#c0392b}.decision{font-size:1.3em}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list[object]], *, raw: bool = False) -> str:
    cell = (lambda v: str(v)) if raw else _e
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>"
                      for r in rows) + "</table>")


def _edit_rows(edits: list[Edit]) -> list[list[object]]:
    rows = []
    for e in edits:
        v = e.verification
        verification = (f"{v.fixed} fixed / {v.broken} broken of {v.counterexamples} "
                        f"counterexamples + {v.regression} regression + {v.others} others; "
                        f"p={v.p_value if v.p_value is None else round(v.p_value, 4)}; "
                        f"{v.reason}" if v else "not verified")
        if e.gate is None:
            gate = "not gated"
        elif e.gate.passed:
            gate = '<span class="ok">passed</span>'
        else:
            gate = ('<span class="bad">failed: ' + _e(", ".join(e.gate.failing)) + "</span>")
        rows.append([_e(e.edit or e.operation), _e(e.target_mode_id),
                     _e(e.source), _e(e.status + (f": {e.reject_reason}" if e.reject_reason
                                                  else "")),
                     "<pre>" + _e("\n".join(e.diff) or "(no diff)") + "</pre>",
                     _e(verification), gate])
    return rows


def render_html(s: NightSummary) -> str:
    """The report as one HTML document (no external resource)."""
    figures = [pio.to_html(make(s), include_plotlyjs=(i == 0), full_html=False,
                           config={"displaylogo": False})
               for i, make in enumerate(FIGURES)]
    after = (f"{s.mass_after.mass:.3f} [{s.mass_after.lo:.3f}, {s.mass_after.hi:.3f}]"
             if s.mass_after else "n/a")
    totals = s.verification_totals
    c = s.cost
    budget = ", ".join(f"{k} {v}" for k, v in (("calls", c.budget_calls),
                                               ("tokens", c.budget_tokens),
                                               ("dollars", c.budget_dollars)) if v is not None)
    gates = [[_e(e.edit or e.operation), _e(ch.expectation),
              '<span class="ok">yes</span>' if ch.success else '<span class="bad">no</span>',
              _e(ch.observed)] for e in s.edits if e.gate for ch in e.gate.checks]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>cegraph night {_e(s.night_id)}: {_e(s.workflow)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(s.workflow)}: night {_e(s.night_id)}</h1>",
        f"<p>{_e(s.model)} on {_e(s.dataset)}, generated "
        f"{_e(s.generated_at.strftime('%Y-%m-%d %H:%M'))} UTC",
        (f", refinement {_e(s.refine_id)}" if s.refine_id else "") + "</p>",
        f"<p class='decision'>Decision: <b>{_e(s.decision)}</b>: {_e(s.decision_reason)}</p>",
        _table(["", "version", "Expected Failure Mass [95% CI]"], [
            ["before", s.active_before, f"{s.mass_before.mass:.3f} [{s.mass_before.lo:.3f}, "
                                        f"{s.mass_before.hi:.3f}] ({s.mass_before.failures}/"
                                        f"{s.mass_before.runs})"],
            ["after", s.active_after, after]]),
        figures[0],
        "<h2>Failure modes</h2>",
        _table(["mode", "label", "size", "mass", "95% CI", "trend", "locus"],
               [[m.mode_id, m.label, m.size, f"{m.mass:.3f}", f"[{m.lo:.3f}, {m.hi:.3f}]",
                 m.status, m.locus] for m in s.modes]),
        figures[1], figures[2],
        "<h2>Candidate edits</h2>",
        f"<p>{totals['candidates']} candidates, {totals['verified']} verified, "
        f"{totals['reruns']} inputs re-run, {totals['fixed']} fixed, "
        f"{totals['broken']} broken.</p>",
        _table(["edit", "target mode", "source", "final status", "diff", "verification",
                "gate"], _edit_rows(s.edits), raw=True),
        figures[3],
        "<h2>Gate (Great Expectations)</h2>",
        _table(["edit", "expectation", "passed", "observed"], gates, raw=True)
        if gates else "<p>No edit reached the gate.</p>",
        "<h2>Cost</h2>",
        _table(["LLM calls paid", "calls replayed", "tokens", "dollars", "wall s", "budget"],
               [[c.llm_calls, c.calls_replayed, c.tokens, f"{c.dollars:.4f}",
                 f"{c.wall_s:.0f}", budget or "none"]]),
        "</body></html>"]
    return "\n".join(parts)


def write_report(summary: NightSummary | dict[str, Any], out_dir: Path) -> Path:
    """Write `report-<night>.html` and `report-<night>.json` into `out_dir`; returns the
    HTML's path. `summary` is a `NightSummary` or a dict of its shape (validated)."""
    s = summary if isinstance(summary, NightSummary) else NightSummary.model_validate(summary)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"report-{''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in s.night_id)}"
    (out_dir / f"{stem}.json").write_text(s.model_dump_json(indent=2))
    path = out_dir / f"{stem}.html"
    path.write_text(render_html(s), encoding="utf-8")
    return path
