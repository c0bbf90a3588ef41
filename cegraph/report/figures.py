"""The report's plots (Plotly), each built from a `NightSummary` alone."""

from __future__ import annotations

from collections import defaultdict

import plotly.graph_objects as go

from cegraph.report.summary import NightSummary

_LAYOUT = {"template": "plotly_white", "height": 380, "margin": {"l": 60, "r": 20, "t": 50,
                                                                   "b": 50}}


def mass_before_after(s: NightSummary) -> go.Figure:
    """Expected Failure Mass before and after the night, with 95% intervals."""
    bars = [("before: " + (s.active_before or "active"), s.mass_before)]
    if s.mass_after is not None:
        bars.append(("after: " + (s.active_after or "candidate"), s.mass_after))
    fig = go.Figure(go.Bar(
        x=[name for name, _ in bars], y=[m.mass for _, m in bars],
        error_y={"type": "data", "symmetric": False,
                 "array": [m.hi - m.mass for _, m in bars],
                 "arrayminus": [m.mass - m.lo for _, m in bars]},
        text=[f"{m.mass:.3f} [{m.lo:.3f}, {m.hi:.3f}]<br>{m.failures}/{m.runs} runs"
              for _, m in bars], textposition="outside", marker_color=["#c0392b", "#2e86c1"]))
    fig.update_layout(title="Expected Failure Mass (95% Wilson interval)",
                      yaxis={"title": "failures / runs", "rangemode": "tozero"}, **_LAYOUT)
    return fig


def mode_trend(s: NightSummary) -> go.Figure:
    """Each mode's mass across nights (one line per mode, intervals as error bars)."""
    by_mode: dict[str, list] = defaultdict(list)
    for p in sorted(s.trend, key=lambda p: p.computed_at):
        by_mode[p.mode_id].append(p)
    # one category per night: a time axis of a single night zooms into milliseconds, and
    # nights are what the reader counts, not hours between them
    night = {p.night_id: f"{p.computed_at:%Y-%m-%d %H:%M}" for p in s.trend}
    fig = go.Figure()
    for mode_id, points in by_mode.items():
        fig.add_trace(go.Scatter(
            x=[night[p.night_id] for p in points], y=[p.mass for p in points],
            mode="lines+markers", name=f"{mode_id}: {points[-1].label}"[:60],
            error_y={"type": "data", "symmetric": False,
                     "array": [p.hi - p.mass for p in points],
                     "arrayminus": [p.mass - p.lo for p in points]},
            hovertext=[p.night_id for p in points]))
    fig.update_layout(title="Failure modes across nights (mass per mode)",
                      xaxis={"title": "night", "type": "category",
                             "categoryorder": "category ascending"},
                      yaxis={"title": "mass", "rangemode": "tozero"},
                      **_LAYOUT)
    return fig


def signature_map(s: NightSummary) -> go.Figure:
    """The failures of the night in the 2-D projection of the signature space, by mode."""
    labels = {m.mode_id: m.label for m in s.modes}
    by_mode: dict[str, list] = defaultdict(list)
    for p in s.points:
        by_mode[p.mode_id].append(p)
    fig = go.Figure()
    for mode_id, points in sorted(by_mode.items(), key=lambda kv: kv[0] == "noise"):
        fig.add_trace(go.Scatter(
            x=[p.x for p in points], y=[p.y for p in points], mode="markers",
            name=f"{mode_id}: {labels.get(mode_id, '')}"[:60],
            marker={"size": 9, "symbol": "x" if mode_id == "noise" else "circle",
                    "color": "#999999" if mode_id == "noise" else None},
            hovertext=[f"{p.failure_id}: {p.message}"[:200] for p in points]))
    fig.update_layout(title=f"Failure Signature Space, coloured by mode: {s.projection}",
                      xaxis={"title": "component 1"}, yaxis={"title": "component 2"},
                      **_LAYOUT)
    return fig


def verification_counts(s: NightSummary) -> go.Figure:
    """Per verified candidate: counterexamples fixed, regressions broken, inputs re-run."""
    verified = [e for e in s.edits if e.verification is not None]
    # the edit in words, and its round-index within the refinement (names must differ)
    names = [f"{e.edit or e.operation} #{e.edit_id.removeprefix(f'{s.refine_id}-')}"
             for e in verified]
    fig = go.Figure()
    for field, colour in (("fixed", "#27ae60"), ("broken", "#c0392b")):
        fig.add_trace(go.Bar(name=field, x=names, marker_color=colour,
                             y=[getattr(e.verification, field) for e in verified]))
    fig.add_trace(go.Bar(name="re-run", x=names, marker_color="#95a5a6", y=[
        e.verification.counterexamples + e.verification.regression + e.verification.others
        for e in verified]))
    fig.update_layout(title="Verification of each candidate edit", barmode="group",
                      yaxis={"title": "inputs"}, **_LAYOUT)
    return fig


FIGURES = (mass_before_after, mode_trend, signature_map, verification_counts)
