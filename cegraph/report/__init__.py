"""A night's report: the summary (data), the 2-D map of the signature space, the plots, and
the self-contained HTML + JSON writer."""

from cegraph.report.summary import NightSummary
from cegraph.report.writer import write_report

__all__ = ["NightSummary", "write_report"]
